"""Sending frames over UDP: per-device sequence numbers and optional HMAC
signing (proto/PROTOCOL.md sections 1, 2.1 and 6).

Written from PROTOCOL.md like the codec it uses (`fleetwire.wire`).
"""

import errno
import math
import os
import socket
import time
import warnings

from . import wire

U32_MAX = wire.U32_MAX


def now_ms():
    """Unix time in milliseconds (the frame timestamp of section 2)."""
    return time.time_ns() // 1_000_000


# ------------------------------------------------------------ record helpers
#
# Records in everyday units (degrees, meters, volts, degrees Celsius),
# returned as the wire-unit dicts of PROTOCOL.md section 10 that
# `wire.encode` takes. Values are rounded to the wire's resolution.


def _round(v):
    # Round half away from zero (not Python's banker's rounding).
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def position(lat, lon, alt=0.0, speed=0.0, heading=0.0, hacc=0.0, fix="3d",
             satellites=0):
    """A Position record (4.1): lat/lon in degrees, alt in meters, speed in
    m/s, heading in degrees (taken modulo 360), hacc in meters (0 =
    unknown), fix one of none, 2d, 3d, dgnss, rtk_float, rtk_fixed."""
    if not (0.0 <= speed <= 655.35 and 0.0 <= hacc <= 655.35):
        raise ValueError("speed and hacc must be 0 to 655.35")
    return {
        "lat_e7": _round(lat * 1e7),
        "lon_e7": _round(lon * 1e7),
        "alt_dm": _round(alt * 10),
        "speed_cm_s": _round(speed * 100),
        "heading_ddeg": _round((heading % 360.0) * 10) % 3600,
        "hacc_cm": _round(hacc * 100),
        "fix": fix,
        "satellites": satellites,
    }


def monitoring(battery=None, supply=None, temperature=None, rssi=None,
               uptime=None, readings=None):
    """A Monitoring record (4.2): battery in percent, supply in volts,
    temperature in degrees Celsius, rssi in dBm, uptime in seconds (each
    None = absent); readings a dict or a list of (name, value) pairs, in
    wire order."""
    if readings is None:
        readings = []
    elif isinstance(readings, dict):
        readings = list(readings.items())
    return {
        "battery_pct": battery,
        "supply_mv": None if supply is None else _round(supply * 1000),
        "temperature_cdeg": None if temperature is None else _round(temperature * 100),
        "rssi_dbm": rssi,
        "uptime_s": uptime,
        "readings": [{"name": n, "value": float(v)} for n, v in readings],
    }


def event(code, severity="info", text=None):
    """An Event record (4.3): severity one of info, notice, warning, error,
    critical; text at most 64 bytes of UTF-8, or None."""
    return {"code": code, "severity": severity, "text": text}


def hello(firmware="", model="", capabilities=0):
    """A Hello record (4.4)."""
    return {"firmware": firmware, "model": model, "capabilities": capabilities}


def sample(offset_ms, kind, record):
    """One Batch sample (4.5): taken offset_ms before the frame's timestamp;
    kind is position, monitoring or event."""
    return {"offset_ms": offset_ms, "kind": kind, kind: record}


# ------------------------------------------------------------ sequence numbers


def _state_file(state_dir, device_id):
    return os.path.join(os.fspath(state_dir), f"seq-{device_id}")


def read_counter(state_dir, device_id):
    """The next sequence number saved for device_id in state_dir, or None.
    The file `seq-<device id>` holds it in decimal: the same file as
    `fleetwire send --state-dir`, so both tools count on from each other."""
    try:
        with open(_state_file(state_dir, device_id), encoding="ascii") as fh:
            value = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    return value if 0 <= value <= U32_MAX else None


def write_counter(state_dir, device_id, next_seq):
    """Saves next_seq for device_id atomically (temporary file + rename)."""
    os.makedirs(os.fspath(state_dir), exist_ok=True)
    path = _state_file(state_dir, device_id)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(str(next_seq))
    os.replace(tmp, path)


def resolve(target, default_port=4480):
    """(family, sockaddr) for "host:port", "[v6]:port", "host" or a
    (host, port) tuple; an IPv4 address is preferred when a name has both."""
    if isinstance(target, str):
        host, port = target, default_port
        if target.startswith("["):
            host, _, rest = target[1:].partition("]")
            if rest.startswith(":"):
                port = int(rest[1:])
        elif target.count(":") == 1:
            host, port = target.split(":")
            port = int(port)
    else:
        host, port = target
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    return infos[0][0], infos[0][4]


class UdpSender:
    """Sends fleetwire frames over UDP, one frame per datagram.

    target      "host:port" or a (host, port) tuple (default port 4480).
    keys        {device id: key} for the devices that sign (section 6); a
                key is bytes, or a hex string. Frames of other devices go
                unsigned.
    state_dir   where the per-device counters are kept across runs (file
                `seq-<id>`, next number in decimal, rewritten after every
                frame). Without it the counters live in memory only.
    start       {device id: first sequence number}: overrides state_dir.

    Each device has one counter for every frame it sends (section 2.1): it
    goes up by exactly 1 per new frame and wraps from 4294967295 to 0. A
    retransmission (`resend`) sends the same bytes again and keeps its
    number. A device that signs must never use a number twice under the
    same key, not even in a later run: give it a state_dir (or a start
    above every number it used before). Unsigned devices may start at 0 and
    send a Hello first (`hello`).
    """

    def __init__(self, target, *, keys=None, state_dir=None, start=None):
        family, self.target = resolve(target)
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._keys = {}
        for dev, key in (keys or {}).items():
            self._keys[int(dev)] = bytes.fromhex(key) if isinstance(key, str) else bytes(key)
        self._state_dir = state_dir
        self._next = {}
        for dev, seq in (start or {}).items():
            self._set_next(int(dev), seq)
        self.sent = 0

    # -- context manager
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._sock.close()

    # -- counters
    def _set_next(self, device_id, seq):
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= U32_MAX:
            raise ValueError(f"sequence number {seq!r} outside 0 ..= {U32_MAX}")
        self._next[device_id] = seq

    def next_sequence(self, device_id):
        """The number the next new frame of device_id will carry."""
        if device_id not in self._next:
            saved = None
            if self._state_dir is not None:
                saved = read_counter(self._state_dir, device_id)
            elif device_id in self._keys:
                warnings.warn(
                    f"device {device_id} signs its frames but its sequence counter "
                    "starts at 0 and is not saved: a later run reusing these numbers "
                    "is refused as replay (give UdpSender a state_dir or a start)",
                    RuntimeWarning, stacklevel=3)
            self._next[device_id] = 0 if saved is None else saved
        return self._next[device_id]

    def set_sequence(self, device_id, seq):
        """Sets the number of device_id's next frame (e.g. a counter the
        device restores itself)."""
        self._set_next(device_id, seq)

    # -- sending
    def encode(self, device_id, kind, record, *, timestamp_ms=None, sequence=None):
        """The datagram for one new frame, without sending it or advancing the
        counter. timestamp_ms defaults to now (0 = no clock)."""
        frame = {
            "device_id": device_id,
            "sequence": self.next_sequence(device_id) if sequence is None else sequence,
            "timestamp_ms": now_ms() if timestamp_ms is None else timestamp_ms,
            "kind": kind,
            kind: record,
        }
        return wire.encode(frame, self._keys.get(device_id))

    def send(self, device_id, kind, record, *, timestamp_ms=None):
        """Sends one new frame of `kind` (position, monitoring, event, hello
        or batch) with `record` in wire units (section 10's JSON form; see
        the helpers position(), monitoring(), ...). Takes the device's next
        sequence number, signs when the device has a key, and returns the
        datagram (keep it to `resend` it)."""
        seq = self.next_sequence(device_id)
        datagram = self.encode(device_id, kind, record, timestamp_ms=timestamp_ms,
                               sequence=seq)
        self._sendto(datagram)
        nxt = (seq + 1) & U32_MAX
        self._next[device_id] = nxt
        if self._state_dir is not None:
            write_counter(self._state_dir, device_id, nxt)
        return datagram

    def resend(self, datagram):
        """Sends a datagram again, unchanged (a retransmission keeps its
        sequence number; the server counts the copy, section 2.1)."""
        self._sendto(bytes(datagram))

    def _sendto(self, datagram):
        while True:
            try:
                self._sock.sendto(datagram, self.target)
                break
            except OSError as e:
                # The kernel's send buffer is full: wait, do not drop.
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                time.sleep(0.001)
        self.sent += 1

    # -- one call per kind, in everyday units
    def position(self, device_id, lat, lon, *, timestamp_ms=None, **kw):
        """A Position frame; see position() for the units."""
        return self.send(device_id, "position", position(lat, lon, **kw),
                         timestamp_ms=timestamp_ms)

    def monitoring(self, device_id, *, timestamp_ms=None, **kw):
        """A Monitoring frame; see monitoring() for the units."""
        return self.send(device_id, "monitoring", monitoring(**kw), timestamp_ms=timestamp_ms)

    def event(self, device_id, code, severity="info", text=None, *, timestamp_ms=None):
        """An Event frame."""
        return self.send(device_id, "event", event(code, severity, text),
                         timestamp_ms=timestamp_ms)

    def hello(self, device_id, firmware="", model="", capabilities=0, *, timestamp_ms=None):
        """A Hello frame (send it first after a boot)."""
        return self.send(device_id, "hello", hello(firmware, model, capabilities),
                         timestamp_ms=timestamp_ms)

    def batch(self, device_id, samples, *, timestamp_ms=None):
        """A Batch frame of 1 to 128 samples (see sample())."""
        return self.send(device_id, "batch", list(samples), timestamp_ms=timestamp_ms)
