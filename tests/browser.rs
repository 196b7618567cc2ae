//! A real browser: headless Chromium (Debian `chromium` and
//! `chromium-driver`, installed by `scripts/setup.sh`) driven through
//! chromedriver's WebDriver API (`common/browser.rs`).
//!
//! * The harness itself, against a page served from this test.
//! * The live map `/map` of a real server with the real simulator: every
//!   simulated device gets a marker where the server says it is, a marker
//!   moves when its device sends a new position, a reload gets the same
//!   picture from the stream's snapshot, the search box opens a device's
//!   popup; the screenshot is kept in `target/browser-artifacts/`.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use browser::{Browser, artifacts_dir, base64_decode, png_size};
use common::*;
use fleetwire_proto::{Body, FixType, Frame, MAX_FRAME_LEN, Position, encode};
use serde_json::Value;

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>harness</title><link rel="icon" href="data:,"></head>
<body style="margin:0;background:#0a64c8;color:#fff;font:40px sans-serif">
<div id="out">waiting</div>
<script>
window.answer = [1, 2, 3, 4].reduce(function (a, b) { return a * b; }, 1);
setTimeout(function () {
  document.getElementById("out").textContent = "ready";
  window.late = location.pathname + location.search;
}, 300);
</script>
</body></html>"#;

/// Serves `PAGE` for every GET on a loopback port; returns the base URL
/// and the request lines seen.
fn serve_page() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_string();
                seen.lock().unwrap().push(line);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    PAGE.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(PAGE.as_bytes());
            });
        }
    });
    (base, seen)
}

#[test]
fn base64_and_png_helpers() {
    assert_eq!(base64_decode("").unwrap(), b"");
    assert_eq!(base64_decode("Zg==").unwrap(), b"f");
    assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
    assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
    assert_eq!(base64_decode("Zm9vYmFy\n").unwrap(), b"foobar");
    assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
    assert!(base64_decode("Zm9").is_err());
    assert!(base64_decode("Zg==Zm9v").is_err());
    assert!(base64_decode("Zm9*").is_err());
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend_from_slice(&[0, 0, 5, 0, 0, 0, 3, 0x20]);
    assert_eq!(png_size(&png), Some((1280, 800)));
    assert_eq!(png_size(b"GIF89a"), None);
}

/// The harness works: a page served from here is loaded by Chromium,
/// scripts run in it (values, thrown errors, waiting), the screenshot is a
/// PNG of the viewport; a wait that never succeeds fails, naming what it
/// waited for; missing binaries fail naming scripts/setup.sh.
#[test]
fn headless_chromium_loads_a_page_runs_scripts_and_takes_a_screenshot() {
    let (base, seen) = serve_page();
    let b = Browser::start("harness");
    b.open(&format!("{base}/harness?x=1"));
    assert_eq!(b.eval("return document.title"), "harness");
    assert_eq!(b.eval("return window.answer"), 24);
    assert_eq!(b.eval("return location.href"), format!("{base}/harness?x=1").as_str());
    let late = b.wait_for("return window.late", 10);
    assert_eq!(late, "/harness?x=1");
    assert_eq!(b.eval("return document.getElementById('out').textContent"), "ready");
    assert!(
        seen.lock().unwrap().iter().any(|l| l.starts_with("GET /harness?x=1 ")),
        "the page came from this test's server: {:?}",
        seen.lock().unwrap()
    );
    let err = b.try_eval("throw new Error('boom ' + (6 * 7))").unwrap_err();
    assert!(err.contains("boom 42"), "{err}");

    let path = artifacts_dir().join("harness.png");
    let _ = std::fs::remove_file(&path);
    let png = b.screenshot(&path);
    assert_eq!(std::fs::read(&path).unwrap(), png);
    let (w, h) = png_size(&png).expect("a PNG");
    let view = b.eval("return [innerWidth * devicePixelRatio, innerHeight * devicePixelRatio]");
    assert_eq!((Value::from(w), Value::from(h)), (view[0].clone(), view[1].clone()));
    assert!(w >= 800 && h >= 500, "{w}x{h}");

    let timeout = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.wait_for("return window.never_set", 1)
    }));
    let msg = panic_text(timeout.expect_err("waiting for what never comes fails"));
    assert!(msg.contains("timed out") && msg.contains("window.never_set"), "{msg}");
    drop(b);

    let missing = std::panic::catch_unwind(|| {
        Browser::start_with("missing", "/nonexistent/chromium", browser::CHROMEDRIVER)
    });
    let msg = panic_text(missing.err().expect("no browser, no test"));
    assert!(msg.contains("scripts/setup.sh"), "{msg}");
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The devices the server has a position for: id -> [lat, lon].
fn server_positions(s: &Server) -> serde_json::Map<String, Value> {
    let v = s.json("/api/devices?limit=1000");
    let mut out = serde_json::Map::new();
    for d in v["devices"].as_array().expect("devices") {
        let p = &d["position"];
        if let (Some(id), Some(lat), Some(lon)) =
            (d["id"].as_u64(), p["latitude"].as_f64(), p["longitude"].as_f64())
        {
            out.insert(id.to_string(), Value::from(vec![lat, lon]));
        }
    }
    out
}

/// JavaScript: true once every marker of `want` ({id: [lat, lon]}) is
/// within 1e-5 degree of its place.
fn markers_at(want: &Value) -> String {
    format!(
        "var want = {want}, m = window.fleetwire && window.fleetwire.markers();
         if (!m) return false;
         return Object.keys(want).every(function (id) {{
           return m[id] && Math.abs(m[id][0] - want[id][0]) < 1e-5
               && Math.abs(m[id][1] - want[id][1]) < 1e-5;
         }});"
    )
}

/// Sends positions at (lat, lon) for `device`, sequence numbers from `seq`.
fn send_position(s: &Server, device: u32, seq: u32, lat: f64, lon: f64) {
    let sock = udp_sender();
    let p = Position {
        lat_e7: (lat * 1e7).round() as i32,
        lon_e7: (lon * 1e7).round() as i32,
        alt_dm: 300,
        speed_cm_s: 0,
        heading_ddeg: 900,
        hacc_cm: 300,
        fix: FixType::Fix3d,
        satellites: 10,
    };
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode(&Frame::new(device, seq, now_ms(), Body::Position(p)), &mut buf).unwrap();
    sock.send_to(&buf[..n], s.udp).unwrap();
}

#[test]
fn the_live_map_shows_every_simulated_device_and_follows_a_move() {
    let s = Server::in_process(&[]);
    let b = Browser::start("map");
    b.open(&s.url("/map"));
    b.wait_for("return window.fleetwire && window.fleetwire.connected()", 20);

    // Every simulated device gets a marker, where the server has it.
    let r =
        sim(&["--target", &s.udp.to_string(), "--devices", "20", "--rate", "2", "--duration", "5"]);
    s.wait_received("udp", r["sent"].as_u64().unwrap());
    let want = Value::Object(server_positions(&s));
    let ids: Vec<u64> = want.as_object().unwrap().keys().map(|k| k.parse().unwrap()).collect();
    assert_eq!(ids.len(), 20, "the server has positions of the 20 simulated devices: {want}");
    b.wait_for(&markers_at(&want), 30);
    let markers = b.eval("return window.fleetwire.markers()");
    assert_eq!(markers.as_object().unwrap().len(), 20, "one marker per device: {markers}");
    assert!(b.eval("return window.fleetwire.messages()").as_u64().unwrap() >= 20);

    // A marker moves when its device sends a new position: device `id`
    // jumps to Sydney (sent three times: the server's plausibility filter
    // takes the same far place three times in a row as a relocation).
    let id = ids[0] as u32;
    let (lat, lon) = (-33.8688, 151.2093);
    for i in 0..3 {
        send_position(&s, id, 1_000 + i, lat, lon);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    s.wait_until(10, "the server to take the new position", |s| {
        let p = &s.json(&format!("/api/devices/{id}"))["position"];
        p["latitude"].as_f64().is_some_and(|l| (l - lat).abs() < 1e-6)
    });
    let mut moved = want.clone();
    moved[id.to_string()] = Value::from(vec![lat, lon]);
    b.wait_for(&markers_at(&moved), 20);

    // A fresh page gets the same picture from the stream's snapshot.
    b.open(&s.url("/map"));
    b.wait_for("return window.fleetwire && window.fleetwire.connected()", 20);
    b.wait_for(&markers_at(&moved), 20);
    let markers = b.eval("return window.fleetwire.markers()");
    assert_eq!(markers.as_object().unwrap().len(), 20, "{markers}");

    // The search box centres on a device and opens its popup.
    let other = ids[1];
    let popup = b.wait_for(
        &format!(
            "var f = document.getElementById('search');
             document.getElementById('search-id').value = '{other}';
             f.requestSubmit();
             var p = document.querySelector('.leaflet-popup-content');
             return p && p.textContent;"
        ),
        10,
    );
    let popup = popup.as_str().unwrap();
    assert!(popup.contains(&format!("device {other}")), "{popup}");
    assert!(popup.contains("km/h") && popup.contains("sim-1.0"), "{popup}");
    let view = b.eval(
        "var m = window.fleetwire.map, c = m.getCenter(); return [c.lat, c.lng, m.getZoom()]",
    );
    let at = &want[other.to_string()];
    let off = |i: usize| (view[i].as_f64().unwrap() - at[i].as_f64().unwrap()).abs();
    assert!(off(0) < 1e-3 && off(1) < 1e-3, "the map is centred on device {other}: {view}, {at}");
    assert!(view[2].as_f64().unwrap() >= 13.0, "and zoomed in: {view}");

    b.wait_for(
        "var p = document.querySelector('.leaflet-popup');
         return p && getComputedStyle(p).opacity === '1'",
        5,
    );
    let png = b.screenshot(&artifacts_dir().join("map-popup.png"));
    assert!(png_size(&png).is_some(), "the screenshot is a PNG");

    // The whole fleet (Munich and Sydney), once the page has drawn it.
    b.eval(
        "window.fleetwire.map.closePopup(); window.fleetwire.fit(); window.__drawn = false;
         requestAnimationFrame(function () {
           requestAnimationFrame(function () { window.__drawn = true; });
         });",
    );
    b.wait_for("return window.__drawn && !document.querySelector('.leaflet-popup')", 5);
    let png = b.screenshot(&artifacts_dir().join("map.png"));
    assert!(png_size(&png).is_some(), "the screenshot is a PNG");
}
