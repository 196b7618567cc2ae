#!/usr/bin/env python3
"""Turns proto/vectors/{valid,invalid}.json into a C header for test_vectors.c.

Every expected value in the header comes from the JSON files: the datagram
bytes, the key, the decoded frame (as fw_frame initializers, reading values
as C99 hexadecimal floating constants so that they are bit exact, -0.0
included) and the refusal label.

usage: gen_vectors.py VECTOR_DIR OUT.h
"""
import json
import os
import sys

KINDS = {"position": 1, "monitoring": 2, "event": 3, "hello": 4, "batch": 5}
FIX = {"none": 0, "2d": 1, "3d": 2, "dgnss": 3, "rtk_float": 4, "rtk_fixed": 5}
SEVERITY = {"info": 0, "notice": 1, "warning": 2, "error": 3, "critical": 4}


def c_bytes(bs):
    return "{" + ", ".join("0x%02x" % b for b in bs) + "}" if bs else "{0}"


def c_string(s):
    """A C string literal of the UTF-8 bytes of s, and its length."""
    b = s.encode("utf-8")
    out = []
    for c in b:
        if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c in b"_.- ":
            out.append(chr(c))
        else:
            out.append("\\%03o" % c)
    return '"' + "".join(out) + '"', len(b)


def c_str(s):
    if s is None:
        return "{NULL, 0}"
    lit, n = c_string(s)
    return "{%s, %d}" % (lit, n)


def c_double(v):
    return float(v).hex()


class Gen:
    def __init__(self):
        self.decls = []
        self.n = 0

    def fresh(self, what):
        self.n += 1
        return "%s_%d" % (what, self.n)

    def position(self, p):
        return "{%d, %d, %d, %du, %du, %du, %du, %du}" % (
            p["lat_e7"], p["lon_e7"], p["alt_dm"], p["speed_cm_s"], p["heading_ddeg"],
            p["hacc_cm"], FIX[p["fix"]], p["satellites"])

    def monitoring(self, m):
        present = 0
        bits = [("battery_pct", 0x01), ("supply_mv", 0x02), ("temperature_cdeg", 0x04),
                ("rssi_dbm", 0x08), ("uptime_s", 0x10)]
        for key, bit in bits:
            if m[key] is not None:
                present |= bit
        readings = m["readings"]
        if readings:
            name = self.fresh("readings")
            items = ", ".join("{%s, %s}" % (c_str(r["name"]), c_double(r["value"]))
                              for r in readings)
            self.decls.append("static const fw_reading %s[] = {%s};" % (name, items))
        else:
            name = "NULL"
        val = lambda k: m[k] if m[k] is not None else 0
        return "{0x%02xu, %du, %du, %d, %d, %du, %du, %s, NULL, 0}" % (
            present, val("battery_pct"), val("supply_mv"), val("temperature_cdeg"),
            val("rssi_dbm"), val("uptime_s"), len(readings), name)

    def event(self, e):
        return "{%du, %du, %s}" % (e["code"], SEVERITY[e["severity"]], c_str(e["text"]))

    def hello(self, h):
        return "{%s, %s, %du}" % (c_str(h["firmware"]), c_str(h["model"]), h["capabilities"])

    def sample(self, s):
        kind = s["kind"]
        body = getattr(self, kind)(s[kind])
        return "{%du, %d, {.%s = %s}}" % (s["offset_ms"], KINDS[kind], kind, body)

    def batch(self, samples):
        name = self.fresh("samples")
        self.decls.append("static const fw_sample %s[] = {%s};" % (
            name, ",\n    ".join(self.sample(s) for s in samples)))
        return "{%d, %s, NULL, 0}" % (len(samples), name)

    def frame(self, f):
        kind = f["kind"]
        body = getattr(self, kind)(f[kind])
        return "{{%du, %du, %dULL}, %d, {.%s = %s}, NULL, NULL, 0}" % (
            f["device_id"], f["sequence"], f["timestamp_ms"], KINDS[kind], kind, body)


def main():
    vdir, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(vdir, "valid.json")) as fh:
        valid = json.load(fh)
    with open(os.path.join(vdir, "invalid.json")) as fh:
        invalid = json.load(fh)
    g = Gen()
    rows = []
    for i, v in enumerate(valid):
        data = bytes.fromhex(v["hex"])
        assert len(data) == v["length"], v["name"]
        key = bytes.fromhex(v["key_hex"]) if "key_hex" in v else None
        g.decls.append("static const uint8_t valid_bytes_%d[] = %s;" % (i, c_bytes(data)))
        if key is not None:
            g.decls.append("static const uint8_t valid_key_%d[] = %s;" % (i, c_bytes(key)))
        frame = g.frame(v["frame"])
        rows.append('    {"%s", valid_bytes_%d, %d, %s, %d, %d, %d, %s}' % (
            v["name"], i, len(data), "valid_key_%d" % i if key is not None else "NULL",
            len(key) if key is not None else 0, 0 if v.get("canonical") is False else 1,
            1 if v["frame"]["auth"] else 0, frame))
    bad_rows = []
    for i, v in enumerate(invalid):
        data = bytes.fromhex(v["hex"])
        assert len(data) == v["length"], v["name"]
        key = bytes.fromhex(v["key_hex"]) if "key_hex" in v else None
        g.decls.append("static const uint8_t invalid_bytes_%d[] = %s;" % (i, c_bytes(data)))
        if key is not None:
            g.decls.append("static const uint8_t invalid_key_%d[] = %s;" % (i, c_bytes(key)))
        bad_rows.append('    {"%s", invalid_bytes_%d, %d, %s, %d, "%s"}' % (
            v["name"], i, len(data), "invalid_key_%d" % i if key is not None else "NULL",
            len(key) if key is not None else 0, v["error"]))
    with open(out, "w") as fh:
        fh.write("/* Generated by sdk/c/tests/gen_vectors.py from proto/vectors; do not edit. */\n")
        fh.write("#include \"fleetwire.h\"\n\n")
        fh.write("\n".join(g.decls) + "\n\n")
        fh.write("static const struct valid_vector valid_vectors[] = {\n%s\n};\n" % ",\n".join(rows))
        fh.write("static const struct invalid_vector invalid_vectors[] = {\n%s\n};\n"
                 % ",\n".join(bad_rows))
        fh.write("#define VALID_COUNT %d\n#define INVALID_COUNT %d\n" % (len(valid), len(invalid)))


if __name__ == "__main__":
    main()
