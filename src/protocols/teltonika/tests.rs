//! Tests of the Teltonika decoder: the public vectors field by field, every
//! refusal, exhaustive truncation and single-byte mutation of the vectors,
//! and property tests (arbitrary bytes, generated packets, mutations).

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// The vectors file, copied from the shared notes into this crate.
const VECTORS: &str = include_str!("../../../tests/data/teltonika-udp.json");

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

struct Vector {
    name: String,
    bytes: Vec<u8>,
    json: serde_json::Value,
}

fn vectors() -> Vec<Vector> {
    let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    v["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| Vector {
            name: j["name"].as_str().unwrap().to_owned(),
            bytes: unhex(j["hex"].as_str().unwrap()),
            json: j.clone(),
        })
        .collect()
}

fn vector(name: &str) -> Vec<u8> {
    vectors().into_iter().find(|v| v.name == name).unwrap().bytes
}

/// Rewrites the length field to match the datagram.
fn fix_len(d: &mut [u8]) {
    let n = u16::try_from(d.len() - 2).unwrap();
    d[..2].copy_from_slice(&n.to_be_bytes());
}

/// Encodes a parsed packet back to bytes with [`encode`].
fn reencode(p: &Packet<'_>) -> Vec<u8> {
    let ios: Vec<Vec<IoElement<'_>>> = p.records().map(|r| r.io().collect()).collect();
    let recs: Vec<EncodeRecord<'_>> = p
        .records()
        .zip(&ios)
        .map(|(r, io)| EncodeRecord {
            timestamp_ms: r.timestamp_ms(),
            priority: r.priority(),
            gps: r.gps(),
            event_io_id: r.event_io_id(),
            io,
        })
        .collect();
    let packet = EncodePacket {
        packet_id: p.packet_id(),
        avl_packet_id: p.avl_packet_id(),
        imei: p.imei(),
        codec: p.codec(),
        records: &recs,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
    let n = encode(&packet, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// The property every input must have: refused with a listed label, or
/// accepted consistently (the view re-encodes to exactly the same bytes, and
/// its iterators yield the counts it declares).
fn check_consistent(bytes: &[u8]) -> Result<(), TeltonikaError> {
    match parse(bytes) {
        Err(e) => {
            assert!(TeltonikaError::ALL.contains(&e));
            assert_eq!(TeltonikaError::from_label(e.as_str()), Some(e));
            Err(e)
        }
        Ok(p) => {
            assert_eq!(p.records().count(), usize::from(p.record_count()));
            for r in p.records() {
                assert_eq!(r.io().count(), usize::from(r.io_count()));
            }
            assert_eq!(p.imei().len(), IMEI_LEN);
            assert_eq!(p.imei().parse::<u64>().unwrap(), p.imei_u64());
            assert_eq!(reencode(&p), bytes, "accepted datagram does not re-encode identically");
            Ok(())
        }
    }
}

#[test]
fn vectors_decode_field_by_field() {
    let all = vectors();
    assert_eq!(all.len(), 3);
    for v in &all {
        let j = &v.json;
        let p = parse(&v.bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(p.imei(), j["imei"].as_str().unwrap(), "{}", v.name);
        assert_eq!(p.imei_u64(), j["imei"].as_str().unwrap().parse::<u64>().unwrap());
        assert_eq!(u64::from(p.packet_id()), j["packet_id"].as_u64().unwrap());
        assert_eq!(u64::from(p.avl_packet_id()), j["avl_packet_id"].as_u64().unwrap());
        assert_eq!(u64::from(p.codec().id()), j["codec"].as_u64().unwrap());
        let expected = j["records"].as_array().unwrap();
        assert_eq!(usize::from(p.record_count()), expected.len());
        assert_eq!(p.records().count(), expected.len());
        for (r, e) in p.records().zip(expected) {
            let g = r.gps();
            assert_eq!(r.timestamp_ms(), e["timestamp_ms"].as_u64().unwrap(), "{}", v.name);
            assert_eq!(u64::from(r.priority().as_u8()), e["priority"].as_u64().unwrap());
            let lon = (e["longitude"].as_f64().unwrap() * 1e7).round() as i64;
            let lat = (e["latitude"].as_f64().unwrap() * 1e7).round() as i64;
            assert_eq!(i64::from(g.longitude_e7), lon, "{} longitude", v.name);
            assert_eq!(i64::from(g.latitude_e7), lat, "{} latitude", v.name);
            assert_eq!(i64::from(g.altitude_m), e["altitude_m"].as_i64().unwrap());
            assert_eq!(u64::from(g.angle_deg), e["angle_deg"].as_u64().unwrap());
            assert_eq!(u64::from(g.satellites), e["satellites"].as_u64().unwrap());
            assert_eq!(u64::from(g.speed_kmh), e["speed_kmh"].as_u64().unwrap());
            assert_eq!(u64::from(r.event_io_id()), e["event_io_id"].as_u64().unwrap());
            let got: BTreeMap<String, u64> =
                r.io().map(|io| (io.id.to_string(), io.value.as_u64().unwrap())).collect();
            let want: BTreeMap<String, u64> = e["io"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                .collect();
            assert_eq!(got, want, "{} io", v.name);
            assert_eq!(usize::from(r.io_count()), want.len());
        }
        let ack_hex = unhex(j["ack_hex"].as_str().unwrap());
        assert_eq!(p.ack(p.record_count()).as_slice(), ack_hex, "{} ack", v.name);
        assert_eq!(
            ack(p.packet_id(), p.avl_packet_id(), p.record_count()).as_slice(),
            ack_hex.as_slice()
        );
    }
}

#[test]
fn vectors_io_widths_and_order() {
    // Codec 8 vector: 1-byte group (21, 1), then 2-byte (66).
    let d = vector("wiki_codec8_udp");
    let p = parse(&d).unwrap();
    let io: Vec<_> = p.records().next().unwrap().io().collect();
    assert_eq!(
        io,
        [
            IoElement { id: 21, value: IoValue::U8(3) },
            IoElement { id: 1, value: IoValue::U8(1) },
            IoElement { id: 66, value: IoValue::U16(23996) },
        ]
    );
    // 8E vector: one element in each of the 1-, 2- and 4-byte groups, two 8-byte.
    let d = vector("wiki_codec8e_udp");
    let p = parse(&d).unwrap();
    let io: Vec<_> = p.records().next().unwrap().io().collect();
    assert_eq!(
        io,
        [
            IoElement { id: 1, value: IoValue::U8(1) },
            IoElement { id: 17, value: IoValue::U16(157) },
            IoElement { id: 16, value: IoValue::U32(22_949_000) },
            IoElement { id: 11, value: IoValue::U64(893_700_218) },
            IoElement { id: 14, value: IoValue::U64(500_686_954) },
        ]
    );
}

#[test]
fn vectors_fix_status() {
    assert!(!parse(&vector("wiki_codec8_udp")).unwrap().records().next().unwrap().gps().has_fix());
    assert!(!parse(&vector("wiki_codec8e_udp")).unwrap().records().next().unwrap().gps().has_fix());
    let d = vector("traccar_connectionless");
    let g = parse(&d).unwrap().records().next().unwrap().gps();
    assert!(g.has_fix());
    assert!((g.latitude_deg() - 51.630115).abs() < 1e-9);
    assert!((g.longitude_deg() - 0.4124566).abs() < 1e-9);
}

#[test]
fn vectors_reencode_identically() {
    for v in vectors() {
        assert_eq!(check_consistent(&v.bytes), Ok(()), "{}", v.name);
    }
}

#[test]
fn ack_layout() {
    assert_eq!(ack(0xCAFE, 0x05, 1), [0x00, 0x05, 0xCA, 0xFE, 0x01, 0x05, 0x01]);
    assert_eq!(ack(0x0000, 0xFF, 0), [0x00, 0x05, 0x00, 0x00, 0x01, 0xFF, 0x00]);
    assert_eq!(ack(0x1234, 0x22, 255), [0x00, 0x05, 0x12, 0x34, 0x01, 0x22, 0xFF]);
}

fn err(d: &[u8]) -> TeltonikaError {
    parse(d).unwrap_err()
}

#[test]
fn refuses_bad_length() {
    let v = vector("wiki_codec8_udp");
    assert_eq!(err(&[]), TeltonikaError::BadLength);
    assert_eq!(err(&[0x00]), TeltonikaError::BadLength);
    assert_eq!(err(&v[..v.len() - 1]), TeltonikaError::BadLength);
    let mut longer = v.clone();
    longer.push(0x01);
    assert_eq!(err(&longer), TeltonikaError::BadLength);
    let mut d = v.clone();
    d[1] = d[1].wrapping_add(1);
    assert_eq!(err(&d), TeltonikaError::BadLength);
    let mut d = v;
    d[0] = 0xFF;
    assert_eq!(err(&d), TeltonikaError::BadLength);
}

#[test]
fn refuses_truncated() {
    // A consistent length field over a header that stops early.
    assert_eq!(err(&[0x00, 0x00]), TeltonikaError::Truncated);
    assert_eq!(err(&[0x00, 0x03, 0xCA, 0xFE, 0x01]), TeltonikaError::Truncated);
    // IMEI length 15 but only 3 digits follow.
    let mut d = vec![0, 0, 0xCA, 0xFE, 0x01, 0x05, 0x00, 0x0F, b'3', b'5', b'2'];
    fix_len(&mut d);
    assert_eq!(err(&d), TeltonikaError::Truncated);
    // The vector cut inside its only record, length field fixed.
    let v = vector("wiki_codec8_udp");
    for cut in [HEADER_LEN, HEADER_LEN + 5, HEADER_LEN + 24, v.len() - 2] {
        let mut d = v[..cut].to_vec();
        fix_len(&mut d);
        assert_eq!(err(&d), TeltonikaError::Truncated, "cut at {cut}");
    }
    // The closing count missing.
    let mut d = v[..v.len() - 1].to_vec();
    fix_len(&mut d);
    assert_eq!(err(&d), TeltonikaError::Truncated);
    // Codec 8: the 1-byte group count (offset 51) says 200 elements.
    let mut d = v.clone();
    assert_eq!(d[HEADER_LEN + 26], 0x02);
    d[HEADER_LEN + 26] = 200;
    assert_eq!(err(&d), TeltonikaError::Truncated);
    // 8E: one variable-length element declaring more bytes than there are.
    let d = codec8e_with_nx(1, &[(0x0101, b"ab")], Some(5));
    assert_eq!(err(&d), TeltonikaError::Truncated);
}

#[test]
fn refuses_bad_packet_type() {
    for b in [0x00, 0x02, 0xFF] {
        let mut d = vector("wiki_codec8_udp");
        d[4] = b;
        assert_eq!(err(&d), TeltonikaError::BadPacketType);
    }
}

#[test]
fn refuses_bad_imei() {
    let v = vector("wiki_codec8_udp");
    for bad in [b'A', b' ', b'/', b':', 0x00, 0xE9] {
        let mut d = v.clone();
        d[8 + 7] = bad;
        assert_eq!(err(&d), TeltonikaError::BadImei, "byte {bad:#04x}");
    }
    // IMEI length field 14 and 16, with the datagram adjusted to stay consistent.
    for (len, imei) in [(14u16, &b"35209308640365"[..]), (16, &b"3520930864036551"[..])] {
        let mut d = v[..6].to_vec();
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(imei);
        d.extend_from_slice(&v[23..]);
        fix_len(&mut d);
        assert_eq!(err(&d), TeltonikaError::BadImei, "length {len}");
    }
}

#[test]
fn refuses_unknown_codec() {
    for codec in [0x00, 0x07, 0x0C, 0x0D, 0x0E, 0x10, 0x8F, 0xFF] {
        let mut d = vector("wiki_codec8_udp");
        d[23] = codec;
        assert_eq!(err(&d), TeltonikaError::UnknownCodec, "codec {codec:#04x}");
    }
}

#[test]
fn refuses_no_records() {
    let mut d = vector("wiki_codec8_udp")[..25].to_vec();
    d[24] = 0;
    d.push(0);
    fix_len(&mut d);
    assert_eq!(err(&d), TeltonikaError::NoRecords);
}

#[test]
fn refuses_bad_priority() {
    for p in [3u8, 4, 0x80, 0xFF] {
        let mut d = vector("traccar_connectionless");
        d[HEADER_LEN + 8] = p;
        assert_eq!(err(&d), TeltonikaError::BadPriority, "priority {p}");
    }
    for p in 0u8..=2 {
        let mut d = vector("traccar_connectionless");
        d[HEADER_LEN + 8] = p;
        let packet = parse(&d).unwrap();
        assert_eq!(packet.records().next().unwrap().priority().as_u8(), p);
    }
}

/// One Codec 8E datagram with one record holding one 1-byte element (id
/// 0x0001) and the variable-length elements `nx`, and the total count `n`.
/// `len_override` replaces the first variable element's length field.
fn codec8e_with_nx(n: u16, nx: &[(u16, &[u8])], len_override: Option<u16>) -> Vec<u8> {
    let mut d = vec![0, 0, 0xCA, 0xFE, 0x01, 0x07, 0x00, 0x0F];
    d.extend_from_slice(b"352093086403655");
    d.extend_from_slice(&[0x8E, 0x01]);
    d.extend_from_slice(&1_560_407_121_000u64.to_be_bytes());
    d.push(1);
    d.extend_from_slice(&[0; 15]);
    d.extend_from_slice(&0x0001u16.to_be_bytes()); // event id
    d.extend_from_slice(&n.to_be_bytes()); // N
    d.extend_from_slice(&[0x00, 0x01, 0x00, 0x01, 0x07]); // N1 = 1: id 1 = 7
    d.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // N2, N4, N8 = 0
    d.extend_from_slice(&u16::try_from(nx.len()).unwrap().to_be_bytes());
    for (i, (id, bytes)) in nx.iter().enumerate() {
        d.extend_from_slice(&id.to_be_bytes());
        let len = match len_override {
            Some(l) if i == 0 => l,
            _ => u16::try_from(bytes.len()).unwrap(),
        };
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(bytes);
    }
    d.push(0x01);
    fix_len(&mut d);
    d
}

#[test]
fn codec8e_counts_variable_elements_in_n() {
    // N = N1 + NX = 1 + 2: accepted, and the variable values are borrowed.
    let d = codec8e_with_nx(3, &[(0x0101, b"ab"), (0x0102, b"")], None);
    let p = parse(&d).unwrap();
    let io: Vec<_> = p.records().next().unwrap().io().collect();
    assert_eq!(
        io,
        [
            IoElement { id: 1, value: IoValue::U8(7) },
            IoElement { id: 0x0101, value: IoValue::Bytes(b"ab") },
            IoElement { id: 0x0102, value: IoValue::Bytes(b"") },
        ]
    );
    assert_eq!(check_consistent(&d), Ok(()));
    // N counting only the fixed-width groups (N1 + N2 + N4 + N8 = 1) is refused.
    let d = codec8e_with_nx(1, &[(0x0101, b"ab"), (0x0102, b"")], None);
    assert_eq!(err(&d), TeltonikaError::BadIoCount);
}

#[test]
fn refuses_bad_io_count() {
    // Codec 8 vector: N = 3 at offset HEADER_LEN + 25.
    for n in [0u8, 2, 4, 0xFF] {
        let mut d = vector("wiki_codec8_udp");
        assert_eq!(d[HEADER_LEN + 25], 3);
        d[HEADER_LEN + 25] = n;
        assert_eq!(err(&d), TeltonikaError::BadIoCount, "N = {n}");
    }
    // 8E vector: N = 5 (two bytes at HEADER_LEN + 26).
    let mut d = vector("wiki_codec8e_udp");
    assert_eq!(d[HEADER_LEN + 27], 5);
    d[HEADER_LEN + 27] = 4;
    assert_eq!(err(&d), TeltonikaError::BadIoCount);
}

#[test]
fn refuses_trailing_bytes() {
    let mut d = vector("wiki_codec8_udp");
    d.push(0x01);
    fix_len(&mut d);
    assert_eq!(err(&d), TeltonikaError::TrailingBytes);
    let mut d = vector("traccar_connectionless");
    d.extend_from_slice(&[0, 0, 0]);
    fix_len(&mut d);
    assert_eq!(err(&d), TeltonikaError::TrailingBytes);
}

#[test]
fn refuses_count_mismatch() {
    for c in [0u8, 2, 0xFF] {
        let mut d = vector("wiki_codec8e_udp");
        *d.last_mut().unwrap() = c;
        assert_eq!(err(&d), TeltonikaError::CountMismatch, "closing count {c}");
    }
}

#[test]
fn labels_are_stable_unique_snake_case() {
    let labels: Vec<&str> = TeltonikaError::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(
        labels,
        [
            "bad_length",
            "truncated",
            "bad_packet_type",
            "bad_imei",
            "unknown_codec",
            "no_records",
            "bad_priority",
            "bad_io_count",
            "trailing_bytes",
            "count_mismatch",
        ]
    );
    for e in TeltonikaError::ALL {
        assert_eq!(TeltonikaError::from_label(e.as_str()), Some(e));
        assert!(e.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(TeltonikaError::from_label("nope"), None);
}

#[test]
fn every_truncation_of_the_vectors_is_refused() {
    for v in vectors() {
        for cut in 0..v.bytes.len() {
            // A datagram cut short no longer matches its length field.
            assert_eq!(check_consistent(&v.bytes[..cut]), Err(TeltonikaError::BadLength));
            // With the length field rewritten, the cut is found inside.
            if cut >= 2 {
                let mut d = v.bytes[..cut].to_vec();
                fix_len(&mut d);
                assert!(check_consistent(&d).is_err(), "{} cut at {cut} accepted", v.name);
            }
        }
    }
}

#[test]
fn every_single_byte_mutation_of_the_vectors_is_consistent() {
    let mut accepted = 0usize;
    let mut refused: BTreeMap<&'static str, usize> = BTreeMap::new();
    for v in vectors() {
        for pos in 0..v.bytes.len() {
            for b in 0..=u8::MAX {
                if b == v.bytes[pos] {
                    continue;
                }
                let mut d = v.bytes.clone();
                d[pos] = b;
                match check_consistent(&d) {
                    Ok(()) => accepted += 1,
                    Err(e) => *refused.entry(e.as_str()).or_default() += 1,
                    // Any change to the length field breaks it.
                }
                if pos < 2 {
                    assert_eq!(parse(&d), Err(TeltonikaError::BadLength));
                }
            }
        }
    }
    // Values inside fields (timestamps, coordinates, IO values, ids) are
    // data, so many mutations are accepted; the structural ones are refused.
    assert!(accepted > 0);
    for label in ["bad_length", "bad_packet_type", "bad_imei", "unknown_codec", "bad_priority"] {
        assert!(refused.contains_key(label), "no mutation refused as {label}: {refused:?}");
    }
    eprintln!("single-byte mutations: {accepted} accepted, refused {refused:?}");
}

#[test]
fn encode_refuses_what_parse_would() {
    let io8 = [IoElement { id: 256, value: IoValue::U8(1) }];
    let bytes_io = [IoElement { id: 1, value: IoValue::Bytes(b"x") }];
    let rec = |io: &'static [IoElement<'static>]| EncodeRecord {
        timestamp_ms: 1,
        priority: Priority::Low,
        gps: Gps::default(),
        event_io_id: 0,
        io,
    };
    let mut buf = [0u8; 4096];
    let one = [rec(&[])];
    let mut p = EncodePacket {
        packet_id: 1,
        avl_packet_id: 1,
        imei: "352093086403655",
        codec: Codec::Codec8,
        records: &one,
    };
    // One Codec 8 record without IO is the shortest datagram there is.
    let n = encode(&p, &mut buf).unwrap();
    assert_eq!(n, MIN_DATAGRAM_LEN);
    assert_eq!(check_consistent(&buf[..n]), Ok(()));
    assert_eq!(encode(&p, &mut buf[..n - 1]), Err(EncodeError::BufferTooSmall));
    assert_eq!(encode(&p, &mut buf[..20]), Err(EncodeError::BufferTooSmall));
    p.imei = "35209308640365";
    assert_eq!(encode(&p, &mut buf), Err(EncodeError::BadImei));
    p.imei = "35209308640365x";
    assert_eq!(encode(&p, &mut buf), Err(EncodeError::BadImei));
    p.imei = "352093086403655";
    p.records = &[];
    assert_eq!(encode(&p, &mut buf), Err(EncodeError::NoRecords));
    let many = vec![rec(&[]); 256];
    p.records = &many;
    assert_eq!(encode(&p, &mut vec![0; 65_536]), Err(EncodeError::TooManyRecords));
    let leaked: &'static [IoElement<'static>] = Box::leak(Box::new(io8));
    let wide = [rec(leaked)];
    p.records = &wide;
    assert_eq!(encode(&p, &mut buf), Err(EncodeError::IdTooWide));
    let leaked: &'static [IoElement<'static>] = Box::leak(Box::new(bytes_io));
    let var = [rec(leaked)];
    p.records = &var;
    assert_eq!(encode(&p, &mut buf), Err(EncodeError::BytesInCodec8));
    p.codec = Codec::Codec8Extended;
    let n = encode(&p, &mut buf).unwrap();
    assert_eq!(check_consistent(&buf[..n]), Ok(()));
    let io256: &'static [IoElement<'static>] =
        Box::leak(vec![IoElement { id: 1, value: IoValue::U8(0) }; 256].into_boxed_slice());
    let big = [rec(io256)];
    p.records = &big;
    p.codec = Codec::Codec8;
    assert_eq!(encode(&p, &mut buf), Err(EncodeError::TooManyIo));
    p.codec = Codec::Codec8Extended;
    assert!(encode(&p, &mut buf).is_ok());
}

#[test]
fn io_value_accessors() {
    assert_eq!(IoValue::U8(0xFF).as_i64(), Some(-1));
    assert_eq!(IoValue::U16(0xFF38).as_i64(), Some(-200));
    assert_eq!(IoValue::U32(0x8000_0000).as_i64(), Some(-2_147_483_648));
    assert_eq!(IoValue::U64(u64::MAX).as_i64(), Some(-1));
    assert_eq!(IoValue::U16(0xFF38).as_u64(), Some(0xFF38));
    assert_eq!(IoValue::Bytes(b"ab").as_u64(), None);
    assert_eq!(IoValue::Bytes(b"ab").as_bytes(), Some(&b"ab"[..]));
    assert_eq!(IoValue::U8(1).as_bytes(), None);
}

// ---- property tests ----------------------------------------------------

#[derive(Debug, Clone)]
enum OwnedValue {
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
struct OwnedRecord {
    timestamp_ms: u64,
    priority: Priority,
    gps: Gps,
    event_io_id: u16,
    io: Vec<(u16, OwnedValue)>,
}

#[derive(Debug, Clone)]
struct OwnedPacket {
    packet_id: u16,
    avl_packet_id: u8,
    imei: String,
    codec: Codec,
    records: Vec<OwnedRecord>,
}

fn value_strategy(extended: bool) -> BoxedStrategy<OwnedValue> {
    let fixed = prop_oneof![
        any::<u8>().prop_map(OwnedValue::U8),
        any::<u16>().prop_map(OwnedValue::U16),
        any::<u32>().prop_map(OwnedValue::U32),
        any::<u64>().prop_map(OwnedValue::U64),
    ];
    if extended {
        prop_oneof![
            4 => fixed,
            1 => proptest::collection::vec(any::<u8>(), 0..12).prop_map(OwnedValue::Bytes),
        ]
        .boxed()
    } else {
        fixed.boxed()
    }
}

fn record_strategy(codec: Codec) -> impl Strategy<Value = OwnedRecord> {
    let extended = codec == Codec::Codec8Extended;
    let id = if extended { any::<u16>().boxed() } else { (0u16..=255).boxed() };
    let gps = (any::<i32>(), any::<i32>(), any::<i16>(), any::<u16>(), any::<u8>(), any::<u16>())
        .prop_map(|(lo, la, al, an, sa, sp)| Gps {
            longitude_e7: lo,
            latitude_e7: la,
            altitude_m: al,
            angle_deg: an,
            satellites: sa,
            speed_kmh: sp,
        });
    (
        any::<u64>(),
        0u8..=2,
        gps,
        id.clone(),
        proptest::collection::vec((id, value_strategy(extended)), 0..10),
    )
        .prop_map(|(timestamp_ms, p, gps, event_io_id, io)| OwnedRecord {
            timestamp_ms,
            priority: Priority::from_u8(p).unwrap(),
            gps,
            event_io_id,
            io,
        })
}

fn packet_strategy() -> impl Strategy<Value = OwnedPacket> {
    prop_oneof![Just(Codec::Codec8), Just(Codec::Codec8Extended)].prop_flat_map(|codec| {
        (
            any::<u16>(),
            any::<u8>(),
            "[0-9]{15}",
            proptest::collection::vec(record_strategy(codec), 1..5),
        )
            .prop_map(move |(packet_id, avl_packet_id, imei, records)| OwnedPacket {
                packet_id,
                avl_packet_id,
                imei,
                codec,
                records,
            })
    })
}

fn owned_io(v: &(u16, OwnedValue)) -> IoElement<'_> {
    let value = match &v.1 {
        OwnedValue::U8(x) => IoValue::U8(*x),
        OwnedValue::U16(x) => IoValue::U16(*x),
        OwnedValue::U32(x) => IoValue::U32(*x),
        OwnedValue::U64(x) => IoValue::U64(*x),
        OwnedValue::Bytes(b) => IoValue::Bytes(b),
    };
    IoElement { id: v.0, value }
}

/// The elements in the order the wire carries them: stable by group.
fn wire_order<'a>(io: &[IoElement<'a>]) -> Vec<IoElement<'a>> {
    let mut v = io.to_vec();
    v.sort_by_key(|e| e.value.group() as u8);
    v
}

fn encode_owned(p: &OwnedPacket) -> Vec<u8> {
    let ios: Vec<Vec<IoElement<'_>>> =
        p.records.iter().map(|r| r.io.iter().map(owned_io).collect()).collect();
    let recs: Vec<EncodeRecord<'_>> = p
        .records
        .iter()
        .zip(&ios)
        .map(|(r, io)| EncodeRecord {
            timestamp_ms: r.timestamp_ms,
            priority: r.priority,
            gps: r.gps,
            event_io_id: r.event_io_id,
            io,
        })
        .collect();
    let packet = EncodePacket {
        packet_id: p.packet_id,
        avl_packet_id: p.avl_packet_id,
        imei: &p.imei,
        codec: p.codec,
        records: &recs,
    };
    let mut buf = vec![0u8; 8192];
    let n = encode(&packet, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = check_consistent(&bytes);
    }

    /// Random bytes behind a valid header and a correct length field, so the
    /// record and IO parsing sees them.
    #[test]
    fn arbitrary_records_never_panic(
        codec in prop_oneof![Just(0x08u8), Just(0x8Eu8)],
        count in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut d = vec![0, 0, 0xCA, 0xFE, 0x01, 0x05, 0x00, 0x0F];
        d.extend_from_slice(b"352093086403655");
        d.extend_from_slice(&[codec, count]);
        d.extend_from_slice(&body);
        fix_len(&mut d);
        let _ = check_consistent(&d);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn generated_packets_round_trip(p in packet_strategy()) {
        let bytes = encode_owned(&p);
        let parsed = parse(&bytes).unwrap();
        prop_assert_eq!(parsed.packet_id(), p.packet_id);
        prop_assert_eq!(parsed.avl_packet_id(), p.avl_packet_id);
        prop_assert_eq!(parsed.imei(), p.imei.as_str());
        prop_assert_eq!(parsed.imei_u64(), p.imei.parse::<u64>().unwrap());
        prop_assert_eq!(parsed.codec(), p.codec);
        prop_assert_eq!(usize::from(parsed.record_count()), p.records.len());
        prop_assert_eq!(parsed.records().count(), p.records.len());
        for (r, want) in parsed.records().zip(&p.records) {
            prop_assert_eq!(r.timestamp_ms(), want.timestamp_ms);
            prop_assert_eq!(r.priority(), want.priority);
            prop_assert_eq!(r.gps(), want.gps);
            prop_assert_eq!(r.event_io_id(), want.event_io_id);
            let io: Vec<IoElement<'_>> = want.io.iter().map(owned_io).collect();
            prop_assert_eq!(r.io().collect::<Vec<_>>(), wire_order(&io));
            prop_assert_eq!(usize::from(r.io_count()), want.io.len());
        }
        prop_assert_eq!(reencode(&parsed), bytes.clone());
        let acked = parsed.ack(parsed.record_count());
        prop_assert_eq!(&acked[2..4], &p.packet_id.to_be_bytes()[..]);
        prop_assert_eq!(acked[5], p.avl_packet_id);
    }

    /// Generated packets with up to 4 bytes overwritten, or cut, or with a
    /// byte inserted (length field fixed or not): never a panic, and what is
    /// accepted re-encodes identically.
    #[test]
    fn mutated_packets_are_consistent(
        p in packet_strategy(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..5),
        cut in any::<prop::sample::Index>(),
        mode in 0u8..4,
    ) {
        let mut d = encode_owned(&p);
        match mode {
            0 => for (i, b) in &edits { let n = d.len(); d[i.index(n)] = *b; },
            1 => { let n = d.len(); d.truncate(cut.index(n)); }
            2 => { let n = d.len(); d.truncate(cut.index(n).max(2)); fix_len(&mut d); }
            _ => {
                let n = d.len();
                d.insert(cut.index(n), edits[0].1);
                fix_len(&mut d);
            }
        }
        let _ = check_consistent(&d);
    }
}
