"""`python -m fleetwire`: send one frame from a script, or decode, annotate,
encode and check frames.

    python -m fleetwire send --target 127.0.0.1:4480 --device 42 \\
        position --lat 48.1372 --lon 11.5755 --speed 13.9 --heading 270
    python -m fleetwire annotate 46570100012a...

`send` takes the options of the Rust `fleetwire send` (UDP only): without
--seq the sequence number is the next one from the counter file
`seq-<device>` in --state-dir (the same file `fleetwire send` keeps), so
repeated calls count up without gaps whichever tool makes them.
"""

import argparse
import os
import sys

from . import sender as snd
from . import wire


def _default_state_dir():
    d = os.environ.get("FLEETWIRE_STATE_DIR")
    if d:
        return d
    base = os.environ.get("XDG_STATE_HOME")
    if not base and os.environ.get("HOME"):
        base = os.path.join(os.environ["HOME"], ".local", "state")
    return os.path.join(base, "fleetwire") if base else None


def _u32(s):
    v = int(s, 0)
    if not 0 <= v <= wire.U32_MAX:
        raise argparse.ArgumentTypeError(f"{s} is not 0 ..= {wire.U32_MAX}")
    return v


def _ranged(lo, hi):
    def parse(s):
        v = int(s, 0)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{s} is not {lo} ..= {hi}")
        return v
    return parse


def _add_send(sub):
    p = sub.add_parser(
        "send", help="send one frame over UDP",
        description="Send one frame over UDP (the options of `fleetwire send`).")
    p.add_argument("--target", required=True, help="server address (host:port)")
    p.add_argument("--device", required=True, type=_u32, help="device id (1..=4294967295)")
    p.add_argument("--seq", type=_u32,
                   help="sequence number; by default the next one from a counter kept "
                        "per device in --state-dir, so repeated calls count up without gaps")
    p.add_argument("--state-dir", default=None,
                   help="where the per-device sequence counters live "
                        "[env: FLEETWIRE_STATE_DIR; default $XDG_STATE_HOME/fleetwire "
                        "or ~/.local/state/fleetwire]")
    p.add_argument("--timestamp-ms", type=int,
                   help="device timestamp, Unix ms (default: now; 0 = no clock)")
    p.add_argument("--auth-key", default=os.environ.get("FLEETWIRE_AUTH_KEY"),
                   help="sign the frame with this device key (hex): HMAC-SHA-256 tag "
                        "[env: FLEETWIRE_AUTH_KEY]")
    p.add_argument("--print", action="store_true", help="print the datagram as hex on stdout")
    what = p.add_subparsers(dest="what", required=True, metavar="KIND")

    q = what.add_parser("position", help="a GNSS fix")
    q.add_argument("--lat", type=float, required=True, help="latitude, degrees")
    q.add_argument("--lon", type=float, required=True, help="longitude, degrees")
    q.add_argument("--alt", type=float, default=0.0, help="altitude, meters")
    q.add_argument("--speed", type=float, default=0.0, help="ground speed, m/s")
    q.add_argument("--heading", type=float, default=0.0, help="heading, degrees")
    q.add_argument("--hacc", type=float, default=0.0,
                   help="horizontal accuracy, m (0 = unknown)")
    q.add_argument("--fix", default="3d", choices=wire.FIX_NAMES, help="fix type")
    q.add_argument("--sats", type=_ranged(0, 255), default=0, help="satellites used")

    q = what.add_parser("monitoring", help="health readings")
    q.add_argument("--battery", type=_ranged(0, 100), help="battery, percent")
    q.add_argument("--supply", type=float, help="supply voltage, volts")
    q.add_argument("--temperature", type=float, help="temperature, °C")
    q.add_argument("--rssi", type=_ranged(-128, 127), help="RSSI, dBm")
    q.add_argument("--uptime", type=_u32, help="uptime, seconds")
    q.add_argument("--reading", action="append", default=[], metavar="NAME=VALUE",
                   help="a named reading (repeat for more)")

    q = what.add_parser("event", help="an event")
    q.add_argument("--code", type=_ranged(0, 65535), required=True, help="event code")
    q.add_argument("--severity", default="info", choices=wire.SEVERITY_NAMES)
    q.add_argument("--text", help="short text (at most 64 bytes)")

    q = what.add_parser("hello", help="a boot announcement (restarts the server's "
                                      "sequence accounting)")
    q.add_argument("--firmware", default="", help="firmware version")
    q.add_argument("--model", default="", help="model")
    q.add_argument("--capabilities", type=_u32, default=0, help="capability bits")


def _fail(msg, code):
    print(f"fleetwire send: {msg}", file=sys.stderr)
    return code


def _record(a):
    if a.what == "position":
        return snd.position(a.lat, a.lon, a.alt, a.speed, a.heading, a.hacc, a.fix, a.sats)
    if a.what == "monitoring":
        readings = []
        for r in a.reading:
            name, sep, value = r.partition("=")
            if not sep:
                raise ValueError(f"--reading {r!r}: use name=value")
            try:
                readings.append((name.strip(), float(value)))
            except ValueError:
                raise ValueError(f"--reading {r!r}: {value!r} is not a number") from None
        return snd.monitoring(a.battery, a.supply, a.temperature, a.rssi, a.uptime, readings)
    if a.what == "event":
        return snd.event(a.code, a.severity, a.text)
    return snd.hello(a.firmware, a.model, a.capabilities)


def _send(a):
    if a.device == 0:
        return _fail("--device 0 is reserved", 2)
    key = None
    if a.auth_key is not None:
        try:
            key = bytes.fromhex(a.auth_key)
        except ValueError as e:
            return _fail(f"--auth-key is not hex: {e}", 2)
    state_dir = a.state_dir or _default_state_dir()
    seq = a.seq
    if seq is None:
        saved = snd.read_counter(state_dir, a.device) if state_dir else None
        seq = 0 if saved is None else saved
    try:
        record = _record(a)
        s = snd.UdpSender(a.target, keys={a.device: key} if key is not None else None,
                          start={a.device: seq})
    except (ValueError, OSError) as e:
        return _fail(e, 2)
    with s:
        try:
            datagram = s.encode(a.device, a.what, record, timestamp_ms=a.timestamp_ms)
        except ValueError as e:
            return _fail(f"cannot encode: {e}", 2)
        if a.print:
            print(datagram.hex())
        try:
            s.resend(datagram)
        except OSError as e:
            return _fail(f"sending to {a.target}: {e}", 1)
    if a.seq is None and state_dir:
        try:
            snd.write_counter(state_dir, a.device, (seq + 1) & wire.U32_MAX)
        except OSError as e:
            print(f"fleetwire send: warning: cannot save the sequence counter: {e}",
                  file=sys.stderr)
    print(f"sent {len(datagram)} bytes: device {a.device} sequence {seq} ({a.what})",
          file=sys.stderr)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m fleetwire",
        description="fleetwire device tools: send a frame over UDP; decode, annotate, "
                    "encode frames; check the golden vectors.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _add_send(sub)
    wire.add_codec_commands(sub)
    args = ap.parse_args(argv)
    if args.cmd == "send":
        return _send(args)
    return wire.run_codec_command(args)
