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

With --restart it is a device that stays connected while the server
crashes and restarts: it sends a Position frame every --interval seconds on
one connection and prints a JSON line per event as it happens
({"event": "connected"}, then {"event": "reset"} when the restarted server
answers with a stateless reset, or {"event": "no_reset"} after --wait
seconds), then connects again, as a device should, sends --after frames on
the new connection and prints {"event": "reconnected"}. aioquic does not
detect stateless resets itself (a reset is a packet it cannot decrypt,
which it drops, so the dead connection stays open until its idle timeout):
ResetAware does what RFC 9000 section 10.3.1 asks of an endpoint.
"""
import argparse
import asyncio
import hmac
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "sdk", "python", "src"))

from fleetwire import wire as fw  # noqa: E402
from aioquic.asyncio import connect  # noqa: E402
from aioquic.asyncio.protocol import QuicConnectionProtocol  # noqa: E402
from aioquic.quic import events  # noqa: E402
from aioquic.quic.configuration import QuicConfiguration  # noqa: E402
from aioquic.quic.packet import QuicErrorCode  # noqa: E402


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


class ResetAware(QuicConnectionProtocol):
    """A client connection that detects stateless resets (RFC 9000 section
    10.3.1): a datagram of at least 21 bytes with a short header whose last
    16 bytes are the stateless reset token the server gave with one of its
    connection ids (in its transport parameters or a NEW_CONNECTION_ID frame)
    ends the connection at once, and nothing more is sent on it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reset = asyncio.Event()

    def _tokens(self):
        quic = self._quic
        cids = [quic._peer_cid] + list(quic._peer_cid_available)
        return [c.stateless_reset_token for c in cids if c.stateless_reset_token]

    def datagram_received(self, data, addr):
        if len(data) >= 21 and not data[0] & 0x80 and any(
            hmac.compare_digest(data[-16:], t) for t in self._tokens()
        ):
            quic = self._quic
            quic._close_event = events.ConnectionTerminated(
                error_code=QuicErrorCode.NO_ERROR, frame_type=None, reason_phrase="stateless reset"
            )
            quic._close_end()  # TERMINATED: no packet is sent any more
            self._process_events()
            self.transmit()  # only clears the timer
            self.reset.set()
            return
        super().datagram_received(data, addr)


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


async def restart(a, config):
    """Stays connected through a server restart: see the module doc."""
    seq = 0
    async with connect(a.host, a.port, configuration=config, create_protocol=ResetAware) as client:
        emit("connected")
        deadline = time.monotonic() + a.wait
        while not client.reset.is_set() and time.monotonic() < deadline:
            client._quic.send_datagram_frame(fw.encode(position(a.device, seq, seq)))
            seq += 1
            client.transmit()
            try:
                await asyncio.wait_for(client.reset.wait(), timeout=a.interval)
            except asyncio.TimeoutError:
                pass
        if not client.reset.is_set():
            emit("no_reset", waited_s=a.wait, sent=seq)
            return
        emit("reset", sent=seq)
    async with connect(a.host, a.port, configuration=config) as client:
        for _ in range(a.after):
            client._quic.send_datagram_frame(fw.encode(position(a.device, seq, seq)))
            seq += 1
        client.transmit()
        # Acknowledged after the datagrams sent before it arrived.
        await asyncio.wait_for(client.ping(), timeout=5)
        emit("reconnected", datagrams=a.after)


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
    ap.add_argument("--restart", action="store_true",
                    help="stay connected through a server restart (see the module doc)")
    ap.add_argument("--interval", type=float, default=0.2, help="--restart: seconds between frames")
    ap.add_argument("--wait", type=float, default=10.0, help="--restart: longest wait for a reset, seconds")
    ap.add_argument("--after", type=int, default=10, help="--restart: frames sent after reconnecting")
    a = ap.parse_args()

    alpn_protocols = None if a.alpn == "none" else [a.alpn]
    config = QuicConfiguration(is_client=True, alpn_protocols=alpn_protocols, max_datagram_frame_size=65536)
    config.load_verify_locations(a.ca)
    config.server_name = "localhost"
    if a.alpn != "fleetwire/1":
        print(json.dumps(await refused(a, config)))
        return
    if a.restart:
        await restart(a, config)
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
