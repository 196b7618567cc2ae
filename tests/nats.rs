//! Forwarding to NATS JetStream against a real nats-server (Debian package
//! `nats-server`, JetStream on, loopback).

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

struct Nats {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Nats::spawn(port, dir.path());
        Nats { child, port, dir }
    }

    fn spawn(port: u16, store: &Path) -> Child {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian package nats-server; scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.stop();
        self.child = Nats::spawn(self.port, self.dir.path());
    }

    /// Every message in the stream, through `fleetwire tail --all`.
    fn stream_records(&self) -> Vec<Value> {
        let out = fleetwire(&["tail", "--server", &self.url(), "--all", "--idle", "2"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

fn forward(s: &Server) -> Value {
    s.json("/api/summary")["forward"].clone()
}

fn records_total(s: &Server) -> u64 {
    s.metric("fleetwire_records_total", &[]) as u64
}

/// Waits until the forwarder has nothing left to do.
fn settle(s: &Server) {
    s.wait_until(60, "forwarding to settle", |s| {
        let f = forward(s);
        f["buffered"] == 0
            && f["enqueued"].as_u64()
                == Some(f["acknowledged"].as_u64().unwrap() + f["dropped"].as_u64().unwrap())
    });
}

#[test]
fn records_published_equal_records_accepted() {
    let nats = Nats::start();
    let s = Server::in_process(&["--forward-nats-url", &nats.url()]);
    s.wait_until(20, "NATS connection", |s| forward(s)["connected"] == true);
    let r = sim(&[
        "--target",
        &s.udp.to_string(),
        "--devices",
        "40",
        "--rate",
        "0",
        "--frames",
        "50",
        "--seed",
        "4",
        "--loss",
        "3",
        "--dup",
        "5",
        "--reorder",
        "5",
        "--corrupt",
        "3",
    ]);
    // A batch: each sample is its own record.
    let batch = vectors("valid.json").into_iter().find(|v| v["name"] == "batch_mixed").unwrap();
    udp_sender().send_to(&hex::decode(batch["hex"].as_str().unwrap()).unwrap(), s.udp).unwrap();
    s.wait_received("udp", r["sent"].as_u64().unwrap() + 1);
    settle(&s);
    let accepted = records_total(&s);
    assert_eq!(accepted, r["records"].as_u64().unwrap() + 3);
    let f = forward(&s);
    assert_eq!(f["acknowledged"].as_u64(), Some(accepted), "{f}");
    assert_eq!(f["dropped"], 0);
    assert_eq!(s.metric("fleetwire_forward_acknowledged_total", &[]) as u64, accepted);
    let stream = nats.stream_records();
    assert_eq!(stream.len() as u64, accepted, "messages in the stream");
    // Per kind and per device, the stream holds exactly what was accepted.
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for m in &stream {
        let rec = &m["record"];
        let kind = rec["kind"].as_str().unwrap().to_string();
        assert_eq!(m["subject"], format!("fleetwire.{}.{}", rec["device_id"], kind));
        assert_eq!(m["transport"], "udp");
        *kinds.entry(kind).or_default() += 1;
    }
    for (kind, n) in &kinds {
        assert_eq!(s.metric("fleetwire_records_total", &[("kind", kind)]) as u64, *n, "{kind}");
    }
    let d42: Vec<&Value> = stream.iter().filter(|m| m["record"]["device_id"] == 42).collect();
    assert_eq!(d42.len(), 3);
    assert_eq!(d42[0]["record"]["timestamp_ms"], 1_764_000_000_000u64 - 60_000);
}

#[test]
fn a_nats_restart_mid_stream_loses_only_what_the_buffer_policy_allows() {
    let mut nats = Nats::start();
    let s =
        Server::in_process(&["--forward-nats-url", &nats.url(), "--forward-nats-buffer", "500"]);
    s.wait_until(20, "NATS connection", |s| forward(s)["connected"] == true);
    let load = Command::new(BIN)
        .args([
            "sim",
            "--target",
            &s.udp.to_string(),
            "--devices",
            "50",
            "--rate",
            "20",
            "--duration",
            "8",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    nats.stop();
    s.wait_until(20, "the forwarder to notice", |s| {
        forward(s)["connected"] == false || forward(s)["failed"].as_u64() > Some(0)
    });
    std::thread::sleep(Duration::from_secs(2));
    nats.restart();
    let out = load.wait_with_output().unwrap();
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Ingest never stopped.
    s.wait_received("udp", r["sent"].as_u64().unwrap());
    assert_eq!(
        s.metric("fleetwire_datagrams_accepted_total", &[]) as u64,
        r["sent"].as_u64().unwrap()
    );
    s.wait_until(30, "reconnect", |s| forward(s)["connected"] == true);
    settle(&s);
    let accepted = records_total(&s);
    let f = forward(&s);
    let (acked, dropped) = (f["acknowledged"].as_u64().unwrap(), f["dropped"].as_u64().unwrap());
    assert_eq!(f["enqueued"].as_u64(), Some(accepted), "{f}");
    assert_eq!(
        acked + dropped,
        accepted,
        "every record is either in the stream or counted as dropped: {f}"
    );
    assert!(dropped > 0, "a 2 s outage at 1000 records/s should overflow a 500-record buffer: {f}");
    assert!(f["failed"].as_u64().unwrap() > 0);
    assert_eq!(s.metric("fleetwire_forward_dropped_total", &[]) as u64, dropped);
    // No duplicates from the retries (Nats-Msg-Id), nothing unaccounted.
    let stream = nats.stream_records();
    assert_eq!(stream.len() as u64, acked);
    let mut ids = std::collections::HashSet::new();
    for m in &stream {
        let rec = &m["record"];
        assert!(
            ids.insert((rec["device_id"].as_u64(), rec["sequence"].as_u64())),
            "duplicate {rec}"
        );
    }
}

#[test]
fn tail_prints_what_sim_sent() {
    let nats = Nats::start();
    let s = Server::in_process(&[
        "--forward-nats-url",
        &nats.url(),
        "--forward-nats-subject-prefix",
        "fw",
        "--forward-nats-stream",
        "FW",
    ]);
    s.wait_until(20, "NATS connection", |s| forward(s)["connected"] == true);
    let expected = 12 * 11;
    let tail = Command::new(BIN)
        .args([
            "tail",
            "--server",
            &nats.url(),
            "--subject",
            "fw.>",
            "--count",
            &expected.to_string(),
            "--idle",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let r = sim(&[
        "--target",
        &s.udp.to_string(),
        "--devices",
        "12",
        "--first-id",
        "500",
        "--rate",
        "0",
        "--frames",
        "10",
    ]);
    assert_eq!(r["records"], expected);
    let out = tail.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), expected as usize);
    let mut per_device: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for l in &lines {
        let rec = &l["record"];
        assert!(l["subject"].as_str().unwrap().starts_with("fw."));
        per_device
            .entry(rec["device_id"].as_u64().unwrap())
            .or_default()
            .push(rec["sequence"].as_u64().unwrap());
    }
    assert_eq!(per_device.keys().copied().collect::<Vec<_>>(), (500..512).collect::<Vec<_>>());
    for seqs in per_device.values() {
        assert_eq!(
            seqs,
            &(0..=10).collect::<Vec<_>>(),
            "each device's hello and 10 frames, in order"
        );
    }
    // The same records are in the stream, for consumers that come later.
    let out = fleetwire(&[
        "tail",
        "--server",
        &nats.url(),
        "--all",
        "--stream",
        "FW",
        "--subject",
        "fw.500.>",
        "--idle",
        "2",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 11);
}

/// With `teltonika_ack = "published"`, a tracker's packet is acknowledged
/// only once JetStream stored its records: while NATS is away the tracker
/// gets no ACK (and keeps its records), and the ACK comes when NATS is back.
#[test]
fn teltonika_packets_are_acknowledged_once_published() {
    let mut nats = Nats::start();
    let s = Server::in_process(&[
        "--forward-nats-url",
        &nats.url(),
        "--teltonika-ack",
        "published",
        "--max-age",
        "20years",
    ]);
    s.wait_until(20, "the forwarder to connect", |s| forward(s)["connected"] == true);
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/data/teltonika-udp.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let packet = hex::decode(v["vectors"][2]["hex"].as_str().unwrap()).unwrap();
    let want = hex::decode(v["vectors"][2]["ack_hex"].as_str().unwrap()).unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ack_within = |secs: u64| {
        sock.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
        let mut buf = [0u8; 16];
        sock.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    };
    sock.connect(s.teltonika.unwrap()).unwrap();
    sock.send(&packet).unwrap();
    assert_eq!(ack_within(10), Some(want.clone()), "ACK once stored");
    let stored = nats.stream_records();
    assert_eq!(stored.len(), 2, "the record's position and monitoring: {stored:?}");

    // NATS away: the packet is taken but not acknowledged.
    nats.stop();
    let second = {
        let mut p = packet.clone();
        // Another record time (bytes 25..33 of the first record), so it is new.
        p[32] ^= 1;
        p
    };
    sock.send(&second).unwrap();
    assert_eq!(ack_within(3), None, "no ACK while the records are not stored");
    assert_eq!(s.metric("fleetwire_teltonika_acks_waiting", &[]), 1.0);
    // The tracker resends; still nothing, and nothing counted twice.
    sock.send(&second).unwrap();
    assert_eq!(ack_within(2), None);
    assert_eq!(s.metric("fleetwire_records_total", &[("kind", "position")]), 2.0);

    // NATS back: both attempts are acknowledged.
    nats.restart();
    assert_eq!(ack_within(30).as_deref(), Some(&want[..]));
    assert_eq!(ack_within(10).as_deref(), Some(&want[..]));
    assert_eq!(s.metric("fleetwire_teltonika_acks_waiting", &[]), 0.0);
    assert_eq!(s.metric("fleetwire_teltonika_acks_total", &[]), 3.0);
    settle(&s);
    // JetStream de-duplicated the resend: 2 records per distinct packet.
    assert_eq!(nats.stream_records().len(), 4);
}

/// Issue 17 item 9: NATS frozen for 20 s (SIGSTOP, then SIGCONT) under
/// traffic. While it is frozen the server says so (a gauge, and a warning
/// at most every 10 s); afterwards the counts match the stream exactly:
/// the records in the stream are the acknowledged ones, and acknowledged +
/// dropped = enqueued = accepted. (Records handed to NATS but not
/// acknowledged may be in the stream: they are retried, never dropped.)
#[test]
fn a_frozen_nats_is_reported_and_the_counts_match_the_stream() {
    let nats = Nats::start();
    let s = Server::start(&["--forward-nats-url", &nats.url(), "--forward-nats-buffer", "1000"]);
    let metric = |s: &Server, name: &str| s.metric(name, &[]) as u64;
    s.wait_until(20, "NATS connection", |s| metric(s, "fleetwire_forward_connected") == 1);
    let load = Command::new(BIN)
        .args(["sim", "--target", &s.udp.to_string(), "--devices", "50", "--rate", "20"])
        .args(["--duration", "30", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let warnings = |s: &Server| {
        s.log_text().lines().filter(|l| l.contains("WARN") && l.contains("NATS")).count()
    };
    let before = warnings(&s);
    unsafe_kill(nats.child.id(), "STOP");
    let frozen = Instant::now();
    s.wait_until(20, "fleetwire_forward_failing to say so", |s| {
        metric(s, "fleetwire_forward_failing") == 1
    });
    std::thread::sleep(Duration::from_secs(20).saturating_sub(frozen.elapsed()));
    let during = warnings(&s) - before;
    unsafe_kill(nats.child.id(), "CONT");
    assert!((1..=3).contains(&during), "{during} warnings in 20 s:\n{}", s.log_text());
    let out = load.wait_with_output().unwrap();
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    s.wait_received("udp", r["sent"].as_u64().unwrap());
    settle(&s);
    s.wait_until(20, "the gauge to clear", |s| metric(s, "fleetwire_forward_failing") == 0);
    let f = forward(&s);
    let (acked, dropped) = (f["acknowledged"].as_u64().unwrap(), f["dropped"].as_u64().unwrap());
    assert_eq!(f["enqueued"].as_u64(), Some(records_total(&s)), "{f}");
    assert_eq!(acked + dropped, records_total(&s), "{f}");
    assert!(dropped > 0, "20 s at 1000 records/s overflow a 1000-record buffer: {f}");
    let stream = nats.stream_records();
    assert_eq!(stream.len() as u64, acked, "records in the stream = acknowledged: {f}");
}
