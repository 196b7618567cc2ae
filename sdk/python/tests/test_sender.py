"""UdpSender and the record helpers, against a UDP socket on loopback."""

import os
import socket
import warnings

import pytest

import fleetwire
from fleetwire import UdpSender, wire

KEY = b"fleetwire-test-key-device-0042!!"


@pytest.fixture
def receiver():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    yield s
    s.close()


def target(sock):
    host, port = sock.getsockname()
    return f"{host}:{port}"


def recv(sock, n):
    return [sock.recvfrom(2048)[0] for _ in range(n)]


def test_one_counter_per_device_for_every_kind(receiver):
    with UdpSender(target(receiver)) as s:
        sent = [
            s.hello(7, firmware="1.0", model="m", capabilities=0b11),
            s.position(7, 48.1372, 11.5755),
            s.position(8, -33.9, 151.2),
            s.monitoring(7, battery=50, readings={"x": 1.5}),
            s.event(7, 1001, "warning", "door open"),
            s.batch(7, [fleetwire.sample(1000, "position", fleetwire.position(1.0, 2.0)),
                        fleetwire.sample(0, "event", fleetwire.event(5))]),
        ]
        assert s.next_sequence(7) == 5 and s.next_sequence(8) == 1
    got = recv(receiver, len(sent))
    assert got == sent
    frames = [wire.decode(d) for d in got]
    assert [(f["device_id"], f["sequence"], f["kind"]) for f in frames] == [
        (7, 0, "hello"), (7, 1, "position"), (8, 0, "position"), (7, 2, "monitoring"),
        (7, 3, "event"), (7, 4, "batch")]
    assert all(f["auth"] is False for f in frames)
    assert frames[3]["monitoring"]["readings"] == [{"name": "x", "value": 1.5}]
    assert frames[4]["event"] == {"code": 1001, "severity": "warning", "text": "door open"}
    assert [x["kind"] for x in frames[5]["batch"]] == ["position", "event"]
    assert frames[5]["batch"][0]["offset_ms"] == 1000


def test_signed_frames_verify_with_the_key_only(receiver):
    with UdpSender(target(receiver), keys={42: KEY.hex()}, start={42: 100}) as s:
        s.position(42, 1.0, 2.0)
        s.position(43, 1.0, 2.0)  # no key: unsigned
    signed, unsigned = recv(receiver, 2)
    f = wire.decode(signed)
    assert (f["auth"], f["sequence"]) == (True, 100)
    assert len(signed) == len(unsigned) + 16
    wire.verify(signed, KEY)
    with pytest.raises(wire.DecodeError) as e:
        wire.verify(signed, KEY[:-1])
    assert e.value.label == "bad_auth_tag"
    assert wire.decode(unsigned)["auth"] is False


def test_counter_wraps_and_resend_keeps_the_number(receiver):
    with UdpSender(target(receiver), start={5: wire.U32_MAX}) as s:
        a = s.event(5, 1)
        s.resend(a)
        b = s.event(5, 2)
    got = recv(receiver, 3)
    assert got == [a, a, b]
    assert [wire.decode(d)["sequence"] for d in got] == [wire.U32_MAX, wire.U32_MAX, 0]


def test_state_dir_counts_on_across_senders(receiver, tmp_path):
    with UdpSender(target(receiver), keys={9: KEY}, state_dir=tmp_path) as s:
        for _ in range(3):
            s.event(9, 1)
    assert (tmp_path / "seq-9").read_text() == "3"
    with UdpSender(target(receiver), keys={9: KEY}, state_dir=tmp_path) as s:
        s.event(9, 1)
    seqs = [wire.decode(d)["sequence"] for d in recv(receiver, 4)]
    assert seqs == [0, 1, 2, 3]
    assert (tmp_path / "seq-9").read_text() == "4"
    assert not [p for p in os.listdir(tmp_path) if p != "seq-9"]


def test_signing_without_saved_counter_warns(receiver):
    with UdpSender(target(receiver), keys={9: KEY}) as s:
        with pytest.warns(RuntimeWarning, match="replay"):
            s.event(9, 1)
    with UdpSender(target(receiver)) as s, warnings.catch_warnings():
        warnings.simplefilter("error")
        s.event(9, 1)  # unsigned: no warning


def test_timestamp_default_is_now_and_zero_means_no_clock(receiver):
    before = fleetwire.now_ms()
    with UdpSender(target(receiver)) as s:
        s.event(3, 1)
        s.event(3, 1, timestamp_ms=0)
    after = fleetwire.now_ms()
    a, b = [wire.decode(d)["timestamp_ms"] for d in recv(receiver, 2)]
    assert before <= a <= after
    assert b == 0


def test_record_helpers_convert_units():
    p = fleetwire.position(48.1372, -11.5755, alt=519.04, speed=13.89, heading=-89.96,
                           hacc=2.5, fix="rtk_fixed", satellites=11)
    assert p == {"lat_e7": 481372000, "lon_e7": -115755000, "alt_dm": 5190,
                 "speed_cm_s": 1389, "heading_ddeg": 2700, "hacc_cm": 250,
                 "fix": "rtk_fixed", "satellites": 11}
    assert fleetwire.position(0, 0, heading=359.96)["heading_ddeg"] == 0
    assert fleetwire.position(0, 0, heading=720.5)["heading_ddeg"] == 5
    with pytest.raises(ValueError):
        fleetwire.position(0, 0, speed=655.36)
    m = fleetwire.monitoring(supply=12.45, temperature=-12.5, readings=[("b", 2), ("a", 1)])
    assert m == {"battery_pct": None, "supply_mv": 12450, "temperature_cdeg": -1250,
                 "rssi_dbm": None, "uptime_s": None,
                 "readings": [{"name": "b", "value": 2.0}, {"name": "a", "value": 1.0}]}


def test_invalid_records_are_refused_before_sending(receiver):
    with UdpSender(target(receiver)) as s:
        with pytest.raises(ValueError):
            s.position(1, 90.0000001, 0)  # latitude beyond the pole
        with pytest.raises(ValueError):
            s.event(1, 1, text="x" * 65)
        with pytest.raises(ValueError):
            s.monitoring(1, readings={"1st": 1.0})
        # Nothing was sent and no number was used.
        assert s.sent == 0 and s.next_sequence(1) == 0
        with pytest.raises(ValueError):
            s.batch(1, [fleetwire.sample(0, "event", fleetwire.event(i)) for i in range(129)])
    receiver.settimeout(0.2)
    with pytest.raises(socket.timeout):
        receiver.recvfrom(2048)


def test_largest_batch_fits_and_too_large_is_refused(receiver):
    with UdpSender(target(receiver)) as s:
        samples = [fleetwire.sample(i, "event", fleetwire.event(i, text="t" * 4))
                   for i in range(128)]
        with pytest.raises(wire.EncodeError, match="1200"):
            s.batch(1, samples)
        d = s.batch(1, samples[:100])
    assert len(d) <= wire.MAX_LEN
    assert recv(receiver, 1) == [d]
