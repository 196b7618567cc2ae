//! Writes `vectors/valid.json` and `vectors/invalid.json`.
//!
//! The committed files are the golden reference: `tests/vectors.rs` checks
//! the codec against them, and a change to the wire format shows up there
//! as a failing test, not as silently regenerated vectors. Run this only to
//! add vectors, then review the diff:
//!
//! ```sh
//! cargo run -p fleetwire-proto --example gen_vectors -- proto/vectors
//! ```

use fleetwire_proto::json::frame_to_json;
use fleetwire_proto::{
    Batch, Body, Event, FixType, Frame, Hello, Monitoring, Position, Reading, Record, Sample, Seq,
    Severity, capabilities, crc32c, decode, encode, encode_signed,
};
use serde_json::{Value, json};

const TS: u64 = 1_764_000_000_000; // 2025-11-24T16:00:00Z
const KEY: &[u8] = b"fleetwire-test-key-device-0042!!";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn munich() -> Position {
    Position {
        lat_e7: 481_372_000,
        lon_e7: 115_755_000,
        alt_dm: 5_190,
        speed_cm_s: 1_389,
        heading_ddeg: 2_705,
        hacc_cm: 250,
        fix: FixType::Fix3d,
        satellites: 11,
    }
}

fn enc(f: &Frame<'_>) -> Vec<u8> {
    let mut buf = [0u8; 1200];
    let n = encode(f, &mut buf).expect("valid frame");
    buf[..n].to_vec()
}

fn enc_signed(f: &Frame<'_>, key: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 1200];
    let n = encode_signed(f, key, &mut buf).expect("valid frame");
    buf[..n].to_vec()
}

/// Postcard unsigned varint.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// A frame from raw parts, with a correct CRC (for invalid vectors).
fn raw(
    version: u8,
    flags: u8,
    kind: u8,
    device: u32,
    payload: &[u8],
    tag: Option<[u8; 16]>,
) -> Vec<u8> {
    let mut v = b"FW".to_vec();
    v.extend([version, flags, kind]);
    v.extend(device.to_le_bytes());
    v.extend(9u32.to_le_bytes());
    v.extend(TS.to_le_bytes());
    v.extend(payload);
    if let Some(t) = tag {
        v.extend(t);
    }
    let crc = crc32c(&v);
    v.extend(crc.to_le_bytes());
    v
}

/// Replaces the CRC of `v` with a correct one.
fn recrc(mut v: Vec<u8>) -> Vec<u8> {
    let n = v.len() - 4;
    let crc = crc32c(&v[..n]);
    v[n..].copy_from_slice(&crc.to_le_bytes());
    v
}

#[allow(clippy::too_many_arguments)]
fn position_payload(
    lat: i64,
    lon: i64,
    alt: i64,
    speed: u64,
    heading: u64,
    hacc: u64,
    fix: u8,
    sats: u8,
) -> Vec<u8> {
    let mut p = Vec::new();
    varint(zigzag(lat), &mut p);
    varint(zigzag(lon), &mut p);
    varint(zigzag(alt), &mut p);
    varint(speed, &mut p);
    varint(heading, &mut p);
    varint(hacc, &mut p);
    p.push(fix);
    p.push(sats);
    p
}

fn valid(
    name: &str,
    description: &str,
    bytes: Vec<u8>,
    key: Option<&[u8]>,
    canonical: bool,
) -> Value {
    let frame = decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    if let (Some(k), Some(a)) = (key, frame.auth) {
        a.verify(k).expect("tag verifies");
    }
    let mut v = json!({
        "name": name,
        "description": description,
        "hex": hex(&bytes),
        "length": bytes.len(),
        "frame": frame_to_json(&frame),
    });
    if let Some(k) = key {
        v["key_hex"] = hex(k).into();
    }
    if !canonical {
        v["canonical"] = false.into();
    }
    v
}

fn invalid(
    name: &str,
    description: &str,
    bytes: Vec<u8>,
    error: &str,
    key: Option<&[u8]>,
) -> Value {
    let got = match decode(&bytes) {
        Err(e) => e.as_str(),
        Ok(f) => match (key, f.auth) {
            (Some(k), Some(a)) => a.verify(k).err().map(|e| e.as_str()).unwrap_or("accepted"),
            _ => "accepted",
        },
    };
    assert_eq!(got, error, "{name}");
    let mut v = json!({
        "name": name,
        "description": description,
        "hex": hex(&bytes),
        "length": bytes.len(),
        "error": error,
    });
    if let Some(k) = key {
        v["key_hex"] = hex(k).into();
    }
    v
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "proto/vectors".into());
    let mut ok = Vec::new();

    ok.push(valid(
        "position_basic",
        "A 3D fix in Munich, moving west at 13.89 m/s.",
        enc(&Frame::new(42, 7, TS, Body::Position(munich()))),
        None,
        true,
    ));
    let max = Position {
        lat_e7: -900_000_000,
        lon_e7: -1_800_000_000,
        alt_dm: -1_000_000,
        speed_cm_s: u16::MAX,
        heading_ddeg: 3_599,
        hacc_cm: u16::MAX,
        fix: FixType::RtkFixed,
        satellites: 255,
    };
    ok.push(valid(
        "position_largest",
        "Every field at the value with the longest encoding: the largest Position frame (48 bytes).",
        enc(&Frame::new(u32::MAX, u32::MAX, u64::MAX, Body::Position(max))),
        None,
        true,
    ));
    let zero = Position {
        lat_e7: 0,
        lon_e7: 0,
        alt_dm: 0,
        speed_cm_s: 0,
        heading_ddeg: 0,
        hacc_cm: 0,
        fix: FixType::NoFix,
        satellites: 0,
    };
    ok.push(valid(
        "position_no_fix_no_clock",
        "No fix, all zero, from a device without clock (timestamp 0): the smallest Position frame (33 bytes).",
        enc(&Frame::new(1, 0, 0, Body::Position(zero))),
        None,
        true,
    ));
    let east = Position {
        lat_e7: 900_000_000,
        lon_e7: 1_800_000_000,
        alt_dm: 1_000_000,
        speed_cm_s: 0,
        heading_ddeg: 0,
        hacc_cm: 1,
        fix: FixType::Fix2d,
        satellites: 4,
    };
    ok.push(valid(
        "position_positive_extremes",
        "North pole, antimeridian, highest altitude; sequence number about to wrap.",
        enc(&Frame::new(0x0102_0304, u32::MAX, TS, Body::Position(east))),
        None,
        true,
    ));
    ok.push(valid(
        "position_signed",
        "position_basic with an HMAC-SHA-256 authentication tag (key given as key_hex).",
        enc_signed(&Frame::new(42, 8, TS, Body::Position(munich())), KEY),
        Some(KEY),
        true,
    ));
    // Overlong varint: speed 1389 written in 3 bytes instead of 2.
    {
        let mut p = Vec::new();
        varint(zigzag(481_372_000), &mut p);
        varint(zigzag(115_755_000), &mut p);
        varint(zigzag(5_190), &mut p);
        p.extend([0xed, 0x8a, 0x00]); // 1389 = 0x56d as 3 bytes (canonical: ed 0a)
        varint(2_705, &mut p);
        varint(250, &mut p);
        p.push(2);
        p.push(11);
        ok.push(valid(
            "position_overlong_varint",
            "position_basic with speed encoded in 3 bytes instead of 2: a non-minimal varint, accepted (encoders never produce it).",
            raw(1, 0, 1, 42, &p, None),
            None,
            false,
        ));
    }
    let readings = [
        Reading { name: "engine_rpm", value: 2150.0 },
        Reading { name: "fuel_level", value: 0.625 },
        Reading { name: "door.rear-open", value: 1.0 },
    ];
    let full = Monitoring {
        battery_pct: Some(87),
        supply_mv: Some(12_450),
        temperature_cdeg: Some(-1_250),
        rssi_dbm: Some(-71),
        uptime_s: Some(86_400),
        readings: Seq::from_slice(&readings),
    };
    ok.push(valid(
        "monitoring_full",
        "Every well-known field (negative temperature and RSSI) and three named readings.",
        enc(&Frame::new(42, 10, TS, Body::Monitoring(full))),
        None,
        true,
    ));
    ok.push(valid(
        "monitoring_empty",
        "No field present, no readings: the smallest Monitoring frame.",
        enc(&Frame::new(42, 11, TS, Body::Monitoring(Monitoring::EMPTY))),
        None,
        true,
    ));
    let names: Vec<String> = (0..32).map(|i| format!("r{i:02}")).collect();
    let many: Vec<Reading<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Reading {
            name: n,
            value: if i % 2 == 0 { -(i as f64) * 1.5 } else { f64::MAX },
        })
        .collect();
    let m32 = Monitoring {
        battery_pct: Some(100),
        supply_mv: None,
        temperature_cdeg: None,
        rssi_dbm: None,
        uptime_s: Some(u32::MAX),
        readings: Seq::from_slice(&many),
    };
    ok.push(valid(
        "monitoring_32_readings",
        "The maximum of 32 named readings; battery at 100 %, uptime at its maximum.",
        enc(&Frame::new(7, 1, TS, Body::Monitoring(m32))),
        None,
        true,
    ));
    let longest = "ä".repeat(32); // 64 bytes of UTF-8
    ok.push(valid(
        "event_with_text",
        "A warning with text: door opened.",
        enc(&Frame::new(
            42,
            12,
            TS,
            Body::Event(Event { code: 1001, severity: Severity::Warning, text: Some("door open") }),
        )),
        None,
        true,
    ));
    ok.push(valid(
        "event_longest_text",
        "A critical event whose text is the longest allowed: 64 bytes (32 two-byte UTF-8 characters).",
        enc(&Frame::new(
            42,
            13,
            TS,
            Body::Event(Event { code: u16::MAX, severity: Severity::Critical, text: Some(&longest) }),
        )),
        None,
        true,
    ));
    ok.push(valid(
        "event_no_text",
        "An informational event without text.",
        enc(&Frame::new(
            42,
            14,
            TS,
            Body::Event(Event { code: 7, severity: Severity::Info, text: None }),
        )),
        None,
        true,
    ));
    ok.push(valid(
        "hello",
        "Boot announcement: firmware, model and capabilities.",
        enc(&Frame::new(
            42,
            0,
            TS,
            Body::Hello(Hello {
                firmware: "1.4.2",
                model: "FW-T1000",
                capabilities: capabilities::GNSS
                    | capabilities::MONITORING
                    | capabilities::EVENTS
                    | capabilities::BATCH,
            }),
        )),
        None,
        true,
    ));
    let r2 = [Reading { name: "temp_cargo", value: 4.25 }];
    let samples = [
        Sample { offset_ms: 60_000, record: Record::Position(munich()) },
        Sample {
            offset_ms: 30_000,
            record: Record::Monitoring(Monitoring {
                battery_pct: Some(86),
                readings: Seq::from_slice(&r2),
                ..Monitoring::EMPTY
            }),
        },
        Sample {
            offset_ms: 0,
            record: Record::Event(Event { code: 1001, severity: Severity::Notice, text: None }),
        },
    ];
    ok.push(valid(
        "batch_mixed",
        "A batch of a position (60 s old), a monitoring sample (30 s old) and an event.",
        enc(&Frame::new(42, 15, TS, Body::Batch(Batch { samples: Seq::from_slice(&samples) }))),
        None,
        true,
    ));
    ok.push(valid(
        "batch_signed",
        "batch_mixed with an authentication tag.",
        enc_signed(
            &Frame::new(42, 16, TS, Body::Batch(Batch { samples: Seq::from_slice(&samples) })),
            KEY,
        ),
        Some(KEY),
        true,
    ));
    let backlog: Vec<Sample<'_>> = (0..128u32)
        .map(|i| Sample {
            offset_ms: (127 - i) * 1000,
            record: Record::Event(Event { code: i as u16, severity: Severity::Info, text: None }),
        })
        .collect();
    ok.push(valid(
        "batch_128_events",
        "The maximum of 128 samples in one batch (a backlog of events, one per second).",
        enc(&Frame::new(42, 17, TS, Body::Batch(Batch { samples: Seq::from_slice(&backlog) }))),
        None,
        true,
    ));

    ok.push(valid(
        "position_no_fix_with_coordinates",
        "Fix type 0 (no fix) with the last known coordinates: valid, decoded as sent (the ranges of section 4.1 apply whatever the fix type; the coordinates carry no information).",
        enc(&Frame::new(42, 18, TS, Body::Position(Position { fix: FixType::NoFix, satellites: 0, ..munich() }))),
        None,
        true,
    ));
    // The longest frame allowed: a backlog of 128 events, texts padded so
    // that the frame is exactly 1200 bytes.
    {
        let pad = "x".repeat(64);
        let mut texts: Vec<Option<&str>> = vec![None; 128];
        let mut len =
            enc(&Frame::new(42, 19, TS, Body::Batch(Batch { samples: Seq::from_slice(&backlog) })))
                .len();
        // A text of n bytes adds 1 + n bytes (its length varint and bytes).
        for t in texts.iter_mut() {
            if len == 1200 {
                break;
            }
            let n = (1200 - len - 1).min(64);
            *t = Some(&pad[..n]);
            len += 1 + n;
        }
        let samples: Vec<Sample<'_>> = backlog
            .iter()
            .zip(&texts)
            .map(|(s, t)| match s.record {
                Record::Event(e) => Sample {
                    offset_ms: s.offset_ms,
                    record: Record::Event(Event { text: *t, ..e }),
                },
                _ => unreachable!(),
            })
            .collect();
        let bytes =
            enc(&Frame::new(42, 19, TS, Body::Batch(Batch { samples: Seq::from_slice(&samples) })));
        assert_eq!(bytes.len(), 1200);
        ok.push(valid(
            "frame_1200_bytes",
            "The longest frame allowed, exactly 1200 bytes: 128 events, some with text. Valid on UDP and on a QUIC stream, but too long for one QUIC DATAGRAM at QUIC's minimum packet size (section 8.2).",
            bytes,
            None,
            true,
        ));
    }

    // ----------------------------------------------------------------- invalid
    let basic = enc(&Frame::new(42, 7, TS, Body::Position(munich())));
    let pos = position_payload(481_372_000, 115_755_000, 5_190, 1_389, 2_705, 250, 2, 11);
    let mut bad = Vec::new();
    bad.push(invalid("empty", "Zero bytes.", Vec::new(), "too_short", None));
    bad.push(invalid(
        "too_short",
        "24 bytes: one less than header + CRC.",
        basic[..24].to_vec(),
        "too_short",
        None,
    ));
    bad.push(invalid(
        "too_short_for_tag",
        "The authentication flag is set but the frame (40 bytes, valid CRC) cannot hold header + tag + CRC.",
        raw(1, 1, 3, 42, &[0u8; 15], None),
        "too_short",
        None,
    ));
    let mut long = basic.clone();
    long.resize(1201, 0);
    bad.push(invalid("too_long", "1201 bytes: one more than the limit.", long, "too_long", None));
    let mut v2 = raw(2, 0, 1, 42, &pos, None);
    v2.truncate(24);
    bad.push(invalid(
        "too_short_version_2",
        "24 bytes of a version 2 frame: the length checks come before the version check.",
        v2,
        "too_short",
        None,
    ));
    let mut v2 = raw(2, 0, 1, 42, &pos, None);
    v2.resize(1201, 0);
    bad.push(invalid(
        "too_long_version_2",
        "1201 bytes of a version 2 frame: the length checks come before the version check.",
        v2,
        "too_long",
        None,
    ));
    let mut m = basic.clone();
    m[0] = b'f';
    bad.push(invalid("bad_magic", "Starts with \"fW\".", m, "bad_magic", None));
    bad.push(invalid(
        "unsupported_version",
        "Version 2 (with a correct CRC).",
        raw(2, 0, 1, 42, &pos, None),
        "unsupported_version",
        None,
    ));
    let mut v2 = raw(2, 0, 1, 42, &pos, None);
    let n = v2.len();
    v2[n - 1] ^= 0xff;
    bad.push(invalid(
        "unsupported_version_bad_checksum",
        "Version 2 with a wrong CRC: the version is checked before the CRC (another version may put its CRC elsewhere).",
        v2,
        "unsupported_version",
        None,
    ));
    let mut c = basic.clone();
    c[25] ^= 0x10;
    bad.push(invalid(
        "bad_checksum",
        "position_basic with one payload bit flipped.",
        c,
        "bad_checksum",
        None,
    ));
    let mut c = basic.clone();
    let n = c.len();
    c[n - 1] ^= 0x80;
    bad.push(invalid(
        "bad_checksum_trailer",
        "position_basic with one CRC bit flipped.",
        c,
        "bad_checksum",
        None,
    ));
    bad.push(invalid(
        "unknown_flags",
        "Flag bit 1 set (undefined in version 1).",
        raw(1, 0x02, 1, 42, &pos, None),
        "unknown_flags",
        None,
    ));
    bad.push(invalid(
        "unknown_flags_before_tag_length",
        "Flags 0x03 (AUTH and the undefined bit 1) on a 40-byte frame: unknown_flags (step 6) comes before the AUTH length check (step 7).",
        raw(1, 0x03, 3, 42, &[0u8; 15], None),
        "unknown_flags",
        None,
    ));
    bad.push(invalid(
        "unknown_kind",
        "Kind 6.",
        raw(1, 0, 6, 42, &pos, None),
        "unknown_kind",
        None,
    ));
    bad.push(invalid("kind_zero", "Kind 0.", raw(1, 0, 0, 42, &pos, None), "unknown_kind", None));
    bad.push(invalid(
        "bad_device_id",
        "Device id 0.",
        raw(1, 0, 1, 0, &pos, None),
        "bad_device_id",
        None,
    ));
    bad.push(invalid(
        "truncated_position",
        "A Position payload that ends after the heading (horizontal accuracy, fix type and satellites missing).",
        raw(1, 0, 1, 42, &pos[..pos.len() - 4], None),
        "malformed_payload",
        None,
    ));
    bad.push(invalid(
        "varint_too_long",
        "A u16 (speed) varint of 4 bytes: longer than the 3 a u16 may take.",
        raw(
            1,
            0,
            1,
            42,
            &{
                // pos[..11] is latitude (5 bytes), longitude (4) and altitude (2).
                let mut p = pos[..11].to_vec();
                p.extend([0x80, 0x80, 0x80, 0x00, 0x91, 0x15, 0xfa, 0x01, 0x02, 0x0b]);
                p
            },
            None,
        ),
        "malformed_payload",
        None,
    ));
    bad.push(invalid(
        "varint_overflow",
        "A u16 (speed) varint whose third byte carries bits beyond 16 (0x04 > 0x03).",
        raw(
            1,
            0,
            1,
            42,
            &{
                let mut p = pos[..11].to_vec();
                p.extend([0xff, 0xff, 0x04, 0x91, 0x15, 0xfa, 0x01, 0x02, 0x0b]);
                p
            },
            None,
        ),
        "malformed_payload",
        None,
    ));
    bad.push(invalid(
        "bad_option_tag",
        "A Monitoring option tag of 2 (only 0 and 1 exist).",
        raw(1, 0, 2, 42, &[0x02, 0x57, 0x00, 0x00, 0x00, 0x00, 0x00], None),
        "malformed_payload",
        None,
    ));
    bad.push(invalid(
        "bad_utf8",
        "Event text that is not UTF-8 (0xff).",
        raw(1, 0, 3, 42, &[0x07, 0x00, 0x01, 0x02, b'a', 0xff], None),
        "malformed_payload",
        None,
    ));
    bad.push(invalid(
        "trailing_bytes",
        "A complete Position payload followed by one extra byte.",
        raw(1, 0, 1, 42, &[pos.as_slice(), &[0x00]].concat(), None),
        "trailing_bytes",
        None,
    ));
    bad.push(invalid(
        "latitude_out_of_range",
        "Latitude 900000001 (just north of the pole).",
        raw(1, 0, 1, 42, &position_payload(900_000_001, 0, 0, 0, 0, 0, 2, 5), None),
        "out_of_range",
        None,
    ));
    bad.push(invalid(
        "no_fix_latitude_out_of_range",
        "Fix type 0 (no fix) with latitude 900000001: coordinates are range-checked whatever the fix type.",
        raw(1, 0, 1, 42, &position_payload(900_000_001, 0, 0, 0, 0, 0, 0, 0), None),
        "out_of_range",
        None,
    ));
    bad.push(invalid(
        "heading_out_of_range",
        "Heading 3600 (360.0 degrees; 0 ..= 3599 allowed).",
        raw(1, 0, 1, 42, &position_payload(0, 0, 0, 0, 3_600, 0, 2, 5), None),
        "out_of_range",
        None,
    ));
    bad.push(invalid(
        "fix_type_out_of_range",
        "Fix type 6.",
        raw(1, 0, 1, 42, &position_payload(1, 1, 0, 0, 0, 0, 6, 5), None),
        "out_of_range",
        None,
    ));
    bad.push(invalid(
        "battery_out_of_range",
        "Battery 101 %.",
        raw(1, 0, 2, 42, &[0x01, 101, 0x00, 0x00, 0x00, 0x00, 0x00], None),
        "out_of_range",
        None,
    ));
    let mut nan = vec![0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x01, b'x'];
    nan.extend(f64::NAN.to_le_bytes());
    bad.push(invalid(
        "reading_nan",
        "A reading whose value is NaN.",
        raw(1, 0, 2, 42, &nan, None),
        "out_of_range",
        None,
    ));
    let mut t = vec![0x07, 0x00, 0x01, 65];
    t.extend([b'a'; 65]);
    bad.push(invalid(
        "event_text_too_long",
        "Event text of 65 bytes.",
        raw(1, 0, 3, 42, &t, None),
        "out_of_range",
        None,
    ));
    bad.push(invalid(
        "severity_out_of_range",
        "Severity 5.",
        raw(1, 0, 3, 42, &[0x07, 0x05, 0x00], None),
        "out_of_range",
        None,
    ));
    let mut many = vec![0x00, 0x00, 0x00, 0x00, 0x00, 33];
    for i in 0..33 {
        many.extend([3, b'r', b'0' + (i / 10) as u8, b'0' + (i % 10) as u8]);
        many.extend(1.0f64.to_le_bytes());
    }
    bad.push(invalid(
        "too_many_readings",
        "33 named readings.",
        raw(1, 0, 2, 42, &many, None),
        "too_many_items",
        None,
    ));
    bad.push(invalid(
        "too_many_samples",
        "A batch announcing 129 samples.",
        raw(1, 0, 5, 42, &[0x81, 0x01, 0x00, 0x03, 0x07, 0x00, 0x00], None),
        "too_many_items",
        None,
    ));
    let mut digit = vec![0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, b'1', b'x'];
    digit.extend(1.0f64.to_le_bytes());
    bad.push(invalid(
        "name_starts_with_digit",
        "Reading name \"1x\".",
        raw(1, 0, 2, 42, &digit, None),
        "bad_name",
        None,
    ));
    let mut dup = vec![0x00, 0x00, 0x00, 0x00, 0x00, 0x02];
    for _ in 0..2 {
        dup.extend([0x01, b't']);
        dup.extend(2.5f64.to_le_bytes());
    }
    bad.push(invalid(
        "name_repeated",
        "Two readings named \"t\".",
        raw(1, 0, 2, 42, &dup, None),
        "bad_name",
        None,
    ));
    let mut empty_name = vec![0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00];
    empty_name.extend(1.0f64.to_le_bytes());
    bad.push(invalid(
        "name_empty",
        "A reading with an empty name.",
        raw(1, 0, 2, 42, &empty_name, None),
        "bad_name",
        None,
    ));
    bad.push(invalid(
        "batch_empty",
        "A batch of 0 samples.",
        raw(1, 0, 5, 42, &[0x00], None),
        "bad_batch",
        None,
    ));
    bad.push(invalid(
        "batch_with_hello",
        "A batch whose sample is a Hello (kind 4).",
        raw(1, 0, 5, 42, &[0x01, 0x00, 0x04, 0x01, b'1', 0x01, b'm', 0x00], None),
        "bad_batch",
        None,
    ));
    bad.push(invalid(
        "batch_unknown_sample_kind",
        "A batch whose sample has kind 9.",
        raw(1, 0, 5, 42, &[0x01, 0x00, 0x09, 0x00], None),
        "unknown_kind",
        None,
    ));
    let signed = enc_signed(&Frame::new(42, 8, TS, Body::Position(munich())), b"another key");
    bad.push(invalid(
        "bad_auth_tag_wrong_key",
        "position_signed, but the tag was made with another key; decoding succeeds, verification with key_hex fails.",
        signed,
        "bad_auth_tag",
        Some(KEY),
    ));
    let mut forged = enc_signed(&Frame::new(42, 8, TS, Body::Position(munich())), KEY);
    let n = forged.len();
    forged[n - 5] ^= 0x01;
    bad.push(invalid(
        "bad_auth_tag_forged",
        "position_signed with one tag bit flipped and the CRC recomputed.",
        recrc(forged),
        "bad_auth_tag",
        Some(KEY),
    ));

    let write = |file: &str, v: Vec<Value>| {
        let path = format!("{dir}/{file}");
        let text = serde_json::to_string_pretty(&v).expect("json") + "\n";
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{path}: {e}"));
        eprintln!("wrote {} vectors to {path}", v.len());
    };
    write("valid.json", ok);
    write("invalid.json", bad);
}
