//! Teltonika trackers (Codec 8 / 8 Extended over UDP) against a running
//! server: the public vectors give their listed values and ACK bytes, a
//! resend is acknowledged but not counted twice, a packet sent newest-first
//! leaves the same state as in order, unknown IMEIs register (and survive a
//! restart, or are refused without auto-registration), garbage is refused.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let p = format!("{}/tests/data/teltonika-udp.json", env!("CARGO_MANIFEST_DIR"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["vectors"].as_array().unwrap().clone()
}

fn tracker() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends a datagram and returns the ACK (None if none came within 2 s).
fn send(s: &Server, sock: &UdpSocket, d: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(d, s.teltonika.unwrap()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// The device id the server gave `imei`.
fn device_of(s: &Server, imei: &str) -> u64 {
    let list = s.json("/api/devices?limit=10000");
    for d in list["devices"].as_array().unwrap() {
        let id = d["id"].as_u64().unwrap();
        if s.json(&format!("/api/devices/{id}"))["identifier"] == imei {
            return id;
        }
    }
    panic!("no device for IMEI {imei}: {list}");
}

fn reading(d: &Value, name: &str) -> Option<f64> {
    d["readings"].as_array()?.iter().find(|r| r["name"] == name)?["stats"]["last"].as_f64()
}

/// A Codec 8 record: (time, lon, lat, speed km/h, satellites).
type Rec = (u64, f64, f64, u16, u8);

/// A Codec 8 datagram with `records` (no IO elements), written here from
/// the vendor's description independently of the server's encoder.
fn codec8(imei: &str, avl_id: u8, records: &[Rec]) -> Vec<u8> {
    let mut body = vec![0xCA, 0xFE, 0x01, avl_id, 0x00, 0x0F];
    body.extend_from_slice(imei.as_bytes());
    body.extend_from_slice(&[0x08, records.len() as u8]);
    for &(t, lon, lat, kmh, sats) in records {
        body.extend_from_slice(&t.to_be_bytes());
        body.push(0); // priority
        body.extend_from_slice(&((lon * 1e7).round() as i32).to_be_bytes());
        body.extend_from_slice(&((lat * 1e7).round() as i32).to_be_bytes());
        body.extend_from_slice(&100i16.to_be_bytes()); // altitude
        body.extend_from_slice(&90u16.to_be_bytes()); // angle
        body.push(sats);
        body.extend_from_slice(&kmh.to_be_bytes());
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // event id, N, N1, N2, N4, N8
    }
    body.push(records.len() as u8);
    let mut d = (body.len() as u16).to_be_bytes().to_vec();
    d.extend(body);
    d
}

#[test]
fn the_public_vectors_give_their_values_and_acks() {
    // The vectors are from 2017 and 2019: older than the default max_age.
    let s = Server::in_process(&["--max-age", "20years"]);
    let sock = tracker();
    for v in vectors() {
        let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
        let ack = send(&s, &sock, &bytes).unwrap_or_else(|| panic!("no ACK for {}", v["name"]));
        assert_eq!(hex::encode_upper(&ack), v["ack_hex"].as_str().unwrap(), "{}", v["name"]);
        let id = device_of(&s, v["imei"].as_str().unwrap());
        let d = s.json(&format!("/api/devices/{id}"));
        assert_eq!(d["protocol"], "teltonika");
        let rec = &v["records"][0];
        // The record's own IO values, as readings or health fields.
        for (io, value) in rec["io"].as_object().unwrap() {
            let value = value.as_f64().unwrap();
            let got = match io.as_str() {
                "66" => d["health"]["supply_mv"].as_f64(),
                "21" => reading(&d, "gsm_signal"),
                "239" => reading(&d, "ignition"),
                "240" => reading(&d, "movement"),
                "16" => reading(&d, "total_odometer_meters"),
                other => reading(&d, &format!("io_{other}")),
            };
            assert_eq!(got, Some(value), "{}: IO {io} in {d}", v["name"]);
        }
        if rec["satellites"] == 0 {
            assert!(d["position"].is_null(), "a record without a fix gives no position: {d}");
        } else {
            let p = &d["position"];
            let near =
                |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-7;
            assert!(near(&p["latitude"], &rec["latitude"]), "{p}");
            assert!(near(&p["longitude"], &rec["longitude"]), "{p}");
            assert_eq!(p["altitude_m"], rec["altitude_m"].as_f64().unwrap());
            assert_eq!(p["heading_deg"], rec["angle_deg"].as_f64().unwrap());
            assert_eq!(p["satellites"], rec["satellites"]);
            let kmh = rec["speed_kmh"].as_f64().unwrap();
            assert!((p["speed_m_s"].as_f64().unwrap() - kmh / 3.6).abs() < 0.01, "{p}");
            assert_eq!(p["time_ms"], rec["timestamp_ms"]);
        }
        match rec["event_io_id"].as_u64().unwrap() {
            0 => assert!(d["last_event"].is_null(), "{d}"),
            code => assert_eq!(d["last_event"]["code"], code, "{d}"),
        }
    }
    let m = s.metrics();
    let t = [("transport", "teltonika")];
    assert_eq!(metric_sum(&m, "fleetwire_datagrams_accepted_total", &t), 3.0);
    assert_eq!(metric_sum(&m, "fleetwire_teltonika_acks_total", &[]), 3.0);
    assert_eq!(metric_sum(&m, "fleetwire_records_total", &[("kind", "position")]), 3.0);
    assert_eq!(
        metric_sum(&m, "fleetwire_positions_filtered_total", &[("reason", "no_fix")]),
        2.0,
        "the two records without a fix"
    );
    // The per-device series of the tracker with a fix.
    let id = device_of(&s, "357454072713975");
    assert_eq!(
        metric_sum(&m, "fleetwire_device_latitude_degrees", &[("device", &id.to_string())]),
        51.630115
    );
}

#[test]
fn a_resend_is_acknowledged_and_not_counted_twice() {
    let s = Server::in_process(&[]);
    let sock = tracker();
    let v = &vectors()[2];
    let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
    let first = send(&s, &sock, &bytes).unwrap();
    let again = send(&s, &sock, &bytes).expect("a resend is acknowledged again");
    assert_eq!(first, again);
    let m = s.metrics();
    assert_eq!(metric_sum(&m, "fleetwire_records_total", &[("kind", "position")]), 1.0);
    assert_eq!(metric_sum(&m, "fleetwire_records_total", &[("kind", "monitoring")]), 1.0);
    assert_eq!(
        metric_sum(&m, "fleetwire_frames_duplicate_total", &[]),
        2.0,
        "position and monitoring"
    );
    let d = s.json(&format!("/api/devices/{}", device_of(&s, "357454072713975")));
    assert_eq!(d["sequence"]["received"], 2);
    assert_eq!(d["sequence"]["duplicates"], 2);
}

#[test]
fn records_sent_newest_first_leave_the_in_order_state() {
    let s = Server::in_process(&[]);
    let sock = tracker();
    let now = common_now_ms();
    // Three fixes 1 km apart along a meridian, 60 s apart.
    let recs: Vec<Rec> = (0..3)
        .map(|i| (now - 120_000 + i * 60_000, 11.5, 48.1 + i as f64 * 0.009, 60, 9))
        .collect();
    let mut reversed = recs.clone();
    reversed.reverse();
    assert!(send(&s, &sock, &codec8("352093086400001", 1, &recs)).is_some());
    assert!(send(&s, &sock, &codec8("352093086400002", 1, &reversed)).is_some());
    let a = s.json(&format!("/api/devices/{}", device_of(&s, "352093086400001")));
    let b = s.json(&format!("/api/devices/{}", device_of(&s, "352093086400002")));
    assert_eq!(a["position"], b["position"], "the newest fix is the last position");
    assert_eq!(a["position"]["time_ms"], now - 120_000 + 2 * 60_000);
    let (oa, ob) =
        (a["track"]["odometer_m"].as_f64().unwrap(), b["track"]["odometer_m"].as_f64().unwrap());
    assert!((oa - 2001.5).abs() < 10.0, "two 1 km legs: {oa}");
    assert_eq!(oa, ob);
    // A late packet (older than the last fix) counts, but moves nothing.
    let late = codec8("352093086400001", 2, &[(now - 600_000, 12.0, 49.0, 10, 9)]);
    assert!(send(&s, &sock, &late).is_some());
    let a2 = s.json(&format!("/api/devices/{}", device_of(&s, "352093086400001")));
    assert_eq!(a2["position"], a["position"]);
    assert_eq!(a2["track"]["odometer_m"], a["track"]["odometer_m"]);
    assert_eq!(a2["counts"]["positions"], 4);
}

fn common_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn unknown_imeis_register_and_keep_their_ids_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sock = tracker();
    let v = &vectors()[2];
    let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
    let s = Server::in_process_in(dir.path(), &[]);
    send(&s, &sock, &bytes).unwrap();
    let id = device_of(&s, "357454072713975");
    assert_eq!(id, 0xF000_0000, "the first id of the auto-registration range");
    assert_eq!(s.metric("fleetwire_devices_registered_total", &[]), 1.0);
    s.stop();
    assert!(dir.path().join("devices.registry").exists());
    // The same IMEI has the same id after a restart; another gets the next.
    let s = Server::in_process_in(dir.path(), &[]);
    send(&s, &sock, &bytes).unwrap();
    assert_eq!(device_of(&s, "357454072713975"), id);
    send(&s, &sock, &codec8("352093086400009", 1, &[(common_now_ms(), 11.5, 48.1, 10, 9)]))
        .unwrap();
    assert_eq!(device_of(&s, "352093086400009"), id + 1);
    s.stop();
    // Without auto-registration a known IMEI is taken, an unknown refused
    // (no ACK: the tracker keeps its records).
    let s = Server::in_process_in(dir.path(), &["--auto-register", "false"]);
    assert!(send(&s, &sock, &bytes).is_some());
    let other = codec8("352093086400010", 1, &[(common_now_ms(), 11.5, 48.1, 10, 9)]);
    assert!(send(&s, &sock, &other).is_none());
    let refused = [("transport", "teltonika"), ("reason", "unknown_device")];
    assert_eq!(s.metric("fleetwire_datagrams_rejected_total", &refused), 1.0);
    // A devices file names and numbers trackers itself.
    let file = dir.path().join("devices");
    std::fs::write(&file, "352093086400010 77 Van 3\n").unwrap();
    drop(s);
    let s = Server::in_process_in(
        dir.path(),
        &["--auto-register", "false", "--devices-file", file.to_str().unwrap()],
    );
    assert!(send(&s, &sock, &other).is_some());
    let d = s.json("/api/devices/77");
    assert_eq!(
        (d["identifier"].as_str(), d["name"].as_str()),
        (Some("352093086400010"), Some("Van 3"))
    );
}

#[test]
fn a_hundred_thousand_random_datagrams_are_refused_and_counted() {
    use rand::{Rng, RngCore, SeedableRng};
    let s = Server::in_process(&[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let valid = hex::decode(vectors()[2]["hex"].as_str().unwrap()).unwrap();
    let n = 100_000u64;
    for i in 0..n {
        let d: Vec<u8> = if i % 2 == 0 {
            let mut d = vec![0u8; rng.random_range(0..300)];
            rng.fill_bytes(&mut d);
            d
        } else {
            // A valid packet with one byte changed past the IMEI, and cut.
            let mut d = valid.clone();
            let at = rng.random_range(24..d.len());
            d[at] ^= rng.random_range(1..=255u8);
            d.truncate(rng.random_range(1..d.len()));
            d
        };
        sock.send_to(&d, s.teltonika.unwrap()).unwrap();
        if i % 1000 == 999 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    s.wait_until(60, "every datagram to be read", |s| {
        let drops = s.metric("fleetwire_teltonika_receive_buffer_drops_total", &[]) as u64;
        s.received("teltonika") + drops >= n
    });
    let t = [("transport", "teltonika")];
    let m = s.metrics();
    let received = metric_sum(&m, "fleetwire_datagrams_received_total", &t);
    let rejected = metric_sum(&m, "fleetwire_datagrams_rejected_total", &t);
    assert_eq!(rejected, received, "every one refused");
    assert!(received > 90_000.0, "{received}");
    assert_eq!(s.json("/healthz")["status"], "ok");
}
