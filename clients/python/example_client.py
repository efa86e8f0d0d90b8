#!/usr/bin/env python3
"""A public-API client, written against the documented HTTP API and wire protocol only.

API key -> ticket (POST /v1/tickets) -> WebSocket (ticket in the subprotocol)
-> subscribe -> print each message as one JSON line on stdout.

It stays connected for as long as it runs: a quiet channel is fine (the node's
pings keep the socket alive), and when the connection drops it reconnects the
way docs/PROTOCOL.md §8 asks: a fresh ticket for every attempt, exponential
backoff with jitter, and `since` from the last message it printed, so nothing
is lost or printed twice across the reconnect. When the node cannot fill the
gap it says so on stdout (`"recovered": false`). Progress goes to stderr.

    python example_client.py --auth http://127.0.0.1:8080 --key "$KEY" \\
        --channel broadcast:news --count 1
"""
import argparse
import asyncio
import json
import random
import sys
import urllib.error
import urllib.request

import websockets

# Reconnect backoff: from half a second, doubling, up to 20 s (with jitter).
BACKOFF_MIN = 0.5
BACKOFF_MAX = 20.0
# Close codes (docs/PROTOCOL.md §8).
GOING_AWAY = 1001
AUTH_FAILED = 4001
REVOKED = 4003


class Fatal(Exception):
    """Retrying cannot help (revoked key, missing scope): stop with this message."""


class Retry(Exception):
    """Reconnect; `at_once` skips the backoff (the node asked us to move on)."""

    def __init__(self, reason: str, at_once: bool = False, after: float = 0.0):
        super().__init__(reason)
        self.at_once = at_once
        self.after = after


def log(message: str) -> None:
    print(f"[example_client] {message}", file=sys.stderr, flush=True)


def emit(frame: dict) -> None:
    print(json.dumps(frame), flush=True)


def mint_ticket(auth_url: str, key: str) -> dict:
    request = urllib.request.Request(
        f"{auth_url}/v1/tickets",
        method="POST",
        headers={"Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        if e.code in (401, 403):
            raise Fatal(f"minting a ticket was refused ({e.code}): {body}") from None
        after = float(e.headers.get("Retry-After") or 0)
        raise Retry(f"minting a ticket failed ({e.code}): {body}", after=after) from None
    except (urllib.error.URLError, OSError) as e:
        raise Retry(f"auth-service unreachable: {e}") from None


class Subscription:
    """One channel, and the position of the last message printed from it."""

    def __init__(self, channel: str):
        self.channel = channel
        self.epoch = None
        self.offset = None
        # Whether the current attempt got as far as a welcome frame.
        self.connected = False

    def subscribe_frame(self, request_id: int) -> dict:
        frame = {"action": "subscribe", "id": request_id, "channel": self.channel}
        if self.epoch is not None:
            frame["since"] = {"epoch": self.epoch, "offset": self.offset}
        return frame

    def delivered(self, frame: dict) -> None:
        if "epoch" in frame:
            self.epoch, self.offset = frame["epoch"], frame["offset"]


async def session(args, subscription: Subscription, received: list) -> None:
    """One connection, from minting its ticket to its end (always an exception)."""
    minted = mint_ticket(args.auth, args.key)
    ws_url = args.ws or minted["ws_url"]
    try:
        # The ticket travels as a subprotocol, so it never appears in a URL or access log.
        socket = await websockets.connect(
            ws_url, subprotocols=[f"ticket.{minted['ticket']}"], open_timeout=10
        )
    except websockets.InvalidStatus as e:
        status = e.response.status_code
        body = e.response.body.decode(errors="replace")
        if status == 403:
            raise Fatal(f"the node refused the connection ({status}): {body}") from None
        raise Retry(f"the node refused the connection ({status}): {body}", at_once=status == 401)
    except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as e:
        raise Retry(f"cannot connect to {ws_url}: {e}") from None
    async with socket:
        try:
            welcome = json.loads(await socket.recv())
            subscription.connected = True
            log(f"connected to {welcome.get('node')} as {welcome.get('user', {}).get('username')}")
            await socket.send(json.dumps(subscription.subscribe_frame(1)))
            while True:
                frame = await next_frame(socket, args.timeout)
                kind = frame.get("type")
                if frame.get("id") == 1:
                    if kind != "ack":
                        raise Fatal(f"subscribing failed: {json.dumps(frame)}")
                    subscribed = {"type": "subscribed", "channel": subscription.channel}
                    if "recovered" in frame:  # a resumption: did it miss nothing?
                        subscribed["recovered"] = frame["recovered"]
                    emit(subscribed)
                elif kind == "message" and frame.get("channel") == subscription.channel:
                    emit(frame)
                    subscription.delivered(frame)
                    received.append(frame)
                    if args.count and len(received) >= args.count:
                        return
                elif kind == "recovery":
                    # The gap could not be filled: the application must resync.
                    emit(frame)
        except websockets.ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            reason = e.rcvd.reason if e.rcvd else "connection lost"
            if code == REVOKED:
                raise Fatal(f"the credential was revoked or disconnected (4003: {reason})") from None
            raise Retry(f"connection closed ({code}: {reason})",
                        at_once=code in (GOING_AWAY, AUTH_FAILED)) from None


async def next_frame(socket, timeout: float) -> dict:
    if not timeout:
        return json.loads(await socket.recv())
    try:
        return json.loads(await asyncio.wait_for(socket.recv(), timeout=timeout))
    except asyncio.TimeoutError:
        raise Fatal(f"no message for {timeout:g} s (--timeout)") from None


async def run(args) -> int:
    subscription = Subscription(args.channel)
    received: list = []
    backoff = BACKOFF_MIN
    while True:
        try:
            await session(args, subscription, received)
            return 0
        except Fatal as e:
            log(str(e))
            return 1
        except Retry as e:
            if subscription.connected:
                # The last attempt got a connection: start the backoff afresh.
                subscription.connected = False
                backoff = BACKOFF_MIN
            # "At once" only for the first retry in a row, so that a node
            # refusing every attempt is not hammered.
            if e.at_once and backoff == BACKOFF_MIN:
                delay = 0.0
            else:
                delay = max(e.after, backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_MAX)
            log(f"{e}; reconnecting in {delay:.1f} s")
            await asyncio.sleep(delay)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--auth", default="http://127.0.0.1:8080", help="auth-service base URL")
    parser.add_argument("--key", required=True, help="API key with the connect scope")
    parser.add_argument("--channel", default="broadcast:news")
    parser.add_argument("--ws", help="override the ws_url the ticket answer carries")
    parser.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    parser.add_argument("--timeout", type=float, default=0,
                        help="give up if no frame arrives for this many seconds (0: wait for ever)")
    try:
        return asyncio.run(run(parser.parse_args()))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
