"""The codec (fleetwire.wire) against proto/vectors and PROTOCOL.md."""

import contextlib
import io
import json
import os
import re
import struct
import unittest

import pytest

from fleetwire import wire as fw
from conftest import SPEC, VECTORS

KEY = b"fleetwire-test-key-device-0042!!"


def load(name):
    with open(os.path.join(VECTORS, name), encoding="utf-8") as fh:
        return json.load(fh)


VALID = load("valid.json")
INVALID = load("invalid.json")


def frame_bytes(kind, payload, flags=0, device_id=42, sequence=9,
                timestamp=1764000000000, key=None):
    """A datagram around a raw payload, with a correct CRC (and tag)."""
    body = b"FW\x01" + struct.pack("<BBIIQ", flags, kind, device_id, sequence,
                                   timestamp) + payload
    if key is not None:
        body += fw.compute_tag(key, body)
    return body + struct.pack("<I", fw.crc32c(body))


POSITION = dict(lat_e7=481372000, lon_e7=115755000, alt_dm=5190,
                speed_cm_s=1389, heading_ddeg=2705, hacc_cm=250, fix="3d",
                satellites=11)


def position_payload(speed=b"\xed\x0a", heading=b"\x91\x15"):
    return (bytes.fromhex("c09d89cb03 f09fb26e 8c51") + speed + heading
            + bytes.fromhex("fa01 02 0b"))


# ---------------------------------------------------------------- vectors


def test_there_are_vectors():
    assert len(VALID) >= 12 and len(INVALID) >= 12
    labels = {v["error"] for v in INVALID}
    # Every decode label of section 7 has an invalid vector.
    assert labels == set(fw.LABELS), set(fw.LABELS) ^ labels


@pytest.mark.parametrize("v", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector_decodes_to_its_fields(v):
    data = bytes.fromhex(v["hex"])
    assert len(data) == v["length"]
    frame = fw.decode(data)
    assert fw._same(frame, v["frame"]) is None, fw._same(frame, v["frame"])
    if "key_hex" in v:
        fw.verify(data, bytes.fromhex(v["key_hex"]))
        assert frame["auth"] is True
    else:
        assert frame["auth"] is False


@pytest.mark.parametrize("v", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector_encodes_byte_for_byte(v):
    key = bytes.fromhex(v["key_hex"]) if "key_hex" in v else None
    encoded = fw.encode(v["frame"], key)
    if v.get("canonical", True):
        assert encoded.hex() == v["hex"]
    else:
        # Not what an encoder writes (a non-minimal varint): the canonical
        # encoding differs, but decodes to the same fields.
        assert encoded.hex() != v["hex"]
        assert fw._same(fw.decode(encoded), v["frame"]) is None


@pytest.mark.parametrize("v", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_is_refused_with_its_label(v):
    data = bytes.fromhex(v["hex"])
    assert len(data) == v["length"]
    with pytest.raises(fw.DecodeError) as e:
        if "key_hex" in v:
            fw.verify(data, bytes.fromhex(v["key_hex"]))
        else:
            fw.decode(data)
    assert e.value.label == v["error"], str(e.value)
    if "key_hex" in v:
        # Only the tag is wrong: without the key the frame decodes.
        fw.decode(data)


class Vectors(unittest.TestCase):
    def test_check_functions_agree(self):
        for v in VALID:
            with self.subTest(v["name"]):
                self.assertEqual(fw.check_valid(v), [])
        for v in INVALID:
            with self.subTest(v["name"]):
                self.assertEqual(fw.check_invalid(v), [])

    def test_cli_check_exit_status(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = fw.main(["check", VECTORS])
        self.assertEqual(rc, 0, out.getvalue())
        self.assertIn("all passed", out.getvalue())

    def test_annotate_every_vector(self):
        for v in VALID:
            with self.subTest(v["name"]):
                text = fw.annotate(bytes.fromhex(v["hex"]))
                self.assertIn("=> accepted", text)
        for v in INVALID:
            if v["error"] == "bad_auth_tag":
                continue  # annotate has no key
            with self.subTest(v["name"]):
                text = fw.annotate(bytes.fromhex(v["hex"]))
                self.assertIn(f"=> refused: {v['error']}", text)

    def test_section_9_dumps_match_vectors(self):
        with open(SPEC, encoding="utf-8") as fh:
            doc = fh.read()
        sec9 = doc[doc.index("## 9."):doc.index("## 10.")]
        vectors = {v["name"]: v for v in VALID}
        found = 0
        for m in re.finditer(r"### (9\.\d) [^(]*\(`(\w+)`, (\d+) bytes\)\n.*?```\n(.*?)```",
                             sec9, re.S):
            num, name, length, block = m.groups()
            out = bytearray()
            for line in block.splitlines():
                toks = re.split(r"\s{2,}", line.strip())[0].split()
                if toks and all(re.fullmatch(r"[0-9a-f]{2}", t) for t in toks):
                    out += bytes(int(t, 16) for t in toks)
            with self.subTest(num):
                self.assertEqual(len(out), int(length))
                self.assertEqual(out.hex(), vectors[name]["hex"])
            found += 1
        self.assertEqual(found, 6)


class Crc(unittest.TestCase):
    def test_check_value(self):
        self.assertEqual(fw.crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(struct.pack("<I", 0xE3069283), bytes.fromhex("839206e3"))

    def test_empty_and_polynomial(self):
        self.assertEqual(fw.crc32c(b""), 0)
        self.assertEqual(fw.CRC32C_POLY_REFLECTED, 0x82F63B78)

    def test_matches_bitwise_reference(self):
        def bitwise(data):
            c = 0xFFFFFFFF
            for b in data:
                c ^= b
                for _ in range(8):
                    c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
            return c ^ 0xFFFFFFFF
        for data in (b"", b"\x00", b"\xff" * 7, bytes(range(256)), b"FW\x01"):
            self.assertEqual(fw.crc32c(data), bitwise(data))


class Varint(unittest.TestCase):
    def read(self, bits, hexstr):
        data = bytes.fromhex(hexstr)
        r = fw._Reader(data, 0, len(data))
        value = r.varint(bits, "test")
        return value, r.pos

    def test_spec_examples(self):
        for value, hexstr in ((0, "00"), (127, "7f"), (128, "8001"), (300, "ac02"),
                              (65535, "ffff03"), (4294967295, "ffffffff0f")):
            self.assertEqual(fw.encode_varint(value).hex(), hexstr)
            bits = 16 if value <= 0xFFFF else 32
            self.assertEqual(self.read(bits, hexstr), (value, len(hexstr) // 2))

    def test_non_minimal_accepted(self):
        self.assertEqual(self.read(16, "ed8a00"), (1389, 3))
        self.assertEqual(self.read(16, "8000"), (0, 2))
        self.assertEqual(self.read(32, "8080808000"), (0, 5))
        self.assertEqual(self.read(16, "ff8003"), (0xC07F, 3))

    def test_limits(self):
        self.assertEqual(self.read(16, "ffff03")[0], 0xFFFF)
        self.assertEqual(self.read(32, "ffffffff0f")[0], 0xFFFFFFFF)
        bad = (
            (16, "ffff04"),        # last byte > 0x03: overflows u16
            (16, "808080"),        # 3rd byte still continues: too long
            (16, "80808000"),      # 4 bytes
            (32, "ffffffff10"),    # last byte > 0x0f
            (32, "808080808000"),  # 6 bytes
            (32, "8080"),          # ends inside the varint
            (16, ""),              # no byte at all
        )
        for bits, hexstr in bad:
            with self.subTest(hexstr):
                with self.assertRaises(fw.DecodeError) as cm:
                    self.read(bits, hexstr)
                self.assertEqual(cm.exception.label, "malformed_payload")

    def test_u16_overflow_in_a_frame(self):
        # What invalid.json/varint_overflow describes: the speed as ff ff 04.
        d = frame_bytes(1, position_payload(speed=b"\xff\xff\x04"))
        with self.assertRaises(fw.DecodeError) as cm:
            fw.decode(d)
        self.assertEqual(cm.exception.label, "malformed_payload")
        self.assertIn("ground speed", cm.exception.detail)
        d = frame_bytes(1, position_payload(speed=b"\xff\xff\x03"))
        self.assertEqual(fw.decode(d)["position"]["speed_cm_s"], 65535)


class Zigzag(unittest.TestCase):
    def test_small_values(self):
        for n, u in ((0, 0), (-1, 1), (1, 2), (-2, 3), (2, 4)):
            self.assertEqual(fw.zigzag(n), u)
            self.assertEqual(fw.unzigzag(u), n)

    def test_spec_examples(self):
        for n, u, hexstr in ((5190, 10380, "8c51"), (-1250, 2499, "c313"),
                             (481372000, 962744000, "c09d89cb03")):
            self.assertEqual(fw.zigzag(n), u)
            self.assertEqual(fw.encode_varint(u).hex(), hexstr)

    def test_extremes(self):
        self.assertEqual(fw.zigzag(2**31 - 1), 2**32 - 2)
        self.assertEqual(fw.zigzag(-2**31), 2**32 - 1)
        self.assertEqual(fw.zigzag(-32768, 16), 65535)
        self.assertEqual(fw.zigzag(32767, 16), 65534)
        for n in (-2**31, -1000000, -1, 0, 1, 2**31 - 1):
            self.assertEqual(fw.unzigzag(fw.zigzag(n)), n)
        with self.assertRaises(ValueError):
            fw.zigzag(2**31)


class RoundTrip(unittest.TestCase):
    FRAMES = [
        {"device_id": 1, "sequence": 0, "timestamp_ms": 0, "kind": "position",
         "auth": False, "position": dict(POSITION, fix="rtk_float", lat_e7=-1)},
        {"device_id": 9, "sequence": 2**32 - 1, "timestamp_ms": 2**64 - 1,
         "kind": "monitoring", "auth": False,
         "monitoring": {"battery_pct": 0, "supply_mv": 65535,
                        "temperature_cdeg": -32768, "rssi_dbm": -128,
                        "uptime_s": 0,
                        "readings": [{"name": "_a.b-C9", "value": -0.0},
                                     {"name": "x" * 32, "value": 5e-324}]}},
        {"device_id": 3, "sequence": 5, "timestamp_ms": 1, "kind": "event",
         "auth": False, "event": {"code": 0, "severity": "error", "text": ""}},
        {"device_id": 3, "sequence": 6, "timestamp_ms": 1, "kind": "hello",
         "auth": False, "hello": {"firmware": "", "model": "m" * 32,
                                  "capabilities": 0xFFFFFFFF}},
        {"device_id": 3, "sequence": 7, "timestamp_ms": 1, "kind": "batch",
         "auth": False,
         "batch": [{"offset_ms": 2**32 - 1, "kind": "event",
                    "event": {"code": 1, "severity": "info", "text": "é"}}]},
    ]

    def test_encode_decode(self):
        for frame in self.FRAMES:
            with self.subTest(frame["kind"]):
                data = fw.encode(frame)
                self.assertIsNone(fw._same(fw.decode(data), frame))
                self.assertEqual(fw.encode(fw.decode(data)), data)

    def test_signed(self):
        for frame in self.FRAMES:
            with self.subTest(frame["kind"]):
                signed = dict(frame, auth=True)
                data = fw.encode(signed, KEY)
                self.assertEqual(len(data), len(fw.encode(frame)) + 16)
                self.assertIsNone(fw._same(fw.decode(data), signed))
                fw.verify(data, KEY)
                with self.assertRaises(fw.DecodeError) as cm:
                    fw.verify(data, KEY + b"x")
                self.assertEqual(cm.exception.label, "bad_auth_tag")

    def test_verify_unsigned_frame(self):
        with self.assertRaises(fw.DecodeError) as cm:
            fw.verify(fw.encode(self.FRAMES[0]), KEY)
        self.assertEqual(cm.exception.label, "bad_auth_tag")

    def test_encoder_refuses_invalid_frames(self):
        base = self.FRAMES[0]
        bad = [
            dict(base, device_id=0),
            dict(base, position=dict(POSITION, heading_ddeg=3600)),
            dict(base, position=dict(POSITION, fix="3D")),
            dict(base, auth=True),  # no key
            {"device_id": 1, "sequence": 0, "timestamp_ms": 0, "kind": "batch",
             "auth": False, "batch": []},
            dict(self.FRAMES[1], monitoring=dict(self.FRAMES[1]["monitoring"],
                 readings=[{"name": "1x", "value": 1.0}])),
            dict(self.FRAMES[1], monitoring=dict(self.FRAMES[1]["monitoring"],
                 readings=[{"name": "a", "value": float("nan")}])),
            dict(self.FRAMES[2], event={"code": 0, "severity": "info", "text": "a" * 65}),
        ]
        for i, frame in enumerate(bad):
            with self.subTest(i):
                with self.assertRaises(ValueError):
                    fw.encode(frame)


class ReceiverOrder(unittest.TestCase):
    def label(self, data):
        with self.assertRaises(fw.DecodeError) as cm:
            fw.decode(data)
        return cm.exception.label

    def test_checksum_before_flags_kind_and_device(self):
        d = bytearray(frame_bytes(9, b"", flags=0x80, device_id=0))
        self.assertEqual(self.label(bytes(d)), "unknown_flags")
        d[-1] ^= 1
        self.assertEqual(self.label(bytes(d)), "bad_checksum")

    def test_flags_kind_device_order(self):
        self.assertEqual(self.label(frame_bytes(9, b"", device_id=0)), "unknown_kind")
        self.assertEqual(self.label(frame_bytes(1, b"", device_id=0)), "bad_device_id")

    def test_version_before_checksum(self):
        d = bytearray(frame_bytes(1, position_payload()))
        d[2] = 2
        self.assertEqual(self.label(bytes(d)), "unsupported_version")

    def test_payload_ends_before_tag(self):
        # With AUTH the 16 tag bytes are not payload: a truncated payload is
        # malformed even though bytes follow.
        d = frame_bytes(1, position_payload()[:-1], flags=1, key=KEY)
        self.assertEqual(self.label(d), "malformed_payload")
        d = frame_bytes(1, position_payload() + b"\x00", flags=1, key=KEY)
        self.assertEqual(self.label(d), "trailing_bytes")

    def test_first_bad_field_decides(self):
        # heading out of range (field 5) before fix type out of range (field 7)
        p = bytes.fromhex("00 00 00 00 901c 00 09 00")
        self.assertEqual(self.label(frame_bytes(1, p)), "out_of_range")
        # reading count over 32 is refused before any item is read
        p = b"\x00" * 5 + fw.encode_varint(33)
        self.assertEqual(self.label(frame_bytes(2, p)), "too_many_items")
        # invalid UTF-8 in a name is malformed, not bad_name
        p = b"\x00" * 5 + b"\x01\x02a\xff" + struct.pack("<d", 1.0)
        self.assertEqual(self.label(frame_bytes(2, p)), "malformed_payload")
        # a non-ASCII (valid UTF-8) name is bad_name
        p = b"\x00" * 5 + b"\x01\x02\xc3\xa4" + struct.pack("<d", 1.0)
        self.assertEqual(self.label(frame_bytes(2, p)), "bad_name")
        # infinite reading value
        p = b"\x00" * 5 + b"\x01\x01a" + struct.pack("<d", float("-inf"))
        self.assertEqual(self.label(frame_bytes(2, p)), "out_of_range")
        # string length beyond the payload
        p = bytes.fromhex("0700 01 05 6161")
        self.assertEqual(self.label(frame_bytes(3, p)), "malformed_payload")
        # hello firmware of 33 bytes
        p = b"\x21" + b"1" * 33 + b"\x00\x00"
        self.assertEqual(self.label(frame_bytes(4, p)), "out_of_range")
        # batch sample kind 0
        self.assertEqual(self.label(frame_bytes(5, b"\x01\x00\x00")), "unknown_kind")

    def test_size_limits(self):
        self.assertEqual(self.label(b"\x00" * 1201), "too_long")
        self.assertEqual(self.label(b"FW\x01"), "too_short")
