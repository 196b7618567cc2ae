"""PROTOCOL.md section 8 (QUIC) against the live server, with aioquic as an
independent QUIC peer: ALPN, transport parameters, the largest frame one
DATAGRAM frame carries at 1200-byte packets, streams, tickets, client
certificates.

aioquic is a test-only dependency (scripts/setup.sh installs it); the SDK
itself has no QUIC.
"""

import asyncio
import os
import ssl
import subprocess

import pytest

import fleetwire
from fleetwire import wire
from server import BIN, Server

aioquic = pytest.importorskip("aioquic", reason="aioquic is not installed (scripts/setup.sh)")
from aioquic.asyncio import QuicConnectionProtocol, connect  # noqa: E402
from aioquic.quic.configuration import QuicConfiguration  # noqa: E402
from aioquic.quic.events import ConnectionTerminated  # noqa: E402

if not os.path.exists(BIN):
    pytest.skip(f"no server binary at {BIN} (build it with `cargo build --bin fleetwire` "
                "or set FLEETWIRE_BIN)", allow_module_level=True)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data", quic=True)
    yield s
    s.stop()


def config(server, alpn=("fleetwire/1",), **kw):
    c = QuicConfiguration(is_client=True, alpn_protocols=list(alpn) if alpn else None,
                          max_datagram_frame_size=65536, **kw)
    c.load_verify_locations(os.path.join(server.data_dir, "dev-cert.pem"))
    c.server_name = "localhost"
    return c


def addr(server):
    host, port = server.quic.rsplit(":", 1)
    return host, int(port)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def frame_of_length(n, device, seq):
    """A valid Batch frame of exactly n bytes (31 <= n <= 1200): events at
    offset 0, code 1, whose texts pad the frame. A sample is 5 bytes without
    text (offset, kind, code, severity, option tag) and 6 + k with a text of
    k <= 64 bytes."""
    rest = n - 25 - 1  # header + CRC, sample count
    sizes = []
    while rest > 75:
        sizes.append(70)
        rest -= 70
    if rest > 70:
        sizes += [5, rest - 5]
    else:
        sizes.append(rest)
    assert all(s == 5 or 6 <= s <= 70 for s in sizes), sizes
    samples = [fleetwire.sample(0, "event", fleetwire.event(1, text=None if s == 5 else "t" * (s - 6)))
               for s in sizes]
    frame = {"device_id": device, "sequence": seq, "timestamp_ms": fleetwire.now_ms(),
             "kind": "batch", "batch": samples}
    d = wire.encode(frame)
    assert len(d) == n, (n, len(d))
    return d


def accepted_quic(server):
    return server.metric("fleetwire_datagrams_accepted_total", transport="quic")


def test_frame_of_length_helper():
    for n in (60, 1162, 1170, 1171, 1200):
        d = frame_of_length(n, 1, 0)
        assert len(d) == n
        wire.decode(d)


def test_transport_parameters(server):
    async def main():
        async with connect(*addr(server), configuration=config(server)) as c:
            q = c._quic
            return {
                "alpn": q.tls.alpn_negotiated,
                "idle": q._remote_max_idle_timeout,
                "bidi": q._remote_max_streams_bidi,
                "uni": q._remote_max_streams_uni,
                "stream_window": q._remote_max_stream_data_uni,
                "conn_window": q._remote_max_data,
                "datagram": q._remote_max_datagram_frame_size,
                "cid_len": len(q._peer_cid.cid),
            }
    got = run(main())
    assert got == {"alpn": "fleetwire/1", "idle": 60.0, "bidi": 0, "uni": 4,
                   "stream_window": 32 * 1024, "conn_window": 64 * 1024,
                   "datagram": 65535, "cid_len": 8}, got


class Recorder(QuicConnectionProtocol):
    """Keeps the ConnectionTerminated event (the peer's close reason)."""
    closed = None

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            self.closed = event
        super().quic_event_received(event)


@pytest.mark.parametrize("alpn", [("h3",), None], ids=["other", "none"])
def test_other_or_no_alpn_is_refused(server, alpn):
    protocols = []

    def make(*a, **kw):
        protocols.append(Recorder(*a, **kw))
        return protocols[-1]

    async def main():
        async with connect(*addr(server), configuration=config(server, alpn=alpn),
                           create_protocol=make):
            pass
    with pytest.raises(ConnectionError):
        run(main())
    closed = protocols[0].closed
    # CRYPTO_ERROR 0x100 + TLS alert 120 (no_application_protocol).
    assert closed is not None and closed.error_code == 0x178, closed


def test_largest_datagram_at_1200_byte_packets(server):
    """aioquic sends packets of at most 1200 bytes by default."""
    fits, too_long = frame_of_length(1170, 70, 0), frame_of_length(1171, 71, 0)
    stream_frame = frame_of_length(1200, 72, 0)

    async def main():
        async with connect(*addr(server), configuration=config(server)) as c:
            q = c._quic
            assert q._max_datagram_size == 1200
            q.send_datagram_frame(fits)
            c.transmit()
            server.wait_for("the 1170-byte frame", lambda: accepted_quic(server) >= 1)
            q.send_datagram_frame(too_long)
            c.transmit()
            await asyncio.sleep(0.5)
            c.transmit()
            pending = [len(d) for d in q._datagrams_pending]
            # The 1200-byte frame on a unidirectional stream.
            sid = q.get_next_available_stream_id(is_unidirectional=True)
            q.send_stream_data(sid, len(stream_frame).to_bytes(2, "big") + stream_frame,
                               end_stream=True)
            c.transmit()
            server.wait_for("the 1200-byte stream frame", lambda: accepted_quic(server) >= 2)
            return pending
    pending = run(main())
    assert pending == [1171]
    assert accepted_quic(server) == 2
    assert server.get("/api/devices/70") is not None
    assert server.get("/api/devices/71") is None
    assert server.get("/api/devices/72") is not None


def test_bidirectional_stream_closes_the_connection(server):
    async def main():
        async with connect(*addr(server), configuration=config(server)) as c:
            q = c._quic
            # aioquic respects the limit of 0 and would never send: act as
            # a client that ignores it.
            assert q._remote_max_streams_bidi == 0
            q._remote_max_streams_bidi = 1
            sid = q.get_next_available_stream_id(is_unidirectional=False)
            q.send_stream_data(sid, b"hello", end_stream=False)
            c.transmit()
            for _ in range(100):
                await asyncio.sleep(0.05)
                if q._close_event is not None:
                    return q._close_event
            return None
    ev = run(main())
    assert isinstance(ev, ConnectionTerminated), ev
    assert ev.error_code == 0x4, ev  # STREAM_LIMIT_ERROR


def test_tickets_are_issued_without_early_data(server):
    tickets = []

    async def main():
        async with connect(*addr(server), configuration=config(server),
                           session_ticket_handler=tickets.append) as c:
            await c.ping()
            await asyncio.sleep(0.2)
    run(main())
    assert tickets, "no session ticket"
    # No early_data extension: the ticket allows no 0-RTT.
    assert all(t.max_early_data_size in (None, 0) for t in tickets), \
        [t.max_early_data_size for t in tickets]

    async def resume():
        c = config(server)
        c.session_ticket = tickets[-1]
        async with connect(*addr(server), configuration=c) as conn:
            return conn._quic.tls.session_resumed, conn._quic.tls.early_data_accepted
    assert run(resume()) == (True, False)


def make_certs(base):
    """Two CAs made by `fleetwire certs`: the server trusts the first; each
    has a certificate for device 500."""
    dirs = []
    for name in ("trusted", "other"):
        d = str(base / name)
        for args in (["init", "--dir", d], ["device", "--dir", d, "500"]):
            subprocess.run([BIN, "certs", *args], check=True, capture_output=True, timeout=60)
        dirs.append(d)
    return dirs


def send_signed_in(server, cert_dir, frames):
    """Connects with the device-500 certificate of cert_dir, sends frames as
    DATAGRAM frames, waits a moment; returns (handshake finished, close
    event or None)."""
    protocols = []

    def make(*a, **kw):
        protocols.append(Recorder(*a, **kw))
        return protocols[-1]

    c = config(server)
    c.load_verify_locations(os.path.join(cert_dir, "..", "trusted", "ca.pem"))
    c.load_cert_chain(os.path.join(cert_dir, "device-500.pem"),
                      os.path.join(cert_dir, "device-500.key"))

    async def main():
        async with connect(*addr(server), configuration=c, create_protocol=make) as conn:
            for f in frames:
                conn._quic.send_datagram_frame(f)
            conn.transmit()
            for _ in range(40):
                await asyncio.sleep(0.05)
                if protocols[0].closed is not None:
                    break
            # Before our own close at the end of the block.
            return True, protocols[0].closed
    return run(main())


def test_client_certificates(tmp_path):
    trusted, other = make_certs(tmp_path)
    s = Server(tmp_path / "data", "--client-auth", "required", "--quic-cert",
               os.path.join(trusted, "server.pem"), "--quic-key",
               os.path.join(trusted, "server.key"), "--quic-client-ca",
               os.path.join(trusted, "ca.pem"), quic=True)
    try:
        frames = [frame_of_length(60, 500, 0), frame_of_length(60, 501, 0)]
        # A certificate of the trusted CA naming device 500: its frames are
        # accepted, another device id is identity_mismatch.
        finished, closed = send_signed_in(s, trusted, frames)
        assert finished and closed is None, closed
        s.wait_for("two QUIC datagrams", lambda: s.metric(
            "fleetwire_datagrams_received_total", transport="quic") >= 2)
        assert accepted_quic(s) == 1
        assert s.metric("fleetwire_datagrams_rejected_total", transport="quic",
                        reason="identity_mismatch") == 1
        # A certificate of another CA: the client's handshake finishes, then
        # the server closes the connection (0x100 + TLS alert 48, unknown_ca)
        # and nothing sent on it is taken.
        finished, closed = send_signed_in(s, other, [frame_of_length(60, 500, 1)])
        assert finished
        assert closed is not None and closed.error_code == 0x130, closed
        assert s.metric("fleetwire_datagrams_received_total", transport="quic") == 2
        assert s.metric("fleetwire_quic_handshake_failures_total") >= 1
    finally:
        s.stop()
