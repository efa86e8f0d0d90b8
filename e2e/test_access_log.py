"""No ticket ever reaches the proxy's access log.

Runs last (see conftest.py), so the log holds every request of the run,
including the `?ticket=` handshakes of the other tests; every ticket the run
minted is looked for. Needs E2E_PROXY_ACCESS_LOG; when it is set, a missing
or unreadable file is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from websockets.exceptions import InvalidStatus

from helpers import MINTED_TICKETS, bearer, mint_ticket, refused, unique, welcome, ws_connect

LOG_WAIT = 10.0


def read_log(path: str) -> str:
    assert os.path.isfile(path), f"E2E_PROXY_ACCESS_LOG={path} does not exist"
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def wait_for_lines(path: str, request_ids: list[str]) -> dict[str, dict]:
    """The log lines of these requests, once all are written (a WebSocket's
    line is written when it closes)."""
    deadline = time.monotonic() + LOG_WAIT
    while True:
        found = {}
        for line in read_log(path).splitlines():
            for request_id in request_ids:
                if f'"request_id":"{request_id}"' in line:
                    found[request_id] = json.loads(line)
        if len(found) == len(request_ids):
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"the proxy's access log {path} has no line for {set(request_ids) - set(found)} after {LOG_WAIT} s")
        time.sleep(0.2)


@pytest.mark.last
def test_no_ticket_in_the_proxy_access_log(cfg):
    if cfg.access_log is None:
        pytest.skip("E2E_PROXY_ACCESS_LOG is not set: the runner gives no access log to check")
    read_log(cfg.access_log)

    # Handshakes with the ticket in the query: one accepted, one replayed
    # (refused by the node), each tagged with a request id to find its line.
    accepted_id, replayed_id = unique("e2e-accepted-"), unique("e2e-replayed-")
    ticket = mint_ticket(cfg, bearer(cfg))
    with ws_connect(cfg, query_ticket=ticket, request_id=accepted_id) as ws:
        welcome(ws)
    with pytest.raises(InvalidStatus) as refusal:
        ws_connect(cfg, query_ticket=ticket, request_id=replayed_id)
    assert refused(refusal) == (401, "invalid_ticket")

    lines = wait_for_lines(cfg.access_log, [accepted_id, replayed_id])
    for request_id, status in ((accepted_id, 101), (replayed_id, 401)):
        line = lines[request_id]
        assert (line["status"], line["method"]) == (status, "GET"), (line["status"], line["method"])
        # The query was there, and was left out. (The line itself is not
        # shown on failure: it may hold the ticket.)
        assert line["path"] == "/ws?[omitted]", f"the logged path of {request_id} is not /ws?[omitted]"

    log = read_log(cfg.access_log)
    assert len(MINTED_TICKETS) >= 2
    leaked = [t for t in MINTED_TICKETS if t in log]
    assert not leaked, f"{len(leaked)} of {len(MINTED_TICKETS)} tickets appear in {cfg.access_log}"
    assert "ticket=" not in log and "ticket." not in log
