"""`python -m fleetwire`, run as a script would run it."""

import json
import os
import socket
import subprocess
import sys

import pytest

from fleetwire import wire
from conftest import VECTORS

KEY = b"fleetwire-test-key-device-0042!!"


@pytest.fixture
def receiver():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    yield s
    s.close()


def run(*args, env=None, cwd=None):
    e = dict(os.environ)
    e.pop("FLEETWIRE_AUTH_KEY", None)
    e.pop("FLEETWIRE_STATE_DIR", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "fleetwire", *args], capture_output=True,
                          text=True, env=e, cwd=cwd, timeout=60)


def send(receiver, state_dir, *args, env=None):
    host, port = receiver.getsockname()
    r = run("send", "--target", f"{host}:{port}", "--state-dir", str(state_dir), *args,
            env=env)
    return r


def test_send_every_kind_counts_up_in_the_state_dir(receiver, tmp_path):
    cmds = [
        ["hello", "--firmware", "1.4.2", "--model", "FW-T1000", "--capabilities", "15"],
        ["position", "--lat", "48.1372", "--lon", "11.5755", "--alt", "519", "--speed",
         "13.89", "--heading", "270.5", "--hacc", "2.5", "--fix", "2d", "--sats", "11"],
        ["monitoring", "--battery", "87", "--supply", "12.45", "--temperature", "-12.5",
         "--rssi", "-71", "--uptime", "86400", "--reading", "engine_rpm=2150",
         "--reading", "fuel_level=0.625"],
        ["event", "--code", "1001", "--severity", "warning", "--text", "door open"],
    ]
    for i, c in enumerate(cmds):
        r = send(receiver, tmp_path, "--device", "42", "--print", *c)
        assert r.returncode == 0, r.stderr
        assert f"device 42 sequence {i} ({c[0]})" in r.stderr
        data = receiver.recvfrom(2048)[0]
        assert r.stdout.strip() == data.hex()
        f = wire.decode(data)
        assert (f["device_id"], f["sequence"], f["kind"], f["auth"]) == (42, i, c[0], False)
    assert (tmp_path / "seq-42").read_text() == "4"
    assert f["event"] == {"code": 1001, "severity": "warning", "text": "door open"}


def test_send_fields_in_wire_units(receiver, tmp_path):
    r = send(receiver, tmp_path, "--device", "7", "--timestamp-ms", "1764000000000",
             "position", "--lat", "-33.8688", "--lon", "151.2093", "--alt", "-1.5",
             "--speed", "0.05", "--heading", "-90", "--fix", "none")
    assert r.returncode == 0, r.stderr
    f = wire.decode(receiver.recvfrom(2048)[0])
    assert f["timestamp_ms"] == 1764000000000
    assert f["position"] == {"lat_e7": -338688000, "lon_e7": 1512093000, "alt_dm": -15,
                             "speed_cm_s": 5, "heading_ddeg": 2700, "hacc_cm": 0,
                             "fix": "none", "satellites": 0}
    r = send(receiver, tmp_path, "--device", "7", "monitoring", "--supply", "3.3",
             "--reading", "a=1e3")
    assert r.returncode == 0, r.stderr
    m = wire.decode(receiver.recvfrom(2048)[0])["monitoring"]
    assert (m["supply_mv"], m["battery_pct"], m["readings"]) == (
        3300, None, [{"name": "a", "value": 1000.0}])


def test_send_signed_with_explicit_seq_leaves_the_counter(receiver, tmp_path):
    r = send(receiver, tmp_path, "--device", "42", "--seq", "8", "--timestamp-ms",
             "1764000000000", "position", "--lat", "48.1372", "--lon", "11.5755",
             "--alt", "519", "--speed", "13.89", "--heading", "270.5", "--hacc", "2.5",
             "--sats", "11", env={"FLEETWIRE_AUTH_KEY": KEY.hex()})
    assert r.returncode == 0, r.stderr
    data = receiver.recvfrom(2048)[0]
    wire.verify(data, KEY)
    assert not (tmp_path / "seq-42").exists()
    # The same frame as the golden vector position_signed.
    with open(os.path.join(VECTORS, "valid.json"), encoding="utf-8") as fh:
        vec = {v["name"]: v for v in json.load(fh)}["position_signed"]
    assert data.hex() == vec["hex"]


@pytest.mark.parametrize("args,msg", [
    (["--device", "0", "event", "--code", "1"], "--device 0 is reserved"),
    (["--device", "1", "--auth-key", "xyz", "event", "--code", "1"], "not hex"),
    (["--device", "1", "position", "--lat", "91", "--lon", "0"], "cannot encode"),
    (["--device", "1", "monitoring", "--reading", "novalue"], "use name=value"),
    (["--device", "1", "position", "--lat", "1", "--lon", "1", "--speed", "700"], "655.35"),
])
def test_send_usage_errors_exit_2_and_send_nothing(receiver, tmp_path, args, msg):
    r = send(receiver, tmp_path, *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert msg in r.stderr
    receiver.settimeout(0.2)
    with pytest.raises(socket.timeout):
        receiver.recvfrom(2048)
    assert not os.listdir(tmp_path)


def test_codec_commands():
    with open(os.path.join(VECTORS, "valid.json"), encoding="utf-8") as fh:
        v = json.load(fh)[0]
    r = run("decode", v["hex"])
    assert r.returncode == 0 and json.loads(r.stdout) == v["frame"]
    r = run("annotate", v["hex"])
    assert r.returncode == 0 and "=> accepted" in r.stdout
    r = run("encode", json.dumps(v["frame"]))
    assert r.returncode == 0 and r.stdout.strip() == v["hex"]
    r = run("check", VECTORS)
    assert r.returncode == 0 and "all passed" in r.stdout
    r = run("decode", v["hex"][:-2] + "00")
    assert r.returncode == 1 and r.stdout.strip() == "bad_checksum"
