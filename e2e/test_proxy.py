"""The proxy itself: bad input gets the services' JSON errors or the proxy's
own JSON ones (never a hang), its limits agree with the services', and the
services' private endpoints are not reachable through it."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from helpers import HTTP_TIMEOUT, bearer, http_request, parse_raw, raw_exchange, unique

# auth-service's MAX_BODY_BYTES (auth-service/src/extract.rs), and the proxy's
# client_max_body_size.
MAX_BODY_BYTES = 96 * 1024


def padded_publish(size: int) -> bytes:
    """A valid publish body of exactly `size` bytes (JSON padded with spaces)."""
    body = json.dumps({"channel": unique("broadcast:e2e-"), "data": {"padded": True}}).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


def test_body_at_the_limit_reaches_auth_service(cfg):
    r = http_request(
        cfg,
        "POST",
        "/v1/publish",
        headers={**bearer(cfg), "Content-Type": "application/json"},
        body=padded_publish(MAX_BODY_BYTES),
    )
    assert r.status == 202, (r.status, r.body[:200])


def test_body_over_the_limit_is_413_json(cfg):
    r = http_request(
        cfg,
        "POST",
        "/v1/publish",
        headers={**bearer(cfg), "Content-Type": "application/json"},
        body=padded_publish(MAX_BODY_BYTES + 1),
    )
    assert (r.status, r.error_code()) == (413, "payload_too_large")


def test_too_long_header_is_4xx_json(cfg):
    r = http_request(cfg, "GET", "/v1/me", headers={**bearer(cfg), "X-Filler": "a" * 9000})
    assert 400 <= r.status < 500
    assert r.error_code() == "headers_too_large"


def test_too_long_request_line_is_414_json(cfg):
    r = http_request(cfg, "GET", "/v1/" + "a" * 9000)
    assert (r.status, r.error_code()) == (414, "uri_too_long")


@pytest.mark.parametrize("path", ["/no-such-page", "/ws/extra", "/v1x"])
def test_unknown_path_is_404_json_from_the_proxy(cfg, path):
    r = http_request(cfg, "GET", path)
    assert (r.status, r.error_code()) == (404, "not_found")


def test_unknown_api_path_is_auth_services_404(cfg):
    r = http_request(cfg, "GET", "/v1/no-such-endpoint")
    assert (r.status, r.error_code()) == (404, "not_found")
    # auth-service's own answer (it echoes the request id; the proxy's pages do not).
    assert r.headers.get("X-Request-Id"), dict(r.headers)


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/v1/../metrics", "/v1/%2e%2e/metrics", "/metrics/"])
def test_private_endpoints_are_not_exposed(cfg, path):
    r = http_request(cfg, "GET", path)
    assert r.status in (400, 404), (path, r.status, r.body[:200])
    r.error_code()
    assert b"# TYPE" not in r.body


def test_metrics_are_served_on_the_private_listener_only(cfg):
    if not cfg.metrics_urls:
        pytest.skip("E2E_METRICS_URLS is not set: the services' private listeners are not reachable from here")
    for url in cfg.metrics_urls:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            assert response.status == 200, url
            assert response.headers.get("Content-Type", "").startswith("text/plain"), url
            text = response.read().decode()
        # Every metric is exported from start-up, with its help text.
        assert "# TYPE" in text and ("ws_handshakes_total" in text or "tickets_minted_total" in text), url
        path = urllib.parse.urlsplit(url).path
        r = http_request(cfg, "GET", path)
        assert r.status == 404 and b"# TYPE" not in r.body, (path, r.status)


def test_openapi_document_is_served_through_the_proxy(cfg):
    r = http_request(cfg, "GET", "/openapi.json")
    assert r.status == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1"), doc["openapi"]
    assert "/v1/tickets" in doc["paths"] and "/v1/login" in doc["paths"]
    # The public document does not advertise what the proxy keeps private.
    assert "/metrics" not in doc["paths"]


def test_proxy_health_and_index(cfg):
    r = http_request(cfg, "GET", "/healthz")
    assert r.status == 200 and r.json() == {"status": "ok"}
    # The demo (clients/demo): its page, and the scripts it loads.
    r = http_request(cfg, "GET", "/")
    assert r.status == 200
    assert r.headers.get("Content-Type", "").startswith("text/html")
    assert b'data-testid="login"' in r.body and b'src="app.js"' in r.body
    for path in ("/app.js", "/tessera.js"):
        r = http_request(cfg, "GET", path)
        assert r.status == 200, path
        assert r.headers.get("Content-Type", "").startswith("application/javascript"), path


@pytest.mark.parametrize("method", ["POST", "OPTIONS"])
def test_method_not_allowed_on_the_websocket_endpoint_is_json(cfg, method):
    r = http_request(cfg, method, "/ws", body=b"" if method == "POST" else None)
    assert (r.status, r.error_code()) == (405, "method_not_allowed")


def test_method_not_allowed_on_static_is_json(cfg):
    r = http_request(cfg, "POST", "/", body=b"x")
    assert (r.status, r.error_code()) == (405, "method_not_allowed")


def test_services_json_errors_pass_through(cfg):
    # auth-service: malformed JSON.
    r = http_request(cfg, "POST", "/v1/login", headers={"Content-Type": "application/json"}, body=b"{not json")
    assert r.status == 400, (r.status, r.body)
    r.error_code()
    # auth-service: no credential.
    r = http_request(cfg, "POST", "/v1/tickets")
    assert (r.status, r.error_code()) == (401, "unauthenticated")
    # ws-node: /ws without an upgrade.
    r = http_request(cfg, "GET", "/ws")
    assert (r.status, r.error_code()) == (400, "not_websocket")
    # ws-node: a ticket that was never minted.
    r = http_request(
        cfg,
        "GET",
        "/ws",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": "ticket.never-minted",
        },
    )
    assert (r.status, r.error_code()) == (401, "invalid_ticket")


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1/me HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET /v1/me HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /v1/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ],
)
def test_malformed_requests_get_a_json_answer_not_a_hang(cfg, request_bytes, status):
    got, headers, body = parse_raw(raw_exchange(cfg, request_bytes))
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    assert set(json.loads(body)["error"]) == {"code", "message"}


def test_truncated_body_ends_without_a_hang(cfg):
    """A body shorter than its Content-Length, then the client stops sending:
    the proxy ends the exchange (an answer or a close) instead of waiting."""
    answer = raw_exchange(
        cfg,
        b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\"",
        shutdown_write=True,
    )
    if answer:
        status, _, _ = parse_raw(answer)
        assert 400 <= status < 500
