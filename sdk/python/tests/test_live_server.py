"""UdpSender against the real server: what was sent is exactly what
/api/summary and /api/devices/<id> show, signed and unsigned, and the
sequence and replay rules of PROTOCOL.md sections 2.1, 6 and 7.2 hold.

Skipped only when the server binary ($FLEETWIRE_BIN, default
target/debug/fleetwire) does not exist.
"""

import os

import pytest

import fleetwire
from fleetwire import UdpSender, wire
from conftest import SDK
from server import BIN, Server

if not os.path.exists(BIN):
    pytest.skip(f"no server binary at {BIN} (build it with `cargo build --bin fleetwire` "
                "or set FLEETWIRE_BIN)", allow_module_level=True)

KEY_A = bytes(range(32))
KEY_B = b"another device key, 32 bytes!!!!"


@pytest.fixture
def plain(tmp_path):
    s = Server(tmp_path / "data")
    yield s
    s.stop()


@pytest.fixture
def signed(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# device keys\n101 {KEY_A.hex()}\n102 {KEY_B.hex()}\n")
    s = Server(tmp_path / "data", "--udp-auth", "required", "--keys-file", str(keys))
    yield s
    s.stop()


def udp_totals(server):
    return server.get("/api/summary")["datagrams"]["udp"]


def wait_received(server, n):
    """Waits until the server has taken n UDP datagrams through its checks."""
    return server.wait_for(f"{n} UDP datagrams", lambda: udp_totals(server)["received"] >= n
                           and udp_totals(server))


def e7(degrees):
    """Degrees as shown by the API, back in the wire's 1e-7 degree units."""
    return round(degrees * 1e7)


def rejected(server, reason):
    return server.metric("fleetwire_datagrams_rejected_total", transport="udp", reason=reason)


def test_unsigned_frames_show_up_exactly(plain):
    t0 = fleetwire.now_ms()
    with UdpSender(plain.udp) as s:
        s.hello(42, firmware="1.4.2", model="FW-T1000", capabilities=0b1111)
        s.position(42, 48.1372, 11.5755, alt=519.0, speed=13.89, heading=270.5, hacc=2.5,
                   fix="3d", satellites=11, timestamp_ms=t0)
        s.monitoring(42, battery=87, supply=12.45, temperature=-12.5, rssi=-71, uptime=86400,
                     readings={"engine_rpm": 2150.0, "fuel_level": 0.625}, timestamp_ms=t0 + 1)
        s.event(42, 1001, "warning", "door open", timestamp_ms=t0 + 2)
        s.batch(42, [
            fleetwire.sample(1000, "position", fleetwire.position(48.1373, 11.5756, satellites=9)),
            fleetwire.sample(0, "monitoring", fleetwire.monitoring(readings={"temp_cargo": 4.25})),
        ], timestamp_ms=t0 + 3000)
        s.position(7, -33.8688, 151.2093, fix="2d", satellites=5, timestamp_ms=t0)
    totals = wait_received(plain, 6)
    assert totals == {"received": 6, "accepted": 6, "rejected": 0}

    summary = plain.get("/api/summary")
    assert summary["devices"] == 2
    assert summary["records"] == {"hello": 1, "position": 3, "monitoring": 2, "event": 1}
    assert summary["batches"] == 1
    assert (summary["lost"], summary["duplicates"], summary["late"], summary["restarts"]) == (
        0, 0, 0, 0)
    assert all(v == 0 for v in summary["filtered"].values()), summary["filtered"]

    d = plain.get("/api/devices/42")
    assert d["info"] == {"firmware": "1.4.2", "model": "FW-T1000", "capabilities": 15}
    # The batch's position (taken at t0 + 2000) is the newest fix.
    p = d["position"]
    assert (e7(p["latitude"]), e7(p["longitude"]), p["satellites"], p["fix"], p["time_ms"]) == (
        481373000, 115756000, 9, "3d", t0 + 2000)
    h = d["health"]
    assert (h["battery_pct"], h["supply_mv"], h["temperature_c"], h["rssi_dbm"],
            h["uptime_s"]) == (87, 12450, -12.5, -71, 86400)
    # The batch's monitoring sample (offset 0, no health field) is the newest.
    assert h["time_ms"] == t0 + 3000
    assert d["last_event"] == {"code": 1001, "severity": "warning", "time_ms": t0 + 2}
    readings = {r["name"]: r["stats"] for r in d["readings"]}
    assert set(readings) == {"engine_rpm", "fuel_level", "temp_cargo"}
    assert (readings["engine_rpm"]["last"], readings["engine_rpm"]["count"]) == (2150.0, 1)
    assert readings["fuel_level"]["last"] == 0.625
    assert readings["temp_cargo"]["last"] == 4.25
    assert d["counts"] == {"hellos": 1, "positions": 2, "monitoring": 2, "events": 1,
                           "filtered": 0, "readings_dropped": 0}
    seq = d["sequence"]
    assert (seq["received"], seq["highest"], seq["lost"], seq["duplicates"]) == (5, 4, 0, 0)

    d7 = plain.get("/api/devices/7")
    p = d7["position"]
    assert (e7(p["latitude"]), e7(p["longitude"]), p["fix"], p["satellites"], p["time_ms"]) == (
        -338688000, 1512093000, "2d", 5, t0)
    assert d7["sequence"]["highest"] == 0
    assert plain.get("/api/devices/8") is None


def test_first_position_of_the_readme(plain):
    """The Python block of sdk/python/README.md, "Send your first position",
    run as written (only the server's port differs)."""
    with open(os.path.join(SDK, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    block = readme.split("## Send your first position", 1)[1].split("```python\n", 1)[1]
    block = block.split("```", 1)[0]
    assert "127.0.0.1:4480" in block and len(block.splitlines()) <= 10
    exec(compile(block.replace("127.0.0.1:4480", plain.udp), "README.md", "exec"), {})
    wait_received(plain, 2)
    d = plain.get("/api/devices/42")
    assert d["info"]["model"] == "demo"
    p = d["position"]
    assert (e7(p["latitude"]), e7(p["longitude"]), round(p["speed_m_s"] * 100),
            round(p["heading_deg"] * 10), round(p["hacc_m"] * 100)) == (
        481372000, 115755000, 1390, 2700, 300)


def test_retransmission_and_the_65_number_window_unsigned(plain):
    """Section 2.1: a copy is a duplicate (accepted, records dropped);
    the window is h - 64 ..= h; older numbers are late (records taken)."""
    t0 = fleetwire.now_ms()
    with UdpSender(plain.udp, start={5: 100}) as s:
        a = s.event(5, 1, timestamp_ms=t0)            # 100
        s.resend(a)                                    # copy: duplicate
        s.set_sequence(5, 165)
        s.event(5, 2, timestamp_ms=t0 + 1)            # 165 = 100 + 65: 64 skipped
        s.set_sequence(5, 101)
        s.event(5, 3, timestamp_ms=t0 + 2)            # 101 = 165 - 64: reordered
        s.resend(a)                                    # 100 = 165 - 65: late now
    wait_received(plain, 5)
    assert udp_totals(plain) == {"received": 5, "accepted": 5, "rejected": 0}
    d = plain.get("/api/devices/5")
    seq = d["sequence"]
    assert (seq["highest"], seq["duplicates"], seq["reordered"], seq["late"],
            seq["received"], seq["lost"]) == (165, 1, 1, 1, 3, 63)
    # The duplicate's event was dropped, the late copy's was taken.
    assert d["counts"]["events"] == 4


def test_lost_hello_and_how_a_device_avoids_it(plain):
    """Section 2.1, "After a reboot": frames of the new boot that land in
    the old window are dropped as duplicates; a Hello, or a counter that
    continues + 131072, restarts the accounting."""
    t0 = fleetwire.now_ms()
    with UdpSender(plain.udp) as s:
        for i in range(10):                            # boot 1: 0 ..= 9
            s.event(11, i, timestamp_ms=t0 + i)
            s.event(12, i, timestamp_ms=t0 + i)
            s.event(13, i, timestamp_ms=t0 + i)
        # Reboot, counters back to 0. Device 11's Hello is lost (not sent).
        s.set_sequence(11, 1)
        s.set_sequence(12, 0)
        s.set_sequence(13, 9 + 131072)
        for i in range(3):
            s.event(11, 100 + i, timestamp_ms=t0 + 100 + i)   # 1, 2, 3: seen before
        s.hello(12, firmware="2")                              # 0: restart
        for i in range(3):
            s.event(12, 100 + i, timestamp_ms=t0 + 100 + i)   # 1, 2, 3
            s.event(13, 100 + i, timestamp_ms=t0 + 100 + i)   # a jump of 131073: restart
    wait_received(plain, 30 + 3 + 1 + 6)
    d11, d12, d13 = (plain.get(f"/api/devices/{i}") for i in (11, 12, 13))
    assert (d11["sequence"]["duplicates"], d11["counts"]["events"],
            d11["sequence"]["restarts"]) == (3, 10, 0)
    assert (d12["sequence"]["duplicates"], d12["counts"]["events"],
            d12["sequence"]["restarts"], d12["sequence"]["highest"]) == (0, 13, 1, 3)
    assert (d13["sequence"]["duplicates"], d13["counts"]["events"],
            d13["sequence"]["restarts"], d13["sequence"]["lost"]) == (0, 13, 1, 0)


def test_hello_copies_back_to_back_and_a_late_copy(plain):
    """Section 2.1, way 3: a Hello sent three times back to back restarts
    the accounting once (copies are duplicates); a copy sent after other
    frames is taken as another reboot."""
    t0 = fleetwire.now_ms()
    with UdpSender(plain.udp) as s:
        for i in range(10):
            s.event(14, i, timestamp_ms=t0 + i)
        s.set_sequence(14, 0)                          # reboot
        h = s.hello(14, firmware="2")
        s.resend(h)
        s.resend(h)
        for i in range(3):
            s.event(14, 100 + i, timestamp_ms=t0 + 100 + i)
        s.hello(15)                                    # a new device: its first frame
        s.event(15, 1)
        s.event(15, 2)
        s.set_sequence(15, 0)
        s.resend(s.encode(15, "hello", fleetwire.hello()))  # a Hello numbered 0 again
    wait_received(plain, 10 + 3 + 3 + 4)
    seq14 = plain.get("/api/devices/14")["sequence"]
    assert (seq14["restarts"], seq14["duplicates"], seq14["highest"], seq14["lost"]) == (
        1, 2, 3, 0)
    assert plain.get("/api/devices/14")["counts"]["events"] == 13
    seq15 = plain.get("/api/devices/15")["sequence"]
    assert (seq15["restarts"], seq15["highest"]) == (1, 0)


def test_optional_auth(tmp_path):
    """Section 6, udp_auth = "optional": a device with a key must sign; one
    without may send unsigned, and its tags are not checked."""
    keys = tmp_path / "keys"
    keys.write_text(f"101 {KEY_A.hex()}\n")
    srv = Server(tmp_path / "data", "--udp-auth", "optional", "--keys-file", str(keys))
    try:
        with UdpSender(srv.udp, keys={101: KEY_A, 201: KEY_B}, start={101: 0, 201: 0}) as s:
            s.event(101, 1)                            # signed, verified
            s.event(201, 1)                            # signed, no key there: not checked
            # Another frame with 101's number 0 again: refused as a replay.
            s.resend(s.encode(101, "event", fleetwire.event(9), sequence=0))
        with UdpSender(srv.udp) as u:
            u.set_sequence(101, 5)
            u.event(101, 2)                            # unsigned from a keyed device
            u.event(202, 2)                            # unsigned, no key: accepted
        wait_received(srv, 5)
        assert udp_totals(srv) == {"received": 5, "accepted": 3, "rejected": 2}
        assert (rejected(srv, "auth_required"), rejected(srv, "replay")) == (1, 1)
        assert srv.get("/api/devices/201") is not None
        assert srv.get("/api/devices/202") is not None
    finally:
        srv.stop()


def test_signed_frames_and_refusals(signed, tmp_path):
    t0 = fleetwire.now_ms()
    with UdpSender(signed.udp, keys={101: KEY_A, 102: KEY_B},
                   state_dir=tmp_path / "state") as s:
        s.hello(101, firmware="9.9", model="signed")
        s.position(101, 52.52, 13.405, satellites=7, timestamp_ms=t0)
        s.monitoring(101, battery=55, readings={"v": -0.0}, timestamp_ms=t0 + 1)
        s.event(102, 7, "critical", timestamp_ms=t0)
        replayed = s.event(101, 8, "notice", timestamp_ms=t0 + 2)
        s.resend(replayed)                                    # replay
    with UdpSender(signed.udp) as plain_sender:
        plain_sender.event(101, 1)                             # no tag: auth_required
    with UdpSender(signed.udp, keys={101: KEY_B}, start={101: 50}) as wrong:
        wrong.event(101, 1)                                    # wrong key: bad_auth_tag
    with UdpSender(signed.udp, keys={103: KEY_A}, start={103: 0}) as nokey:
        nokey.event(103, 1)                                    # no key on the server
    wait_received(signed, 9)
    assert udp_totals(signed) == {"received": 9, "accepted": 5, "rejected": 4}
    assert (rejected(signed, "replay"), rejected(signed, "auth_required"),
            rejected(signed, "bad_auth_tag"), rejected(signed, "unknown_key")) == (1, 1, 1, 1)
    d = signed.get("/api/devices/101")
    assert d["info"] == {"firmware": "9.9", "model": "signed", "capabilities": 0}
    assert (e7(d["position"]["latitude"]), e7(d["position"]["longitude"])) == (
        525200000, 134050000)
    assert d["health"]["battery_pct"] == 55
    assert d["last_event"] == {"code": 8, "severity": "notice", "time_ms": t0 + 2}
    assert d["counts"]["events"] == 1
    assert d["sequence"]["highest"] == 3 and d["sequence"]["duplicates"] == 0
    assert signed.get("/api/devices/102")["last_event"]["severity"] == "critical"
    assert signed.get("/api/devices/103") is None
    assert (tmp_path / "state" / "seq-101").read_text() == "4"


def test_replay_window_is_65_numbers_and_serial_arithmetic(signed):
    """Section 2.1: each number once; h - 64 ..= h; below the first signed
    frame refused; newer means 1 ..= 2^31 - 1 ahead across the wrap."""
    m = 2**32
    h = 1065 + 2**31 - 1       # the highest after the big step forward
    seqs = [
        (1000, True),            # first frame: opens the window
        (999, False),            # below the first one: counts as seen
        (1065, True),            # h = 1065
        (1001, True),            # 1065 - 64: inside the window, never seen
        (1000, False),           # 1065 - 65: older than the window
        (1001, False),           # a second time: replay
        (m - 1, False),          # 1066 behind 1065 across the wrap: older
        (h, True),               # 2^31 - 1 ahead: the largest step forward
        ((h + 2**31) % m, False),  # 2^31 ahead of h counts as behind
        (h + 1, True),
        (m - 1, True),           # 2^31 - 1066 ahead of h + 1: newer
        (0, True),               # one ahead of 4294967295 (the wrap)
        (0, False),
    ]
    with UdpSender(signed.udp, keys={101: KEY_A}) as s:
        for n, (seq, _) in enumerate(seqs):
            s.set_sequence(101, seq)
            s.event(101, n)
    wait_received(signed, len(seqs))
    want_accepted = sum(ok for _, ok in seqs)
    assert udp_totals(signed)["accepted"] == want_accepted
    assert rejected(signed, "replay") == len(seqs) - want_accepted
    d = signed.get("/api/devices/101")
    assert d["counts"]["events"] == want_accepted
