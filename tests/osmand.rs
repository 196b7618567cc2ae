//! Phones over the OsmAnd / Traccar Client HTTP protocol against a running
//! server: the query, form and JSON forms and every timestamp form give the
//! expected positions; bad requests get their 400 naming the parameter; the
//! token is enforced; garbage is refused and counted.

mod common;

use common::*;
use serde_json::{Value, json};

fn url(s: &Server, path_and_query: &str) -> String {
    format!("http://{}{}", s.osmand.unwrap(), path_and_query)
}

/// GET: the status and the body.
fn get(s: &Server, q: &str) -> (u16, String) {
    let r = ureq::get(&url(s, q)).config().http_status_as_error(false).build().call().unwrap();
    let status = r.status().as_u16();
    (status, r.into_body().read_to_string().unwrap_or_default())
}

/// POST with a content type: the status and the body.
fn post(s: &Server, q: &str, content_type: &str, body: &str) -> (u16, String) {
    let r = ureq::post(&url(s, q))
        .header("Content-Type", content_type)
        .config()
        .http_status_as_error(false)
        .build()
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    (status, r.into_body().read_to_string().unwrap_or_default())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// An ISO-8601 UTC timestamp for Unix ms (seconds precision).
fn iso(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[test]
fn query_form_and_json_requests_give_their_positions() {
    let s = Server::in_process(&[]);
    let t = now_ms() / 1000 * 1000 - 60_000;
    // The numeric id fits: it is the device id itself.
    let cases: Vec<(String, u64)> = vec![
        (format!("/?id=123456&timestamp={}&lat=60.0&lon=30.0", t / 1000), t),
        (format!("/?deviceid=123457&timestamp={t}&location=60.5,30.5"), t),
        (
            format!(
                "/?id=123458&lat=42.06288&lon=-88.23412&timestamp={}&hdop=6.0&altitude=224.0&speed=10.0",
                iso(t).replace(':', "%3A")
            ),
            t,
        ),
    ];
    for (q, ts) in &cases {
        let (st, body) = get(&s, q);
        assert_eq!((st, body.as_str()), (200, ""), "{q}");
        let id = q.split(['=', '&']).nth(1).unwrap();
        let d = s.json(&format!("/api/devices/{id}"));
        assert_eq!(d["position"]["time_ms"], *ts, "{q}: {d}");
    }
    let d = s.json("/api/devices/123458");
    let p = &d["position"];
    assert_eq!(
        (p["latitude"].as_f64(), p["longitude"].as_f64()),
        (Some(42.06288), Some(-88.23412))
    );
    assert_eq!(p["altitude_m"], 224.0);
    // 10 knots.
    assert!((p["speed_m_s"].as_f64().unwrap() - 5.144).abs() < 0.01, "{p}");
    let hdop = d["readings"].as_array().unwrap().iter().find(|r| r["name"] == "hdop").unwrap();
    assert_eq!(hdop["stats"]["last"], 6.0);

    // A form POST, and Traccar Client 9's JSON body with a phone id that
    // is not a number (registered).
    let (st, _) = post(
        &s,
        "/",
        "application/x-www-form-urlencoded",
        &format!("id=123459&timestamp={t}&lat=1.5&lon=2.5&batt=77&fuel=31.5"),
    );
    assert_eq!(st, 200);
    let d = s.json("/api/devices/123459");
    assert_eq!(
        (d["position"]["latitude"].as_f64(), d["health"]["battery_pct"].as_u64()),
        (Some(1.5), Some(77))
    );
    let fuel = d["readings"].as_array().unwrap().iter().find(|r| r["name"] == "fuel").unwrap();
    assert_eq!(fuel["stats"]["last"], 31.5);
    let body = json!({
        "location": {
            "timestamp": iso(t),
            "coords": {"latitude": 48.5, "longitude": 11.25, "accuracy": 5.0, "speed": 3.0, "heading": 90.0, "altitude": 500.0},
            "is_moving": true,
            "odometer": 1234.0,
            "battery": {"level": 0.42, "is_charging": false}
        },
        "device_id": "my-phone"
    });
    let (st, b) = post(&s, "/", "application/json", &body.to_string());
    assert_eq!(st, 200, "{b}");
    let list = s.json("/api/devices?limit=100");
    let id = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .find(|id| s.json(&format!("/api/devices/{id}"))["identifier"] == "my-phone")
        .expect("my-phone registered");
    let d = s.json(&format!("/api/devices/{id}"));
    assert_eq!(d["protocol"], "osmand");
    assert_eq!(
        (d["position"]["speed_m_s"].as_f64(), d["position"]["heading_deg"].as_f64()),
        (Some(3.0), Some(90.0))
    );
    assert_eq!(d["health"]["battery_pct"], 42);
    assert_eq!(d["position"]["time_ms"], t);
    let m = s.metrics();
    assert_eq!(
        metric_sum(&m, "fleetwire_datagrams_accepted_total", &[("transport", "osmand")]),
        5.0
    );
}

#[test]
fn every_timestamp_form_is_read() {
    let s = Server::in_process(&[]);
    let t = now_ms() / 1000 * 1000 - 30_000;
    let forms = [
        (t / 1000).to_string(),
        t.to_string(),
        iso(t),
        iso(t).replace('Z', "+00:00"),
        iso(t + 3_600_000).replace('Z', "+01:00"),
        iso(t).replace('Z', ".000Z"),
    ];
    for (i, ts) in forms.iter().enumerate() {
        let id = 200 + i;
        let q = format!(
            "/?id={id}&lat=10&lon=20&timestamp={}",
            ts.replace(':', "%3A").replace('+', "%2B")
        );
        assert_eq!(get(&s, &q).0, 200, "{q}");
        assert_eq!(s.json(&format!("/api/devices/{id}"))["position"]["time_ms"], t, "{ts}");
    }
    // No timestamp: the time it arrived.
    let before = now_ms();
    assert_eq!(get(&s, "/?id=300&lat=10&lon=20").0, 200);
    let got = s.json("/api/devices/300")["position"]["time_ms"].as_u64().unwrap();
    assert!(got >= before && got <= now_ms(), "{got}");
}

#[test]
fn bad_requests_get_a_400_naming_the_parameter() {
    let s = Server::in_process(&[]);
    let cases = [
        ("/?timestamp=1377177267&lat=60.0&lon=30.0", "missing_id", Value::Null),
        ("/?id=1&lat=91&lon=30", "out_of_range", json!("lat")),
        ("/?id=1&lat=abc&lon=30", "bad_value", json!("lat")),
        ("/?id=1&lat=60", "missing_param", json!("lon")),
        ("/?id=1&lat=60&lon=30&timestamp=yesterday", "bad_value", json!("timestamp")),
        ("/?id=1&lat=60&lon=30&lat=61", "duplicate_param", json!("lat")),
    ];
    for (q, error, param) in &cases {
        let (st, body) = get(&s, q);
        assert_eq!(st, 400, "{q}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((&v["error"], &v["parameter"]), (&json!(error), param), "{q}");
    }
    let (st, body) = post(&s, "/", "application/json", "{\"location\": [1, 2]");
    assert_eq!(st, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "bad_json");
    let m = s.metrics();
    let o = [("transport", "osmand")];
    assert_eq!(metric_sum(&m, "fleetwire_datagrams_rejected_total", &o), cases.len() as f64 + 1.0);
    assert_eq!(metric_sum(&m, "fleetwire_datagrams_accepted_total", &o), 0.0);
}

#[test]
fn a_token_is_required_when_set() {
    let s = Server::in_process(&["--osmand-token", "s3cret"]);
    let q = "/?id=1&lat=60&lon=30";
    assert_eq!(get(&s, q).0, 401);
    assert_eq!(get(&s, "/?id=1&lat=60&lon=30&token=wrong").0, 401);
    assert_eq!(get(&s, "/?id=1&lat=60&lon=30&token=s3cret").0, 200);
    let r = ureq::get(&url(&s, q)).header("Authorization", "Bearer s3cret").call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let bad = [("transport", "osmand"), ("reason", "bad_token")];
    assert_eq!(s.metric("fleetwire_datagrams_rejected_total", &bad), 2.0);
}

#[test]
fn ten_thousand_random_bodies_are_refused_and_counted() {
    use rand::{Rng, SeedableRng};
    let s = Server::in_process(&[]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let types = ["application/json", "application/x-www-form-urlencoded", "text/plain"];
    for i in 0..10_000 {
        let len = rng.random_range(0..400);
        // Printable bytes without `=`: never an `id=` pair (a report
        // without position would be taken), nor a Traccar JSON object.
        let body: String = (0..len)
            .map(|_| rng.random_range(32u8..127))
            .map(|b| if b == b'=' { b'%' } else { b } as char)
            .collect();
        let r = agent
            .post(&url(&s, "/"))
            .header("Content-Type", types[i % types.len()])
            .send(body.as_str())
            .unwrap();
        assert!(r.status().as_u16() >= 400, "{body:?} was taken");
    }
    let m = s.metrics();
    let o = [("transport", "osmand")];
    assert_eq!(metric_sum(&m, "fleetwire_datagrams_rejected_total", &o), 10_000.0);
    assert_eq!(metric_sum(&m, "fleetwire_datagrams_received_total", &o), 10_000.0);
    assert_eq!(s.json("/healthz")["status"], "ok");
}

/// The phones' listener has the API's limits (issue 17 item 3): a client
/// that sends its request head a byte at a time is closed after the header
/// timeout (10 s) instead of holding its connection (and a descriptor) for
/// good, and the listener's connections are counted.
#[test]
fn a_slow_phone_connection_is_closed_after_the_header_timeout() {
    use std::io::{Read, Write};
    let s = Server::in_process(&[]);
    let addr = s.osmand.unwrap();
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /?id=1&lat=1&lon=1 HTTP/1.1\r\nX-Slow: ").unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
    s.wait_until(5, "the slow connection counted", |s| {
        s.metric("fleetwire_http_connections", &[("listener", "osmand")]) == 1.0
    });
    let start = std::time::Instant::now();
    let closed = loop {
        let _ = slow.write_all(b"a");
        let mut b = [0u8; 512];
        match slow.read(&mut b) {
            // The end, or an error answer and the end: closed by the server.
            Ok(_) => break true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break true,
        }
        if start.elapsed() > std::time::Duration::from_secs(20) {
            break false;
        }
    };
    assert!(closed, "the slow connection was still open after 20 s");
    assert!(start.elapsed() >= std::time::Duration::from_secs(5), "closed too early");
    s.wait_until(5, "the connection gone from the count", |s| {
        s.metric("fleetwire_http_connections", &[("listener", "osmand")]) == 0.0
    });
    // A phone that sends its report at once is still served.
    assert_eq!(get(&s, &format!("/?id=77&timestamp={}&lat=60&lon=30", now_ms() / 1000)).0, 200);
}
