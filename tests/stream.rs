//! The live stream against a running server: SSE and WebSocket clients get
//! a snapshot, then every accepted update for their filter, exactly; a
//! client resuming with `Last-Event-ID` gets what it missed and nothing
//! twice; bad filters and too many clients are refused; tokens protect
//! every protected path and reload on SIGHUP.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use fleetwire_proto::{Body, FixType, Frame, Position, encode};
use serde_json::Value;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A fix of `device` at (lat, lon), `seq`, sampled `t_ms`.
fn fix(device: u32, seq: u32, t_ms: u64, lat: f64, lon: f64) -> Vec<u8> {
    let p = Position {
        lat_e7: (lat * 1e7) as i32,
        lon_e7: (lon * 1e7) as i32,
        alt_dm: 5000,
        speed_cm_s: 1000,
        heading_ddeg: 900,
        hacc_cm: 300,
        fix: FixType::Fix3d,
        satellites: 9,
    };
    let mut buf = [0u8; 128];
    let n = encode(&Frame::new(device, seq, t_ms, Body::Position(p)), &mut buf).unwrap();
    buf[..n].to_vec()
}

/// One SSE event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: u64,
    data: Value,
}

/// An SSE client reading on a thread; events arrive on the channel.
struct SseClient {
    rx: mpsc::Receiver<Sse>,
}

impl SseClient {
    fn connect(s: &Server, query: &str, last_id: Option<u64>, token: Option<&str>) -> SseClient {
        let mut req = ureq::get(&s.url(&format!("/api/stream?{query}")));
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", &id.to_string());
        }
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let r = req.call().expect("stream");
        assert_eq!(r.status().as_u16(), 200);
        let reader = BufReader::new(r.into_body().into_reader());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut event, mut id, mut data) = (String::new(), 0, String::new());
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().unwrap_or(0);
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                } else if line.is_empty() && !data.is_empty() {
                    let d = serde_json::from_str(&data).unwrap();
                    if tx.send(Sse { event: std::mem::take(&mut event), id, data: d }).is_err() {
                        return;
                    }
                    data.clear();
                }
            }
        });
        SseClient { rx }
    }

    /// Events until `until` returns true for one (included), or `secs`.
    fn read_until(&self, secs: u64, mut until: impl FnMut(&Sse) -> bool) -> Vec<Sse> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut got = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(e) => {
                    let stop = until(&e);
                    got.push(e);
                    if stop {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        got
    }

    /// Events arriving within `secs`.
    fn read_for(&self, secs: u64) -> Vec<Sse> {
        self.read_until(secs, |_| false)
    }
}

/// Sends `n` plausible fixes of `device` (1 s apart, moving north) and
/// waits until the server read them.
fn send_fixes(s: &Server, device: u32, first_seq: u32, n: u32, lon: f64) {
    let sock = udp_sender();
    let t0 = now_ms() - 100_000;
    let before = s.received("udp");
    for i in 0..n {
        let seq = first_seq + i;
        let d = fix(device, seq, t0 + u64::from(seq) * 1000, 48.0 + f64::from(seq) * 0.0001, lon);
        sock.send_to(&d, s.udp).unwrap();
    }
    s.wait_received("udp", before + u64::from(n));
}

#[test]
fn a_client_gets_a_snapshot_then_every_update_for_its_filter() {
    let s = Server::in_process(&[]);
    // Devices 1..=5 known before the client connects.
    for d in 1..=5 {
        send_fixes(&s, d, 0, 1, 11.0);
    }
    let c = SseClient::connect(&s, "device=7,3&kind=position", None, None);
    let snap = c.read_until(10, |e| e.event == "snapshot_end");
    let devices: Vec<u64> = snap
        .iter()
        .filter(|e| e.event == "device")
        .map(|e| e.data["device"].as_u64().unwrap())
        .collect();
    assert_eq!(devices, vec![3], "the snapshot holds the filtered devices: {snap:?}");
    assert_eq!(snap.last().unwrap().data["devices"], 1);
    // 50 fixes of device 7, 20 of device 9: the client gets exactly device 7's.
    send_fixes(&s, 7, 0, 50, 11.0);
    send_fixes(&s, 9, 0, 20, 11.0);
    let got = c.read_until(20, {
        let mut n = 0;
        move |e| {
            n += usize::from(e.event == "position");
            n == 50
        }
    });
    let got: Vec<&Sse> = got.iter().filter(|e| e.event == "position").collect();
    assert_eq!(got.len(), 50);
    assert!(got.iter().all(|e| e.data["device"] == 7));
    // Field names and units as in /api/devices/{id}.
    let last = &got[49].data;
    let api = s.json("/api/devices/7");
    assert_eq!(last["position"], api["position"]);
    assert_eq!(last["odometer_m"], api["track"]["odometer_m"]);
    // Ids grow.
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    assert!(c.read_for(1).iter().all(|e| e.event != "position"), "nothing more");
    assert_eq!(s.metric("fleetwire_stream_clients", &[("protocol", "sse")]), 1.0);
}

#[test]
fn the_bbox_filter_gets_exactly_the_devices_inside() {
    let s = Server::in_process(&[]);
    // Devices 1..=10 at longitude 10.0 + id: inside 12.5..15.5 are 3, 4, 5.
    for d in 1..=10 {
        send_fixes(&s, d, 0, 1, 10.0 + f64::from(d));
    }
    let c = SseClient::connect(&s, "bbox=12.5,47,15.5,49", None, None);
    let snap = c.read_until(10, |e| e.event == "snapshot_end");
    let mut inside: Vec<u64> = snap
        .iter()
        .filter(|e| e.event == "device")
        .map(|e| e.data["device"].as_u64().unwrap())
        .collect();
    inside.sort_unstable();
    assert_eq!(inside, vec![3, 4, 5]);
    for d in 1..=10 {
        send_fixes(&s, d, 1, 1, 10.0 + f64::from(d));
    }
    let mut updated: Vec<u64> = c
        .read_for(3)
        .iter()
        .filter(|e| e.event == "position")
        .map(|e| e.data["device"].as_u64().unwrap())
        .collect();
    updated.sort_unstable();
    assert_eq!(updated, vec![3, 4, 5]);
}

#[test]
fn a_resuming_client_gets_what_it_missed_and_nothing_twice() {
    let s = Server::in_process(&[]);
    let c = SseClient::connect(&s, "device=7", None, None);
    c.read_until(10, |e| e.event == "snapshot_end");
    send_fixes(&s, 7, 0, 10, 11.0);
    let first = c.read_until(10, {
        let mut n = 0;
        move |e| {
            n += usize::from(e.event == "position");
            n == 10
        }
    });
    let last_id = first.iter().filter(|e| e.event == "position").map(|e| e.id).max().unwrap();
    drop(c);
    // While away: 15 more.
    send_fixes(&s, 7, 10, 15, 11.0);
    let c = SseClient::connect(&s, "device=7", Some(last_id), None);
    let back = c.read_for(3);
    let pos: Vec<&Sse> = back.iter().filter(|e| e.event == "position").collect();
    assert_eq!(pos.len(), 15, "{back:?}");
    assert!(back.iter().all(|e| e.event != "device"), "no snapshot when nothing was lost");
    assert!(pos.iter().all(|e| e.id > last_id));
    let mut ids: Vec<u64> = pos.iter().map(|e| e.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 15, "no duplicates");
    // An id too old for the buffer gets a fresh snapshot.
    let s2 = Server::in_process(&["--stream-replay", "5"]);
    let c = SseClient::connect(&s2, "device=7", None, None);
    c.read_until(10, |e| e.event == "snapshot_end");
    send_fixes(&s2, 7, 0, 2, 11.0);
    let id = c.read_until(10, |e| e.event == "position").last().unwrap().id;
    drop(c);
    send_fixes(&s2, 7, 2, 20, 11.0);
    let c = SseClient::connect(&s2, "device=7", Some(id), None);
    let again = c.read_until(10, |e| e.event == "snapshot_end");
    assert_eq!(again.iter().filter(|e| e.event == "device").count(), 1, "{again:?}");
}

#[test]
fn a_snapshot_read_a_page_at_a_time_holds_every_device_once() {
    // 1,000 devices: several pages of 64 in every shard.
    let s = Server::in_process(&[]);
    let sock = udp_sender();
    let before = s.received("udp");
    let t0 = now_ms() - 100_000;
    for d in 1..=1000u32 {
        let lat = 48.0 + f64::from(d) * 0.0001;
        sock.send_to(&fix(d, 0, t0, lat, 11.0), s.udp).unwrap();
        if d % 100 == 0 {
            // Leave the receive buffer room.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    s.wait_received("udp", before + 1000);
    let c = SseClient::connect(&s, "", None, None);
    let snap = c.read_until(20, |e| e.event == "snapshot_end");
    let mut ids: Vec<u64> = snap
        .iter()
        .filter(|e| e.event == "device")
        .map(|e| e.data["device"].as_u64().unwrap())
        .collect();
    assert_eq!(snap.last().unwrap().data["devices"], 1000);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids, (1..=1000).collect::<Vec<u64>>());
}

#[test]
fn a_client_that_stayed_away_longer_than_the_replay_age_gets_a_snapshot() {
    // The only client leaves; past the replay age no messages are made, so
    // a resume from before could not be complete: a fresh snapshot, not a
    // resume with a silent hole.
    let s = Server::in_process(&["--stream-replay-age", "1s"]);
    let c = SseClient::connect(&s, "device=7", None, None);
    c.read_until(10, |e| e.event == "snapshot_end");
    send_fixes(&s, 7, 0, 2, 11.0);
    let id = c.read_until(10, |e| e.event == "position").last().unwrap().id;
    drop(c);
    // Until the server has seen the client go (its next write fails), and
    // then for the replay age, messages are still made.
    let mut seq = 2;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.metric("fleetwire_stream_clients", &[("protocol", "sse")]) > 0.0 {
        assert!(std::time::Instant::now() < deadline, "the server never saw the client go");
        send_fixes(&s, 7, seq, 1, 11.0);
        seq += 1;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    send_fixes(&s, 7, seq, 5, 11.0);
    let c = SseClient::connect(&s, "device=7", Some(id), None);
    let again = c.read_until(10, |e| e.event == "snapshot_end");
    let device: Vec<&Sse> = again.iter().filter(|e| e.event == "device").collect();
    assert_eq!(device.len(), 1, "{again:?}");
    // The snapshot holds the newest fix, sent while nobody listened.
    let lat = device[0].data["position"]["latitude"].as_f64().unwrap();
    assert!((lat - (48.0 + f64::from(seq + 4) * 0.0001)).abs() < 1e-6, "{lat}");
}

#[test]
fn bad_filters_and_too_many_clients_are_refused() {
    let s = Server::in_process(&["--stream-max-clients", "2"]);
    for (q, param) in
        [("device=x", "device"), ("bbox=1,2,3", "bbox"), ("kind=nope", "kind"), ("zoom=3", "zoom")]
    {
        let r = ureq::get(&s.url(&format!("/api/stream?{q}")))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{q}");
        let v: Value = serde_json::from_str(&r.into_body().read_to_string().unwrap()).unwrap();
        assert_eq!(v["parameter"], param, "{q}");
    }
    let _a = SseClient::connect(&s, "", None, None);
    let _b = SseClient::connect(&s, "", None, None);
    s.wait_until(10, "two clients", |s| s.metric("fleetwire_stream_clients", &[]) == 2.0);
    let r = ureq::get(&s.url("/api/stream"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(s.metric("fleetwire_stream_refused_total", &[]), 1.0);
}

#[test]
fn a_websocket_client_from_python_gets_every_update() {
    let s = Server::in_process(&[]);
    let script = format!("{}/tests/interop/ws_client.py", env!("CARGO_MANIFEST_DIR"));
    let url = format!("ws://{}/api/ws?device=7&kind=position", s.http);
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .args(["--url", &url, "--count", "30", "--seconds", "30"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with websockets (scripts/setup.sh installs it)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "connected");
    // The snapshot comes first.
    let mut snapshot_end = false;
    for l in lines.by_ref() {
        let v: Value = serde_json::from_str(&l.unwrap()).unwrap();
        if v["type"] == "snapshot_end" {
            snapshot_end = true;
            break;
        }
    }
    assert!(snapshot_end);
    send_fixes(&s, 7, 0, 30, 11.0);
    send_fixes(&s, 8, 0, 10, 11.0);
    let rest: Vec<Value> = lines.map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    assert!(child.wait().unwrap().success());
    let pos: Vec<&Value> = rest.iter().filter(|v| v["type"] == "position").collect();
    assert_eq!(pos.len(), 30, "{rest:?}");
    assert!(pos.iter().all(|v| v["device"] == 7 && v["id"].as_u64().is_some()));
    s.wait_until(10, "the client to leave", |s| {
        s.metric("fleetwire_stream_clients", &[("protocol", "websocket")]) == 0.0
    });
}

#[test]
fn tokens_protect_every_protected_path_and_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "reader-token-0123456789 read\n").unwrap();
    let s =
        Server::start(&["--http-tokens-file", tokens.to_str().unwrap(), "--metrics-auth", "true"]);
    let status = |path: &str, token: Option<&str>| {
        let mut r = ureq::get(&s.url(path)).config().http_status_as_error(false).build();
        if let Some(t) = token {
            r = r.header("Authorization", &format!("Bearer {t}"));
        }
        r.call().unwrap().status().as_u16()
    };
    let protected = [
        "/api/summary",
        "/api/devices",
        "/api/devices/1",
        "/api/positions.geojson",
        "/metrics",
        "/map",
    ];
    for p in protected {
        assert_eq!(status(p, None), 401, "{p} without a token");
        assert_eq!(status(p, Some("wrong-token-0123456789")), 401, "{p} with a wrong one");
        let ok = status(p, Some("reader-token-0123456789"));
        assert!(ok == 200 || (p == "/api/devices/1" && ok == 404), "{p}: {ok}");
    }
    // The stream: header, or access_token in the query (what EventSource can do).
    let q = |t: &str| {
        ureq::get(&s.url(&format!("/api/stream?access_token={t}")))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(q("nope-nope-nope-nope"), 401);
    let c = SseClient::connect(&s, "access_token=reader-token-0123456789", None, None);
    assert!(!c.read_until(10, |e| e.event == "snapshot_end").is_empty());
    drop(c);
    // Open: health, the landing page, the map's files.
    for p in ["/healthz", "/", "/map/leaflet.js"] {
        assert_eq!(status(p, None), 200, "{p}");
    }
    // The refusal is a JSON body.
    let r = ureq::get(&s.url("/api/summary"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    let v: Value = serde_json::from_str(&r.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(v["error"], "missing_token");
    // SIGHUP: a new token works, the old one is gone.
    std::fs::write(&tokens, "second-token-0123456789 admin\n").unwrap();
    unsafe_kill(s.pid(), "HUP");
    s.wait_until(10, "the reload", |_| {
        status("/api/summary", Some("second-token-0123456789")) == 200
    });
    assert_eq!(status("/api/summary", Some("reader-token-0123456789")), 401);
    let m = ureq::get(&s.url("/metrics"))
        .header("Authorization", "Bearer second-token-0123456789")
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(metric_sum(&m, "fleetwire_http_auth_failures_total", &[("reason", "missing")]) >= 7.0);
    assert!(metric_sum(&m, "fleetwire_http_auth_failures_total", &[("reason", "invalid")]) >= 7.0);
    assert_eq!(metric_sum(&m, "fleetwire_http_token_reloads_total", &[("result", "ok")]), 1.0);
}
