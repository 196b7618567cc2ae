#!/usr/bin/env python3
"""An independent QUIC peer for the interop test: aioquic (a Python QUIC
implementation, nothing shared with quinn) sends frames built with the
independent Python codec (the `fleetwire` package of sdk/python, written
from PROTOCOL.md) to a fleetwire server.

It opens one connection with ALPN fleetwire/1, verifies the server against
--ca, sends --datagrams Position frames as QUIC DATAGRAM frames (RFC 9221)
and --stream-frames Monitoring frames on one unidirectional stream (u16
big-endian length prefixes, PROTOCOL.md section 8), waits until the server
has acknowledged everything, and prints a JSON summary.
"""
import argparse
import asyncio
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "sdk", "python", "src"))

from fleetwire import wire as fw  # noqa: E402
from aioquic.asyncio import connect  # noqa: E402
from aioquic.quic.configuration import QuicConfiguration  # noqa: E402


def position(device, seq, i):
    return {
        "device_id": device, "sequence": seq, "timestamp_ms": int(time.time() * 1000), "kind": "position",
        "position": {"lat_e7": 481372000 + i * 100, "lon_e7": 115755000, "alt_dm": 5190, "speed_cm_s": 1000,
                     "heading_ddeg": 900, "hacc_cm": 300, "fix": "3d", "satellites": 8},
    }


def monitoring(device, seq, i):
    return {
        "device_id": device, "sequence": seq, "timestamp_ms": int(time.time() * 1000), "kind": "monitoring",
        "monitoring": {"battery_pct": 90, "supply_mv": 12000, "temperature_cdeg": 2150, "rssi_dbm": -70,
                       "uptime_s": i, "readings": [{"name": "interop", "value": float(i)}]},
    }


async def refused(a, config):
    """Connects offering a wrong or no ALPN and reports how the server refused."""
    try:
        async with connect(a.host, a.port, configuration=config, wait_connected=True) as client:
            # The handshake completed: the server must close the connection.
            try:
                await asyncio.wait_for(client.wait_closed(), timeout=5)
            except asyncio.TimeoutError:
                return {"refused": False, "reason": "connection stayed open"}
            ev = client._quic._close_event
            return {"refused": True, "during": "after handshake",
                    "error_code": getattr(ev, "error_code", None),
                    "reason": getattr(ev, "reason_phrase", "")}
    except ConnectionError as e:
        return {"refused": True, "during": "handshake", "reason": str(e)}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--device", type=int, default=31337)
    ap.add_argument("--datagrams", type=int, default=100)
    ap.add_argument("--stream-frames", type=int, default=50)
    ap.add_argument("--alpn", default="fleetwire/1",
                    help="the ALPN to offer ('none': offer none); anything but fleetwire/1 must be refused")
    a = ap.parse_args()

    alpn_protocols = None if a.alpn == "none" else [a.alpn]
    config = QuicConfiguration(is_client=True, alpn_protocols=alpn_protocols, max_datagram_frame_size=65536)
    config.load_verify_locations(a.ca)
    config.server_name = "localhost"
    if a.alpn != "fleetwire/1":
        print(json.dumps(await refused(a, config)))
        return
    sent_datagrams = 0
    async with connect(a.host, a.port, configuration=config) as client:
        quic = client._quic
        alpn = quic.tls.alpn_negotiated
        seq = 0
        for i in range(a.datagrams):
            quic.send_datagram_frame(fw.encode(position(a.device, seq, i)))
            seq += 1
            sent_datagrams += 1
            if i % 16 == 15:
                client.transmit()
                await asyncio.sleep(0.002)
        client.transmit()
        sid = quic.get_next_available_stream_id(is_unidirectional=True)
        payload = b""
        for i in range(a.stream_frames):
            frame = fw.encode(monitoring(a.device, seq, i))
            payload += len(frame).to_bytes(2, "big") + frame
            seq += 1
        quic.send_stream_data(sid, payload, end_stream=True)
        client.transmit()
        # Wait until nothing is left unacknowledged (or 5 s).
        deadline = time.time() + 5
        while time.time() < deadline:
            await asyncio.sleep(0.05)
            space = quic._loss.spaces[-1] if hasattr(quic, "_loss") else None
            if space is not None and not space.sent_packets:
                break
        await asyncio.sleep(0.2)
    print(json.dumps({"alpn": alpn, "datagrams": sent_datagrams, "stream_frames": a.stream_frames}))


if __name__ == "__main__":
    asyncio.run(main())
