"""Independent decoder / encoder for the fleetwire wire protocol, version 1.

Written from proto/PROTOCOL.md and the JSON vectors in proto/vectors/ only
(no Rust source was read), to show that the document is enough to implement
the protocol. Standard library only. (It lived in proto/python/ before it
became part of the `fleetwire` package.)

Public API
    crc32c(data) -> int
    DecodeError(label)            .label is a section 7 label
    decode(datagram) -> dict      frame in the JSON form of vectors/valid.json
    decode_with_tag(datagram)     -> (frame, signed_bytes, tag or None)
    verify(datagram, key)         raises DecodeError('bad_auth_tag')
    encode(frame, key=None)       canonical bytes (minimal varints)
    annotate(datagram) -> str     byte-by-byte dump like section 9

CLI (also as `python -m fleetwire check|decode|annotate|encode ...`)
    python3 -m fleetwire.wire check DIR
    python3 -m fleetwire.wire decode HEX [--key HEX]
    python3 -m fleetwire.wire annotate HEX
    python3 -m fleetwire.wire encode JSON [--key HEX]
"""

import argparse
import hashlib
import hmac
import json
import struct
import sys

# ---------------------------------------------------------------- constants

MAGIC = b"\x46\x57"          # "FW"
VERSION = 1
FLAG_AUTH = 0x01
HEADER_LEN = 21
TAG_LEN = 16
CRC_LEN = 4
MIN_LEN = HEADER_LEN + CRC_LEN                # 25
MIN_AUTH_LEN = HEADER_LEN + TAG_LEN + CRC_LEN  # 41
MAX_LEN = 1200

KIND_NAMES = {1: "position", 2: "monitoring", 3: "event", 4: "hello", 5: "batch"}
KIND_NUMBERS = {v: k for k, v in KIND_NAMES.items()}
KIND_TITLES = {1: "Position", 2: "Monitoring", 3: "Event", 4: "Hello", 5: "Batch"}
FIX_NAMES = ["none", "2d", "3d", "dgnss", "rtk_float", "rtk_fixed"]
FIX_TITLES = ["no fix", "2D", "3D", "differential", "RTK float", "RTK fixed"]
SEVERITY_NAMES = ["info", "notice", "warning", "error", "critical"]

LAT_RANGE = (-900_000_000, 900_000_000)
LON_RANGE = (-1_800_000_000, 1_800_000_000)
ALT_RANGE = (-1_000_000, 1_000_000)
HEADING_MAX = 3599
BATTERY_MAX = 100
MAX_READINGS = 32
NAME_MAX = 32
EVENT_TEXT_MAX = 64
HELLO_STRING_MAX = 32
MAX_SAMPLES = 128

U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF

LABELS = (
    "too_short", "too_long", "bad_magic", "unsupported_version",
    "bad_checksum", "unknown_flags", "unknown_kind", "bad_device_id",
    "malformed_payload", "out_of_range", "too_many_items", "bad_name",
    "bad_batch", "trailing_bytes", "bad_auth_tag",
)

_NAME_FIRST = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_REST = _NAME_FIRST | frozenset(b"0123456789.-")

# varint limits of section 3.2: bits -> (max_bytes, last_max)
_VARINT_LIMITS = {16: (3, 0x03), 32: (5, 0x0F)}

# ---------------------------------------------------------------- CRC-32C


def _reflect(value, bits):
    out = 0
    for _ in range(bits):
        out = (out << 1) | (value & 1)
        value >>= 1
    return out


CRC32C_POLY = 0x1EDC6F41                       # normal form (section 5)
CRC32C_POLY_REFLECTED = _reflect(CRC32C_POLY, 32)
assert CRC32C_POLY_REFLECTED == 0x82F63B78


def _crc_table():
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ (CRC32C_POLY_REFLECTED if c & 1 else 0)
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli): reflected, init and xorout 0xFFFFFFFF."""
    c = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        c = (c >> 8) ^ table[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


# ---------------------------------------------------------------- helpers


class DecodeError(Exception):
    """A refused datagram. `label` is the section 7 label; `detail` says why
    in words; `offset`/`end` delimit the bytes at fault when known."""

    def __init__(self, label, detail="", offset=None, end=None, depth=0):
        assert label in LABELS, label
        super().__init__(label if not detail else f"{label}: {detail}")
        self.label = label
        self.detail = detail
        self.offset = offset
        self.end = end
        self.depth = depth  # nesting level in the payload, for annotate()


class EncodeError(ValueError):
    """The frame dict cannot be encoded (missing field, value out of range)."""


def zigzag(n: int, bits: int = 32) -> int:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if not lo <= n <= hi:
        raise ValueError(f"{n} does not fit i{bits}")
    return ((n << 1) ^ (n >> (bits - 1))) & ((1 << bits) - 1)


def unzigzag(u: int) -> int:
    return (u >> 1) ^ -(u & 1)


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128, shortest form."""
    if value < 0:
        raise ValueError("varint of a negative value")
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value == 0:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _is_finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def _civil_from_days(z):
    # days since 1970-01-01 -> (y, m, d), proleptic Gregorian
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


def _fmt_time(ms):
    if ms == 0:
        return "0 = no clock"
    secs, msec = divmod(ms, 1000)
    days, sod = divmod(secs, 86400)
    if days > 2_900_000:  # beyond year 9999: don't pretend
        return f"{ms} ms"
    y, m, d = _civil_from_days(days)
    hh, rem = divmod(sod, 3600)
    mm, ss = divmod(rem, 60)
    frac = f".{msec:03d}" if msec else ""
    return f"{ms} ms ({y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}{frac}Z)"


def _fmt_e7(v):
    sign = "-" if v < 0 else ""
    a = abs(v)
    return f"{sign}{a // 10_000_000}.{a % 10_000_000:07d}"


def _fmt_fixed(v, div, places):
    sign = "-" if v < 0 else ""
    a = abs(v)
    return f"{sign}{a // div}.{a % div:0{places}d}"


# ---------------------------------------------------------------- reader


class _Reader:
    """Reads payload fields from buf[pos:end]; records (start, end, text,
    depth) notes for annotate()."""

    def __init__(self, buf, pos, end, notes=None):
        self.buf = buf
        self.pos = pos
        self.end = end
        self.notes = notes
        self.depth = 0

    def fail(self, label, start, detail):
        raise DecodeError(label, detail, offset=start, end=self.pos,
                          depth=self.depth)

    def note(self, start, text):
        if self.notes is not None:
            self.notes.append((start, self.pos, text, self.depth))

    def _byte(self, start, what):
        if self.pos >= self.end:
            self.fail("malformed_payload", start, f"{what}: a byte is missing")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def u8(self, what):
        return self._byte(self.pos, what)

    def i8(self, what):
        b = self._byte(self.pos, what)
        return b - 256 if b >= 0x80 else b

    def varint(self, bits, what):
        """Section 3.2 decode; returns (value, raw_length)."""
        start = self.pos
        max_bytes, last_max = _VARINT_LIMITS[bits]
        value = 0
        for i in range(max_bytes):            # i = 0 ..= max_bytes - 1
            b = self._byte(start, what)
            value |= (b & 0x7F) << (7 * i)
            if b & 0x80 == 0:
                if i == max_bytes - 1 and b > last_max:
                    self.fail("malformed_payload", start,
                              f"{what}: varint overflows u{bits} "
                              f"(last byte 0x{b:02x} > 0x{last_max:02x})")
                return value
        self.fail("malformed_payload", start,
                  f"{what}: varint longer than {max_bytes} bytes (u{bits})")

    def f64(self, what):
        start = self.pos
        if self.end - self.pos < 8:
            self.pos = self.end
            self.fail("malformed_payload", start, f"{what}: a byte is missing")
        (v,) = struct.unpack_from("<d", self.buf, self.pos)
        self.pos += 8
        return v

    def option(self, what):
        start = self.pos
        tag = self._byte(start, what)
        if tag not in (0, 1):
            self.fail("malformed_payload", start,
                      f"{what}: option tag 0x{tag:02x} (only 00 and 01 exist)")
        return tag == 1

    def string(self, what):
        """Length varint, bytes, UTF-8 check. Returns (text, byte_length)."""
        start = self.pos
        n = self.varint(32, what + " length")
        if self.end - self.pos < n:
            self.pos = self.end
            self.fail("malformed_payload", start,
                      f"{what}: string of {n} bytes, fewer left")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail("malformed_payload", start, f"{what}: not UTF-8")
        return text, n

    def check_range(self, value, lo, hi, start, what, label="out_of_range"):
        if not lo <= value <= hi:
            self.fail(label, start, f"{what} {value} outside {lo} ..= {hi}")


# ---------------------------------------------------------------- payloads


def _read_position(r):
    s = r.pos
    u = r.varint(32, "latitude")
    lat = unzigzag(u)
    r.check_range(lat, *LAT_RANGE, s, "latitude")
    r.note(s, f"latitude: varint {u}, unzigzag {lat} = {_fmt_e7(lat)}°")
    s = r.pos
    u = r.varint(32, "longitude")
    lon = unzigzag(u)
    r.check_range(lon, *LON_RANGE, s, "longitude")
    r.note(s, f"longitude: varint {u}, unzigzag {lon} = {_fmt_e7(lon)}°")
    s = r.pos
    u = r.varint(32, "altitude")
    alt = unzigzag(u)
    r.check_range(alt, *ALT_RANGE, s, "altitude")
    r.note(s, f"altitude: varint {u}, unzigzag {alt} dm = {_fmt_fixed(alt, 10, 1)} m")
    s = r.pos
    speed = r.varint(16, "ground speed")
    r.note(s, f"ground speed: {speed} cm/s = {_fmt_fixed(speed, 100, 2)} m/s")
    s = r.pos
    heading = r.varint(16, "heading")
    r.check_range(heading, 0, HEADING_MAX, s, "heading")
    r.note(s, f"heading: {heading} = {_fmt_fixed(heading, 10, 1)}°")
    s = r.pos
    hacc = r.varint(16, "horizontal accuracy")
    r.note(s, f"horizontal accuracy: {hacc} cm" + (" (unknown)" if hacc == 0 else ""))
    s = r.pos
    fix = r.u8("fix type")
    r.check_range(fix, 0, len(FIX_NAMES) - 1, s, "fix type")
    r.note(s, f"fix type {fix} = {FIX_TITLES[fix]}")
    s = r.pos
    sats = r.u8("satellites")
    r.note(s, f"{sats} satellites")
    return {
        "lat_e7": lat, "lon_e7": lon, "alt_dm": alt, "speed_cm_s": speed,
        "heading_ddeg": heading, "hacc_cm": hacc, "fix": FIX_NAMES[fix],
        "satellites": sats,
    }


def _read_monitoring(r):
    m = {}
    s = r.pos
    if r.option("battery"):
        v = r.u8("battery")
        r.check_range(v, 0, BATTERY_MAX, s, "battery")
        r.note(s, f"battery: present, {v} %")
    else:
        v = None
        r.note(s, "battery: absent")
    m["battery_pct"] = v
    s = r.pos
    if r.option("supply voltage"):
        v = r.varint(16, "supply voltage")
        r.note(s, f"supply voltage: present, varint {v} mV")
    else:
        v = None
        r.note(s, "supply voltage: absent")
    m["supply_mv"] = v
    s = r.pos
    if r.option("temperature"):
        u = r.varint(16, "temperature")
        v = unzigzag(u)
        r.note(s, f"temperature: present, varint {u}, unzigzag {v} = "
                  f"{_fmt_fixed(v, 100, 2)} °C")
    else:
        v = None
        r.note(s, "temperature: absent")
    m["temperature_cdeg"] = v
    s = r.pos
    if r.option("RSSI"):
        v = r.i8("RSSI")
        r.note(s, f"RSSI: present, i8 0x{v & 0xFF:02x} = {v} dBm")
    else:
        v = None
        r.note(s, "RSSI: absent")
    m["rssi_dbm"] = v
    s = r.pos
    if r.option("uptime"):
        v = r.varint(32, "uptime")
        r.note(s, f"uptime: present, varint {v} s")
    else:
        v = None
        r.note(s, "uptime: absent")
    m["uptime_s"] = v
    s = r.pos
    count = r.varint(32, "reading count")
    r.check_range(count, 0, MAX_READINGS, s, "reading count", "too_many_items")
    r.note(s, f"{count} reading" + ("" if count == 1 else "s"))
    readings = []
    seen = set()
    r.depth += 1
    for i in range(count):
        s = r.pos
        name, n = r.string(f"reading {i} name")
        raw = name.encode("utf-8")
        if not 1 <= n <= NAME_MAX:
            r.fail("bad_name", s, f"reading name of {n} bytes (1 ..= {NAME_MAX})")
        if raw[0] not in _NAME_FIRST or any(b not in _NAME_REST for b in raw):
            r.fail("bad_name", s, f"reading name {name!r} breaks the name rule")
        if name in seen:
            r.fail("bad_name", s, f"reading name {name!r} repeated")
        seen.add(name)
        r.note(s, f"name: {n} byte{'' if n == 1 else 's'} "
                  f"{json.dumps(name, ensure_ascii=False)}")
        s = r.pos
        value = r.f64(f"reading {name} value")
        if not _is_finite(value):
            r.fail("out_of_range", s, f"reading {name} value {value} is not finite")
        bits = struct.unpack("<Q", struct.pack("<d", value))[0]
        r.note(s, f"value: f64 LE 0x{bits:016x} = {value!r}")
        readings.append({"name": name, "value": value})
    r.depth -= 1
    m["readings"] = readings
    return m


def _read_event(r):
    s = r.pos
    code = r.varint(16, "event code")
    r.note(s, f"code: varint {code}")
    s = r.pos
    sev = r.u8("severity")
    r.check_range(sev, 0, len(SEVERITY_NAMES) - 1, s, "severity")
    r.note(s, f"severity {sev} = {SEVERITY_NAMES[sev]}")
    s = r.pos
    if r.option("event text"):
        r.note(s, "text: present")
        s = r.pos
        text, n = r.string("event text")
        r.check_range(n, 0, EVENT_TEXT_MAX, s, "event text byte length")
        r.note(s, f"{n} bytes {json.dumps(text, ensure_ascii=False)}")
    else:
        text = None
        r.note(s, "text: absent")
    return {"code": code, "severity": SEVERITY_NAMES[sev], "text": text}


def _read_hello(r):
    out = {}
    for key, what in (("firmware", "firmware"), ("model", "model")):
        s = r.pos
        text, n = r.string(what)
        r.check_range(n, 0, HELLO_STRING_MAX, s, f"{what} byte length")
        r.note(s, f"{what}: {n} bytes {json.dumps(text, ensure_ascii=False)}")
        out[key] = text
    s = r.pos
    caps = r.varint(32, "capabilities")
    names = ["GNSS", "Monitoring", "Event", "Batch", "AUTH", "QUIC"]
    known = [names[i] for i in range(len(names)) if caps >> i & 1]
    if caps >> len(names):
        known.append(f"undefined bits 0x{caps >> len(names) << len(names):x}")
    r.note(s, f"capabilities 0x{caps:02x}" + (": " + ", ".join(known) if known else ""))
    out["capabilities"] = caps
    return out


_RECORD_READERS = {1: _read_position, 2: _read_monitoring, 3: _read_event}


def _read_batch(r):
    s = r.pos
    count = r.varint(32, "sample count")
    if count == 0:
        r.fail("bad_batch", s, "batch of 0 samples")
    r.check_range(count, 1, MAX_SAMPLES, s, "sample count", "too_many_items")
    r.note(s, f"{count} sample" + ("" if count == 1 else "s"))
    samples = []
    r.depth += 1
    for i in range(count):
        s = r.pos
        offset = r.varint(32, f"sample {i} offset")
        r.note(s, f"offset: varint {offset} ms (sample {i})")
        s = r.pos
        kind = r.u8(f"sample {i} kind")
        if kind in (4, 5):
            r.fail("bad_batch", s, f"sample {i} of kind {kind} ({KIND_TITLES[kind]})")
        if kind not in _RECORD_READERS:
            r.fail("unknown_kind", s, f"sample {i} of kind {kind}")
        r.note(s, f"kind {kind} = {KIND_TITLES[kind]}")
        r.depth += 1
        record = _RECORD_READERS[kind](r)
        r.depth -= 1
        name = KIND_NAMES[kind]
        samples.append({"offset_ms": offset, "kind": name, name: record})
    r.depth -= 1
    return samples


_PAYLOAD_READERS = {
    1: _read_position, 2: _read_monitoring, 3: _read_event,
    4: _read_hello, 5: _read_batch,
}


# ---------------------------------------------------------------- decode


def _check_envelope(d):
    """Steps 1-9 of section 7. Returns (kind, auth, payload_end)."""
    n = len(d)
    if n < MIN_LEN:
        raise DecodeError("too_short", f"{n} bytes < {MIN_LEN}")
    if n > MAX_LEN:
        raise DecodeError("too_long", f"{n} bytes > {MAX_LEN}")
    if d[0:2] != MAGIC:
        raise DecodeError("bad_magic", f"magic {d[0:2].hex(' ')}", 0, 2)
    if d[2] != VERSION:
        raise DecodeError("unsupported_version", f"version {d[2]}", 2, 3)
    want = crc32c(d[:-CRC_LEN])
    got = struct.unpack_from("<I", d, n - CRC_LEN)[0]
    if want != got:
        raise DecodeError("bad_checksum",
                          f"trailer 0x{got:08x}, computed 0x{want:08x}",
                          n - CRC_LEN, n)
    flags = d[3]
    if flags & ~FLAG_AUTH:
        raise DecodeError("unknown_flags", f"flags 0x{flags:02x}", 3, 4)
    auth = bool(flags & FLAG_AUTH)
    if auth and n < MIN_AUTH_LEN:
        raise DecodeError("too_short", f"{n} bytes < {MIN_AUTH_LEN} with AUTH")
    kind = d[4]
    if kind not in KIND_NAMES:
        raise DecodeError("unknown_kind", f"kind {kind}", 4, 5)
    if struct.unpack_from("<I", d, 5)[0] == 0:
        raise DecodeError("bad_device_id", "device id 0", 5, 9)
    payload_end = n - CRC_LEN - (TAG_LEN if auth else 0)
    return kind, auth, payload_end


def _decode(datagram, notes=None):
    d = bytes(datagram)
    kind, auth, payload_end = _check_envelope(d)
    device_id, sequence, timestamp = struct.unpack_from("<IIQ", d, 5)
    r = _Reader(d, HEADER_LEN, payload_end, notes)
    body = _PAYLOAD_READERS[kind](r)
    if r.pos != payload_end:
        raise DecodeError("trailing_bytes",
                          f"{payload_end - r.pos} byte(s) after the payload",
                          r.pos, payload_end)
    name = KIND_NAMES[kind]
    frame = {
        "device_id": device_id,
        "sequence": sequence,
        "timestamp_ms": timestamp,
        "kind": name,
        "auth": auth,
        name: body,
    }
    signed = d[:payload_end]
    tag = d[payload_end:payload_end + TAG_LEN] if auth else None
    return frame, signed, tag


def decode_with_tag(datagram: bytes):
    """Steps 1-11. Returns (frame, signed_bytes, tag): signed_bytes is what
    the HMAC covers (header || payload), tag the 16 tag bytes or None."""
    return _decode(datagram)


def decode(datagram: bytes) -> dict:
    """Steps 1-11 of section 7 (step 12 needs a key: see verify)."""
    return _decode(datagram)[0]


def compute_tag(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()[:TAG_LEN]


def verify(datagram: bytes, key: bytes) -> None:
    """All of section 7 including step 12. A frame without a tag has nothing
    to verify and is refused as bad_auth_tag (the caller asked for a tag)."""
    _, signed, tag = _decode(datagram)
    if tag is None:
        raise DecodeError("bad_auth_tag", "frame carries no tag")
    if not hmac.compare_digest(compute_tag(key, signed), tag):
        raise DecodeError("bad_auth_tag", "tag does not verify",
                          len(signed), len(signed) + TAG_LEN)


# ---------------------------------------------------------------- encode


def _get(obj, key, where):
    if not isinstance(obj, dict):
        raise EncodeError(f"{where}: expected an object")
    if key not in obj:
        raise EncodeError(f"{where}: missing {key!r}")
    return obj[key]


def _int(obj, key, lo, hi, where):
    v = _get(obj, key, where)
    if isinstance(v, bool) or not isinstance(v, int):
        raise EncodeError(f"{where}.{key}: expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise EncodeError(f"{where}.{key}: {v} outside {lo} ..= {hi}")
    return v


def _enum(obj, key, names, where):
    v = _get(obj, key, where)
    if v not in names:
        raise EncodeError(f"{where}.{key}: {v!r} not one of {names}")
    return names.index(v)


def _string(text, max_len, where):
    if not isinstance(text, str):
        raise EncodeError(f"{where}: expected a string, got {text!r}")
    raw = text.encode("utf-8")
    if len(raw) > max_len:
        raise EncodeError(f"{where}: {len(raw)} bytes > {max_len}")
    return encode_varint(len(raw)) + raw


def _write_position(p, where):
    out = bytearray()
    out += encode_varint(zigzag(_int(p, "lat_e7", *LAT_RANGE, where)))
    out += encode_varint(zigzag(_int(p, "lon_e7", *LON_RANGE, where)))
    out += encode_varint(zigzag(_int(p, "alt_dm", *ALT_RANGE, where)))
    out += encode_varint(_int(p, "speed_cm_s", 0, U16_MAX, where))
    out += encode_varint(_int(p, "heading_ddeg", 0, HEADING_MAX, where))
    out += encode_varint(_int(p, "hacc_cm", 0, U16_MAX, where))
    out.append(_enum(p, "fix", FIX_NAMES, where))
    out.append(_int(p, "satellites", 0, 255, where))
    return bytes(out)


def _write_monitoring(m, where):
    out = bytearray()

    def opt(key, lo, hi, enc):
        if _get(m, key, where) is None:
            out.append(0)
        else:
            out.append(1)
            out.extend(enc(_int(m, key, lo, hi, where)))

    opt("battery_pct", 0, BATTERY_MAX, lambda v: bytes([v]))
    opt("supply_mv", 0, U16_MAX, encode_varint)
    opt("temperature_cdeg", -32768, 32767, lambda v: encode_varint(zigzag(v, 16)))
    opt("rssi_dbm", -128, 127, lambda v: bytes([v & 0xFF]))
    opt("uptime_s", 0, U32_MAX, encode_varint)
    readings = _get(m, "readings", where)
    if not isinstance(readings, list):
        raise EncodeError(f"{where}.readings: expected a list")
    if len(readings) > MAX_READINGS:
        raise EncodeError(f"{where}.readings: {len(readings)} > {MAX_READINGS}")
    out += encode_varint(len(readings))
    seen = set()
    for i, rd in enumerate(readings):
        w = f"{where}.readings[{i}]"
        name = _get(rd, "name", w)
        if not isinstance(name, str):
            raise EncodeError(f"{w}.name: expected a string")
        raw = name.encode("utf-8")
        if (not 1 <= len(raw) <= NAME_MAX or raw[0] not in _NAME_FIRST
                or any(b not in _NAME_REST for b in raw) or name in seen):
            raise EncodeError(f"{w}.name: {name!r} breaks the name rule")
        seen.add(name)
        value = _get(rd, "value", w)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EncodeError(f"{w}.value: expected a number")
        value = float(value)
        if not _is_finite(value):
            raise EncodeError(f"{w}.value: {value} is not finite")
        out += encode_varint(len(raw)) + raw + struct.pack("<d", value)
    return bytes(out)


def _write_event(e, where):
    out = bytearray()
    out += encode_varint(_int(e, "code", 0, U16_MAX, where))
    out.append(_enum(e, "severity", SEVERITY_NAMES, where))
    text = _get(e, "text", where)
    if text is None:
        out.append(0)
    else:
        out.append(1)
        out += _string(text, EVENT_TEXT_MAX, f"{where}.text")
    return bytes(out)


def _write_hello(h, where):
    out = bytearray()
    out += _string(_get(h, "firmware", where), HELLO_STRING_MAX, f"{where}.firmware")
    out += _string(_get(h, "model", where), HELLO_STRING_MAX, f"{where}.model")
    out += encode_varint(_int(h, "capabilities", 0, U32_MAX, where))
    return bytes(out)


_RECORD_WRITERS = {1: _write_position, 2: _write_monitoring, 3: _write_event}


def _write_batch(samples, where):
    if not isinstance(samples, list):
        raise EncodeError(f"{where}: expected a list")
    if not 1 <= len(samples) <= MAX_SAMPLES:
        raise EncodeError(f"{where}: {len(samples)} samples (1 ..= {MAX_SAMPLES})")
    out = bytearray(encode_varint(len(samples)))
    for i, s in enumerate(samples):
        w = f"{where}[{i}]"
        out += encode_varint(_int(s, "offset_ms", 0, U32_MAX, w))
        kind = KIND_NUMBERS.get(_get(s, "kind", w))
        if kind not in _RECORD_WRITERS:
            raise EncodeError(f"{w}.kind: {s['kind']!r} cannot be in a batch")
        out.append(kind)
        name = KIND_NAMES[kind]
        out += _RECORD_WRITERS[kind](_get(s, name, w), f"{w}.{name}")
    return bytes(out)


_PAYLOAD_WRITERS = {
    1: _write_position, 2: _write_monitoring, 3: _write_event,
    4: _write_hello, 5: _write_batch,
}


def encode(frame: dict, key: bytes = None) -> bytes:
    """Canonical bytes for a frame dict (the form decode() returns). With a
    key the AUTH flag is set and the tag appended; frame["auth"], if given,
    must agree with whether a key is passed."""
    auth = key is not None
    if "auth" in frame and frame["auth"] is not auth:
        raise EncodeError(f"frame auth={frame['auth']!r} but key "
                          f"{'given' if auth else 'not given'}")
    kind = KIND_NUMBERS.get(_get(frame, "kind", "frame"))
    if kind is None:
        raise EncodeError(f"frame.kind: unknown {frame['kind']!r}")
    name = KIND_NAMES[kind]
    header = MAGIC + struct.pack(
        "<BBBIIQ", VERSION, FLAG_AUTH if auth else 0, kind,
        _int(frame, "device_id", 1, U32_MAX, "frame"),
        _int(frame, "sequence", 0, U32_MAX, "frame"),
        _int(frame, "timestamp_ms", 0, U64_MAX, "frame"))
    body = header + _PAYLOAD_WRITERS[kind](_get(frame, name, "frame"), f"frame.{name}")
    if auth:
        body += compute_tag(bytes(key), body)
    out = body + struct.pack("<I", crc32c(body))
    if len(out) > MAX_LEN:
        raise EncodeError(f"frame of {len(out)} bytes > {MAX_LEN}")
    return out


# ---------------------------------------------------------------- annotate

_HEX_COL = 24


def _hex_rows(b, per=16):
    return [b[i:i + per].hex(" ") for i in range(0, len(b), per)] or [""]


def _emit(lines, b, text, depth=0):
    pad = "  " * depth
    rows = _hex_rows(b)
    if len(rows) == 1 and len(pad) + len(rows[0]) < _HEX_COL:
        lines.append(f"{pad}{rows[0]:<{_HEX_COL - len(pad)}} {text}".rstrip())
    elif len(rows) == 1:
        lines.append(f"{pad}{rows[0]}   {text}".rstrip())
    else:
        for row in rows:
            lines.append(pad + row)
        lines.append(" " * (_HEX_COL + 1) + text)


def annotate(datagram: bytes) -> str:
    """Byte-by-byte dump: hex on the left, meaning on the right, ending with
    the verdict (accepted, or the refusal label and why)."""
    d = bytes(datagram)
    n = len(d)
    lines = []
    try:
        _check_envelope(d)
        envelope_error = None
    except DecodeError as e:
        envelope_error = e

    if n < MIN_LEN or n > MAX_LEN:
        shown = d if n <= 64 else d[:64]
        _emit(lines, shown, f"{n} bytes" + (" (first 64 shown)" if n > 64 else ""))
        lines.append(f"=> refused: {envelope_error.label} ({envelope_error.detail})")
        return "\n".join(lines)

    ok = "" if d[0:2] == MAGIC else "  (expected 46 57)"
    shown = "".join(chr(c) if 0x20 <= c < 0x7F else "." for c in d[0:2])
    _emit(lines, d[0:2], f'magic "{shown}"{ok}')
    _emit(lines, d[2:3], f"version {d[2]}" + ("" if d[2] == VERSION else "  (expected 1)"))
    if d[2] != VERSION:
        _emit(lines, d[3:], "rest of the frame: layout unknown for this version")
        lines.append(f"=> refused: {envelope_error.label} ({envelope_error.detail})")
        return "\n".join(lines)
    flags = d[3]
    ftxt = ("AUTH" if flags & FLAG_AUTH else "no auth tag")
    if flags & ~FLAG_AUTH:
        ftxt += f", undefined bits 0x{flags & ~FLAG_AUTH & 0xFF:02x}"
    _emit(lines, d[3:4], f"flags: {ftxt}")
    kind = d[4]
    _emit(lines, d[4:5], f"kind {kind}" + (f" = {KIND_TITLES[kind]}" if kind in KIND_TITLES
                                            else " (unknown)"))
    dev, seq, ts = struct.unpack_from("<IIQ", d, 5)
    _emit(lines, d[5:9], f"device id {dev}")
    _emit(lines, d[9:13], f"sequence {seq}")
    _emit(lines, d[13:21], f"timestamp {_fmt_time(ts)}")

    auth = bool(flags & FLAG_AUTH)
    payload_end = n - CRC_LEN - (TAG_LEN if auth and n >= MIN_AUTH_LEN else 0)
    error = envelope_error
    if error is None:
        notes = []
        try:
            _decode(d, notes)
        except DecodeError as e:
            error = e
        pos = HEADER_LEN
        for start, end, text, depth in notes:
            _emit(lines, d[start:end], text, depth)
            pos = end
        if error is not None and error.offset is not None and error.offset < payload_end:
            bad_end = max(error.end or 0, error.offset + 1)
            bad_end = min(bad_end, payload_end)
            _emit(lines, d[error.offset:bad_end], f"!! {error.label}: {error.detail}",
                  error.depth)
            pos = bad_end
        if pos < payload_end:
            _emit(lines, d[pos:payload_end], "(not parsed)" if error is not None
                  and error.label != "trailing_bytes" else "!! trailing bytes")
    elif payload_end > HEADER_LEN:
        _emit(lines, d[HEADER_LEN:payload_end], "payload (not parsed)")

    if auth and n >= MIN_AUTH_LEN:
        _emit(lines, d[payload_end:payload_end + TAG_LEN],
              "auth tag: first 16 bytes of HMAC-SHA-256(key, the "
              f"{payload_end} bytes above)")
    want = crc32c(d[:-CRC_LEN])
    got = struct.unpack_from("<I", d, n - CRC_LEN)[0]
    _emit(lines, d[n - CRC_LEN:], f"CRC-32C 0x{got:08x} of the {n - CRC_LEN} bytes above"
          + ("" if got == want else f"  (!! computed 0x{want:08x})"))
    if error is None:
        lines.append(f"=> accepted: {KIND_NAMES[kind]} frame, {n} bytes"
                     + (" (tag not verified: no key)" if auth else ""))
    else:
        lines.append(f"=> refused: {error.label} ({error.detail})")
    return "\n".join(lines)


# ---------------------------------------------------------------- vector check


def _same(a, b, path="frame"):
    """Strict JSON equality: same types, floats compared bit for bit (so
    -0.0 != 0.0), bool never equal to int. Returns None or the first
    difference."""
    if isinstance(a, bool) or isinstance(b, bool):
        return None if type(a) is type(b) and a == b else f"{path}: {a!r} != {b!r}"
    if isinstance(a, float) or isinstance(b, float):
        if type(a) is float and type(b) is float and \
                struct.pack("<d", a) == struct.pack("<d", b):
            return None
        return f"{path}: {a!r} != {b!r}"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in sorted(a):
            diff = _same(a[k], b[k], f"{path}.{k}")
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            diff = _same(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if type(a) is type(b) and a == b:
        return None
    return f"{path}: {a!r} != {b!r}"


def check_valid(v):
    """Failure messages for one valid vector (empty list: passes)."""
    fails = []
    data = bytes.fromhex(v["hex"])
    key = bytes.fromhex(v["key_hex"]) if "key_hex" in v else None
    if v.get("length") is not None and v["length"] != len(data):
        fails.append(f"length field {v['length']} != {len(data)} bytes")
    try:
        frame = decode(data)
    except DecodeError as e:
        return fails + [f"refused as {e}"]
    diff = _same(frame, v["frame"])
    if diff:
        fails.append(f"decoded frame differs: {diff}")
    if key is not None:
        try:
            verify(data, key)
        except DecodeError as e:
            fails.append(f"tag: {e}")
    if v.get("canonical", True):
        try:
            enc = encode(v["frame"], key)
        except (EncodeError, ValueError) as e:
            fails.append(f"encode failed: {e}")
        else:
            if enc != data:
                fails.append(f"encode gives {enc.hex()}")
    else:
        try:
            enc = encode(v["frame"], key)
            if enc == data:
                fails.append("marked canonical=false but encode reproduces it")
        except (EncodeError, ValueError) as e:
            fails.append(f"encode failed: {e}")
    return fails


def check_invalid(v):
    fails = []
    data = bytes.fromhex(v["hex"])
    if v.get("length") is not None and v["length"] != len(data):
        fails.append(f"length field {v['length']} != {len(data)} bytes")
    try:
        if "key_hex" in v:
            verify(data, bytes.fromhex(v["key_hex"]))
        else:
            decode(data)
    except DecodeError as e:
        if e.label != v["error"]:
            fails.append(f"refused as {e.label!r} ({e.detail}), expected {v['error']!r}")
        return fails
    return fails + [f"accepted, expected {v['error']!r}"]


def check_dir(directory):
    """Returns (failures, counts): failures is a list of 'file/name: why'."""
    failures = []
    counts = {}
    for fname, fn in (("valid.json", check_valid), ("invalid.json", check_invalid)):
        with open(f"{directory}/{fname}", encoding="utf-8") as fh:
            vectors = json.load(fh)
        bad = 0
        for v in vectors:
            fails = fn(v)
            if fails:
                bad += 1
                for f in fails:
                    failures.append(f"{fname}/{v.get('name', '?')}: {f}")
        counts[fname] = (len(vectors) - bad, len(vectors))
    return failures, counts


# ---------------------------------------------------------------- CLI


def _hex_arg(s):
    return bytes.fromhex("".join(s.split()))


def add_codec_commands(sub):
    """Adds the check / decode / annotate / encode subcommands to an
    argparse subparsers object (shared with `python -m fleetwire`)."""
    p = sub.add_parser("check", help="check every vector in DIR/{valid,invalid}.json")
    p.add_argument("dir")
    p = sub.add_parser("decode", help="decode one datagram given in hex")
    p.add_argument("hex")
    p.add_argument("--key", help="device key in hex: also verify the tag")
    p = sub.add_parser("annotate", help="byte-by-byte dump of a datagram in hex")
    p.add_argument("hex")
    p = sub.add_parser("encode", help="encode a frame given as JSON")
    p.add_argument("json")
    p.add_argument("--key", help="device key in hex: sign the frame")


CODEC_COMMANDS = ("check", "decode", "annotate", "encode")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_codec_commands(sub)
    return run_codec_command(ap.parse_args(argv))


def run_codec_command(args):
    """Runs a parsed check / decode / annotate / encode command; returns the
    exit status."""
    if args.cmd == "check":
        failures, counts = check_dir(args.dir)
        for f in failures:
            print(f"FAIL {f}")
        parts = [f"{name}: {ok}/{total} ok" for name, (ok, total) in counts.items()]
        total = sum(t for _, t in counts.values())
        nbad = sum(t - ok for ok, t in counts.values())
        verdict = "all passed" if not failures else f"{nbad} vector(s) failed"
        print(f"{', '.join(parts)} ({total} vectors): {verdict}")
        return 1 if failures else 0
    if args.cmd == "decode":
        data = _hex_arg(args.hex)
        try:
            if args.key is not None:
                verify(data, _hex_arg(args.key))
            frame = decode(data)
        except DecodeError as e:
            print(e.label)
            if e.detail:
                print(e.detail, file=sys.stderr)
            return 1
        print(json.dumps(frame, indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    if args.cmd == "annotate":
        print(annotate(_hex_arg(args.hex)))
        return 0
    if args.cmd == "encode":
        try:
            frame = json.loads(args.json)
            key = _hex_arg(args.key) if args.key is not None else None
            print(encode(frame, key).hex())
        except (EncodeError, ValueError) as e:
            print(f"cannot encode: {e}", file=sys.stderr)
            return 1
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
