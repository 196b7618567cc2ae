#!/usr/bin/env python3
"""An independent QUIC peer for the interop test: aioquic (a Python QUIC
implementation, nothing shared with quinn) sends frames built with the
independent Python codec (proto/python/fleetwire_wire.py, written from
PROTOCOL.md) to a fleetwire server.

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
sys.path.insert(0, os.path.join(HERE, "..", "..", "proto", "python"))

import fleetwire_wire as fw  # noqa: E402
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


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--device", type=int, default=31337)
    ap.add_argument("--datagrams", type=int, default=100)
    ap.add_argument("--stream-frames", type=int, default=50)
    a = ap.parse_args()

    config = QuicConfiguration(is_client=True, alpn_protocols=["fleetwire/1"], max_datagram_frame_size=65536)
    config.load_verify_locations(a.ca)
    config.server_name = "localhost"
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
