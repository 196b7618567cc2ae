//! Property tests: round trips for every kind, and decode never panics.

use fleetwire_proto::{
    Batch, Body, EncodeError, Event, FixType, Frame, Hello, MAX_FRAME_LEN, MAX_POSITION_FRAME_LEN,
    Monitoring, Position, Reading, Record, Sample, Seq, Severity, decode, encode, encode_signed,
};
use proptest::prelude::*;

fn position() -> impl Strategy<Value = Position> {
    (
        -900_000_000i32..=900_000_000,
        -1_800_000_000i32..=1_800_000_000,
        -1_000_000i32..=1_000_000,
        any::<u16>(),
        0u16..=3599,
        any::<u16>(),
        0u8..=5,
        any::<u8>(),
    )
        .prop_map(
            |(lat_e7, lon_e7, alt_dm, speed_cm_s, heading_ddeg, hacc_cm, fix, satellites)| {
                Position {
                    lat_e7,
                    lon_e7,
                    alt_dm,
                    speed_cm_s,
                    heading_ddeg,
                    hacc_cm,
                    fix: FixType::from_u8(fix).unwrap(),
                    satellites,
                }
            },
        )
}

fn severity() -> impl Strategy<Value = Severity> {
    (0u8..=4).prop_map(|s| Severity::from_u8(s).unwrap())
}

/// Owned data a borrowed `Monitoring` points into.
#[derive(Debug, Clone)]
struct OwnedMonitoring {
    battery: Option<u8>,
    supply: Option<u16>,
    temp: Option<i16>,
    rssi: Option<i8>,
    uptime: Option<u32>,
    readings: Vec<(String, f64)>,
}

fn owned_monitoring(max_readings: usize) -> impl Strategy<Value = OwnedMonitoring> {
    (
        proptest::option::of(0u8..=100),
        any::<Option<u16>>(),
        any::<Option<i16>>(),
        any::<Option<i8>>(),
        any::<Option<u32>>(),
        proptest::collection::btree_map(
            "[A-Za-z_][A-Za-z0-9_.-]{0,31}",
            any::<f64>().prop_filter("finite", |v| v.is_finite()),
            0..=max_readings,
        ),
    )
        .prop_map(|(battery, supply, temp, rssi, uptime, readings)| OwnedMonitoring {
            battery,
            supply,
            temp,
            rssi,
            uptime,
            readings: readings.into_iter().collect(),
        })
}

fn readings(o: &OwnedMonitoring) -> Vec<Reading<'_>> {
    o.readings.iter().map(|(n, v)| Reading { name: n, value: *v }).collect()
}

fn monitoring<'a>(o: &OwnedMonitoring, r: &'a [Reading<'a>]) -> Monitoring<'a> {
    Monitoring {
        battery_pct: o.battery,
        supply_mv: o.supply,
        temperature_cdeg: o.temp,
        rssi_dbm: o.rssi,
        uptime_s: o.uptime,
        readings: Seq::from_slice(r),
    }
}

fn roundtrip(frame: &Frame<'_>) {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode(frame, &mut buf).expect("encodes");
    let back = decode(&buf[..n]).expect("decodes");
    assert_eq!(&back, frame);
    let n = encode_signed(frame, b"k", &mut buf).expect("encodes signed");
    let back = decode(&buf[..n]).expect("decodes signed");
    back.auth.expect("tag").verify(b"k").expect("verifies");
    assert_eq!(Frame { auth: None, ..back }, *frame);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn position_roundtrip(dev in 1u32.., seq: u32, ts: u64, p in position()) {
        let f = Frame::new(dev, seq, ts, Body::Position(p));
        roundtrip(&f);
        let mut buf = [0u8; 64];
        prop_assert!(encode(&f, &mut buf).unwrap() <= MAX_POSITION_FRAME_LEN);
    }

    #[test]
    fn monitoring_roundtrip(dev in 1u32.., seq: u32, ts: u64, o in owned_monitoring(20)) {
        let r = readings(&o);
        roundtrip(&Frame::new(dev, seq, ts, Body::Monitoring(monitoring(&o, &r))));
    }

    #[test]
    fn event_roundtrip(dev in 1u32.., seq: u32, ts: u64, code: u16, sev in severity(),
                       text in proptest::option::of("\\PC{0,16}")) {
        let text = text.filter(|t| t.len() <= 64);
        let e = Event { code, severity: sev, text: text.as_deref() };
        roundtrip(&Frame::new(dev, seq, ts, Body::Event(e)));
    }

    #[test]
    fn hello_roundtrip(dev in 1u32.., ts: u64, fw in "[ -~]{0,32}", model in "[ -~]{0,32}", caps: u32) {
        let h = Hello { firmware: &fw, model: &model, capabilities: caps };
        roundtrip(&Frame::new(dev, 0, ts, Body::Hello(h)));
    }

    #[test]
    fn batch_roundtrip(dev in 1u32.., seq: u32, ts: u64,
                       items in proptest::collection::vec(
                           (any::<u32>(), 0u8..3, position(), owned_monitoring(3), any::<u16>(), severity()),
                           1..12)) {
        let all_readings: Vec<Vec<Reading<'_>>> = items.iter().map(|i| readings(&i.3)).collect();
        let samples: Vec<Sample<'_>> = items.iter().zip(&all_readings).map(|(i, r)| Sample {
            offset_ms: i.0,
            record: match i.1 {
                0 => Record::Position(i.2),
                1 => Record::Monitoring(monitoring(&i.3, r)),
                _ => Record::Event(Event { code: i.4, severity: i.5, text: None }),
            },
        }).collect();
        let f = Frame::new(dev, seq, ts, Body::Batch(Batch { samples: Seq::from_slice(&samples) }));
        let mut buf = [0u8; MAX_FRAME_LEN];
        // Large batches may not fit in one frame; that is an encode error, not a panic.
        match encode(&f, &mut buf) {
            Ok(_) => roundtrip(&f),
            Err(e) => prop_assert_eq!(e, EncodeError::TooLong),
        }
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
    }

    /// Random payloads behind a valid header and CRC reach the payload
    /// parser (random bytes alone almost never pass the CRC).
    #[test]
    fn payload_parser_never_panics(kind in 0u8..8, flags in 0u8..2,
                                   payload in proptest::collection::vec(any::<u8>(), 0..1100)) {
        let mut v = b"FW".to_vec();
        v.extend([1, flags, kind, 1, 0, 0, 0, 0, 0, 0, 0]);
        v.extend(0u64.to_le_bytes());
        v.extend(&payload);
        let crc = fleetwire_proto::crc32c(&v);
        v.extend(crc.to_le_bytes());
        if let Ok(f) = decode(&v) {
            // Whatever decodes re-encodes to a frame that decodes the same.
            let mut buf = [0u8; MAX_FRAME_LEN];
            let n = encode(&f, &mut buf).expect("a decoded frame is encodable");
            prop_assert_eq!(decode(&buf[..n]).unwrap(), Frame { auth: None, ..f });
        }
    }
}
