//! Garbage, floods, spoofing, replays, memory bounds, soak, restarts.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use fleetwire_proto::{Body, Event, FixType, Frame, Position, Severity, encode, encode_signed};
use rand::{Rng, RngCore, SeedableRng};

fn position(device: u32, seq: u32) -> Frame<'static> {
    Frame::new(
        device,
        seq,
        0,
        Body::Position(Position {
            lat_e7: 481_372_000 + (seq % 1000) as i32 * 10,
            lon_e7: 115_755_000,
            alt_dm: 5_000,
            speed_cm_s: 100,
            heading_ddeg: 0,
            hacc_cm: 300,
            fix: FixType::Fix3d,
            satellites: 9,
        }),
    )
}

fn bytes(f: &Frame<'_>) -> Vec<u8> {
    let mut b = [0u8; 1200];
    let n = encode(f, &mut b).unwrap();
    b[..n].to_vec()
}

fn signed(f: &Frame<'_>, key: &[u8]) -> Vec<u8> {
    let mut b = [0u8; 1200];
    let n = encode_signed(f, key, &mut b).unwrap();
    b[..n].to_vec()
}

fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Sends `datagrams` in bursts, waiting for the server to have read each
/// burst, so the kernel never has to drop any.
fn send_paced(
    s: &Server,
    sock: &UdpSocket,
    datagrams: impl Iterator<Item = Vec<u8>>,
    burst: usize,
) -> u64 {
    let base = s.received("udp");
    let mut sent = 0u64;
    for d in datagrams {
        sock.send_to(&d, s.udp).unwrap();
        sent += 1;
        if sent % burst as u64 == 0 {
            s.wait_received("udp", base + sent);
        }
    }
    s.wait_received("udp", base + sent);
    sent
}

#[test]
fn a_hundred_thousand_random_datagrams_are_all_refused_and_counted() {
    let s = Server::start(&[]);
    let sock = udp_sender();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xbad);
    let rss_before = rss_bytes(s.pid());
    let datagrams = (0..100_000).map(|_| {
        let len = rng.random_range(0..=65_507usize);
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        d
    });
    let sent = send_paced(&s, &sock, datagrams, 48);
    assert_eq!(sent, 100_000);
    let m = s.metrics();
    assert_eq!(
        metric_sum(&m, "fleetwire_datagrams_rejected_total", &[("transport", "udp")]) as u64,
        100_000
    );
    assert_eq!(metric_sum(&m, "fleetwire_datagrams_accepted_total", &[]), 0.0);
    assert_eq!(metric_sum(&m, "fleetwire_udp_receive_buffer_drops_total", &[]), 0.0);
    // Oversized ones are refused as too_long, tiny ones as too_short.
    assert!(
        metric_sum(&m, "fleetwire_datagrams_rejected_total", &[("reason", "too_long")]) > 90_000.0
    );
    assert_eq!(s.json("/healthz")["status"], "ok");
    let grown = rss_bytes(s.pid()).saturating_sub(rss_before);
    assert!(grown < 32 << 20, "resident memory grew by {grown} bytes");
    // And it still takes real traffic.
    sock.send_to(&bytes(&position(1, 0)), s.udp).unwrap();
    s.wait_until(10, "accepted", |s| s.metric("fleetwire_datagrams_accepted_total", &[]) == 1.0);
}

const KEY42: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[test]
fn authenticated_udp_refuses_replays_and_forgeries() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("# device keys\n42 {KEY42}\n")).unwrap();
    let s = Server::start(&["--udp-auth", "required", "--keys-file", keys.to_str().unwrap()]);
    let key = hex::decode(KEY42).unwrap();
    let sock = udp_sender();
    let send = |d: &[u8]| {
        sock.send_to(d, s.udp).unwrap();
    };
    let rejected = |s: &Server, r: &str| {
        s.metric("fleetwire_datagrams_rejected_total", &[("reason", r)]) as u64
    };
    let mut n = 0;
    let mut expect = |s: &Server, d: Vec<u8>| {
        send(&d);
        n += 1;
        s.wait_received("udp", n);
    };

    // Signed frames in order, then one reordered inside the window.
    for seq in [1u32, 2, 3, 5, 4] {
        expect(&s, signed(&position(42, seq), &key));
    }
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[]), 5.0);
    let d = s.json("/api/devices/42");
    assert_eq!(
        (d["sequence"]["reordered"].as_u64(), d["sequence"]["lost"].as_u64()),
        (Some(1), Some(0))
    );

    // A captured frame sent again is a replay, whatever its position.
    expect(&s, signed(&position(42, 3), &key));
    expect(&s, signed(&position(42, 5), &key));
    assert_eq!(rejected(&s, "replay"), 2);

    // A forged tag is refused and does not move the window: the genuine
    // frame with that sequence number is still accepted afterwards.
    let mut forged = signed(&position(42, 9), b"not the key");
    expect(&s, forged.clone());
    assert_eq!(rejected(&s, "bad_auth_tag"), 1);
    let len = forged.len();
    forged[len - 10] ^= 1; // a flipped tag bit with a valid CRC
    let crc = fleetwire_proto::crc32c(&forged[..len - 4]);
    forged[len - 4..].copy_from_slice(&crc.to_le_bytes());
    expect(&s, forged);
    assert_eq!(rejected(&s, "bad_auth_tag"), 2);
    expect(&s, signed(&position(42, 9), &key));
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[]), 6.0);
    assert_eq!(s.json("/api/devices/42")["sequence"]["highest"], 9);

    // A signed device that reboots must not start its counter again at 0:
    // that is a replay, even in a Hello. Continuing from a persisted
    // counter (here: saved value + 131072) is accepted.
    let hello = |seq| {
        Frame::new(
            42,
            seq,
            0,
            Body::Hello(fleetwire_proto::Hello { firmware: "2", model: "m", capabilities: 16 }),
        )
    };
    expect(&s, signed(&hello(0), &key));
    assert_eq!(rejected(&s, "replay"), 3);
    expect(&s, signed(&hello(131_081), &key));
    expect(&s, signed(&position(42, 131_082), &key));
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[]), 8.0);
    assert_eq!(s.json("/api/devices/42")["sequence"]["restarts"], 1);

    // No tag, or no key for the device.
    expect(&s, bytes(&position(42, 131_083)));
    assert_eq!(rejected(&s, "auth_required"), 1);
    expect(&s, signed(&position(43, 1), &key));
    assert_eq!(rejected(&s, "unknown_key"), 1);

    // SIGHUP reloads the keys file without a restart.
    std::fs::write(&keys, format!("42 {KEY42}\n43 {}\n", hex::encode(b"device forty-three key")))
        .unwrap();
    unsafe_kill(s.pid(), "HUP");
    s.wait_until(10, "keys reloaded", |s| {
        s.metric("fleetwire_key_reloads_total", &[("result", "ok")]) == 1.0
    });
    assert_eq!(s.metric("fleetwire_device_keys", &[]), 2.0);
    expect(&s, signed(&position(43, 1), b"device forty-three key"));
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[]), 9.0);
    // A broken keys file keeps the old keys.
    std::fs::write(&keys, "this is not a keys file\n").unwrap();
    unsafe_kill(s.pid(), "HUP");
    s.wait_until(10, "reload failure", |s| {
        s.metric("fleetwire_key_reloads_total", &[("result", "failed")]) == 1.0
    });
    expect(&s, signed(&position(43, 2), b"device forty-three key"));
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[]), 10.0);
    let m = s.metrics();
    assert_eq!(
        metric_sum(&m, "fleetwire_datagrams_received_total", &[]),
        metric_sum(&m, "fleetwire_datagrams_accepted_total", &[])
            + metric_sum(&m, "fleetwire_datagrams_rejected_total", &[])
    );
}

#[test]
fn optional_auth_lets_keyless_devices_in_and_keeps_keyed_ones_signed() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("42 {KEY42}\n")).unwrap();
    let s = Server::in_process(&["--udp-auth", "optional", "--keys-file", keys.to_str().unwrap()]);
    let key = hex::decode(KEY42).unwrap();
    let sock = udp_sender();
    let mut n = 0;
    let mut send = |d: Vec<u8>| {
        sock.send_to(&d, s.udp).unwrap();
        n += 1;
        s.wait_received("udp", n);
    };
    send(signed(&position(42, 1), &key));
    // An unsigned frame far ahead for the keyed device: refused, so it
    // cannot push the device's window out of reach.
    send(bytes(&position(42, 1_000)));
    assert_eq!(s.metric("fleetwire_datagrams_rejected_total", &[("reason", "auth_required")]), 1.0);
    send(signed(&position(42, 2), &key));
    // A device without a key sends unsigned frames.
    send(bytes(&position(7, 1)));
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[]), 3.0);
    assert_eq!(s.json("/api/devices/42")["sequence"]["highest"], 2);
}

/// Replay protection must not depend on the engine's accounting state: a
/// keyed device evicted by a flood of other ids, a Hello that arrives late,
/// a restart of the server, or the loss of the replay file must not let a
/// captured frame in again.
#[test]
fn replay_protection_survives_eviction_late_hellos_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("42 {KEY42}\n")).unwrap();
    let data = dir.path().join("data");
    let args =
        ["--udp-auth", "optional", "--keys-file", keys.to_str().unwrap(), "--max-devices", "16"];
    let key = hex::decode(KEY42).unwrap();
    let hello = |seq| {
        Frame::new(
            42,
            seq,
            0,
            Body::Hello(fleetwire_proto::Hello { firmware: "2", model: "m", capabilities: 0 }),
        )
    };
    let sock = udp_sender();
    let s = Server::in_process_in(&data, &args);
    let send = |s: &Server, d: Vec<u8>| {
        let n = s.received("udp");
        sock.send_to(&d, s.udp).unwrap();
        s.wait_received("udp", n + 1);
    };
    let replays =
        |s: &Server| s.metric("fleetwire_datagrams_rejected_total", &[("reason", "replay")]) as u64;
    let captured: Vec<Vec<u8>> = (1..=5).map(|q| signed(&position(42, q), &key)).collect();
    for d in &captured {
        send(&s, d.clone());
    }
    // A Hello that was overtaken by frames 6 and 8 arrives late: accepted
    // once, and it neither restarts the accounting nor reopens 6 and 8.
    send(&s, signed(&position(42, 6), &key));
    send(&s, signed(&position(42, 8), &key));
    send(&s, signed(&hello(7), &key));
    let d = s.json("/api/devices/42");
    assert_eq!(
        (d["sequence"]["restarts"].as_u64(), d["sequence"]["lost"].as_u64()),
        (Some(0), Some(0))
    );
    send(&s, signed(&position(42, 8), &key));
    send(&s, signed(&hello(7), &key));
    assert_eq!(replays(&s), 2);

    // Keyless devices (optional auth) push device 42 out of the engine.
    for id in 1000..1400u32 {
        send(&s, bytes(&position(id, 0)));
    }
    assert_eq!(s.status("/api/devices/42"), 404, "device 42 was not evicted");
    send(&s, captured[2].clone());
    assert_eq!(replays(&s), 3, "a captured frame was accepted after eviction");
    send(&s, signed(&position(42, 9), &key));
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[]), 8.0 + 400.0 + 1.0);

    // Across a restart (the windows are saved with the snapshot).
    s.stop();
    assert!(data.join("replay.state").exists());
    let s = Server::in_process_in(&data, &args);
    send(&s, signed(&position(42, 9), &key));
    send(&s, captured[4].clone());
    assert_eq!(replays(&s), 2);
    send(&s, signed(&position(42, 10), &key));
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[]), 1.0);

    // Without the replay file, the engine's snapshot still bounds what
    // device 42 sent (it is tracked again since frame 9).
    s.stop();
    std::fs::remove_file(data.join("replay.state")).unwrap();
    let s = Server::in_process_in(&data, &args);
    send(&s, signed(&position(42, 10), &key));
    send(&s, captured[0].clone());
    assert_eq!(replays(&s), 2);
    send(&s, signed(&position(42, 11), &key));
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[]), 1.0);
}

#[test]
fn a_source_at_ten_times_its_quota_gets_its_quota() {
    let s = Server::in_process(&["--rate-limit-source", "100", "--rate-limit-burst", "50"]);
    let noisy = UdpSocket::bind("127.0.0.1:0").unwrap();
    let quiet = UdpSocket::bind("127.0.0.2:0").unwrap();
    let start = Instant::now();
    let (mut loud_sent, mut quiet_sent) = (0u32, 0u32);
    // 1000/s from one source (10x its quota), 50/s from another, for 3 s.
    while start.elapsed() < Duration::from_secs(3) {
        let due = (start.elapsed().as_secs_f64() * 1000.0) as u32;
        while loud_sent < due {
            noisy.send_to(&bytes(&position(1, loud_sent)), s.udp).unwrap();
            loud_sent += 1;
        }
        if quiet_sent < due / 20 {
            quiet.send_to(&bytes(&position(2, quiet_sent)), s.udp).unwrap();
            quiet_sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed().as_secs_f64();
    s.wait_received("udp", u64::from(loud_sent + quiet_sent));
    let got = |id: u32| {
        s.json(&format!("/api/devices/{id}"))["sequence"]["received"].as_u64().unwrap() as f64
    };
    let quota = 50.0 + 100.0 * elapsed;
    let loud = got(1);
    assert!(
        (loud - quota).abs() <= 0.1 * quota,
        "noisy source got {loud}, its quota is {quota:.0}"
    );
    assert_eq!(got(2), f64::from(quiet_sent), "the quiet source lost traffic");
    assert_eq!(
        s.metric("fleetwire_datagrams_rejected_total", &[("reason", "rate_limited")]),
        f64::from(loud_sent) - loud
    );
    // Limiter state is bounded even for spoofed sources (unit-tested in
    // policy.rs); two sources here.
    assert_eq!(s.metric("fleetwire_rate_limiter_sources", &[]), 2.0);
}

#[test]
fn a_device_at_ten_times_its_quota_gets_its_quota() {
    let s = Server::in_process(&["--rate-limit-device", "50", "--rate-limit-burst", "20"]);
    let sock = udp_sender();
    let start = Instant::now();
    let (mut loud, mut quiet) = (0u32, 0u32);
    // Device 1 at 500/s (10x), device 2 at 20/s, from the same source.
    while start.elapsed() < Duration::from_secs(3) {
        let due = (start.elapsed().as_secs_f64() * 500.0) as u32;
        while loud < due {
            sock.send_to(&bytes(&position(1, loud)), s.udp).unwrap();
            loud += 1;
        }
        if quiet < due / 25 {
            sock.send_to(&bytes(&position(2, quiet)), s.udp).unwrap();
            quiet += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed().as_secs_f64();
    s.wait_received("udp", u64::from(loud + quiet));
    let got = |id: u32| {
        s.json(&format!("/api/devices/{id}"))["sequence"]["received"].as_u64().unwrap() as f64
    };
    let quota = 20.0 + 50.0 * elapsed;
    assert!(
        (got(1) - quota).abs() <= 0.1 * quota,
        "device 1 got {}, its quota is {quota:.0}",
        got(1)
    );
    assert_eq!(got(2), f64::from(quiet));
    assert_eq!(
        s.metric("fleetwire_datagrams_rejected_total", &[("reason", "rate_limited")]),
        f64::from(loud) - got(1)
    );
}

#[test]
fn a_million_device_ids_stay_within_the_caps() {
    let s = Server::start(&[
        "--max-devices",
        "50000",
        "--max-exported-devices",
        "2000",
        "--snapshot",
        "false",
    ]);
    let sock = udp_sender();
    let _ = sock.set_write_timeout(Some(Duration::from_secs(5)));
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut ids = std::collections::HashSet::new();
    let datagrams = std::iter::from_fn(|| {
        loop {
            let id: u32 = rng.random_range(1..=u32::MAX);
            if ids.len() < 1_000_000 && ids.insert(id) {
                let e = Body::Event(Event { code: 1, severity: Severity::Info, text: None });
                return Some(bytes(&Frame::new(id, 0, 0, e)));
            }
            if ids.len() >= 1_000_000 {
                return None;
            }
        }
    });
    let mut checked = 0;
    let base_rss = rss_bytes(s.pid());
    let mut sent = 0u64;
    for chunk in datagrams.collect::<Vec<_>>().chunks(100_000) {
        sent += send_paced(&s, &sock, chunk.iter().cloned(), 512);
        let sum = s.json("/api/summary");
        assert!(sum["devices"].as_u64().unwrap() <= 50_000, "{sum}");
        assert!(sum["exported"].as_u64().unwrap() <= 2_000, "{sum}");
        checked += 1;
    }
    assert_eq!((sent, checked), (1_000_000, 10));
    let m = s.metrics();
    assert!(metric_sum(&m, "fleetwire_devices", &[]) <= 50_000.0);
    assert!(metric_sum(&m, "fleetwire_exported_devices", &[]) <= 2_000.0);
    let series = m.lines().filter(|l| l.starts_with("fleetwire_device_online{")).count();
    assert!(series <= 2_000, "{series} devices exported");
    assert_eq!(
        metric_sum(&m, "fleetwire_devices_evicted_total", &[])
            + metric_sum(&m, "fleetwire_devices", &[]),
        1_000_000.0
    );
    let grown = rss_bytes(s.pid()).saturating_sub(base_rss);
    assert!(
        grown < 200 << 20,
        "resident memory grew by {} MiB for 50,000 tracked devices",
        grown >> 20
    );
}

#[test]
fn soak_sent_equals_accepted_plus_refused_plus_kernel_drops() {
    let secs: u64 = std::env::var("SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let s = Server::in_process(&["--udp-recv-buffer", "262144"]);
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("soak.fwrec");
    // A capture with some corrupted datagrams, replayed as fast as the
    // sender goes, looped for the soak duration.
    let r = sim(&[
        "--target",
        "127.0.0.1:9",
        "--devices",
        "500",
        "--rate",
        "0",
        "--frames",
        "20",
        "--corrupt",
        "1",
        "--record",
        rec.to_str().unwrap(),
    ]);
    let per_loop = r["sent"].as_u64().unwrap();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut loops = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        let out =
            fleetwire(&["replay", rec.to_str().unwrap(), "--target", &s.udp.to_string(), "--json"]);
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        sent += v["sent"].as_u64().unwrap();
        loops += 1;
    }
    assert_eq!(sent, per_loop * loops);
    // Everything sent is accounted for once the sockets are drained.
    s.wait_until(60, "sent = received + kernel drops", |s| {
        let m = s.metrics();
        let drops = metric_sum(&m, "fleetwire_udp_receive_buffer_drops_total", &[]) as u64;
        let received = metric_sum(&m, "fleetwire_datagrams_received_total", &[]) as u64;
        sent == received + drops
    });
    // Once everything is read, every received datagram was accepted or refused.
    let m = s.metrics();
    let accepted = metric_sum(&m, "fleetwire_datagrams_accepted_total", &[]) as u64;
    let refused = metric_sum(&m, "fleetwire_datagrams_rejected_total", &[]) as u64;
    let drops = metric_sum(&m, "fleetwire_udp_receive_buffer_drops_total", &[]) as u64;
    assert_eq!(sent, accepted + refused + drops);
    eprintln!(
        "soak: {sent} datagrams in {:.0} s: {} accepted, {} refused, {} dropped by the kernel",
        start.elapsed().as_secs_f64(),
        metric_sum(&m, "fleetwire_datagrams_accepted_total", &[]),
        metric_sum(&m, "fleetwire_datagrams_rejected_total", &[]),
        metric_sum(&m, "fleetwire_udp_receive_buffer_drops_total", &[])
    );
    assert!(metric_sum(&m, "fleetwire_datagrams_rejected_total", &[]) > 0.0);
}

#[test]
fn sigterm_under_load_exits_0_and_the_snapshot_restores() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_in(dir.path(), &[]);
    let mut load = std::process::Command::new(BIN)
        .args([
            "sim",
            "--target",
            &s.udp.to_string(),
            "--devices",
            "300",
            "--rate",
            "0",
            "--frames",
            "100000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    s.wait_until(20, "load", |s| s.metric("fleetwire_datagrams_accepted_total", &[]) > 5_000.0);
    let (status, took) = s.terminate();
    let _ = load.kill();
    let _ = load.wait();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let snap = dir.path().join("state.snapshot");
    assert!(snap.exists());
    let s = Server::start_in(dir.path(), &[]);
    assert_eq!(s.json("/api/summary")["devices"], 300);
    let d = s.json("/api/devices/17");
    assert!(d["sequence"]["received"].as_u64().unwrap() > 1);
    assert!(d["position"]["latitude"].is_number());
}

#[test]
fn a_corrupt_snapshot_is_set_aside_and_the_server_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("state.snapshot"),
        b"FWSNAP01\x00\x00\x00\x00 truncated garbage",
    )
    .unwrap();
    let s = Server::start_in(dir.path(), &[]);
    let log = s.log_text();
    assert!(log.contains("corrupt"), "{log}");
    assert_eq!(s.json("/api/summary")["devices"], 0);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("state.snapshot.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file was not kept aside");
    // It works normally and its own snapshot is good.
    udp_sender().send_to(&bytes(&position(5, 0)), s.udp).unwrap();
    s.wait_received("udp", 1);
    let (st, _) = s.terminate();
    assert!(st.success());
    let s = Server::start_in(dir.path(), &[]);
    assert_eq!(s.json("/api/summary")["devices"], 1);
}

/// SIGTERM while a periodic snapshot is being written: the final snapshot
/// waits for it instead of writing the same temporary file at the same
/// time, so the file is never a mix of two and every restart restores
/// every device. (Before, the upkeep task was aborted, which does not stop
/// a save already running on a blocking thread.)
#[test]
fn sigterm_during_a_periodic_snapshot_keeps_every_device() {
    const DEVICES: u64 = 200_000;
    const STOPS: u32 = 20;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--snapshot-interval", "1s"];
    let s = Server::start_in(dir.path(), &args);
    // Every device sends one fix; resend until every device is in.
    let mut sent = 0;
    for _ in 0..10 {
        let out = fleetwire(&[
            "bench",
            "flood",
            "--target",
            &s.udp.to_string(),
            "--ids",
            &DEVICES.to_string(),
            "--rate",
            "50000",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        sent += DEVICES;
        // Until everything sent was read, or nothing more comes (the kernel
        // dropped the rest).
        let (mut last, mut since) = (0, Instant::now());
        s.wait_until(120, "the flood to be read", |s| {
            let n = s.received("udp");
            if n != last {
                (last, since) = (n, Instant::now());
            }
            n >= sent || since.elapsed() > Duration::from_secs(2)
        });
        if s.json("/api/summary")["devices"] == DEVICES {
            break;
        }
    }
    assert_eq!(s.json("/api/summary")["devices"], DEVICES);
    let (st, _) = s.terminate();
    assert!(st.success());

    let tmp = dir.path().join("state.snapshot.tmp");
    let logged = |s: &Server, what: &str| {
        s.log_text()
            .lines()
            .rfind(|l| l.contains(what))
            .and_then(|l| l.split("devices=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    // How long a periodic snapshot takes: from its temporary file
    // appearing to its being renamed.
    let mut took = Duration::from_millis(200);
    let mut expected = DEVICES;
    for i in 0..=STOPS {
        let s = Server::start_in(dir.path(), &args);
        let restored = logged(&s, "restored device state").unwrap_or(0);
        assert_eq!(restored, expected, "restart {i} lost devices:\n{}", s.log_text());
        if i == STOPS {
            break;
        }
        // Devices moving while the snapshots are written, so that two
        // snapshots of the same moment would differ.
        let mut traffic = std::process::Command::new(BIN)
            .args(["sim", "--target", &s.udp.to_string(), "--devices", "1000", "--rate", "20"])
            .args(["--duration", "60", "--seed", &i.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !tmp.exists() {
            assert!(Instant::now() < deadline, "no periodic snapshot started");
            std::thread::sleep(Duration::from_micros(200));
        }
        let started = Instant::now();
        if i == 0 {
            while tmp.exists() && started.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_micros(200));
            }
            took = started.elapsed();
        } else {
            // Spread the signal over the snapshot: at i/STOPS of its time.
            std::thread::sleep(took.mul_f64(f64::from(i) / f64::from(STOPS)));
        }
        let log = std::sync::Arc::clone(&s.log);
        let (st, _) = s.terminate();
        let _ = traffic.kill();
        let _ = traffic.wait();
        let log = log.lock().unwrap().join("\n");
        assert!(st.success(), "stop {i}: {st:?}\n{log}");
        assert!(!log.contains("snapshot failed"), "stop {i}:\n{log}");
        expected = log
            .lines()
            .rfind(|l| l.contains("stopped"))
            .and_then(|l| l.split("devices=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(expected >= DEVICES, "stop {i}: {expected} devices at the end");
    }
}

/// The final snapshot cannot be written: the server says so and exits
/// non-zero (it exited 0, as if the state were safe). The data dir is
/// replaced by a regular file of the same name, which stops root too
/// (the tests run as root, whom permission bits do not stop, and the
/// store and the journal recreate a removed data dir).
#[test]
fn a_failed_final_snapshot_exits_non_zero_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = Server::start_in(&dir, &[]);
    udp_sender().send_to(&bytes(&position(5, 0)), s.udp).unwrap();
    s.wait_received("udp", 1);
    std::fs::rename(&dir, tmp.path().join("data.moved")).unwrap();
    // The journal recreates a missing data dir every interval, so it may
    // win the race between the rename and the write: remove what it made.
    let mut tries = 0;
    while let Err(e) = std::fs::write(&dir, b"not a directory") {
        tries += 1;
        assert!(e.kind() == std::io::ErrorKind::IsADirectory && tries < 100, "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
    let log = std::sync::Arc::clone(&s.log);
    let (st, _) = s.terminate();
    let log = log.lock().unwrap().join("\n");
    assert_eq!(st.code(), Some(1), "{st:?}\n{log}");
    assert!(log.contains("snapshot failed"), "{log}");
    let said =
        log.lines().find(|l| l.starts_with("fleetwire: the final snapshot could not be written"));
    assert!(said.is_some_and(|l| l.contains("data")), "{log}");

    // With the data dir back, the same server state stops with exit 0.
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(tmp.path().join("data.moved"), &dir).unwrap();
    let s = Server::start_in(&dir, &[]);
    let (st, _) = s.terminate();
    assert!(st.success(), "{st:?}");
}

/// `fleetwire serve` on `dir` with `args`, not waiting for anything: its
/// stderr lines are collected as they come.
fn spawn_serve(
    dir: &std::path::Path,
    args: &[&str],
) -> (std::process::Child, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(BIN)
        .arg("serve")
        .args(["--udp-listen", "127.0.0.1:0", "--quic-listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0", "--teltonika-listen", "off"])
        .args(["--osmand-listen", "off", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            log2.lock().unwrap().push(line);
        }
    });
    (child, log)
}

/// Index of the first log line containing `what`.
fn line_of(log: &std::sync::Mutex<Vec<String>>, what: &str) -> Option<usize> {
    log.lock().unwrap().iter().position(|l| l.contains(what))
}

/// Sends `sig` to a server spawned a moment ago, while it restores its
/// snapshot: as soon as it logs that it is restoring, or 200 ms after
/// spawning if it does not say so (the restore of 200,000 devices takes
/// longer than that).
fn signal_while_restoring(
    child: &std::process::Child,
    log: &std::sync::Mutex<Vec<String>>,
    spawned: Instant,
    sig: &str,
) {
    while line_of(log, "restoring device state").is_none()
        && spawned.elapsed() < Duration::from_millis(200)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    unsafe_kill(child.id(), sig);
}

fn wait_exit(child: &mut std::process::Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// SIGTERM and SIGHUP right after spawning a server that restores a
/// snapshot of 200,000 devices: both used to end the process (their
/// default action: the handlers were installed after the restore) with no
/// log line. SIGTERM now stops it cleanly once restored (exit 0, every
/// device in the snapshot it leaves); SIGHUP is remembered and applied
/// (the keys reloaded) once it runs.
#[test]
fn sigterm_and_sighup_during_start_up_are_handled() {
    const DEVICES: u64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("keys");
    std::fs::write(&keys, format!("42 {KEY42}\n")).unwrap();
    let s = Server::start_in(dir.path(), &[]);
    let mut sent = 0;
    for _ in 0..10 {
        let out = fleetwire(&[
            "bench",
            "flood",
            "--target",
            &s.udp.to_string(),
            "--ids",
            &DEVICES.to_string(),
            "--rate",
            "50000",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        sent += DEVICES;
        let (mut last, mut since) = (0, Instant::now());
        s.wait_until(120, "the flood to be read", |s| {
            let n = s.received("udp");
            if n != last {
                (last, since) = (n, Instant::now());
            }
            n >= sent || since.elapsed() > Duration::from_secs(2)
        });
        if s.json("/api/summary")["devices"] == DEVICES {
            break;
        }
    }
    assert_eq!(s.json("/api/summary")["devices"], DEVICES);
    let (st, _) = s.terminate();
    assert!(st.success());

    // SIGTERM during the restore.
    let spawned = Instant::now();
    let (mut child, log) = spawn_serve(dir.path(), &[]);
    signal_while_restoring(&child, &log, spawned, "TERM");
    let st = wait_exit(&mut child, 60);
    let text = log.lock().unwrap().join("\n");
    assert_eq!(st.map(|s| s.code()), Some(Some(0)), "{st:?}\n{text}");
    let signalled = line_of(&log, "stop signal received during start-up");
    let restored = line_of(&log, "restored device state");
    assert!(signalled.is_some() && signalled < restored, "not during the restore:\n{text}");
    let stopped = text.lines().rfind(|l| l.contains("stopped")).unwrap_or_default();
    assert!(stopped.contains(&format!("devices={DEVICES}")), "{text}");
    let s = Server::start_in(dir.path(), &[]);
    assert_eq!(s.json("/api/summary")["devices"], DEVICES, "{}", s.log_text());
    let (st, _) = s.terminate();
    assert!(st.success());

    // SIGHUP during the restore: the keys are reloaded once it runs.
    let spawned = Instant::now();
    let (mut child, log) = spawn_serve(dir.path(), &["--keys-file", keys.to_str().unwrap()]);
    signal_while_restoring(&child, &log, spawned, "HUP");
    let deadline = Instant::now() + Duration::from_secs(60);
    while line_of(&log, "reloaded device keys (SIGHUP)").is_none() {
        let ended = child.try_wait().unwrap();
        let text = log.lock().unwrap().join("\n");
        assert!(ended.is_none(), "SIGHUP ended the server: {ended:?}\n{text}");
        assert!(Instant::now() < deadline, "no reload:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = log.lock().unwrap().join("\n");
    let hup = line_of(&log, "SIGHUP during start-up");
    assert!(hup.is_some() && hup < line_of(&log, "restored device state"), "{text}");
    assert!(line_of(&log, "listening") < line_of(&log, "reloaded device keys"), "{text}");
    assert!(child.try_wait().unwrap().is_none(), "{text}");
    unsafe_kill(child.id(), "TERM");
    let st = wait_exit(&mut child, 30);
    assert_eq!(st.map(|s| s.code()), Some(Some(0)));
}

/// Issue 17 item 4: one frame dated 2100, or one fix dated 4 minutes ahead,
/// must not hold a device's state in the future: the honest frames after
/// it update battery, last event, reading statistics, position and
/// odometer, before and after a restart through the snapshot.
#[test]
fn a_far_future_timestamp_does_not_poison_a_device() {
    use fleetwire_proto::{Monitoring, Reading, Seq};
    const Y2100: u64 = 4_102_444_800_000;
    let now = || {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64
    };
    let sock = udp_sender();
    let send = |s: &Server, f: Frame<'_>| {
        let base = s.received("udp");
        sock.send_to(&bytes(&f), s.udp).unwrap();
        s.wait_received("udp", base + 1);
    };
    let monitoring = |device, seq, t, battery: u8, temp: f64| {
        let r = [Reading { name: "temp", value: temp }];
        let m = Monitoring {
            battery_pct: Some(battery),
            readings: Seq::from_slice(&r),
            ..Monitoring::EMPTY
        };
        bytes(&Frame::new(device, seq, t, Body::Monitoring(m)))
    };
    let event = |device, seq, t, code| {
        Frame::new(
            device,
            seq,
            t,
            Body::Event(Event { code, severity: Severity::Warning, text: None }),
        )
    };
    // 50 m north per step.
    let fix = |device, seq: u32, t, step: u32| {
        let mut f = position(device, seq);
        f.timestamp_ms = t;
        if let Body::Position(p) = &mut f.body {
            p.lat_e7 = 481_372_000 + step as i32 * 4_497;
        }
        f
    };
    let data = tempfile::tempdir().unwrap();
    let s = Server::in_process_in(data.path(), &[]);
    let send_raw = |s: &Server, d: Vec<u8>| {
        let base = s.received("udp");
        sock.send_to(&d, s.udp).unwrap();
        s.wait_received("udp", base + 1);
    };

    // Device 700: a Monitoring frame and an Event dated 2100, then honest ones.
    send_raw(&s, monitoring(700, 0, Y2100, 5, 99.0));
    send(&s, event(700, 1, Y2100, 7));
    for i in 0..5u32 {
        send_raw(&s, monitoring(700, 2 + i, now(), 80 - i as u8, 20.0 + f64::from(i)));
    }
    send(&s, event(700, 7, now(), 8));
    // Device 701: a fix, one dated 4 minutes ahead, then 10 honest fixes.
    let t0 = now();
    send(&s, fix(701, 0, t0, 0));
    send(&s, fix(701, 1, t0 + 1_000 + 240_000, 1));
    for i in 2..=11u32 {
        send(&s, fix(701, i, t0 + u64::from(i) * 1_000, i));
    }
    let check = |s: &Server, battery: u64, code: u64| {
        let d = s.json("/api/devices/700");
        assert_eq!(d["health"]["battery_pct"], battery, "battery frozen: {d}");
        assert!(d["health"]["time_ms"].as_u64().unwrap() <= now(), "{d}");
        assert_eq!(d["last_event"]["code"], code, "last event stuck: {d}");
        let st = &d["readings"][0]["stats"];
        assert_eq!((st["count"].as_u64(), st["last"].as_f64()), (Some(6), Some(24.0)), "{d}");
        let d = s.json("/api/devices/701");
        let odo = d["track"]["odometer_m"].as_f64().unwrap();
        assert!((odo - 550.0).abs() < 5.0, "odometer {odo} m: {d}");
        assert_eq!(d["position"]["time_ms"], t0 + 11_000, "{d}");
        assert_eq!(d["counts"]["filtered"], 0, "{d}");
    };
    check(&s, 76, 8);
    // Device 702: a fix 4 minutes ahead just before the restart.
    let t1 = now();
    send(&s, fix(702, 0, t1, 0));
    send(&s, fix(702, 1, t1 + 240_000, 1));
    s.stop();

    let s = Server::in_process_in(data.path(), &[]);
    check(&s, 76, 8);
    send_raw(&s, monitoring(700, 8, now(), 70, 25.0));
    send(&s, event(700, 9, now(), 9));
    assert_eq!(s.json("/api/devices/700")["health"]["battery_pct"], 70);
    assert_eq!(s.json("/api/devices/700")["last_event"]["code"], 9);
    let t2 = now();
    send(&s, fix(702, 2, t2, 2));
    send(&s, fix(702, 3, t2 + 1_000, 3));
    let d = s.json("/api/devices/702");
    assert_eq!(d["position"]["time_ms"], t2 + 1_000, "{d}");
    assert!((d["track"]["odometer_m"].as_f64().unwrap() - 150.0).abs() < 5.0, "{d}");
}

/// Issue 17 item 8, at start: a server that checks signatures and finds its
/// keys file empty (truncated, a failed copy) would refuse every signed
/// device; it refuses to start instead (exit 2, naming the file and how to
/// start without keys on purpose). A file that says so on a comment line
/// starts without keys.
#[test]
fn an_empty_keys_file_at_start_stops_serve_unless_it_says_so() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "\n").unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("serve")
        .args(["--udp-listen", "127.0.0.1:0", "--quic-listen", "off", "--http-listen"])
        .args(["127.0.0.1:0", "--teltonika-listen", "off", "--osmand-listen", "off"])
        .args(["--udp-auth", "required", "--keys-file", keys.to_str().unwrap()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, 10);
    if status.is_none() {
        let _ = child.kill();
    }
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{err}");
    assert!(err.contains(keys.to_str().unwrap()) && err.contains("is empty"), "{err}");
    assert!(err.contains("# empty"), "says how to start without keys: {err}");
    // On purpose: it starts, and a signed frame is refused for want of a key.
    std::fs::write(&keys, "# empty\n").unwrap();
    let s = Server::start(&["--udp-auth", "required", "--keys-file", keys.to_str().unwrap()]);
    assert_eq!(s.metric("fleetwire_device_keys", &[]), 0.0);
    let key = hex::decode(KEY42).unwrap();
    udp_sender().send_to(&signed(&position(42, 1), &key), s.udp).unwrap();
    s.wait_until(5, "the signed frame refused", |s| {
        s.metric("fleetwire_datagrams_rejected_total", &[("reason", "unknown_key")]) == 1.0
    });
}

/// Issue 17 item 8: a keys file emptied by accident (truncated, a failed
/// copy) and reloaded with SIGHUP must not leave every signed device
/// refused: the reload fails and the keys stay. A file that says so on a
/// comment line (`# empty`) removes the keys on purpose.
#[test]
fn an_empty_keys_file_on_sighup_keeps_the_keys_unless_it_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("42 {KEY42}\n")).unwrap();
    let s = Server::start(&["--udp-auth", "required", "--keys-file", keys.to_str().unwrap()]);
    let key = hex::decode(KEY42).unwrap();
    let sock = udp_sender();
    let mut seq = 0;
    let mut send_signed = |s: &Server| {
        seq += 1;
        let base = s.received("udp");
        sock.send_to(&signed(&position(42, seq), &key), s.udp).unwrap();
        s.wait_received("udp", base + 1);
    };
    let reloads =
        |s: &Server, result| s.metric("fleetwire_key_reloads_total", &[("result", result)]) as u64;
    // (/metrics may be up to a second old: wait for what is expected.)
    let accepted =
        |n: f64| move |s: &Server| s.metric("fleetwire_datagrams_accepted_total", &[]) == n;
    send_signed(&s);
    s.wait_until(5, "the signed frame", accepted(1.0));
    std::fs::write(&keys, "").unwrap();
    unsafe_kill(s.pid(), "HUP");
    s.wait_until(10, "the empty reload to be refused", |s| reloads(s, "failed") == 1);
    assert_eq!((reloads(&s, "ok"), s.metric("fleetwire_device_keys", &[])), (0, 1.0));
    send_signed(&s);
    s.wait_until(5, "the signed frame taken with the kept key", accepted(2.0));
    assert!(s.log_text().contains("# empty"), "the log says how to empty it on purpose");
    // On purpose: every key goes, and signed frames are refused.
    std::fs::write(&keys, "# empty\n").unwrap();
    unsafe_kill(s.pid(), "HUP");
    s.wait_until(10, "the deliberate reload", |s| reloads(s, "ok") == 1);
    assert_eq!(s.metric("fleetwire_device_keys", &[]), 0.0);
    send_signed(&s);
    s.wait_until(5, "the signed frame refused", |s| {
        s.metric("fleetwire_datagrams_rejected_total", &[("reason", "unknown_key")]) == 1.0
    });
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[]), 2.0);
}
