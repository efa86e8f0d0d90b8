"""Helpers of the end-to-end suite: configuration, HTTP, credentials, WebSockets.

The suite is black-box: it speaks HTTP and WebSocket to one base URL (the
proxy in front of the stack) and nothing else. Everything comes from the
environment:

  E2E_BASE_URL          the stack, e.g. http://127.0.0.1:8080 (required)
  E2E_ORIGIN            a browser origin in the stack's ALLOWED_ORIGINS
                        (default: the base URL's scheme://host:port)
  E2E_USERNAME, E2E_PASSWORD
                        an existing user, created with the operator CLI
                        (`auth-service user add NAME --key-scopes connect,publish,admin`)
  E2E_API_KEY           an API key of that user with connect, publish, admin
                        (`auth-service api-key create NAME --scopes connect,publish,publish_any,admin`)
  E2E_PROXY_ACCESS_LOG  the proxy's access log file; when set, the suite
                        checks that no ticket ever appears in it (and fails if
                        the file is missing)
  E2E_METRICS_URLS      the services' private /metrics URLs (METRICS_LISTEN),
                        space-separated; when set, the suite checks that each
                        serves Prometheus text that the proxy never shows
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

# Every wait in the suite is bounded by one of these.
HTTP_TIMEOUT = 10.0
WS_TIMEOUT = 5.0

# Every ticket minted during the run, so the access-log test can look for all
# of them.
MINTED_TICKETS: list[str] = []


def required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise pytest.UsageError(f"{name} is not set (see e2e/helpers.py)")
    return value


@dataclass(frozen=True)
class Config:
    base_url: str
    origin: str
    username: str
    password: str
    api_key: str
    access_log: str | None
    metrics_urls: tuple[str, ...]

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or "localhost"

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def ws_url(self) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}/ws"


# --- HTTP ---------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)

    def error_code(self) -> str:
        """The `code` of a `{"error":{"code","message"}}` body (asserting that shape)."""
        assert self.headers.get("Content-Type", "").startswith("application/json"), (
            f"{self.status}: expected a JSON error, got {self.headers.get('Content-Type')!r}: {self.body[:200]!r}"
        )
        body = self.json()
        assert set(body) == {"error"}, body
        assert isinstance(body["error"].get("code"), str) and body["error"]["code"], body
        assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
        return body["error"]["code"]


def http_request(
    cfg: Config,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    json_body=None,
) -> Response:
    """One request on a fresh connection; `path` is sent exactly as given."""
    headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    cls = http.client.HTTPSConnection if cfg.base_url.startswith("https") else http.client.HTTPConnection
    conn = cls(cfg.host, cfg.port, timeout=HTTP_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        conn.close()


def raw_exchange(cfg: Config, data: bytes, *, shutdown_write: bool = False) -> bytes:
    """Sends raw bytes and reads until the proxy closes or answers in full;
    fails if nothing ends within HTTP_TIMEOUT (a hang)."""
    deadline = time.monotonic() + HTTP_TIMEOUT
    with socket.create_connection((cfg.host, cfg.port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(data)
        if shutdown_write:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no complete answer within {HTTP_TIMEOUT} s: {received[:200]!r}"
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                pytest.fail(f"the proxy hung: no answer or close within {HTTP_TIMEOUT} s after {data[:60]!r}")
            if not chunk:
                return received
            received += chunk
            head, sep, rest = received.partition(b"\r\n\r\n")
            if sep:
                length = _content_length(head)
                if length is not None and len(rest) >= length:
                    return received


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def parse_raw(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), answer[:200]
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


# --- Credentials ----------------------------------------------------------------


def bearer(cfg: Config) -> dict[str, str]:
    return {"Authorization": f"Bearer {cfg.api_key}"}


@dataclass
class Session:
    cookie: str  # "name=value", as a browser would send it back

    def headers(self, origin: str) -> dict[str, str]:
        return {"Cookie": self.cookie, "Origin": origin}


def login(cfg: Config) -> Session:
    """POST /v1/login as a browser page on E2E_ORIGIN would; returns the session cookie."""
    r = http_request(
        cfg,
        "POST",
        "/v1/login",
        headers={"Origin": cfg.origin},
        json_body={"username": cfg.username, "password": cfg.password},
    )
    assert r.status == 200, (r.status, r.body)
    assert r.json()["user"]["username"] == cfg.username
    cookies = r.headers.get_all("Set-Cookie") or []
    assert len(cookies) == 1, cookies
    attributes = [a.strip().lower() for a in cookies[0].split(";")]
    assert "httponly" in attributes, cookies[0]
    name_value = cookies[0].split(";", 1)[0].strip()
    assert "=" in name_value and name_value.split("=", 1)[1], cookies[0]
    return Session(cookie=name_value)


def mint_ticket(cfg: Config, headers: dict[str, str]) -> str:
    """POST /v1/tickets with the given credential headers; returns the ticket."""
    r = http_request(cfg, "POST", "/v1/tickets", headers=headers)
    assert r.status == 201, (r.status, r.body)
    body = r.json()
    assert body["ws_url"].endswith("/ws"), body
    assert 1 <= body["expires_in"] <= 30, body
    MINTED_TICKETS.append(body["ticket"])
    return body["ticket"]


# --- WebSocket ------------------------------------------------------------------


def ws_connect(
    cfg: Config,
    *,
    ticket: str | None = None,
    query_ticket: str | None = None,
    cookie: str | None = None,
    origin: str | None = None,
    request_id: str | None = None,
) -> ClientConnection:
    """Opens a WebSocket on the proxy's /ws: ticket as subprotocol, or in the
    query, or the session cookie. Raises InvalidStatus when refused."""
    url = cfg.ws_url
    if query_ticket is not None:
        url += f"?ticket={query_ticket}"
    headers = {}
    if cookie is not None:
        headers["Cookie"] = cookie
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    ws = connect(
        url,
        origin=origin,
        subprotocols=[f"ticket.{ticket}"] if ticket else None,
        additional_headers=headers,
        proxy=None,
        compression=None,
        open_timeout=WS_TIMEOUT,
        close_timeout=2,
        ping_interval=None,
    )
    if ticket:
        assert ws.subprotocol == f"ticket.{ticket}", ws.subprotocol
    return ws


def recv_json(ws: ClientConnection, timeout: float = WS_TIMEOUT) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def recv_until(ws: ClientConnection, predicate, timeout: float = WS_TIMEOUT) -> dict:
    """The first frame that satisfies `predicate`, skipping others (presence
    joins, messages on other channels); fails after `timeout`."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no matching frame within {timeout} s; saw {seen}")
        try:
            frame = recv_json(ws, remaining)
        except TimeoutError:
            continue
        if predicate(frame):
            return frame
        seen.append(frame)


def welcome(ws: ClientConnection) -> dict:
    frame = recv_json(ws)
    assert frame["type"] == "welcome", frame
    assert frame["node"] and frame["connection_id"], frame
    return frame


def subscribe(ws: ClientConnection, channel: str, request_id: int = 1) -> dict:
    ws.send(json.dumps({"action": "subscribe", "id": request_id, "channel": channel}))
    ack = recv_until(ws, lambda f: f.get("id") == request_id)
    assert ack["type"] == "ack" and ack["channel"] == channel, ack
    return ack


def closed_with(ws: ClientConnection, timeout: float = WS_TIMEOUT) -> int:
    """Waits for the server to close the socket; returns its close code."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"the socket was not closed within {timeout} s")
        try:
            ws.recv(timeout=remaining)
        except TimeoutError:
            continue
        except ConnectionClosed as e:
            assert e.rcvd is not None, f"closed without a close frame: {e!r}"
            return e.rcvd.code


def refused(excinfo: pytest.ExceptionInfo[InvalidStatus]) -> tuple[int, str]:
    """Status and error code of a refused handshake (the JSON body the node sends)."""
    response = excinfo.value.response
    body = json.loads(response.body)
    return response.status_code, body["error"]["code"]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:16]}"
