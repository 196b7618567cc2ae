//! `fleetwire serve` over loopback: counts, refusals, faults, the position
//! filter, series expiry, promtool, signals and configuration errors.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn many_devices_valid_traffic_gives_exact_counts() {
    let s = Server::in_process(&[]);
    let target = s.udp.to_string();
    let r = sim(&[
        "--target",
        &target,
        "--devices",
        "200",
        "--rate",
        "0",
        "--frames",
        "25",
        "--seed",
        "7",
    ]);
    let sent = r["sent"].as_u64().unwrap();
    assert_eq!(sent, 200 * 26, "hello + 25 frames per device");
    s.wait_received("udp", sent);
    let m = s.metrics();
    let get = |n: &str, l: &[(&str, &str)]| metric_sum(&m, n, l) as u64;
    assert_eq!(get("fleetwire_datagrams_received_total", &[("transport", "udp")]), sent);
    assert_eq!(get("fleetwire_datagrams_accepted_total", &[("transport", "udp")]), sent);
    assert_eq!(get("fleetwire_datagrams_rejected_total", &[]), 0);
    assert_eq!(get("fleetwire_records_total", &[]), r["records"].as_u64().unwrap());
    assert_eq!(get("fleetwire_records_total", &[("kind", "hello")]), 200);
    assert_eq!(
        get("fleetwire_received_bytes_total", &[("transport", "udp")]),
        r["bytes"].as_u64().unwrap()
    );
    assert_eq!(get("fleetwire_device_frames_received_total", &[]), sent);
    assert_eq!(get("fleetwire_exported_devices", &[]), 200);
    s.wait_until(5, "200 devices online", |s| {
        s.metric("fleetwire_devices", &[("state", "online")]) == 200.0
    });

    let devices = s.json("/api/devices?limit=500");
    assert_eq!(devices["total"], 200);
    assert_eq!(devices["devices"].as_array().unwrap().len(), 200);
    let page = s.json("/api/devices?limit=50&offset=190");
    assert_eq!(page["devices"].as_array().unwrap().len(), 10);
    let d = s.json("/api/devices/1");
    assert_eq!(d["id"], 1);
    assert_eq!(d["sequence"]["received"], 26);
    assert_eq!(d["sequence"]["lost"], 0);
    assert_eq!(d["info"]["model"], "fleetwire-sim");
    assert!(d["position"]["latitude"].as_f64().unwrap() > 47.0);
    assert!(!d["readings"].as_array().unwrap().is_empty());
    assert_eq!(s.status("/api/devices/999999"), 404);
    let geo = s.json("/api/positions.geojson");
    assert_eq!(geo["type"], "FeatureCollection");
    assert!(geo["features"].as_array().unwrap().len() >= 190);
    assert_eq!(s.json("/healthz")["status"], "ok");
    assert!(s.get("/").contains("/metrics"));
}

#[test]
fn every_invalid_vector_is_refused_with_its_reason() {
    let s = Server::in_process(&[]);
    let sock = udp_sender();
    let invalid = vectors("invalid.json");
    let mut expected: std::collections::BTreeMap<String, u64> = Default::default();
    for v in &invalid {
        let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
        let label = v["error"].as_str().unwrap();
        // Tags are not checked with udp_auth off: those frames are accepted.
        if label == "bad_auth_tag" {
            continue;
        }
        sock.send_to(&bytes, s.udp).unwrap();
        *expected.entry(label.to_string()).or_default() += 1;
    }
    // Oversized datagrams, up to the largest UDP payload.
    for len in [1201usize, 2048, 4096, 65_507] {
        sock.send_to(&vec![0x46; len], s.udp).unwrap();
        *expected.entry("too_long".into()).or_default() += 1;
    }
    let n: u64 = expected.values().sum();
    s.wait_received("udp", n);
    let m = s.metrics();
    for (label, count) in &expected {
        let got = metric_sum(
            &m,
            "fleetwire_datagrams_rejected_total",
            &[("transport", "udp"), ("reason", label)],
        );
        assert_eq!(got as u64, *count, "reason {label}");
    }
    assert_eq!(metric_sum(&m, "fleetwire_datagrams_accepted_total", &[]), 0.0);
    // Still healthy and still accepting.
    assert_eq!(s.json("/healthz")["status"], "ok");
    let valid = hex::decode(vectors("valid.json")[0]["hex"].as_str().unwrap()).unwrap();
    sock.send_to(&valid, s.udp).unwrap();
    s.wait_until(10, "one accepted", |s| {
        s.metric("fleetwire_datagrams_accepted_total", &[]) == 1.0
    });
    let received = s.metric("fleetwire_datagrams_received_total", &[]);
    let rejected = s.metric("fleetwire_datagrams_rejected_total", &[]);
    assert_eq!(received, 1.0 + rejected);
}

#[test]
fn injected_faults_are_counted_exactly() {
    let s = Server::in_process(&[]);
    let target = s.udp.to_string();
    let r = sim(&[
        "--target",
        &target,
        "--devices",
        "50",
        "--rate",
        "0",
        "--frames",
        "60",
        "--seed",
        "3",
        "--loss",
        "3",
        "--dup",
        "3",
        "--reorder",
        "3",
        "--corrupt",
        "2",
    ]);
    for k in ["lost", "duplicated", "reordered", "corrupted"] {
        assert!(r[k].as_u64().unwrap() > 5, "too few {k} injected: {r}");
    }
    s.wait_received("udp", r["sent"].as_u64().unwrap());
    let sum = s.json("/api/summary");
    assert_eq!(sum["lost"], r["lost"], "{sum}\n{r}");
    assert_eq!(sum["duplicates"], r["duplicated"]);
    assert_eq!(sum["reordered"], r["reordered"]);
    let m = s.metrics();
    assert_eq!(
        metric_sum(&m, "fleetwire_datagrams_rejected_total", &[]),
        r["corrupted"].as_f64().unwrap()
    );
    assert_eq!(
        metric_sum(&m, "fleetwire_frames_duplicate_total", &[]),
        r["duplicated"].as_f64().unwrap()
    );
    assert_eq!(
        metric_sum(&m, "fleetwire_frames_reordered_total", &[]),
        r["reordered"].as_f64().unwrap()
    );
    // Missing frames are either still awaited in a window or confirmed lost.
    let lost = metric_sum(&m, "fleetwire_frames_lost_total", &[])
        + metric_sum(&m, "fleetwire_frames_missing", &[]);
    assert_eq!(lost, r["lost"].as_f64().unwrap());
    assert_eq!(metric_sum(&m, "fleetwire_records_total", &[]), r["records"].as_f64().unwrap());
}

fn send(s: &Server, device: &str, seq: u32, args: &[&str]) {
    let target = s.udp.to_string();
    let seq = seq.to_string();
    let mut a = vec!["send", "--target", &target, "--device", device, "--seq", &seq];
    a.extend_from_slice(args);
    let out = fleetwire(&a);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_gps_jump_is_filtered_and_the_odometer_is_unaffected() {
    let s = Server::in_process(&[]);
    let now = common_now_ms();
    let ts = |i: u64| (now - 60_000 + i * 1000).to_string();
    // 100 m north per second for 4 s, then a jump to Berlin, then on as before.
    let step = 100.0 / 111_195.0;
    let mut seq = 0;
    for (i, lat) in [(0u64, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)] {
        send(
            &s,
            "77",
            seq,
            &[
                "--timestamp-ms",
                &ts(i),
                "position",
                "--lat",
                &(48.0 + lat * step).to_string(),
                "--lon",
                "11.0",
                "--hacc",
                "2",
            ],
        );
        seq += 1;
    }
    s.wait_received("udp", 4);
    let before = s.json("/api/devices/77")["track"]["odometer_m"].as_f64().unwrap();
    assert!((before - 300.0).abs() < 1.0, "{before}");
    send(
        &s,
        "77",
        seq,
        &["--timestamp-ms", &ts(4), "position", "--lat", "52.52", "--lon", "13.405", "--hacc", "2"],
    );
    seq += 1;
    send(
        &s,
        "77",
        seq,
        &[
            "--timestamp-ms",
            &ts(5),
            "position",
            "--lat",
            &(48.0 + 4.0 * step).to_string(),
            "--lon",
            "11.0",
            "--hacc",
            "2",
        ],
    );
    seq += 1;
    send(&s, "77", seq, &["--timestamp-ms", &ts(6), "position", "--lat", "0", "--lon", "0"]);
    s.wait_received("udp", 7);
    let d = s.json("/api/devices/77");
    let after = d["track"]["odometer_m"].as_f64().unwrap();
    assert!((after - 400.0).abs() < 1.0, "jump leaked into the odometer: {after} m");
    assert!((d["position"]["latitude"].as_f64().unwrap() - (48.0 + 4.0 * step)).abs() < 1e-6);
    let sum = s.json("/api/summary");
    assert_eq!(sum["filtered"]["implausible_speed"], 1);
    assert_eq!(sum["filtered"]["null_island"], 1);
    assert_eq!(
        s.metric("fleetwire_positions_filtered_total", &[("reason", "implausible_speed")]),
        1.0
    );
    assert_eq!(s.metric("fleetwire_device_positions_filtered_total", &[("device", "77")]), 2.0);
}

fn common_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn a_silent_device_loses_its_series_after_the_ttl() {
    let s = Server::in_process(&["--series-ttl", "2s", "--offline-after", "1s"]);
    send(&s, "5", 0, &["position", "--lat", "48.1", "--lon", "11.5"]);
    send(&s, "6", 0, &["monitoring", "--battery", "50", "--reading", "temp=4.5"]);
    s.wait_received("udp", 2);
    let m = s.metrics();
    assert!(m.contains("fleetwire_device_latitude_degrees{device=\"5\"}"));
    assert!(m.contains("fleetwire_device_reading{device=\"6\",name=\"temp\"} 4.5"));
    assert_eq!(metric_sum(&m, "fleetwire_exported_devices", &[]), 2.0);
    s.wait_until(10, "series to expire", |s| {
        let m = s.metrics();
        !m.contains("device=\"5\"") && !m.contains("device=\"6\"")
    });
    let m = s.metrics();
    assert_eq!(metric_sum(&m, "fleetwire_exported_devices", &[]), 0.0);
    assert_eq!(metric_sum(&m, "fleetwire_devices", &[("state", "offline")]), 2.0);
    // The state is kept: the API still knows the device, and it comes back.
    assert_eq!(s.json("/api/devices/5")["online"], false);
    send(&s, "5", 1, &["position", "--lat", "48.1", "--lon", "11.5"]);
    s.wait_until(10, "series to return", |s| {
        s.metrics().contains("fleetwire_device_latitude_degrees{device=\"5\"}")
    });
}

#[test]
fn promtool_check_metrics_is_clean_on_live_metrics() {
    let s = Server::in_process(&[]);
    let target = s.udp.to_string();
    let r = sim(&[
        "--target",
        &target,
        "--devices",
        "30",
        "--rate",
        "0",
        "--frames",
        "40",
        "--dup",
        "5",
        "--corrupt",
        "5",
        "--reorder",
        "5",
    ]);
    send(
        &s,
        "9001",
        0,
        &["event", "--code", "7", "--severity", "critical", "--text", "quote \" and \\ backslash"],
    );
    send(&s, "9001", 1, &["hello", "--firmware", "1.0 \"beta\"", "--model", "x\\y"]);
    s.wait_received("udp", r["sent"].as_u64().unwrap() + 2);
    let text = s.metrics();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed: scripts/setup.sh");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}");
    // Every family has HELP and TYPE.
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap();
        // A histogram's series are its family's name plus a suffix.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
            .unwrap_or(name);
        assert!(
            text.contains(&format!("# HELP {family} "))
                || text.contains(&format!("# HELP {} ", family.trim_end_matches("_total"))),
            "no HELP for {name}"
        );
    }
    assert!(text.contains(
        "fleetwire_device_info{device=\"9001\",firmware=\"1.0 \\\"beta\\\"\",model=\"x\\\\y\"} 1"
    ));
}

#[test]
fn sigterm_stops_cleanly_and_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_in(dir.path(), &[]);
    let target = s.udp.to_string();
    let r = sim(&[
        "--target",
        &target,
        "--devices",
        "20",
        "--rate",
        "0",
        "--frames",
        "30",
        "--seed",
        "11",
        "--loss",
        "5",
    ]);
    s.wait_received("udp", r["sent"].as_u64().unwrap());
    let before = s.json("/api/devices/3");
    let (status, took) = s.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(dir.path().join("state.snapshot").exists());

    let s = Server::start_in(dir.path(), &[]);
    assert!(s.log_text().contains("restored device state"), "{}", s.log_text());
    let after = s.json("/api/devices/3");
    for k in ["track", "sequence", "position", "health", "info"] {
        assert_eq!(before[k], after[k], "{k} differs after restart");
    }
    // The sequence window survived: the newest number again is a duplicate,
    // and skipping one is one lost frame.
    let high = before["sequence"]["highest"].as_u64().unwrap() as u32;
    send(&s, "3", high, &["event", "--code", "1"]);
    send(&s, "3", high.wrapping_add(2), &["event", "--code", "2"]);
    s.wait_received("udp", 2);
    let d = s.json("/api/devices/3");
    let n = |v: &Value, k: &str| v["sequence"][k].as_u64().unwrap();
    assert_eq!(n(&d, "duplicates"), n(&before, "duplicates") + 1);
    assert_eq!(n(&d, "received"), n(&before, "received") + 1);
    assert_eq!(n(&d, "lost"), n(&before, "lost") + 1);
    assert_eq!(d["track"]["odometer_m"], before["track"]["odometer_m"]);
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--http-listen",
            "127.0.0.1:0",
            "--udp-listen",
            "127.0.0.1:0",
            "--quic-listen",
            "off",
            "--teltonika-listen",
            "off",
            "--osmand-listen",
            "off",
        ])
        .env("FLEETWIRE_OFFLINE_AFTER", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("offline_after"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "max_devicez = 3\n").unwrap();
    let out = fleetwire(&["serve", "--config", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_devicez"));

    let out = fleetwire(&["serve", "--udp-listen", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("udp_listen"));

    let out = fleetwire(&["serve", "--max-devices", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max-devices"));

    let out = fleetwire(&["serve", "--udp-auth", "required"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("keys_file"));

    // Files named by the configuration that cannot be used.
    let local = [
        "--udp-listen",
        "127.0.0.1:0",
        "--quic-listen",
        "127.0.0.1:0",
        "--teltonika-listen",
        "off",
        "--osmand-listen",
        "off",
    ];
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let certs = dir.path().join("certs");
    assert!(fleetwire(&["certs", "init", "--dir", certs.to_str().unwrap()]).status.success());
    for (flag, key) in [("FLEETWIRE_QUIC_CERT", "quic_cert"), ("FLEETWIRE_QUIC_KEY", "quic_key")] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--http-listen", "127.0.0.1:0"])
            .args(local)
            .env("FLEETWIRE_QUIC_CERT", certs.join("server.pem"))
            .env("FLEETWIRE_QUIC_KEY", certs.join("server.key"))
            .env(flag, missing)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(key) && err.contains("missing.pem"), "{err}");
    }
    std::fs::write(&f, "[forward.nats]\nurl = \"http://127.0.0.1:4222\"\n").unwrap();
    let out = fleetwire(&["serve", "--config", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forward.nats.url"));
}

#[test]
fn config_default_is_complete_and_loads() {
    let out = fleetwire(&["config", "default"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("fleetwire.toml");
    std::fs::write(&f, &text).unwrap();
    let out = fleetwire(&["config", "show", "--config", f.to_str().unwrap(), "--max-devices", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.contains("max_devices = 5"), "{shown}");
    assert!(shown.contains("udp_listen = \"0.0.0.0:4480\""));
}

#[test]
fn decode_prints_frames_and_refusals() {
    for v in vectors("valid.json") {
        let out = fleetwire(&["decode", v["hex"].as_str().unwrap()]);
        assert!(out.status.success(), "{}", v["name"]);
        let mut j: Value = serde_json::from_slice(&out.stdout).unwrap();
        let o = j.as_object_mut().unwrap();
        o.remove("length");
        o.remove("auth_verified");
        assert_eq!(j, v["frame"], "{}", v["name"]);
    }
    for v in vectors("invalid.json") {
        let mut args = vec!["decode", v["hex"].as_str().unwrap()];
        if let Some(k) = v["key_hex"].as_str() {
            args.extend(["--key", k]);
        }
        if v["hex"].as_str().unwrap().is_empty() {
            continue; // no argument means stdin
        }
        let out = fleetwire(&args);
        assert_eq!(out.status.code(), Some(1), "{}", v["name"]);
        let j: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["refused"], v["error"], "{}", v["name"]);
    }
    // Raw bytes on stdin.
    use std::io::Write;
    let mut child = std::process::Command::new(BIN)
        .arg("decode")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = hex::decode(vectors("valid.json")[0]["hex"].as_str().unwrap()).unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"lat_e7\": 481372000"));
}

#[test]
fn record_then_replay_reproduces_the_accepted_counts() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("run.fwrec");
    let a = Server::in_process(&[]);
    let r = sim(&[
        "--target",
        &a.udp.to_string(),
        "--devices",
        "25",
        "--rate",
        "0",
        "--frames",
        "40",
        "--seed",
        "5",
        "--loss",
        "2",
        "--dup",
        "2",
        "--reorder",
        "2",
        "--corrupt",
        "2",
        "--record",
        rec.to_str().unwrap(),
    ]);
    a.wait_received("udp", r["sent"].as_u64().unwrap());
    let b = Server::in_process(&[]);
    let out = fleetwire(&[
        "replay",
        rec.to_str().unwrap(),
        "--target",
        &b.udp.to_string(),
        "--rate",
        "20000",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rr: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rr["sent"], r["sent"]);
    b.wait_received("udp", r["sent"].as_u64().unwrap());
    let (ma, mb) = (a.metrics(), b.metrics());
    for name in [
        "fleetwire_datagrams_accepted_total",
        "fleetwire_datagrams_rejected_total",
        "fleetwire_records_total",
        "fleetwire_frames_duplicate_total",
        "fleetwire_frames_reordered_total",
    ] {
        assert_eq!(metric_sum(&ma, name, &[]), metric_sum(&mb, name, &[]), "{name}");
    }
    assert_eq!(a.json("/api/summary")["lost"], b.json("/api/summary")["lost"]);

    // `bench engine` feeds the same recording through the receive path
    // without sockets: it takes and refuses exactly what the servers did.
    let out = fleetwire(&["bench", "engine", rec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["datagrams"], r["sent"]);
    let accepted = metric_sum(&mb, "fleetwire_datagrams_accepted_total", &[]);
    assert_eq!(e["accepted"].as_f64(), Some(accepted));
    assert!(accepted < r["sent"].as_f64().unwrap(), "the corrupted copies are refused");
    assert_eq!(e["devices"], b.json("/api/summary")["devices"]);
    assert!(e["cpu_ns_per_datagram"].as_f64().unwrap() > 0.0);
}

#[test]
fn send_of_each_kind_shows_up_in_the_api() {
    let s = Server::in_process(&[]);
    let state = tempfile::tempdir().unwrap();
    let target = s.udp.to_string();
    let st = state.path().to_str().unwrap();
    let run = |args: &[&str]| {
        let mut a = vec!["send", "--target", &target, "--device", "4242", "--state-dir", st];
        a.extend_from_slice(args);
        let out = fleetwire(&a);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["hello", "--firmware", "2.1.0", "--model", "tracker-x"]);
    run(&[
        "position",
        "--lat",
        "-33.8568",
        "--lon",
        "151.2153",
        "--alt",
        "12.5",
        "--speed",
        "3.5",
        "--heading",
        "270",
        "--hacc",
        "4",
        "--sats",
        "9",
    ]);
    run(&[
        "monitoring",
        "--battery",
        "81",
        "--supply",
        "12.6",
        "--temperature",
        "-3.25",
        "--rssi",
        "-77",
        "--uptime",
        "3600",
        "--reading",
        "tank=0.42",
        "--reading",
        "pressure=2.5",
    ]);
    run(&["event", "--code", "1001", "--severity", "warning", "--text", "door open"]);
    s.wait_received("udp", 4);
    let d = s.json("/api/devices/4242");
    assert_eq!(d["info"]["firmware"], "2.1.0");
    assert_eq!(d["position"]["latitude"], -33.8568);
    assert_eq!(d["position"]["altitude_m"], 12.5);
    assert_eq!(d["position"]["speed_m_s"], 3.5);
    assert_eq!(d["position"]["heading_deg"], 270.0);
    assert_eq!(d["position"]["satellites"], 9);
    assert_eq!(d["health"]["battery_pct"], 81);
    assert_eq!(d["health"]["supply_mv"], 12600);
    assert_eq!(d["health"]["temperature_c"], -3.25);
    assert_eq!(d["health"]["rssi_dbm"], -77);
    let readings: Vec<&str> =
        d["readings"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(readings, ["tank", "pressure"]);
    assert_eq!(d["last_event"]["code"], 1001);
    assert_eq!(d["last_event"]["severity"], "warning");
    // The counter file made the sequence numbers contiguous.
    assert_eq!(d["sequence"]["received"], 4);
    assert_eq!(d["sequence"]["lost"], 0);
    assert_eq!(d["sequence"]["highest"], 3);
    // A bad argument is a clear error and a non-zero exit.
    let out = fleetwire(&[
        "send",
        "--target",
        &target,
        "--device",
        "1",
        "event",
        "--code",
        "1",
        "--severity",
        "loud",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("severity"));
    let out = fleetwire(&[
        "send", "--target", &target, "--device", "1", "--seq", "0", "position", "--lat", "95",
        "--lon", "0",
    ]);
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn several_receive_threads_share_the_port() {
    let s = Server::start(&["--udp-threads", "3"]);
    assert!(s.log_text().contains("threads=3"), "{}", s.log_text());
    // Several senders (source ports) spread over the SO_REUSEPORT sockets.
    let target = s.udp.to_string();
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let first = (1 + i * 100).to_string();
            let t = target.clone();
            std::thread::spawn(move || {
                sim(&[
                    "--target",
                    &t,
                    "--devices",
                    "100",
                    "--first-id",
                    &first,
                    "--rate",
                    "0",
                    "--frames",
                    "20",
                ])
            })
        })
        .collect();
    let sent: u64 = runs.into_iter().map(|h| h.join().unwrap()["sent"].as_u64().unwrap()).sum();
    s.wait_received("udp", sent);
    assert_eq!(s.json("/api/summary")["devices"], 300);
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[]) as u64, sent);
}

/// Runs `fleetwire serve` with `args` on loopback and returns how it ended
/// and its stderr; `None` if it was still running after 10 s (then it is
/// killed).
fn serve_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<std::process::ExitStatus>, String) {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("serve")
        .args(["--udp-listen", "127.0.0.1:0", "--quic-listen", "off", "--http-listen"])
        .args(["127.0.0.1:0", "--teltonika-listen", "off", "--osmand-listen", "off"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status, err)
}

/// Issue 17 item 8: sizes far beyond reason, negative numbers, bad
/// durations and NATS URLs that are no URLs stop `serve` with exit code 2
/// and a message that names the key plainly.
#[test]
fn configuration_mistakes_exit_2_naming_the_key_plainly() {
    let nats = ["--forward-nats-url", "nats://127.0.0.1:4222"];
    // (flags, environment, the key the message names)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (
            &["--rate-limit-sources", "1000000000000000", "--rate-limit-source", "10"],
            &[],
            "rate_limit_sources",
        ),
        (
            &["--rate-limit-source", "10"],
            &[("FLEETWIRE_RATE_LIMIT_SOURCES", "1000000000000000")],
            "rate_limit_sources",
        ),
        (&["--max-devices", "1000000000000000"], &[], "max_devices"),
        (&["--max-reading-memory", "1000000000000000000"], &[], "max_reading_memory"),
        (&["--udp-recv-buffer", "1000000000000000"], &[], "udp_recv_buffer"),
        (&["--quic-max-connections", "1000000000000000"], &[], "quic_max_connections"),
        (
            &[nats[0], nats[1], "--forward-nats-buffer", "1000000000000000"],
            &[],
            "forward.nats.buffer",
        ),
        (&["--max-speed", "-1"], &[], "max_speed"),
        (&["--rate-limit-device", "-1"], &[], "rate_limit_device"),
        (&[nats[0], nats[1], "--forward-nats-max-bytes", "-1"], &[], "forward.nats.max_bytes"),
        (&["--forward-nats-url", ",,,"], &[], "forward.nats.url"),
        (&["--forward-nats-url", "true"], &[], "forward.nats.url"),
        (&["--forward-nats-url", "nats://127.0.0.1:4222,"], &[], "forward.nats.url"),
    ];
    let mut problems = Vec::new();
    let mut check = |args: &[&str], env: &[(&str, &str)], ok: &dyn Fn(&str) -> bool| {
        let (status, err) = serve_exit(args, env);
        let short: String = err.lines().take(3).collect::<Vec<_>>().join(" | ");
        if status.and_then(|s| s.code()) != Some(2) || !ok(&err) || err.lines().count() > 2 {
            problems.push(format!("{args:?} {env:?}: {status:?}: {short}"));
        }
    };
    for (args, env, key) in cases {
        check(args, env, &|err| err.contains(key));
    }
    // A duration that does not parse, from a flag, the environment or the
    // file: the key by its name, without a profile prefix or a source
    // location in fleetwire's code.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "offline_after = \"soon\"\n").unwrap();
    let file = file.to_str().unwrap();
    let plain = |err: &str| {
        err.contains("`offline_after`")
            && err.contains("soon")
            && !err.contains("default.")
            && !err.contains(".rs:")
    };
    check(&["--offline-after", "soon"], &[], &plain);
    check(&[], &[("FLEETWIRE_OFFLINE_AFTER", "soon")], &plain);
    check(&["--config", file], &[], &plain);
    assert!(problems.is_empty(), "not exit 2 naming the key:\n{}", problems.join("\n"));
}

#[test]
fn ingest_delay_counts_exactly_the_accepted_datagrams() {
    let s = Server::in_process(&[]);
    let target = s.udp.to_string();
    let r = sim(&["--target", &target, "--devices", "100", "--rate", "0", "--frames", "20"]);
    let sent = r["sent"].as_u64().unwrap();
    // Refused datagrams are received but never applied: not in the histogram.
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..50u8 {
        junk.send_to(&[0xff, i, 1, 2, 3], s.udp).unwrap();
    }
    s.wait_received("udp", sent + 50);
    let m = s.metrics();
    let get = |n: &str, l: &[(&str, &str)]| metric_sum(&m, n, l);
    let accepted = get("fleetwire_datagrams_accepted_total", &[("transport", "udp")]);
    assert_eq!(accepted as u64, sent);
    assert_eq!(get("fleetwire_datagrams_rejected_total", &[("transport", "udp")]), 50.0);
    for h in ["fleetwire_ingest_delay_seconds", "fleetwire_transit_delay_seconds"] {
        let count = get(&format!("{h}_count"), &[]);
        let buckets: Vec<(f64, f64)> = m
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{h}_bucket{{le=\"")))
            .map(|l| {
                let (le, v) = l.split_once("\"} ").unwrap();
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
                (le, v.parse().unwrap())
            })
            .collect();
        assert!(buckets.len() >= 16, "{h}: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{h}: {buckets:?}"
        );
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count), "{h}");
        // Every accepted datagram was applied once, and every simulated
        // frame carries the device's clock.
        assert_eq!(count as u64, sent, "{h}");
        let mean = get(&format!("{h}_sum"), &[]) / count;
        if h == "fleetwire_ingest_delay_seconds" {
            assert!(mean > 0.0 && mean < 1.0, "{h}: mean {mean} s");
        } else {
            // An unpaced sim dates its frames by its own schedule, a little
            // ahead of their arrival: a delay around 0 either way.
            assert!(mean.abs() < 60.0, "{h}: mean {mean} s");
        }
    }
    // The delays are real: the kernel noted each batch's arrival before
    // the engine applied it, well under a second on loopback.
    let under_1s = get("fleetwire_ingest_delay_seconds_bucket", &[("le", "1")]);
    assert_eq!(under_1s as u64, sent);
}
