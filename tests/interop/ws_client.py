#!/usr/bin/env python3
"""A WebSocket client of fleetwire's live stream, written with the
`websockets` package (nothing shared with the server): connects to
`/api/ws?<query>`, prints every text message it receives as one line, and
ends after --count messages of --type (or after --seconds).

Used by tests/stream.rs; also handy by hand:
    python3 tests/interop/ws_client.py --url 'ws://127.0.0.1:9480/api/ws?device=7' --seconds 10
"""
import argparse
import asyncio
import json
import sys

import websockets


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--type", default="position", help="message type to count")
    ap.add_argument("--count", type=int, default=0, help="stop after this many of --type (0: no limit)")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--token", default="", help="sent as Authorization: Bearer")
    a = ap.parse_args()
    headers = {"Authorization": f"Bearer {a.token}"} if a.token else None
    seen = 0
    try:
        async with websockets.connect(a.url, additional_headers=headers, open_timeout=10) as ws:
            # Ready: the caller may start sending data.
            print(json.dumps({"type": "connected"}), flush=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + a.seconds
            while loop.time() < deadline:
                try:
                    text = await asyncio.wait_for(ws.recv(), timeout=max(0.01, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                print(text, flush=True)
                if json.loads(text).get("type") == a.type:
                    seen += 1
                    if a.count and seen >= a.count:
                        break
    except websockets.exceptions.InvalidStatus as e:
        print(json.dumps({"type": "refused", "status": e.response.status_code}), flush=True)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
