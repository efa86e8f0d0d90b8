#!/usr/bin/env python3
"""A public-API client, written against the documented HTTP API and wire protocol only.

API key -> ticket (POST /v1/tickets) -> WebSocket (ticket in the subprotocol)
-> subscribe -> print each message as one JSON line on stdout.

    python example_client.py --auth http://127.0.0.1:8080 --key "$KEY" \
        --channel broadcast:news --count 1
"""
import argparse
import asyncio
import json
import sys
import urllib.request

import websockets


def mint_ticket(auth_url: str, key: str) -> dict:
    request = urllib.request.Request(
        f"{auth_url}/v1/tickets",
        method="POST",
        headers={"Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


async def run(args) -> int:
    minted = mint_ticket(args.auth, args.key)
    ws_url = args.ws or minted["ws_url"]
    # The ticket travels as a subprotocol, so it never appears in a URL or access log.
    async with websockets.connect(
        ws_url, subprotocols=[f"ticket.{minted['ticket']}"], open_timeout=10
    ) as socket:
        welcome = json.loads(await socket.recv())
        assert welcome["type"] == "welcome", welcome
        await socket.send(json.dumps({"action": "subscribe", "id": 1, "channel": args.channel}))
        while True:
            frame = json.loads(await socket.recv())
            if frame.get("id") == 1:
                if frame["type"] != "ack":
                    print(json.dumps(frame), file=sys.stderr)
                    return 1
                break
        print(json.dumps({"type": "subscribed", "channel": args.channel}), flush=True)
        received = 0
        while args.count == 0 or received < args.count:
            frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=args.timeout))
            if frame["type"] == "message":
                print(json.dumps(frame), flush=True)
                received += 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--auth", default="http://127.0.0.1:8080", help="auth-service base URL")
    parser.add_argument("--key", required=True, help="API key with the connect scope")
    parser.add_argument("--channel", default="broadcast:news")
    parser.add_argument("--ws", help="override the ws_url the ticket answer carries")
    parser.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each message")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
