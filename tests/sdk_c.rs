//! The C device SDK (`sdk/c`) against the golden vectors, the Rust crate and
//! a live server.
//!
//! The C code is built here with `gcc` (strict warnings as errors) into
//! cargo's test scratch directory, and driven through pipes:
//!
//! * `sdk/c/tests/test_vectors.c`: every golden vector encoded byte for byte
//!   and decoded to its fields by the C library (plain and under ASan +
//!   UBSan);
//! * `sdk/c/tests/harness.c gen`: random frames from the C encoder, each
//!   with a description of the fields it was given, which
//!   `fleetwire_proto::decode` must reproduce (and the Rust encoder must
//!   write the same bytes);
//! * `sdk/c/tests/harness.c decode`: random and mutated datagrams made here,
//!   which the C decoder must accept or refuse exactly as the Rust decoder
//!   does, with the same fields or the same refusal label;
//! * `sdk/c/examples/linux_udp.c` against `fleetwire serve`.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use common::Server;
use fleetwire_proto::json::{JsonError, encode_json};
use fleetwire_proto::{
    Body, DecodeError, EncodeError, Event, Frame, Monitoring, Position, Record, crc32c, decode,
    encode, encode_signed,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Random frames from the C encoder, and random datagrams for the C decoder.
const DIFFERENTIAL: usize = 100_000;
/// The same, with the C code built with AddressSanitizer and UBSan.
const SANITIZED: usize = 10_000;

const STRICT: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Wconversion", "-Werror"];
const SANITIZE: &[&str] = &[
    "-O1",
    "-g",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
];

// ---------------------------------------------------------------------------
// Building the C code

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn sdk() -> PathBuf {
    root().join("sdk/c")
}

fn build_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk_c");
    std::fs::create_dir_all(&d).expect("create build dir");
    d
}

/// Compiles `sources` (relative to sdk/c) into `name` with gcc.
fn gcc(name: &str, sources: &[&str], flags: &[&str], include: Option<&Path>) -> PathBuf {
    let exe = build_dir().join(name);
    let mut cmd = Command::new("gcc");
    cmd.args(STRICT).args(flags).arg("-I").arg(sdk());
    if let Some(dir) = include {
        cmd.arg("-I").arg(dir);
    }
    for s in sources {
        cmd.arg(sdk().join(s));
    }
    cmd.arg("-o").arg(&exe);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc ({e}); scripts/setup.sh installs it"));
    assert!(out.status.success(), "gcc {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    exe
}

fn harness() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| gcc("harness", &["fleetwire.c", "tests/harness.c"], &["-O2"], None))
}

fn harness_sanitized() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| gcc("harness-asan", &["fleetwire.c", "tests/harness.c"], SANITIZE, None))
}

fn linux_udp() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| gcc("linux_udp", &["fleetwire.c", "examples/linux_udp.c"], &["-O2"], None))
}

// ---------------------------------------------------------------------------
// The description of a frame in wire values (the format of harness.c)

fn describe(f: &Frame<'_>) -> String {
    let mut s = format!(
        "{} {} {} {} ",
        f.device_id,
        f.sequence,
        f.timestamp_ms,
        u8::from(f.auth.is_some())
    );
    match &f.body {
        Body::Position(p) => position(&mut s, p),
        Body::Monitoring(m) => monitoring(&mut s, m),
        Body::Event(e) => event(&mut s, e),
        Body::Hello(h) => {
            let _ = write!(
                s,
                "H f:{} m:{} {}",
                hex::encode(h.firmware),
                hex::encode(h.model),
                h.capabilities
            );
        }
        Body::Batch(b) => {
            let _ = write!(s, "B {}", b.samples.len());
            for sample in b.samples.iter() {
                let _ = write!(s, " @{} ", sample.offset_ms);
                match &sample.record {
                    Record::Position(p) => position(&mut s, p),
                    Record::Monitoring(m) => monitoring(&mut s, m),
                    Record::Event(e) => event(&mut s, e),
                }
            }
        }
    }
    s
}

fn position(s: &mut String, p: &Position) {
    let _ = write!(
        s,
        "P {} {} {} {} {} {} {} {}",
        p.lat_e7,
        p.lon_e7,
        p.alt_dm,
        p.speed_cm_s,
        p.heading_ddeg,
        p.hacc_cm,
        p.fix as u8,
        p.satellites
    );
}

fn opt<T: std::fmt::Display>(s: &mut String, v: Option<T>) {
    match v {
        Some(v) => {
            let _ = write!(s, " {v}");
        }
        None => s.push_str(" -"),
    }
}

fn monitoring(s: &mut String, m: &Monitoring<'_>) {
    s.push('M');
    opt(s, m.battery_pct);
    opt(s, m.supply_mv);
    opt(s, m.temperature_cdeg);
    opt(s, m.rssi_dbm);
    opt(s, m.uptime_s);
    let _ = write!(s, " {}", m.readings.len());
    for r in m.readings.iter() {
        let _ = write!(s, " {}={:016x}", hex::encode(r.name), r.value.to_bits());
    }
}

fn event(s: &mut String, e: &Event<'_>) {
    let _ = write!(s, "E {} {}", e.code, e.severity as u8);
    match e.text {
        Some(t) => {
            let _ = write!(s, " t:{}", hex::encode(t));
        }
        None => s.push_str(" -"),
    }
}

/// What the Rust side makes of a datagram: "ok <description>" or
/// "err <label>", the tag verified when a key is given.
fn rust_outcome(d: &[u8], key: Option<&[u8]>) -> String {
    match decode(d) {
        Err(e) => format!("err {}", e.as_str()),
        Ok(f) => {
            if let (Some(k), Some(tag)) = (key, f.auth) {
                if let Err(e) = tag.verify(k) {
                    return format!("err {}", e.as_str());
                }
            }
            format!("ok {}", describe(&f))
        }
    }
}

/// A key as harness.c writes it: "-" none, "=" the empty key, else hex.
fn parse_key(s: &str) -> Option<Vec<u8>> {
    match s {
        "-" => None,
        "=" => Some(Vec::new()),
        h => Some(hex::decode(h).expect("key hex")),
    }
}

fn key_token(k: Option<&[u8]>) -> String {
    match k {
        None => "-".into(),
        Some([]) => "=".into(),
        Some(k) => hex::encode(k),
    }
}

// ---------------------------------------------------------------------------
// C encoder -> Rust decoder

/// Runs `harness gen` and checks every frame with the Rust crate. Returns
/// how many frames of each kind (and how many signed ones) it saw.
fn c_frames_in_rust(harness: &Path, seed: u64, n: usize) -> BTreeMap<String, usize> {
    let mut child = Command::new(harness)
        .args(["gen", &seed.to_string(), &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run harness gen");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = BTreeMap::new();
    let mut count = 0;
    let mut buf = [0u8; 1200];
    for line in stdout.lines() {
        let line = line.expect("harness output");
        let mut parts = line.splitn(3, ' ');
        let (hexs, key, desc) = match (parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(k), Some(d)) => (h, parse_key(k), d),
            _ => panic!("line {count}: not '<hex> <key> <description>': {line}"),
        };
        let bytes = hex::decode(hexs).expect("frame hex");
        let frame = decode(&bytes).unwrap_or_else(|e| {
            panic!("frame {count} (seed {seed}): Rust refuses it: {}\n{line}", e.as_str())
        });
        assert_eq!(describe(&frame), desc, "frame {count} (seed {seed}): fields differ\n{hexs}");
        match (&key, frame.auth) {
            (Some(k), Some(tag)) => tag.verify(k).unwrap_or_else(|e| {
                panic!("frame {count} (seed {seed}): tag: {}\n{line}", e.as_str())
            }),
            (None, None) => {}
            _ => panic!("frame {count} (seed {seed}): tag presence differs\n{line}"),
        }
        // The Rust encoder writes the same bytes: the C encoder writes the
        // canonical form.
        let len = match &key {
            Some(k) => encode_signed(&frame, k, &mut buf),
            None => encode(&frame, &mut buf),
        }
        .unwrap_or_else(|e| panic!("frame {count}: Rust cannot encode it again: {e}"));
        assert_eq!(&buf[..len], &bytes[..], "frame {count} (seed {seed}): bytes differ");
        *seen.entry(frame.kind().as_str().to_string()).or_insert(0) += 1;
        if key.is_some() {
            *seen.entry("signed".into()).or_insert(0) += 1;
        }
        if bytes.len() > 1100 {
            *seen.entry("over_1100_bytes".into()).or_insert(0) += 1;
        }
        count += 1;
    }
    let out = child.wait_with_output().expect("wait for harness");
    assert!(out.status.success(), "harness gen failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count, n, "harness gen wrote {count} frames, not {n}");
    seen
}

fn check_frame_mix(seen: &BTreeMap<String, usize>, n: usize) {
    for k in ["position", "monitoring", "event", "hello", "batch", "signed"] {
        let c = seen.get(k).copied().unwrap_or(0);
        assert!(c >= n / 10, "only {c} {k} frames of {n}: {seen:?}");
    }
    assert!(seen.get("over_1100_bytes").copied().unwrap_or(0) > 0, "no large frames: {seen:?}");
}

#[test]
fn random_frames_from_the_c_encoder_decode_in_rust_to_the_same_fields() {
    let seen = c_frames_in_rust(harness(), 0x5dc0_ffee, DIFFERENTIAL);
    eprintln!("C encoder -> Rust decoder: {DIFFERENTIAL} frames, {seen:?}");
    check_frame_mix(&seen, DIFFERENTIAL);
}

// ---------------------------------------------------------------------------
// Datagrams for the C decoder: Rust-encoded frames, golden vectors, fuzzed
// payloads, garbage, and mutations of all of them.

/// An unsigned value of 0 ..= max, biased to varint boundaries and limits.
fn edge_u(rng: &mut StdRng, max: u64) -> u64 {
    const EDGES: [u64; 10] = [0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455, 268435456];
    match rng.random_range(0..4) {
        0 => EDGES[rng.random_range(0..EDGES.len())].min(max),
        1 => max - rng.random_range(0..3u64).min(max),
        _ => {
            let bits = rng.random_range(1..=64u32);
            let v =
                if bits == 64 { rng.random::<u64>() } else { rng.random::<u64>() >> (64 - bits) };
            if v > max { v % (max + 1) } else { v }
        }
    }
}

fn edge_i(rng: &mut StdRng, lim: i64) -> i64 {
    let v = edge_u(rng, lim as u64) as i64;
    if rng.random_bool(0.5) { -v } else { v }
}

fn random_text(rng: &mut StdRng, max: usize) -> String {
    let target = if rng.random_bool(0.25) { max } else { rng.random_range(0..=max) };
    let mut s = String::new();
    loop {
        let c = match rng.random_range(0..8) {
            0..=3 => char::from(rng.random_range(0x20u8..0x7f)),
            4 | 5 => char::from_u32(rng.random_range(0x80..0x800)).unwrap_or('x'),
            6 => char::from_u32(rng.random_range(0x800..0x10000)).unwrap_or('y'),
            _ => char::from_u32(rng.random_range(0x10000..0x110000)).unwrap_or('z'),
        };
        if s.len() + c.len_utf8() > target {
            return s;
        }
        s.push(c);
    }
}

const NAME_FIRST: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_";
const NAME_REST: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_0123456789.-";

fn random_name(rng: &mut StdRng) -> String {
    let len = if rng.random_bool(0.25) { 32 } else { rng.random_range(1..=12) };
    let mut s = String::new();
    s.push(char::from(NAME_FIRST[rng.random_range(0..NAME_FIRST.len())]));
    for _ in 1..len {
        s.push(char::from(NAME_REST[rng.random_range(0..NAME_REST.len())]));
    }
    s
}

fn random_f64(rng: &mut StdRng) -> f64 {
    const EDGES: [u64; 6] = [
        0,
        0x8000_0000_0000_0000,
        0x7FEF_FFFF_FFFF_FFFF,
        0xFFEF_FFFF_FFFF_FFFF,
        1,
        0x8000_0000_0000_0001,
    ];
    if rng.random_bool(0.25) {
        return f64::from_bits(EDGES[rng.random_range(0..EDGES.len())]);
    }
    loop {
        let v = f64::from_bits(rng.random());
        if v.is_finite() {
            return v;
        }
    }
}

fn position_json(rng: &mut StdRng) -> Value {
    const FIX: [&str; 6] = ["none", "2d", "3d", "dgnss", "rtk_float", "rtk_fixed"];
    json!({
        "lat_e7": edge_i(rng, 900_000_000), "lon_e7": edge_i(rng, 1_800_000_000),
        "alt_dm": edge_i(rng, 1_000_000), "speed_cm_s": edge_u(rng, 65535),
        "heading_ddeg": edge_u(rng, 3599), "hacc_cm": edge_u(rng, 65535),
        "fix": FIX[rng.random_range(0..6)], "satellites": edge_u(rng, 255),
    })
}

fn monitoring_json(rng: &mut StdRng, max_readings: usize) -> Value {
    let mut names: Vec<String> = Vec::new();
    let n = rng.random_range(0..=max_readings);
    while names.len() < n {
        let name = random_name(rng);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let readings: Vec<Value> =
        names.iter().map(|n| json!({"name": n, "value": random_f64(rng)})).collect();
    let battery = json!(rng.random_range(0..=100));
    let supply = json!(rng.random_range(0..=65535));
    let temperature = json!(rng.random_range(-32768..=32767));
    let rssi = json!(rng.random_range(-128..=127));
    let uptime = json!(edge_u(rng, u64::from(u32::MAX)));
    let mut some = |v: Value| if rng.random_bool(0.5) { v } else { Value::Null };
    json!({
        "battery_pct": some(battery), "supply_mv": some(supply),
        "temperature_cdeg": some(temperature), "rssi_dbm": some(rssi), "uptime_s": some(uptime),
        "readings": readings,
    })
}

fn event_json(rng: &mut StdRng) -> Value {
    const SEV: [&str; 5] = ["info", "notice", "warning", "error", "critical"];
    let text = if rng.random_bool(0.3) { Value::Null } else { json!(random_text(rng, 64)) };
    json!({"code": edge_u(rng, 65535), "severity": SEV[rng.random_range(0..5)], "text": text})
}

/// A random frame in the `frame_to_json` form.
fn frame_json(rng: &mut StdRng) -> Value {
    let kind = ["position", "monitoring", "event", "hello", "batch"][rng.random_range(0..5)];
    let body = match kind {
        "position" => position_json(rng),
        "monitoring" => monitoring_json(rng, 32),
        "event" => event_json(rng),
        "hello" => json!({
            "firmware": random_text(rng, 32), "model": random_text(rng, 32),
            "capabilities": edge_u(rng, u64::from(u32::MAX)),
        }),
        _ => {
            let n = if rng.random_bool(0.25) { 128 } else { rng.random_range(1..=8) };
            let samples: Vec<Value> = (0..n)
                .map(|_| {
                    let k = ["position", "monitoring", "event"][rng.random_range(0..3)];
                    let rec = match k {
                        "position" => position_json(rng),
                        "monitoring" => monitoring_json(rng, 4),
                        _ => event_json(rng),
                    };
                    json!({"offset_ms": edge_u(rng, u64::from(u32::MAX)), "kind": k, k: rec})
                })
                .collect();
            Value::Array(samples)
        }
    };
    let ts = if rng.random_bool(0.3) { 0 } else { rng.random::<u64>() };
    json!({
        "device_id": 1 + edge_u(rng, u64::from(u32::MAX) - 1),
        "sequence": edge_u(rng, u64::from(u32::MAX)), "timestamp_ms": ts,
        "kind": kind, kind: body,
    })
}

/// Encodes a random frame with the Rust encoder, dropping readings or
/// samples (keeping the longest prefix that fits) when it is over 1200 bytes.
fn rust_frame(rng: &mut StdRng, key: Option<&[u8]>) -> Vec<u8> {
    let mut v = frame_json(rng);
    let list = match v["kind"].as_str() {
        Some("monitoring") => Some("/monitoring/readings"),
        Some("batch") => Some("/batch"),
        _ => None,
    };
    let fits = |v: &Value| match encode_json(v, key) {
        Ok(b) => Some(b),
        Err(JsonError::Encode(EncodeError::TooLong)) => None,
        Err(e) => panic!("Rust cannot encode {v}: {e}"),
    };
    if let Some(b) = fits(&v) {
        return b;
    }
    let path = list.expect("only lists make a frame too long");
    let full = v.pointer(path).and_then(Value::as_array).cloned().expect("list");
    let (mut lo, mut hi) = (0, full.len()); // lo fits, hi does not
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        *v.pointer_mut(path).expect("list") = Value::Array(full[..mid].to_vec());
        if fits(&v).is_some() { lo = mid } else { hi = mid }
    }
    *v.pointer_mut(path).expect("list") = Value::Array(full[..lo.max(1)].to_vec());
    fits(&v).expect("a prefix fits")
}

/// A payload written field by field like an encoder would, except that
/// each field is, with probability `p`, broken in one of the ways a
/// receiver must notice (so that every refusal label of the payload checks
/// comes up, and the first bad field decides).
struct Fuzz<'r> {
    rng: &'r mut StdRng,
    out: Vec<u8>,
    p: f64,
}

impl Fuzz<'_> {
    fn odd(&mut self) -> bool {
        self.p > 0.0 && self.rng.random_bool(self.p)
    }

    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.out.push(b);
                return;
            }
            self.out.push(b | 0x80);
        }
    }

    /// An unsigned varint field of `max_bytes` (3 for u16, 5 for u32).
    fn uint(&mut self, max_bytes: usize, v: u64) {
        if !self.odd() {
            return self.varint(v);
        }
        let last_max = if max_bytes == 3 { 0x03 } else { 0x0f };
        match self.rng.random_range(0..5) {
            // Non-minimal but valid: padded to max_bytes.
            0 => {
                let mut v = v;
                for _ in 0..max_bytes - 1 {
                    self.out.push((v & 0x7f) as u8 | 0x80);
                    v >>= 7;
                }
                self.out.push((v as u8) & last_max);
            }
            // One byte too many.
            1 => {
                self.out.extend(std::iter::repeat_n(0x80, max_bytes));
                self.out.push(0);
            }
            // The last byte above last_max (overflows the type).
            2 => {
                self.out.extend(std::iter::repeat_n(0xff, max_bytes - 1));
                self.out.push(last_max + 1 + self.rng.random_range(0..(0x7f - last_max)));
            }
            // Ends with a continuation bit.
            3 => self.out.push(0x80 | self.rng.random_range(0..0x80u8)),
            _ => self.varint(v),
        }
    }

    fn zigzag(v: i64) -> u64 {
        ((v << 1) ^ (v >> 63)) as u64
    }

    /// A signed field of 32 bits within -lim ..= lim (or out of it).
    fn i32_in(&mut self, lim: i64) {
        let v = if self.odd() {
            let over = self.rng.random_range(lim + 1..=i64::from(i32::MAX));
            if self.rng.random_bool(0.5) { -over } else { over }
        } else {
            edge_i(self.rng, lim)
        };
        self.uint(5, Self::zigzag(v) & 0xffff_ffff);
    }

    fn u16_below(&mut self, max: u64) {
        let v = if max < 65535 && self.odd() {
            self.rng.random_range(max + 1..=65535)
        } else {
            edge_u(self.rng, max)
        };
        self.uint(3, v);
    }

    fn byte_below(&mut self, max: u8) {
        let v = if self.odd() {
            self.rng.random_range(max..=255)
        } else {
            self.rng.random_range(0..max)
        };
        self.out.push(v);
    }

    fn tag(&mut self, present: bool) {
        let b = if self.odd() { self.rng.random_range(2..=255) } else { u8::from(present) };
        self.out.push(b);
    }

    /// A string of at most `max` bytes (sometimes longer, or not UTF-8, or
    /// with a length beyond the datagram).
    fn text(&mut self, max: usize) {
        let mut b = random_text(self.rng, max).into_bytes();
        if self.odd() {
            match self.rng.random_range(0..4) {
                0 => b.extend(std::iter::repeat_n(b'x', self.rng.random_range(1..=8))),
                1 => {
                    const BAD: [&[u8]; 6] = [
                        b"\xff",
                        b"\xc0\xaf",
                        b"\xed\xa0\x80",
                        b"\xf4\x90\x80\x80",
                        b"\xe2\x82",
                        b"\x80",
                    ];
                    let at = self.rng.random_range(0..=b.len());
                    let bad = BAD[self.rng.random_range(0..BAD.len())];
                    b.splice(at..at, bad.iter().copied());
                }
                2 => {
                    // A length larger than what follows.
                    let claimed = b.len() as u64 + self.rng.random_range(1..2000);
                    self.varint(claimed);
                    self.out.extend(&b);
                    return;
                }
                _ => {}
            }
        }
        self.uint(5, b.len() as u64);
        self.out.extend(&b);
    }

    fn name(&mut self, earlier: &[Vec<u8>]) -> Vec<u8> {
        let mut n = random_name(self.rng).into_bytes();
        if self.odd() {
            match self.rng.random_range(0..7) {
                0 => n.clear(),
                1 => n.extend(std::iter::repeat_n(b'a', 33 - n.len().min(32))),
                2 => n[0] = b"0.-9"[self.rng.random_range(0..4)],
                3 => {
                    let at = self.rng.random_range(0..n.len());
                    n[at] = b" /:@\xc3\x80~"[self.rng.random_range(0..7)];
                }
                4 if !earlier.is_empty() => {
                    n = earlier[self.rng.random_range(0..earlier.len())].clone()
                }
                5 => n.push(0xff),
                _ => {}
            }
        }
        self.uint(5, n.len() as u64);
        self.out.extend(&n);
        n
    }

    fn f64(&mut self) {
        let v = if self.odd() {
            [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::from_bits(0x7ff0_0000_0000_0001)]
                [self.rng.random_range(0..4)]
        } else {
            random_f64(self.rng)
        };
        self.out.extend(v.to_le_bytes());
    }

    fn position(&mut self) {
        self.i32_in(900_000_000);
        self.i32_in(1_800_000_000);
        self.i32_in(1_000_000);
        self.u16_below(65535);
        self.u16_below(3599);
        self.u16_below(65535);
        self.byte_below(6);
        self.out.push(self.rng.random());
    }

    fn monitoring(&mut self, max_readings: u64) {
        for (bytes, kind) in [(1, 0), (3, 1), (3, 2), (1, 3), (5, 1)] {
            let present = self.rng.random_bool(0.5);
            self.tag(present);
            if present {
                match kind {
                    0 => self.byte_below(101),
                    1 => {
                        let max = if bytes == 3 { 65535 } else { u64::from(u32::MAX) };
                        let v = edge_u(self.rng, max);
                        self.uint(bytes, v);
                    }
                    2 => {
                        let t = self.rng.random_range(-32768i64..=32767);
                        self.uint(3, Self::zigzag(t) & 0xffff);
                    }
                    _ => {
                        let b = self.rng.random();
                        self.out.push(b);
                    }
                }
            }
        }
        let n = self.rng.random_range(0..=max_readings);
        if self.odd() {
            let too_many = self.rng.random_range(33..=40);
            self.uint(5, too_many);
        } else {
            self.uint(5, n);
        }
        let mut names = Vec::new();
        for _ in 0..n {
            let name = self.name(&names);
            names.push(name);
            self.f64();
        }
    }

    fn event(&mut self) {
        self.u16_below(65535);
        self.byte_below(5);
        let present = self.rng.random_bool(0.7);
        self.tag(present);
        if present {
            self.text(64);
        }
    }

    fn hello(&mut self) {
        self.text(32);
        self.text(32);
        let v = edge_u(self.rng, u64::from(u32::MAX));
        self.uint(5, v);
    }

    fn batch(&mut self) {
        let n = self.rng.random_range(1..=6u64);
        if self.odd() {
            let bad = [0, 129, 200, 1 << 20][self.rng.random_range(0..4)];
            self.uint(5, bad);
        } else {
            self.uint(5, n);
        }
        for _ in 0..n {
            let v = edge_u(self.rng, u64::from(u32::MAX));
            self.uint(5, v);
            let kind = if self.odd() {
                self.rng.random_range(0..=255u8)
            } else {
                self.rng.random_range(1..=3)
            };
            self.out.push(kind);
            match kind {
                1 => self.position(),
                2 => self.monitoring(4),
                3 => self.event(),
                4 => self.hello(),
                _ => self.position(),
            }
        }
    }
}

/// A datagram with a fuzzed payload under a (mostly) valid header and CRC.
fn fuzzed(rng: &mut StdRng) -> Vec<u8> {
    let p = [0.0, 0.01, 0.03, 0.1][rng.random_range(0..4)];
    let kind = rng.random_range(1..=5u8);
    let auth = rng.random_bool(0.25);
    let mut d = vec![0x46, 0x57, 0x01, u8::from(auth), kind];
    d.extend(rng.random_range(1..=u32::MAX).to_le_bytes());
    d.extend(rng.random::<u32>().to_le_bytes());
    d.extend(rng.random::<u64>().to_le_bytes());
    let mut f = Fuzz { rng, out: d, p };
    match kind {
        1 => f.position(),
        2 => f.monitoring(32),
        3 => f.event(),
        4 => f.hello(),
        _ => f.batch(),
    }
    if f.odd() {
        let extra = f.rng.random_range(1..=4);
        for _ in 0..extra {
            f.out.push(f.rng.random());
        }
    }
    let mut d = f.out;
    if auth {
        for _ in 0..16 {
            d.push(rng.random());
        }
    }
    fix_crc_append(&mut d);
    d
}

fn fix_crc_append(d: &mut Vec<u8>) {
    let crc = crc32c(d);
    d.extend(crc.to_le_bytes());
}

/// Recomputes the CRC trailer of a datagram of at least 4 bytes.
fn fix_crc(d: &mut [u8]) {
    if d.len() >= 4 {
        let n = d.len() - 4;
        let crc = crc32c(&d[..n]);
        d[n..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A datagram and the key the receiver holds for it (if any).
type Case = (Vec<u8>, Option<Vec<u8>>);

struct Golden {
    datagrams: Vec<Case>,
}

fn golden() -> &'static Golden {
    static G: OnceLock<Golden> = OnceLock::new();
    G.get_or_init(|| {
        let mut datagrams = Vec::new();
        for file in ["valid.json", "invalid.json"] {
            let p = root().join("proto/vectors").join(file);
            let v: Vec<Value> =
                serde_json::from_str(&std::fs::read_to_string(p).expect("vectors")).expect("json");
            for x in v {
                let d = hex::decode(x["hex"].as_str().expect("hex")).expect("hex");
                let k = x["key_hex"].as_str().map(|k| hex::decode(k).expect("key"));
                datagrams.push((d, k));
            }
        }
        Golden { datagrams }
    })
}

fn mutate(rng: &mut StdRng, d: &mut Vec<u8>) {
    let fix = rng.random_bool(0.7);
    match rng.random_range(0..9) {
        // Flip 1 to 3 bits.
        0 if !d.is_empty() => {
            for _ in 0..rng.random_range(1..=3) {
                let at = rng.random_range(0..d.len());
                d[at] ^= 1 << rng.random_range(0..8);
            }
        }
        // One byte set to an interesting or random value.
        1 if !d.is_empty() => {
            let at = rng.random_range(0..d.len());
            d[at] = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x7f, 0x80, 0xff, rng.random()]
                [rng.random_range(0..11)];
        }
        // Truncated.
        2 => d.truncate(rng.random_range(0..=d.len())),
        // Bytes inserted.
        3 => {
            let at = rng.random_range(0..=d.len());
            let n = rng.random_range(1..=4);
            for i in 0..n {
                d.insert(at + i, rng.random());
            }
        }
        // A range deleted.
        4 if !d.is_empty() => {
            let at = rng.random_range(0..d.len());
            let n = rng.random_range(1..=(d.len() - at).min(8));
            d.drain(at..at + n);
        }
        // Bytes appended, sometimes past 1200.
        5 => {
            let n = if rng.random_bool(0.2) {
                rng.random_range(1..1300)
            } else {
                rng.random_range(1..=4)
            };
            for _ in 0..n {
                d.push(rng.random());
            }
        }
        // A header field edited: flags, kind, device id, version.
        6 if d.len() >= 9 => match rng.random_range(0..4) {
            0 => d[3] = [0x00, 0x01, 0x02, 0x80, 0x03, rng.random()][rng.random_range(0..6)],
            1 => d[4] = rng.random_range(0..=7),
            2 => d[5..9].copy_from_slice(&[0; 4]),
            _ => d[2] = rng.random(),
        },
        // The authentication tag changed (or the flag toggled).
        7 if d.len() >= 41 => {
            if rng.random_bool(0.5) {
                let at = d.len() - 4 - rng.random_range(1..=16);
                d[at] ^= 1 << rng.random_range(0..8);
            } else {
                d[3] ^= 1;
            }
        }
        _ => {}
    }
    if fix {
        fix_crc(d);
    }
}

/// One datagram and the key the receiver holds for it (if any).
fn datagram(rng: &mut StdRng) -> Case {
    let random_key = |rng: &mut StdRng| -> Vec<u8> {
        let n = rng.random_range(0..=100);
        (0..n).map(|_| rng.random()).collect()
    };
    let (mut d, mut key) = match rng.random_range(0..20) {
        0..=8 => {
            if rng.random_bool(0.3) {
                let k = random_key(rng);
                (rust_frame(rng, Some(&k)), Some(k))
            } else {
                (rust_frame(rng, None), None)
            }
        }
        9..=15 => (fuzzed(rng), None),
        16 => {
            let g = golden();
            g.datagrams[rng.random_range(0..g.datagrams.len())].clone()
        }
        _ => {
            // Garbage, sometimes with a valid start and CRC.
            let n = if rng.random_bool(0.1) {
                rng.random_range(0..1300)
            } else {
                rng.random_range(0..80)
            };
            let mut d: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            if d.len() >= 25 && rng.random_bool(0.6) {
                d[..3].copy_from_slice(&[0x46, 0x57, 0x01]);
                if rng.random_bool(0.8) {
                    fix_crc(&mut d);
                }
            }
            (d, None)
        }
    };
    if rng.random_bool(0.5) {
        mutate(rng, &mut d);
    }
    // The receiver's key: the right one mostly, sometimes another or none;
    // a key for frames without tag changes nothing.
    match rng.random_range(0..10) {
        0 => key = None,
        1 | 2 => key = Some(random_key(rng)),
        3 if key.is_some() => {
            if let Some(k) = key.as_mut() {
                if k.is_empty() {
                    k.push(0);
                } else {
                    k[0] ^= 0x20;
                }
            }
        }
        _ => {}
    }
    (d, key)
}

/// Sends `n` datagrams through `harness decode` and compares each answer
/// with the Rust decoder's. Returns how often each outcome occurred.
fn c_decoder_against_rust(harness: &Path, seed: u64, n: usize) -> BTreeMap<String, usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let cases: Arc<Vec<Case>> = Arc::new((0..n).map(|_| datagram(&mut rng)).collect());
    let mut child = Command::new(harness)
        .arg("decode")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run harness decode");
    let stdin = child.stdin.take().expect("stdin");
    let input = cases.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut w = BufWriter::new(stdin);
        for (d, k) in input.iter() {
            let h = if d.is_empty() { "-".to_string() } else { hex::encode(d) };
            writeln!(w, "{h} {}", key_token(k.as_deref()))?;
        }
        w.flush()
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut outcomes = BTreeMap::new();
    for (i, (d, k)) in cases.iter().enumerate() {
        let c = match lines.next() {
            Some(Ok(l)) => l,
            _ => {
                let out = child.wait_with_output().expect("wait");
                panic!(
                    "harness decode stopped at datagram {i}: {}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        let r = rust_outcome(d, k.as_deref());
        assert_eq!(
            c,
            r,
            "datagram {i} (seed {seed}): C and Rust disagree\n  {} {}",
            hex::encode(d),
            key_token(k.as_deref())
        );
        let label = r.strip_prefix("err ").unwrap_or("ok").to_string();
        *outcomes.entry(label).or_insert(0) += 1;
    }
    assert!(lines.next().is_none(), "harness decode answered more lines than it was sent");
    writer.join().expect("writer thread").expect("write to harness");
    let out = child.wait_with_output().expect("wait for harness");
    assert!(
        out.status.success(),
        "harness decode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    outcomes
}

fn check_outcome_mix(outcomes: &BTreeMap<String, usize>, min: usize) {
    let labels = DecodeError::ALL.iter().map(|e| e.as_str()).chain(["ok"]);
    for l in labels {
        let c = outcomes.get(l).copied().unwrap_or(0);
        assert!(c >= min, "only {c} datagrams with outcome {l}: {outcomes:?}");
    }
}

#[test]
fn the_c_decoder_accepts_and_refuses_like_the_rust_decoder() {
    let outcomes = c_decoder_against_rust(harness(), 0xdec0de, DIFFERENTIAL);
    eprintln!("Rust datagrams -> C decoder: {DIFFERENTIAL} datagrams, {outcomes:?}");
    // Every refusal label, and acceptance, came up often enough to count.
    check_outcome_mix(&outcomes, 50);
}

#[test]
fn sanitized_c_code_agrees_with_rust_too() {
    let seen = c_frames_in_rust(harness_sanitized(), 0xa5a5, SANITIZED);
    check_frame_mix(&seen, SANITIZED);
    let outcomes = c_decoder_against_rust(harness_sanitized(), 0x5a5a, SANITIZED);
    eprintln!("under ASan + UBSan: {SANITIZED} frames each way, {outcomes:?}");
    check_outcome_mix(&outcomes, 3);
}

#[test]
fn the_c_result_labels_are_the_rust_decode_error_labels() {
    let out = Command::new(harness()).arg("labels").output().expect("run harness labels");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let labels: Vec<&str> =
        text.lines().map(|l| l.split_once(' ').expect("'<code> <label>'").1).collect();
    // FW_OK, then the refusals in check order, exactly as DecodeError::ALL.
    assert_eq!(labels[0], "ok");
    let rust: Vec<&str> = DecodeError::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(labels[1..=rust.len()], rust[..]);
    // The codes after them are not decode refusals and use no Rust label.
    for l in &labels[rust.len() + 1..] {
        assert!(DecodeError::from_label(l).is_none(), "{l} is a decode label");
    }
}

// ---------------------------------------------------------------------------
// The golden vectors, in C

/// "N passed, M failed" from the last line of a test program.
fn passed_failed(text: &str) -> (u64, u64) {
    let last = text.lines().last().unwrap_or_default();
    let mut it = last.split([' ', ',']).filter(|w| !w.is_empty());
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(p), Some("passed"), Some(f), Some("failed")) => {
            (p.parse().expect("passed"), f.parse().expect("failed"))
        }
        _ => panic!("no 'N passed, M failed' line in:\n{text}"),
    }
}

#[test]
fn the_c_sdk_encodes_and_decodes_every_golden_vector() {
    let dir = build_dir().join("vectors");
    std::fs::create_dir_all(&dir).expect("dir");
    let st = Command::new("python3")
        .arg(sdk().join("tests/gen_vectors.py"))
        .arg(root().join("proto/vectors"))
        .arg(dir.join("vectors.h"))
        .status()
        .expect("python3");
    assert!(st.success(), "gen_vectors.py failed");
    let counts: Vec<usize> = ["valid.json", "invalid.json"]
        .iter()
        .map(|f| {
            let s = std::fs::read_to_string(root().join("proto/vectors").join(f)).expect("read");
            serde_json::from_str::<Vec<Value>>(&s).expect("json").len()
        })
        .collect();
    for (name, flags) in [("test_vectors", &["-O2"][..]), ("test_vectors-asan", SANITIZE)] {
        let exe = gcc(name, &["fleetwire.c", "tests/test_vectors.c"], flags, Some(&dir));
        let out = Command::new(&exe).output().expect("run test_vectors");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name} failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (passed, failed) = passed_failed(&text);
        assert_eq!(failed, 0, "{text}");
        assert!(passed > 0);
        let line = format!("golden vectors: {} valid, {} invalid", counts[0], counts[1]);
        assert!(text.contains(&line), "{name} did not go through every vector:\n{text}");
        eprintln!("{name}: {passed} checks passed");
    }
}

// ---------------------------------------------------------------------------
// examples/linux_udp.c against a live server

fn run_sender(args: &[&str]) -> String {
    let out = Command::new(linux_udp()).args(args).output().expect("run linux_udp");
    assert!(
        out.status.success(),
        "linux_udp {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn udp_count(s: &Server, what: &str) -> u64 {
    s.json("/api/summary")["datagrams"]["udp"][what].as_u64().unwrap_or(0)
}

#[test]
fn the_linux_sender_is_counted_exactly_by_a_live_server() {
    let s = Server::start(&[]);
    let target = s.udp.to_string();
    // 25 positions, a Monitoring with every tenth, after one Hello.
    let said = run_sender(&["-a", &target, "-d", "4242", "-n", "25", "-i", "0"]);
    assert_eq!(said.trim(), "sent 28 frames: 1 hello, 25 position, 2 monitoring");
    s.wait_until(30, "28 accepted datagrams and their records", |s| {
        let sum = s.json("/api/summary");
        sum["datagrams"]["udp"]["accepted"] == 28
            && sum["records"]["position"] == 25
            && sum["records"]["monitoring"] == 2
            && sum["records"]["hello"] == 1
    });
    assert_eq!(udp_count(&s, "rejected"), 0);
    assert_eq!(udp_count(&s, "received"), 28);
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[]), 28.0);
    let d = s.json("/api/devices/4242");
    assert_eq!(d["sequence"]["received"], 28, "{d}");
    assert_eq!(d["sequence"]["highest"], 27, "{d}");
    assert_eq!(d["sequence"]["lost"], 0, "{d}");
    assert_eq!(d["sequence"]["duplicates"], 0, "{d}");
    assert_eq!(d["info"]["firmware"], "1.0.0", "{d}");
    assert_eq!(d["info"]["model"], "linux_udp example", "{d}");
    assert_eq!(d["health"]["battery_pct"], 99, "{d}");
    let names: Vec<&str> = d["readings"]
        .as_array()
        .expect("readings")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(names.contains(&"engine_rpm") && names.contains(&"fuel_level"), "{d}");
    assert!(d["position"]["latitude"].as_f64().is_some_and(|l| (l - 48.137).abs() < 0.01), "{d}");

    // A second device with a pause between positions.
    let said = run_sender(&["-a", &target, "-d", "7", "-n", "3", "-i", "5"]);
    assert_eq!(said.trim(), "sent 4 frames: 1 hello, 3 position, 0 monitoring");
    s.wait_until(30, "32 accepted datagrams", |s| udp_count(s, "accepted") == 32);
    assert_eq!(s.json("/api/summary")["devices"], 2);
}

#[test]
fn frames_signed_by_the_c_sender_are_verified_by_a_live_server() {
    const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0112233445566778899aabbccddeeff00";
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("4243 {KEY}\n")).expect("keys file");
    let s = Server::start(&["--udp-auth", "required", "--keys-file", keys.to_str().expect("path")]);
    let target = s.udp.to_string();
    let rejected = |s: &Server, r: &str| {
        s.metric("fleetwire_datagrams_rejected_total", &[("reason", r)]) as u64
    };

    let said = run_sender(&["-a", &target, "-d", "4243", "-n", "12", "-i", "0", "-k", KEY]);
    assert_eq!(said.trim(), "sent 14 frames: 1 hello, 12 position, 1 monitoring");
    s.wait_until(30, "14 accepted signed datagrams", |s| udp_count(s, "accepted") == 14);
    assert_eq!(udp_count(&s, "rejected"), 0);
    let d = s.json("/api/devices/4243");
    assert_eq!(
        (d["sequence"]["received"].as_u64(), d["sequence"]["lost"].as_u64()),
        (Some(14), Some(0))
    );

    // Another key: every frame is a bad tag. No key: every frame lacks one.
    let wrong = format!("f{}", &KEY[1..]);
    assert_ne!(wrong, KEY);
    run_sender(&["-a", &target, "-d", "4243", "-n", "3", "-i", "0", "-s", "1000", "-k", &wrong]);
    run_sender(&["-a", &target, "-d", "4243", "-n", "2", "-i", "0", "-s", "2000"]);
    s.wait_until(30, "7 rejected datagrams", |s| udp_count(s, "rejected") == 7);
    assert_eq!(rejected(&s, "bad_auth_tag"), 4);
    assert_eq!(rejected(&s, "auth_required"), 3);
    assert_eq!(udp_count(&s, "accepted"), 14);

    // Continuing where the signed run stopped is accepted again.
    run_sender(&["-a", &target, "-d", "4243", "-n", "1", "-i", "0", "-s", "14", "-k", KEY]);
    s.wait_until(30, "16 accepted signed datagrams", |s| udp_count(s, "accepted") == 16);
    assert_eq!(udp_count(&s, "rejected"), 7);
}
