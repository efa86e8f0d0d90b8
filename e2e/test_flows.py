"""The flows users depend on, through the proxy: sessions, API keys, tickets,
WebSockets, delivery across nodes, logout, origin checks, single-use tickets."""

from __future__ import annotations

import json
import time

import pytest
from websockets.exceptions import InvalidStatus

from helpers import (
    bearer,
    closed_with,
    http_request,
    login,
    mint_ticket,
    recv_until,
    refused,
    subscribe,
    unique,
    welcome,
    ws_connect,
)

FOREIGN_ORIGIN = "http://evil.example"


def http_publish(cfg, channel: str, data) -> dict:
    r = http_request(cfg, "POST", "/v1/publish", headers=bearer(cfg), json_body={"channel": channel, "data": data})
    assert r.status == 202, (r.status, r.body)
    ack = r.json()
    assert ack["channel"] == channel and ack["duplicate"] is False, ack
    return ack


def is_message(channel: str, data):
    return lambda f: f.get("type") == "message" and f.get("channel") == channel and f.get("data") == data


def test_login_cookie_ticket_websocket_http_publish_delivered(cfg):
    session = login(cfg)
    ticket = mint_ticket(cfg, session.headers(cfg.origin))
    # A ticket minted with the cookie is bound to the page's origin.
    with ws_connect(cfg, ticket=ticket, origin=cfg.origin) as ws:
        hello = welcome(ws)
        assert hello["user"]["username"] == cfg.username
        channel = unique("broadcast:e2e-")
        subscribe(ws, channel)
        data = {"n": unique("login-")}
        ack = http_publish(cfg, channel, data)
        message = recv_until(ws, is_message(channel, data))
        assert (message["epoch"], message["offset"]) == (ack["epoch"], ack["offset"])


def test_api_key_ticket_websocket(cfg):
    ticket = mint_ticket(cfg, bearer(cfg))
    # The query form, through the proxy (its log must not keep the ticket:
    # see test_access_log.py).
    with ws_connect(cfg, query_ticket=ticket) as ws:
        hello = welcome(ws)
        assert hello["user"]["username"] == cfg.username
        ws.send(json.dumps({"action": "ping", "id": "p1"}))
        assert recv_until(ws, lambda f: f.get("id") == "p1")["type"] == "ack"
        channel = unique("broadcast:e2e-")
        subscribe(ws, channel)
        data = {"n": unique("key-")}
        http_publish(cfg, channel, data)
        recv_until(ws, is_message(channel, data))


def test_delivery_between_connections_on_different_nodes(cfg):
    """The proxy spreads sockets over the nodes (least connections); open them
    until two report different nodes in their welcome frames."""
    sockets, by_node = [], {}
    try:
        for _ in range(10):
            ws = ws_connect(cfg, ticket=mint_ticket(cfg, bearer(cfg)))
            sockets.append(ws)
            by_node.setdefault(welcome(ws)["node"], ws)
            if len(by_node) >= 2:
                break
        assert len(by_node) >= 2, f"every socket landed on {list(by_node)}: is more than one ws-node behind /ws?"
        (node_a, a), (node_b, b) = list(by_node.items())[:2]
        channel = unique("public:e2e-")
        subscribe(a, channel, 1)
        subscribe(b, channel, 1)
        # Published over A's socket, delivered on B's node, and back.
        for sender, receiver, name in ((a, b, node_a), (b, a, node_b)):
            data = {"from": name, "n": unique("")}
            sender.send(json.dumps({"action": "publish", "id": 2, "channel": channel, "data": data}))
            ack = recv_until(sender, lambda f: f.get("id") == 2)
            assert ack["type"] == "ack", ack
            recv_until(receiver, is_message(channel, data))
        # And a server publish reaches both.
        data = {"n": unique("both-")}
        http_publish(cfg, channel, data)
        recv_until(a, is_message(channel, data))
        recv_until(b, is_message(channel, data))
    finally:
        for ws in sockets:
            ws.close()


def test_logout_closes_the_sessions_sockets_with_4003(cfg):
    session = login(cfg)
    ticket = mint_ticket(cfg, session.headers(cfg.origin))
    by_ticket = ws_connect(cfg, ticket=ticket, origin=cfg.origin)
    by_cookie = ws_connect(cfg, cookie=session.cookie, origin=cfg.origin)
    try:
        welcome(by_ticket)
        assert welcome(by_cookie)["user"]["username"] == cfg.username
        r = http_request(cfg, "POST", "/v1/logout", headers=session.headers(cfg.origin))
        assert r.status == 204, (r.status, r.body)
        assert closed_with(by_ticket) == 4003
        assert closed_with(by_cookie) == 4003
    finally:
        by_ticket.close()
        by_cookie.close()
    # The cookie is dead everywhere.
    r = http_request(cfg, "POST", "/v1/tickets", headers=session.headers(cfg.origin))
    assert (r.status, r.error_code()) == (401, "unauthenticated")
    with pytest.raises(InvalidStatus) as refusal:
        ws_connect(cfg, cookie=session.cookie, origin=cfg.origin)
    assert refused(refusal) == (401, "invalid_session")


def test_foreign_origin_refused_at_ticket_minting(cfg):
    session = login(cfg)
    r = http_request(cfg, "POST", "/v1/tickets", headers=session.headers(FOREIGN_ORIGIN))
    assert (r.status, r.error_code()) == (403, "origin_not_allowed")


def test_foreign_or_missing_origin_refused_for_a_cookie_websocket(cfg):
    session = login(cfg)
    with pytest.raises(InvalidStatus) as refusal:
        ws_connect(cfg, cookie=session.cookie, origin=FOREIGN_ORIGIN)
    assert refused(refusal) == (403, "origin_not_allowed")
    with pytest.raises(InvalidStatus) as refusal:
        ws_connect(cfg, cookie=session.cookie)
    assert refused(refusal) == (403, "origin_not_allowed")
    # The same cookie from the allowed origin works: the refusals were the origin's.
    with ws_connect(cfg, cookie=session.cookie, origin=cfg.origin) as ws:
        welcome(ws)


def test_cookie_minted_ticket_is_bound_to_its_origin(cfg):
    session = login(cfg)
    ticket = mint_ticket(cfg, session.headers(cfg.origin))
    with pytest.raises(InvalidStatus) as refusal:
        ws_connect(cfg, ticket=ticket, origin=FOREIGN_ORIGIN)
    assert refused(refusal) == (403, "origin_mismatch")


@pytest.mark.parametrize("form", ["subprotocol", "query"])
def test_replayed_ticket_refused(cfg, form):
    ticket = mint_ticket(cfg, bearer(cfg))
    how = {"ticket": ticket} if form == "subprotocol" else {"query_ticket": ticket}
    with ws_connect(cfg, **how) as ws:
        welcome(ws)
        # Presented again while the first socket is open, and after.
        with pytest.raises(InvalidStatus) as refusal:
            ws_connect(cfg, **how)
        assert refused(refusal) == (401, "invalid_ticket")
    with pytest.raises(InvalidStatus) as refusal:
        ws_connect(cfg, **how)
    assert refused(refusal) == (401, "invalid_ticket")


def test_a_client_initiated_close_is_answered_with_its_code(cfg):
    """The node completes the close handshake through the proxy: the client's
    close frame comes back (same code) at once, so the close is clean, not a
    1006 "abnormal closure" after the client's own timeout."""
    ws = ws_connect(cfg, ticket=mint_ticket(cfg, bearer(cfg)))
    welcome(ws)
    started = time.monotonic()
    ws.close(code=4000, reason="bye")
    received = ws.protocol.close_rcvd
    assert received is not None, "no close frame came back"
    assert (received.code, received.reason) == (4000, "bye")
    assert time.monotonic() - started < 2
