//! Tests of the OsmAnd decoder: the field-notes requests, Traccar's own
//! query and JSON vectors, every timestamp form, every refusal, speed units,
//! encodings, readings, bounds, and property tests.

use super::*;
use proptest::prelude::*;
use std::time::{Duration, UNIX_EPOCH};

fn q(query: &str) -> Result<OsmandReport, OsmandError> {
    decode(query, b"", None, SpeedUnit::Knots)
}

fn json(body: &str) -> Result<OsmandReport, OsmandError> {
    decode("", body.as_bytes(), Some("application/json"), SpeedUnit::Knots)
}

fn pos(r: &OsmandReport) -> OsmandPosition {
    r.position.expect("a position")
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn reading(r: &OsmandReport, name: &str) -> Option<f64> {
    r.readings.iter().find(|x| x.name.as_str() == name).map(|x| x.value)
}

// ---- the requests of the field notes ----------------------------------------

#[test]
fn field_notes_examples() {
    let r = q("id=902064&lat=42.06288&lon=-88.23412&timestamp=2016-01-27T18%3A55%3A47Z&hdop=6.0&altitude=224.0&speed=0.0").unwrap();
    assert_eq!(r.device_id.as_str(), "902064");
    assert_eq!(r.timestamp_ms, Some(1_453_920_947_000));
    assert_eq!(r.encoding, Encoding::Query);
    let p = pos(&r);
    assert_eq!((p.latitude_deg, p.longitude_deg), (42.06288, -88.23412));
    assert_eq!(p.hdop, Some(6.0));
    assert_eq!(p.altitude_m, Some(224.0));
    assert_eq!(p.speed_mps, Some(0.0));
    assert!(p.valid);
    assert!(r.readings.is_empty());
    assert_eq!(r.ignored, 0);

    let r = q("id=123456&timestamp=1377177267&lat=60.0&lon=30.0").unwrap();
    assert_eq!(r.device_id.as_str(), "123456");
    assert_eq!(r.timestamp_ms, Some(1_377_177_267_000));
    assert_eq!((pos(&r).latitude_deg, pos(&r).longitude_deg), (60.0, 30.0));
    assert_eq!(pos(&r).speed_mps, None);

    let r = q("id=123456&timestamp=1377177267&location=60.0,30.0").unwrap();
    assert_eq!(r.timestamp_ms, Some(1_377_177_267_000));
    assert_eq!((pos(&r).latitude_deg, pos(&r).longitude_deg), (60.0, 30.0));

    assert_eq!(q("timestamp=1377177267&lat=60.0&lon=30.0"), Err(OsmandError::MissingId));
    // The same requests as a server sees the path: a leading `?` is skipped.
    assert!(q("?id=123456&timestamp=1377177267&lat=60.0&lon=30.0").is_ok());
}

/// The query strings of Traccar's `OsmAndProtocolDecoderTest.testDecodeQuery`.
#[test]
fn traccar_query_vectors() {
    let vectors = [
        "id=123456&timestamp=1377177267&cell=257,02,16,2224&cell=257,02,16,2223,-90&wifi=00-14-22-01-23-45,-80&wifi=00-1C-B3-09-85-15,-70",
        "id=902064&lat=42.06288&lon=-88.23412&timestamp=2016-01-27T18%3A55%3A47Z&hdop=6.0&altitude=224.0&speed=0.0",
        "id=902064&lat=42.06288&lon=-88.23412&timestamp=1442068686579&hdop=6.0&altitude=224.0&speed=0.0",
        "lat=49.60688&lon=6.15788&timestamp=2014-06-04+09%3A10%3A11&altitude=384.7&speed=0.0&id=353861053849681",
        "id=123456&timestamp=1377177267&lat=60.0&lon=30.0&speed=0.0&bearing=0.0&altitude=0&hdop=0.0",
        "id=123456&timestamp=1377177267&lat=60.0&lon=30.0",
        "lat=60.0&lon=30.0&speed=0.0&heading=0.0&vacc=0&hacc=0&altitude=0&deviceid=123456",
        "id=861001000719969&lat=41.666667&lon=-0.883333&altitude=350.059479&speed=0.000000&batt=87",
        "id=123456&timestamp=1377177267&location=60.0,30.0",
        "id=123456789012345&timestamp=1504763810&lat=40.7232948571&lon=-74.0061408571&bearing=7.19889788244&speed=40&ignition=true&rpm=933&fuel=24",
    ];
    for v in vectors {
        assert!(q(v).is_ok(), "{v}: {:?}", q(v));
    }
    // Cells and Wi-Fi are not numbers: four ignored parameters, no position.
    let r = q(vectors[0]).unwrap();
    assert_eq!((r.ignored, r.position), (4, None));
    assert_eq!(q(vectors[2]).unwrap().timestamp_ms, Some(1_442_068_686_579));
    let r = q(vectors[3]).unwrap();
    assert_eq!(r.timestamp_ms, Some(1_401_873_011_000));
    assert_eq!(r.device_id.as_str(), "353861053849681");
    let r = q(vectors[6]).unwrap();
    assert_eq!(r.device_id.as_str(), "123456");
    assert_eq!((reading(&r, "vacc"), reading(&r, "hacc")), (Some(0.0), Some(0.0)));
    assert_eq!(pos(&r).heading_deg, Some(0.0));
    assert_eq!(q(vectors[7]).unwrap().battery_pct, Some(87.0));
    let r = q(vectors[9]).unwrap();
    assert_eq!(r.timestamp_ms, Some(1_504_763_810_000));
    let p = pos(&r);
    assert_eq!((p.latitude_deg, p.longitude_deg), (40.7232948571, -74.0061408571));
    assert_eq!(p.heading_deg, Some(7.19889788244));
    assert!(near(p.speed_mps.unwrap(), 40.0 * 1852.0 / 3600.0));
    assert_eq!(reading(&r, "ignition"), Some(1.0));
    assert_eq!(reading(&r, "rpm"), Some(933.0));
    assert_eq!(reading(&r, "fuel"), Some(24.0));
}

/// Traccar Client's Android query form (with `charge` and `batt`).
#[test]
fn traccar_client_query_form() {
    let r = q("id=48241179&timestamp=1750000000&lat=37.4219983&lon=-122.084&speed=2.5&bearing=181.5&altitude=12.0&accuracy=5.0&batt=76.0&charge=true").unwrap();
    assert_eq!(r.device_id.as_str(), "48241179");
    assert_eq!(r.timestamp_ms, Some(1_750_000_000_000));
    let p = pos(&r);
    assert!(near(p.speed_mps.unwrap(), 2.5 * 0.514_444_444_444_444_4));
    assert_eq!(p.heading_deg, Some(181.5));
    assert_eq!(p.accuracy_m, Some(5.0));
    assert_eq!(r.battery_pct, Some(76.0));
    assert_eq!(r.charging, Some(true));
}

const JSON_VECTORS: [&str; 4] = [
    r#"{"location":{"timestamp":"2025-06-15T13:45:12.862Z","coords":{"latitude":37.4219983,"longitude":-122.084,"accuracy":5,"speed":0,"heading":-1,"altitude":5},"is_moving":false,"odometer":0,"event":"motionchange","battery":{"level":1,"is_charging":false},"activity":{"type":"still"},"extras":{},"_":"&id=48241179&lat=37.4219983&lon=-122.084&timestamp=2025-06-15T13:45:12.862Z&"},"device_id":"48241179"}"#,
    r#"{"location":{"timestamp":"2025-06-15T13:45:12.862Z","coords":{"latitude":37.4219983,"longitude":-122.084,"accuracy":5,"speed":0,"heading":-1,"altitude":5},"is_moving":false,"odometer":0,"event":"motionchange","battery":{"level":1,"is_charging":false},"activity":{"type":"still"},"extras":{"device_string_test":"long_device_id","device_bool_test":true,"device_bool_false_test":false,"device_integer_test":1,"device_integer_twelve_test":12,"device_double_test":1.345,"device_very_long_double_test":1763636.3442},"_":"&id=48241179&lat=37.4219983&lon=-122.084&timestamp=2025-06-15T13:45:12.862Z&"},"device_id":"48241179"}"#,
    r#"{"location":{"extras":{},"mock":true,"coords":{"speed_accuracy":-1,"speed":-1,"longitude":-122.406417,"ellipsoidal_altitude":0,"floor":null,"heading_accuracy":-1,"latitude":37.785834000000001,"accuracy":5,"altitude_accuracy":-1,"altitude":0,"heading":-1},"is_moving":false,"age":188,"odometer":0,"uuid":"2FB04C65-99CF-42AB-8DD3-EBCB4B108BF8","event":"motionchange","battery":{"level":-1,"is_charging":false},"activity":{"type":"unknown","confidence":100},"timestamp":"2025-05-09T04:11:30.579Z"},"device_id":"658765"}"#,
    r#"{"location":{"event":"motionchange","is_moving":false,"uuid":"0e9a2473-a9a7-4c00-997b-fb97d2154e75","timestamp":"2021-07-21T08:06:34.444Z","odometer":0,"coords":{"latitude":-6.1148096,"longitude":106.6837015,"accuracy":3.8,"speed":18.67,"speed_accuracy":0.26,"heading":63,"heading_accuracy":0.28,"altitude":35.7,"altitude_accuracy":3.8},"activity":{"type":"still","confidence":100},"battery":{"is_charging":false,"level":0.79},"extras":{}},"device_id":"8737767034"}"#,
];

/// The bodies of Traccar's `OsmAndProtocolDecoderTest` JSON cases, as
/// Traccar Client 9 (transistorsoft background geolocation) posts them.
#[test]
fn traccar_client_json_vectors() {
    let r = json(JSON_VECTORS[0]).unwrap();
    assert_eq!(r.encoding, Encoding::Json);
    assert_eq!(r.device_id.as_str(), "48241179");
    assert_eq!(r.timestamp_ms, Some(1_749_995_112_862));
    let p = pos(&r);
    assert_eq!((p.latitude_deg, p.longitude_deg), (37.4219983, -122.084));
    assert_eq!((p.accuracy_m, p.speed_mps, p.heading_deg), (Some(5.0), Some(0.0), None));
    assert_eq!(p.altitude_m, Some(5.0));
    assert_eq!((r.battery_pct, r.charging, r.moving), (Some(100.0), Some(false), Some(false)));
    assert_eq!(r.odometer_m, Some(0.0));
    assert!(r.readings.is_empty());

    let r = json(JSON_VECTORS[1]).unwrap();
    let got: Vec<(&str, f64)> = r.readings.iter().map(|x| (x.name.as_str(), x.value)).collect();
    assert_eq!(
        got,
        [
            ("device_bool_test", 1.0),
            ("device_bool_false_test", 0.0),
            ("device_integer_test", 1.0),
            ("device_integer_twelve_test", 12.0),
            ("device_double_test", 1.345),
            ("device_very_long_double_test", 1763636.3442),
        ]
    );
    assert_eq!(r.ignored, 1, "the string extra");

    // -1 means unknown for speed, heading and battery level.
    let r = json(JSON_VECTORS[2]).unwrap();
    assert_eq!(r.device_id.as_str(), "658765");
    assert_eq!(r.timestamp_ms, Some(1_746_763_890_579));
    let p = pos(&r);
    assert_eq!((p.speed_mps, p.heading_deg, r.battery_pct), (None, None, None));
    assert_eq!((p.latitude_deg, p.longitude_deg), (37.785834, -122.406417));

    let r = json(JSON_VECTORS[3]).unwrap();
    assert_eq!(r.device_id.as_str(), "8737767034");
    assert_eq!(r.timestamp_ms, Some(1_626_854_794_444));
    let p = pos(&r);
    assert_eq!((p.latitude_deg, p.longitude_deg), (-6.1148096, 106.6837015));
    assert_eq!((p.accuracy_m, p.speed_mps, p.heading_deg), (Some(3.8), Some(18.67), Some(63.0)));
    assert_eq!(p.altitude_m, Some(35.7));
    assert_eq!(r.battery_pct, Some(79.0));
}

#[test]
fn json_speed_is_mps_whatever_the_unit() {
    for unit in SpeedUnit::ALL {
        let r = decode("", JSON_VECTORS[3].as_bytes(), Some("application/json"), unit).unwrap();
        assert_eq!(pos(&r).speed_mps, Some(18.67), "{unit:?}");
    }
}

#[test]
fn json_variants() {
    // Numeric device id, no coords (a heartbeat), content type with charset.
    let r = decode(
        "token=s3cret&extra=1",
        br#"{"device_id": 658765, "location": {"timestamp": "2025-05-09T04:11:30Z", "battery": {"level": 0.5}}}"#,
        Some("Application/JSON; charset=utf-8"),
        SpeedUnit::Knots,
    )
    .unwrap();
    assert_eq!(r.device_id.as_str(), "658765");
    assert_eq!((r.position, r.battery_pct), (None, Some(50.0)));
    assert_eq!(r.ignored, 1, "the query's `extra`, not the token");
    // No location at all, sniffed as JSON without a content type.
    let r = decode("", br#" {"device_id":"a-b"} "#, None, SpeedUnit::Knots).unwrap();
    assert_eq!((r.device_id.as_str(), r.timestamp_ms, r.position), ("a-b", None, None));
    // Numeric timestamps, numeric strings and nulls.
    let r = json(r#"{"device_id":"1","location":{"timestamp":1377177267,"coords":{"latitude":"60.5","longitude":30,"speed":null}}}"#).unwrap();
    assert_eq!(r.timestamp_ms, Some(1_377_177_267_000));
    assert_eq!(
        (pos(&r).latitude_deg, pos(&r).longitude_deg, pos(&r).speed_mps),
        (60.5, 30.0, None)
    );
    // Escaped strings (owned, not borrowed) work the same.
    let r =
        json(r#"{"device_id":"\u0031\u0032","location":{"extras":{"t\u0065mp":21.5}}}"#).unwrap();
    assert_eq!(r.device_id.as_str(), "12");
    assert_eq!(reading(&r, "temp"), Some(21.5));
}

#[test]
fn json_refusals() {
    use OsmandError::*;
    let cases: &[(&str, OsmandError)] = &[
        // An empty body is no body: the (empty) query string is decoded.
        ("", MissingId),
        ("not json", BadJson),
        ("[]", BadJson),
        ("{", BadJson),
        (r#"{"device_id":"1","location":[{"timestamp":"2025-05-09T04:11:30Z"}]}"#, BadJson),
        (r#"{"device_id":"1","location":{"coords":[1,2]}}"#, BadJson),
        (r#"{"device_id":"1","location":{"battery":1}}"#, BadJson),
        (r#"{"device_id":"1","location":{"extras":[]}}"#, BadJson),
        (r#"{"device_id":"1","device_id":"2"}"#, BadJson),
        (r#"{"device_id":"1","location":{"coords":{"latitude":1e999,"longitude":1}}}"#, BadJson),
        (r#"{"location":{"timestamp":"2025-05-09T04:11:30Z"}}"#, MissingId),
        (r#"{"device_id":null}"#, MissingId),
        (r#"{"device_id":""}"#, BadId { param: "device_id" }),
        (r#"{"device_id":"has space"}"#, BadId { param: "device_id" }),
        (r#"{"device_id":-1}"#, BadId { param: "device_id" }),
        (r#"{"device_id":1.5}"#, BadId { param: "device_id" }),
        (r#"{"device_id":true}"#, BadId { param: "device_id" }),
        (r#"{"device_id":{"a":1}}"#, BadId { param: "device_id" }),
        (
            r#"{"device_id":"1","location":{"timestamp":"yesterday"}}"#,
            BadValue { param: "location.timestamp" },
        ),
        (
            r#"{"device_id":"1","location":{"timestamp":true}}"#,
            BadValue { param: "location.timestamp" },
        ),
        (
            r#"{"device_id":"1","location":{"timestamp":"1969-12-31T23:59:59Z"}}"#,
            OutOfRange { param: "location.timestamp" },
        ),
        (
            r#"{"device_id":"1","location":{"coords":{"latitude":1}}}"#,
            MissingParam { param: "location.coords.longitude" },
        ),
        (
            r#"{"device_id":"1","location":{"coords":{"longitude":1}}}"#,
            MissingParam { param: "location.coords.latitude" },
        ),
        (
            r#"{"device_id":"1","location":{"coords":{"latitude":91,"longitude":1}}}"#,
            OutOfRange { param: "location.coords.latitude" },
        ),
        (
            r#"{"device_id":"1","location":{"coords":{"latitude":1,"longitude":-181}}}"#,
            OutOfRange { param: "location.coords.longitude" },
        ),
        (
            r#"{"device_id":"1","location":{"coords":{"latitude":"x","longitude":1}}}"#,
            BadValue { param: "location.coords.latitude" },
        ),
        (
            r#"{"device_id":"1","location":{"coords":{"latitude":1,"longitude":1,"speed":[1]}}}"#,
            BadValue { param: "location.coords.speed" },
        ),
        (
            r#"{"device_id":"1","location":{"coords":{"latitude":1,"longitude":1,"heading":400}}}"#,
            OutOfRange { param: "location.coords.heading" },
        ),
        (
            r#"{"device_id":"1","location":{"battery":{"level":1.5}}}"#,
            OutOfRange { param: "location.battery.level" },
        ),
        (
            r#"{"device_id":"1","location":{"battery":{"is_charging":"yes"}}}"#,
            BadValue { param: "location.battery.is_charging" },
        ),
        (
            r#"{"device_id":"1","location":{"is_moving":1}}"#,
            BadValue { param: "location.is_moving" },
        ),
        (
            r#"{"device_id":"1","location":{"odometer":-5}}"#,
            OutOfRange { param: "location.odometer" },
        ),
    ];
    for (body, want) in cases {
        assert_eq!(json(body).as_ref().err(), Some(want), "{body}");
    }
    // Deep nesting where a value is skipped (serde_json skips iteratively):
    // no stack overflow, and judged like any other value.
    let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep = format!(r#"{{"device_id":"1","x":{}}}"#, nest(30_000));
    assert!(json(&deep).is_ok());
    let deep = format!(r#"{{"device_id":{}}}"#, nest(30_000));
    assert_eq!(json(&deep), Err(BadId { param: "device_id" }));
    let deep = format!(r#"{{"device_id":"1","location":{{"extras":{{"k":{}}}}}}}"#, nest(30_000));
    assert_eq!(json(&deep).map(|r| r.ignored), Ok(1));
    let unclosed = format!(r#"{{"device_id":"1","x":{}"#, "[".repeat(60_000));
    assert_eq!(json(&unclosed), Err(BadJson));
}

// ---- timestamps ----------------------------------------------------------

#[test]
fn every_timestamp_form() {
    let cases: &[(&str, u64)] = &[
        ("1377177267", 1_377_177_267_000),    // seconds
        ("0", 0),                             // seconds, the epoch
        ("2147483646", 2_147_483_646_000),    // the largest seconds value
        ("2147483647", 2_147_483_647),        // from here on: milliseconds
        ("1442068686579", 1_442_068_686_579), // milliseconds
        ("2016-01-27T18:55:47Z", 1_453_920_947_000),
        ("2016-01-27t18:55:47z", 1_453_920_947_000),
        ("2016-01-27T18:55:47", 1_453_920_947_000), // no zone: UTC
        ("2016-01-27 18:55:47", 1_453_920_947_000), // space (form `+`)
        ("2016-01-27T18:55Z", 1_453_920_900_000),   // no seconds
        ("2025-06-15T13:45:12.862Z", 1_749_995_112_862),
        ("2025-06-15T13:45:12,862Z", 1_749_995_112_862),
        ("2025-06-15T13:45:12.8Z", 1_749_995_112_800),
        ("2025-06-15T13:45:12.862999999Z", 1_749_995_112_862), // truncated
        ("2016-01-27T20:55:47+02:00", 1_453_920_947_000),
        ("2016-01-27T20:55:47+0200", 1_453_920_947_000),
        ("2016-01-27T20:55:47+02", 1_453_920_947_000),
        ("2016-01-27T13:25:47-05:30", 1_453_920_947_000),
        ("2016-01-27T18:55:47.250+00:00", 1_453_920_947_250),
        ("2016-02-29T00:00:00Z", 1_456_704_000_000), // leap day
        ("2000-03-01T00:00:00Z", 951_868_800_000),
        ("1999-12-31T23:59:59Z", 946_684_799_000),
        ("1970-01-01T00:00:00Z", 0),
        ("9999-12-31T23:59:59.999Z", MAX_TIMESTAMP_MS),
    ];
    for (s, want) in cases {
        assert_eq!(parse_timestamp(s), Ok(*want), "{s}");
        // Through the decoder, percent-encoded as a client would send it.
        let enc: String = form_urlencoded::byte_serialize(s.as_bytes()).collect();
        let r = q(&format!("id=1&timestamp={enc}")).unwrap();
        assert_eq!(r.timestamp_ms, Some(*want), "{s} via query");
    }
}

#[test]
fn bad_timestamps() {
    use TimestampError::*;
    let cases: &[(&str, TimestampError)] = &[
        ("", Malformed),
        ("yesterday", Malformed),
        ("-5", Malformed),
        ("1e9", Malformed),
        ("1377177267.5", Malformed),
        ("2016-13-01T00:00:00Z", Malformed),
        ("2016-00-01T00:00:00Z", Malformed),
        ("2015-02-29T00:00:00Z", Malformed),
        ("2016-04-31T00:00:00Z", Malformed),
        ("2016-01-00T00:00:00Z", Malformed),
        ("2016-01-27T24:00:00Z", Malformed),
        ("2016-01-27T18:60:00Z", Malformed),
        ("2016-01-27T18:55:60Z", Malformed),
        ("2016-01-27T18:55:47.Z", Malformed),
        ("2016-01-27T18:55:47.1234567890Z", Malformed),
        ("2016-01-27T18:55:47+24:00", Malformed),
        ("2016-01-27T18:55:47+02:60", Malformed),
        ("2016-01-27T18:55:47+2", Malformed),
        ("2016-01-27T18:55:47ZZ", Malformed),
        ("2016-01-27T18:55:47 ", Malformed),
        ("2016-01-27", Malformed),
        ("2016-1-27T18:55:47Z", Malformed),
        ("16-01-27T18:55:47Z", Malformed),
        ("2016/01/27T18:55:47Z", Malformed),
        ("2016-01-27X18:55:47Z", Malformed),
        ("２016-01-27T18:55:47Z", Malformed),
        ("1969-12-31T23:59:59Z", OutOfRange),
        ("0000-01-01T00:00:00Z", OutOfRange),
        ("1970-01-01T00:00:00+00:01", OutOfRange),
        ("9999-12-31T23:59:59-01:00", OutOfRange),
        ("253402300800000", OutOfRange),
        ("99999999999999999999", OutOfRange),
    ];
    for (s, want) in cases {
        assert_eq!(parse_timestamp(s), Err(*want), "{s}");
    }
}

// ---- refusals ------------------------------------------------------------

#[test]
fn every_bad_query_gives_its_error() {
    use OsmandError::*;
    let cases: &[(&str, OsmandError)] = &[
        ("", MissingId),
        ("lat=1&lon=2", MissingId),
        ("deviceid=", BadId { param: "deviceid" }),
        ("id=", BadId { param: "id" }),
        ("id=a%20b", BadId { param: "id" }),
        ("id=caf%C3%A9", BadId { param: "id" }),
        (&format!("id={}", "9".repeat(65)), BadId { param: "id" }),
        ("id=1&lat=abc&lon=1", BadValue { param: "lat" }),
        ("id=1&lat=&lon=1", BadValue { param: "lat" }),
        ("id=1&lat=NaN&lon=1", BadValue { param: "lat" }),
        ("id=1&lat=1&lon=inf", BadValue { param: "lon" }),
        ("id=1&lat=1&lon=1e999", BadValue { param: "lon" }),
        ("id=1&lat=90.0001&lon=1", OutOfRange { param: "lat" }),
        ("id=1&lat=-91&lon=1", OutOfRange { param: "lat" }),
        ("id=1&lat=1&lon=180.5", OutOfRange { param: "lon" }),
        ("id=1&location=60.0", BadValue { param: "location" }),
        ("id=1&location=60.0,30.0,1", BadValue { param: "location" }),
        ("id=1&location=x,30", BadValue { param: "location" }),
        ("id=1&location=95,30", OutOfRange { param: "location" }),
        ("id=1&timestamp=yesterday", BadValue { param: "timestamp" }),
        ("id=1&timestamp=1969-12-31T23:59:59Z", OutOfRange { param: "timestamp" }),
        ("id=1&speed=fast", BadValue { param: "speed" }),
        ("id=1&bearing=north", BadValue { param: "bearing" }),
        ("id=1&heading=361", OutOfRange { param: "heading" }),
        ("id=1&altitude=high", BadValue { param: "altitude" }),
        ("id=1&altitude=100001", OutOfRange { param: "altitude" }),
        ("id=1&accuracy=x", BadValue { param: "accuracy" }),
        ("id=1&hdop=-1", OutOfRange { param: "hdop" }),
        ("id=1&batt=full", BadValue { param: "batt" }),
        ("id=1&batt=101", OutOfRange { param: "batt" }),
        ("id=1&charge=yes", BadValue { param: "charge" }),
        ("id=1&valid=maybe", BadValue { param: "valid" }),
        ("id=1&lat=1", MissingParam { param: "lon" }),
        ("id=1&lon=1", MissingParam { param: "lat" }),
        ("id=1&id=2", Duplicate { param: "id" }),
        ("id=1&deviceid=2", Duplicate { param: "deviceid" }),
        ("id=1&lat=1&lat=2&lon=1", Duplicate { param: "lat" }),
        ("id=1&lat=1&location=1,2", Duplicate { param: "location" }),
        ("id=1&location=1,2&lon=3", Duplicate { param: "lon" }),
        ("id=1&bearing=1&heading=2", Duplicate { param: "heading" }),
        ("id=1&timestamp=1&timestamp=2", Duplicate { param: "timestamp" }),
        ("id=1&speed=1&speed=1", Duplicate { param: "speed" }),
        // The first error in the order sent wins, before a missing id.
        ("lat=abc&speed=fast", BadValue { param: "lat" }),
    ];
    for (query, want) in cases {
        let got = q(query);
        assert_eq!(got.as_ref().err(), Some(want), "{query}: {got:?}");
        let e = got.unwrap_err();
        assert!(OsmandError::LABELS.contains(&e.as_str()));
        if let Some(param) = e.param() {
            assert!(e.to_string().contains(param), "{e}");
        }
    }
}

#[test]
fn too_large() {
    let big = vec![b'a'; MAX_INPUT_LEN + 1];
    assert_eq!(decode("id=1", &big, None, SpeedUnit::Knots), Err(OsmandError::TooLarge));
    let long = format!("id=1&x={}", "1".repeat(MAX_INPUT_LEN));
    assert_eq!(q(&long), Err(OsmandError::TooLarge));
    // Exactly the limit is accepted.
    let mut body = b"id=1&pad=".to_vec();
    body.resize(MAX_INPUT_LEN, b'x');
    let r = decode("", &body, Some("application/x-www-form-urlencoded"), SpeedUnit::Knots);
    assert_eq!(r.unwrap().ignored, 1);
}

#[test]
fn labels() {
    use OsmandError::*;
    let all = [
        TooLarge,
        BadJson,
        MissingId,
        BadId { param: "id" },
        BadValue { param: "lat" },
        OutOfRange { param: "lat" },
        MissingParam { param: "lon" },
        Duplicate { param: "id" },
    ];
    let labels: Vec<&str> = all.iter().map(OsmandError::as_str).collect();
    assert_eq!(labels, OsmandError::LABELS);
    assert_eq!(all.iter().filter(|e| e.param().is_some()).count(), 5);
}

// ---- speed units ---------------------------------------------------------

#[test]
fn speed_units() {
    let cases = [
        (SpeedUnit::Knots, 10.0, 5.144_444_444_444_445),
        (SpeedUnit::Kmh, 36.0, 10.0),
        (SpeedUnit::Mps, 7.5, 7.5),
        (SpeedUnit::Mph, 10.0, 4.4704),
    ];
    for (unit, sent, mps) in cases {
        assert!(near(unit.to_mps(sent), mps), "{unit:?}");
        let r = decode(&format!("id=1&lat=1&lon=2&speed={sent}"), b"", None, unit).unwrap();
        assert!(near(pos(&r).speed_mps.unwrap(), mps), "{unit:?}");
        assert_eq!(unit.as_str().parse::<SpeedUnit>(), Ok(unit));
    }
    assert_eq!(SpeedUnit::default(), SpeedUnit::Knots);
    assert_eq!("KNOTS".parse::<SpeedUnit>(), Err(UnknownSpeedUnit));
    assert_eq!("kph".parse::<SpeedUnit>(), Err(UnknownSpeedUnit));
    // Negative speed: unknown, in every unit.
    let r = decode("id=1&lat=1&lon=2&speed=-1", b"", None, SpeedUnit::Kmh).unwrap();
    assert_eq!(pos(&r).speed_mps, None);
}

// ---- encodings -----------------------------------------------------------

#[test]
fn encodings() {
    let form = Some("application/x-www-form-urlencoded");
    // A form body, with the query string read first.
    let r = decode(
        "id=7",
        b"lat=1.5&lon=2.5&timestamp=2016-01-27+18%3A55%3A47",
        form,
        SpeedUnit::Knots,
    )
    .unwrap();
    assert_eq!(r.encoding, Encoding::Form);
    assert_eq!((r.device_id.as_str(), r.timestamp_ms), ("7", Some(1_453_920_947_000)));
    assert_eq!((pos(&r).latitude_deg, pos(&r).longitude_deg), (1.5, 2.5));
    // The same parameter in both is a duplicate.
    assert_eq!(
        decode("id=7", b"id=8", form, SpeedUnit::Knots),
        Err(OsmandError::Duplicate { param: "id" })
    );
    // No Content-Type, or text/plain: sniffed.
    let r = decode("", b"id=1&lat=1&lon=1", None, SpeedUnit::Knots).unwrap();
    assert_eq!(r.encoding, Encoding::Form);
    let r = decode("", br#"{"device_id":"1"}"#, Some("text/plain"), SpeedUnit::Knots).unwrap();
    assert_eq!(r.encoding, Encoding::Json);
    // A blank body is no body, whatever the Content-Type says.
    let r = decode("id=1&lat=1&lon=1", b" \r\n", Some("application/json"), SpeedUnit::Knots);
    assert_eq!(r.unwrap().encoding, Encoding::Query);
    // A JSON Content-Type with a form body.
    assert_eq!(
        decode("", b"id=1", Some("application/json"), SpeedUnit::Knots),
        Err(OsmandError::BadJson)
    );
    // `+json` media types.
    let r = decode("", br#"{"device_id":"1"}"#, Some("application/vnd.x+json"), SpeedUnit::Knots);
    assert_eq!(r.unwrap().encoding, Encoding::Json);
}

#[test]
fn tokens() {
    let form = Some("application/x-www-form-urlencoded");
    assert_eq!(find_token("id=1&token=abc%2Fdef", b"", None).as_deref(), Some("abc/def"));
    assert_eq!(find_token("id=1", b"token=xyz", form).as_deref(), Some("xyz"));
    assert_eq!(find_token("id=1", br#"{"token":"x"}"#, Some("application/json")), None);
    assert_eq!(find_token("id=1", b"", None), None);
    // The token never becomes a reading, even when numeric.
    let r = q("id=1&token=12345").unwrap();
    assert!(r.readings.is_empty());
    assert_eq!(r.ignored, 0);
}

// ---- readings ------------------------------------------------------------

#[test]
fn readings_rules() {
    let r = q("id=1&lat=1&lon=1&rpm=933&fuel=24.5&ignition=TRUE&door=false&note=hello&driverUniqueId=D42&1bad=5&bad%20name=1&=5&x=NaN&rpm=950&temp.c-1=-3").unwrap();
    let got: Vec<(&str, f64)> = r.readings.iter().map(|x| (x.name.as_str(), x.value)).collect();
    // `rpm` repeated: the last value, in the first position.
    assert_eq!(
        got,
        [("rpm", 950.0), ("fuel", 24.5), ("ignition", 1.0), ("door", 0.0), ("temp.c-1", -3.0)]
    );
    // note, driverUniqueId (not numbers), 1bad, "bad name", "" (names), x=NaN.
    assert_eq!(r.ignored, 6);
    assert_eq!(r.dropped_readings, 0);

    let many: String = (0..40).map(|i| format!("&r{i}={i}")).collect();
    let r = q(&format!("id=1{many}")).unwrap();
    assert_eq!(r.readings.len(), MAX_READINGS);
    assert_eq!(r.dropped_readings, 8);
    assert_eq!(r.readings.last().unwrap().name.as_str(), "r31");
    // A name of exactly 32 bytes is kept, 33 is ignored.
    let r = q(&format!("id=1&{}=1&{}=2", "a".repeat(32), "b".repeat(33))).unwrap();
    assert_eq!((r.readings.len(), r.ignored), (1, 1));

    assert!(name_ok("_x") && name_ok("a.b-c_9") && !name_ok("") && !name_ok("9a"));
    assert!(!name_ok(".a") && !name_ok("-a") && !name_ok("a b") && !name_ok("é"));
}

#[test]
fn optional_semantics() {
    // Unknown (negative) values, 360 degrees, `valid`.
    let r = q("id=1&lat=0&lon=0&heading=360&accuracy=-1&batt=-1&valid=0").unwrap();
    let p = pos(&r);
    assert_eq!(
        (p.heading_deg, p.accuracy_m, r.battery_pct, p.valid),
        (Some(0.0), None, None, false)
    );
    assert_eq!(r.ignored, 0);
    // Position fields without coordinates are dropped and counted.
    let r = q("id=1&speed=3&altitude=5&batt=50&charge=1").unwrap();
    assert_eq!(
        (r.position, r.ignored, r.battery_pct, r.charging),
        (None, 2, Some(50.0), Some(true))
    );
    // Whitespace around values (a `+` in a form) is tolerated.
    let r = q("id=1&lat=+1.5+&lon=2").unwrap();
    assert_eq!(pos(&r).latitude_deg, 1.5);
}

// ---- properties ----------------------------------------------------------

/// What every accepted report satisfies.
fn check_report(r: &OsmandReport) {
    assert!(!r.device_id.is_empty() && r.device_id.bytes().all(|b| b.is_ascii_graphic()));
    if let Some(p) = r.position {
        assert!((-90.0..=90.0).contains(&p.latitude_deg));
        assert!((-180.0..=180.0).contains(&p.longitude_deg));
        for x in
            [p.altitude_m, p.speed_mps, p.heading_deg, p.accuracy_m, p.hdop].into_iter().flatten()
        {
            assert!(x.is_finite());
        }
        assert!(p.speed_mps.is_none_or(|s| s >= 0.0));
        assert!(p.heading_deg.is_none_or(|h| (0.0..360.0).contains(&h)));
    }
    assert!(r.battery_pct.is_none_or(|b| (0.0..=100.0).contains(&b)));
    assert!(r.timestamp_ms.is_none_or(|t| t <= MAX_TIMESTAMP_MS));
    assert!(r.readings.len() <= MAX_READINGS);
    for (i, x) in r.readings.iter().enumerate() {
        assert!(name_ok(&x.name) && x.value.is_finite());
        assert!(r.readings.iter().take(i).all(|y| y.name != x.name));
    }
}

fn check_any(query: &str, body: &[u8], ct: Option<&str>) {
    match decode(query, body, ct, SpeedUnit::Knots) {
        Ok(r) => check_report(&r),
        Err(e) => assert!(OsmandError::LABELS.contains(&e.as_str())),
    }
    let _ = find_token(query, body, ct);
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json")),
        Just(Some("application/x-www-form-urlencoded")),
        Just(Some("text/plain")),
    ]
}

/// Keys the decoder knows, plus others, to build plausible requests.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "id",
            "deviceid",
            "timestamp",
            "lat",
            "lon",
            "location",
            "speed",
            "bearing",
            "heading",
            "altitude",
            "accuracy",
            "hdop",
            "batt",
            "charge",
            "valid",
            "token",
        ])
        .prop_map(str::to_owned),
        "[a-z0-9_.%+-]{0,6}",
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|x| x.to_string()),
        (-200.0f64..200.0).prop_map(|x| x.to_string()),
        any::<u64>().prop_map(|x| x.to_string()),
        "[0-9TZ:+.,-]{0,25}",
        ".{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_input_never_panics(
        query in ".{0,200}",
        body in proptest::collection::vec(any::<u8>(), 0..300),
        ct in content_type(),
    ) {
        check_any(&query, &body, ct);
    }

    #[test]
    fn plausible_requests_never_panic(
        pairs in proptest::collection::vec((key(), value()), 0..12),
        ct in content_type(),
        in_body in any::<bool>(),
    ) {
        let s: String = pairs.iter().map(|(k, v)| {
            let v: String = form_urlencoded::byte_serialize(v.as_bytes()).collect();
            format!("{k}={v}&")
        }).collect();
        if in_body { check_any("", s.as_bytes(), ct) } else { check_any(&s, b"", ct) }
    }

    /// JSON of roughly the right shape with arbitrary leaves.
    #[test]
    fn plausible_json_never_panics(
        leaves in proptest::collection::vec(
            prop_oneof![
                Just("null".to_owned()), Just("true".to_owned()), Just("[]".to_owned()),
                Just("{}".to_owned()), Just("-1".to_owned()),
                any::<f64>().prop_map(|x| if x.is_finite() { x.to_string() } else { "0".to_owned() }),
                ".{0,10}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            ],
            9,
        ),
    ) {
        let body = format!(
            r#"{{"device_id":{},"location":{{"timestamp":{},"coords":{{"latitude":{},"longitude":{},"speed":{},"heading":{}}},"battery":{{"level":{},"is_charging":{}}},"extras":{{"k":{}}}}}}}"#,
            leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6], leaves[7], leaves[8]
        );
        check_any("", body.as_bytes(), Some("application/json"));
    }

    /// Valid query values decode to what was sent.
    #[test]
    fn valid_queries_round_trip(
        id in "[A-Za-z0-9_.:-]{1,64}",
        lat in -90.0f64..=90.0,
        lon in -180.0f64..=180.0,
        speed in 0.0f64..500.0,
        heading in 0.0f64..360.0,
        secs in 0u64..SECONDS_BELOW,
        unit in prop::sample::select(SpeedUnit::ALL.to_vec()),
        use_location in any::<bool>(),
    ) {
        let coords = if use_location { format!("location={lat},{lon}") } else { format!("lat={lat}&lon={lon}") };
        let query = format!("id={id}&{coords}&speed={speed}&heading={heading}&timestamp={secs}");
        let r = decode(&query, b"", None, unit).unwrap();
        prop_assert_eq!(r.device_id.as_str(), id.as_str());
        prop_assert_eq!(r.timestamp_ms, Some(secs * 1000));
        let p = r.position.unwrap();
        prop_assert_eq!((p.latitude_deg, p.longitude_deg), (lat, lon));
        prop_assert_eq!(p.heading_deg, Some(heading));
        prop_assert_eq!(p.speed_mps, Some(unit.to_mps(speed)));
    }

    /// ISO-8601 as humantime (an independent implementation) writes it, with
    /// a random zone offset applied, parses back to the same instant.
    #[test]
    fn iso_timestamps_match_an_independent_formatter(
        ms in 0u64..=MAX_TIMESTAMP_MS,
        offset_min in -(23 * 60 + 59)..=(23i64 * 60 + 59),
    ) {
        let t = UNIX_EPOCH + Duration::from_millis(ms);
        let z = humantime::format_rfc3339_millis(t).to_string();
        prop_assert_eq!(parse_timestamp(&z), Ok(ms), "{}", z);
        // The same instant in another zone: shift the wall clock, write the offset.
        let local_ms = i128::from(ms) + i128::from(offset_min) * 60_000;
        if (0..=i128::from(MAX_TIMESTAMP_MS)).contains(&local_ms) {
            let local = UNIX_EPOCH + Duration::from_millis(u64::try_from(local_ms).unwrap());
            let wall = humantime::format_rfc3339_millis(local).to_string();
            let sign = if offset_min < 0 { '-' } else { '+' };
            let off = offset_min.abs();
            let s = format!("{}{sign}{:02}:{:02}", wall.trim_end_matches('Z'), off / 60, off % 60);
            prop_assert_eq!(parse_timestamp(&s), Ok(ms), "{}", s);
        }
    }
}
