//! QUIC ingest: datagrams and streams, mutual TLS, stream error isolation,
//! and interop with an independent implementation (aioquic).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use fleetwire_proto::{Body, Event, FixType, Frame, Position, Severity, encode};

fn dev_ca(s: &Server) -> String {
    s.data_dir.join("dev-cert.pem").to_str().unwrap().to_string()
}

#[test]
fn datagrams_and_streams_from_many_devices_give_exact_counts() {
    let s = Server::in_process(&[]);
    let quic = s.quic.unwrap().to_string();
    let ca = dev_ca(&s);
    let r = sim(&[
        "--target",
        &quic,
        "--transport",
        "quic",
        "--ca",
        &ca,
        "--devices",
        "40",
        "--rate",
        "0",
        "--frames",
        "30",
        "--seed",
        "21",
        "--loss",
        "3",
        "--dup",
        "3",
        "--reorder",
        "3",
        "--corrupt",
        "3",
    ]);
    assert_eq!(r["errors"], 0, "{r}");
    let dgrams = r["sent"].as_u64().unwrap();
    s.wait_received("quic", dgrams);
    let streams = sim(&[
        "--target",
        &quic,
        "--transport",
        "quic",
        "--quic-mode",
        "stream",
        "--ca",
        &ca,
        "--devices",
        "10",
        "--first-id",
        "1000",
        "--rate",
        "0",
        "--frames",
        "100",
        "--seed",
        "22",
    ]);
    assert_eq!(streams["errors"], 0);
    let stream_frames = streams["sent"].as_u64().unwrap();
    s.wait_received("quic", dgrams + stream_frames);
    let m = s.metrics();
    let q = [("transport", "quic")];
    assert_eq!(
        metric_sum(&m, "fleetwire_datagrams_received_total", &q) as u64,
        dgrams + stream_frames
    );
    assert_eq!(
        metric_sum(&m, "fleetwire_datagrams_rejected_total", &q),
        r["corrupted"].as_f64().unwrap()
    );
    assert_eq!(metric_sum(&m, "fleetwire_quic_stream_frames_total", &[]) as u64, stream_frames);
    assert_eq!(
        metric_sum(&m, "fleetwire_records_total", &[]) as u64,
        r["records"].as_u64().unwrap() + streams["records"].as_u64().unwrap()
    );
    assert_eq!(metric_sum(&m, "fleetwire_quic_datagrams_dropped_total", &[]), 0.0);
    assert_eq!(metric_sum(&m, "fleetwire_datagrams_received_total", &[("transport", "udp")]), 0.0);
    let sum = s.json("/api/summary");
    assert_eq!(sum["lost"], r["lost"]);
    assert_eq!(sum["duplicates"], r["duplicated"]);
    assert_eq!(sum["reordered"], r["reordered"]);
    assert_eq!(sum["devices"], 50);
    s.wait_until(10, "connections to close", |s| {
        s.metric("fleetwire_quic_connections", &[]) == 0.0
    });
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let out = fleetwire(&["certs", "init", "--dir", dir.path().to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Pki { dir }
    }
    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).to_str().unwrap().to_string()
    }
    fn device(&self, id: u32) -> (String, String) {
        let out = fleetwire(&[
            "certs",
            "device",
            &id.to_string(),
            "--dir",
            self.dir.path().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (self.path(&format!("device-{id}.pem")), self.path(&format!("device-{id}.key")))
    }
}

fn sim_raw(args: &[&str]) -> std::process::Output {
    let mut a = vec!["sim", "--json"];
    a.extend_from_slice(args);
    fleetwire(&a)
}

#[test]
fn mutual_tls_accepts_our_devices_and_refuses_others() {
    let pki = Pki::new();
    let foreign = Pki::new();
    let s = Server::in_process(&[
        "--quic-cert",
        &pki.path("server.pem"),
        "--quic-key",
        &pki.path("server.key"),
        "--quic-client-ca",
        &pki.path("ca.pem"),
        "--client-auth",
        "required",
    ]);
    let quic = s.quic.unwrap().to_string();
    let ca = pki.path("ca.pem");

    // A device with a certificate from our CA is accepted.
    let (cert, key) = pki.device(7);
    let ok = sim(&[
        "--target",
        &quic,
        "--transport",
        "quic",
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--devices",
        "1",
        "--first-id",
        "7",
        "--rate",
        "0",
        "--frames",
        "20",
    ]);
    assert_eq!(ok["errors"], 0);
    s.wait_received("quic", 21);
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[("transport", "quic")]), 21.0);

    // The certificate's device id is authoritative: frames claiming device 8 are refused.
    let bad = sim(&[
        "--target",
        &quic,
        "--transport",
        "quic",
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--devices",
        "1",
        "--first-id",
        "8",
        "--rate",
        "0",
        "--frames",
        "9",
    ]);
    s.wait_received("quic", 31);
    assert_eq!(
        s.metric(
            "fleetwire_datagrams_rejected_total",
            &[("transport", "quic"), ("reason", "identity_mismatch")]
        ),
        bad["sent"].as_f64().unwrap()
    );
    assert_eq!(s.status("/api/devices/8"), 404);

    // A certificate from another CA fails the handshake.
    let (fcert, fkey) = foreign.device(7);
    let out = sim_raw(&[
        "--target",
        &quic,
        "--transport",
        "quic",
        "--ca",
        &ca,
        "--cert",
        &fcert,
        "--key",
        &fkey,
        "--devices",
        "1",
        "--first-id",
        "7",
        "--rate",
        "0",
        "--frames",
        "5",
    ]);
    assert!(!out.status.success(), "a foreign certificate was accepted");
    s.wait_until(10, "unknown_ca failure", |s| {
        s.metric("fleetwire_quic_handshake_failures_total", &[("reason", "unknown_ca")]) >= 1.0
    });

    // No certificate at all, when one is required.
    let out = sim_raw(&[
        "--target",
        &quic,
        "--transport",
        "quic",
        "--ca",
        &ca,
        "--devices",
        "1",
        "--first-id",
        "7",
        "--rate",
        "0",
        "--frames",
        "5",
    ]);
    assert!(!out.status.success(), "a client without certificate was accepted");
    s.wait_until(10, "no_certificate failure", |s| {
        s.metric("fleetwire_quic_handshake_failures_total", &[("reason", "no_certificate")]) >= 1.0
    });
    // Nothing from the refused clients reached the engine.
    assert_eq!(s.metric("fleetwire_datagrams_accepted_total", &[("transport", "quic")]), 21.0);
}

fn frame(device: u32, seq: u32) -> Vec<u8> {
    let mut buf = [0u8; 1200];
    let body = if seq % 2 == 0 {
        Body::Position(Position {
            lat_e7: 481_372_000 + seq as i32,
            lon_e7: 115_755_000,
            alt_dm: 0,
            speed_cm_s: 0,
            heading_ddeg: 0,
            hacc_cm: 100,
            fix: FixType::Fix3d,
            satellites: 5,
        })
    } else {
        Body::Event(Event { code: 1, severity: Severity::Info, text: Some("x") })
    };
    let n = encode(&Frame::new(device, seq, 0, body), &mut buf).unwrap();
    buf[..n].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_frame_on_a_stream_spoils_nothing_else() {
    let s = Server::in_process(&[]);
    let cfg = fleetwire::sim::quic::client_config(Path::new(&dev_ca(&s)), None).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    let conn = ep.connect(s.quic.unwrap(), "localhost").unwrap().await.unwrap();
    let mut st = conn.open_uni().await.unwrap();
    let mut corrupted = frame(500, 1);
    corrupted[25] ^= 0x20;
    let records: Vec<Vec<u8>> = vec![
        frame(500, 0),
        corrupted,
        frame(500, 2),
        vec![0x55; 1300],
        frame(500, 3),
        vec![1, 2, 3],
    ];
    for r in &records {
        st.write_all(&(r.len() as u16).to_be_bytes()).await.unwrap();
        st.write_all(r).await.unwrap();
    }
    st.finish().unwrap();
    tokio::time::timeout(Duration::from_secs(10), st.stopped()).await.unwrap().unwrap();
    let s2 = &s;
    tokio::task::block_in_place(|| s2.wait_received("quic", 6));
    // The connection is still good for datagrams afterwards.
    conn.send_datagram(frame(500, 4).into()).unwrap();
    tokio::task::block_in_place(|| {
        s2.wait_received("quic", 7);
        let m = s2.metrics();
        let rej = |r: &str| {
            metric_sum(
                &m,
                "fleetwire_datagrams_rejected_total",
                &[("transport", "quic"), ("reason", r)],
            )
        };
        assert_eq!(rej("bad_checksum"), 1.0);
        assert_eq!(rej("too_long"), 1.0);
        assert_eq!(rej("too_short"), 1.0);
        assert_eq!(
            metric_sum(&m, "fleetwire_datagrams_accepted_total", &[("transport", "quic")]),
            4.0
        );
        let d = s2.json("/api/devices/500");
        assert_eq!(d["sequence"]["received"], 4);
        assert_eq!(d["sequence"]["lost"], 1, "frame 1 was refused, so it is missing");
    });
    conn.close(0u32.into(), b"bye");
    ep.wait_idle().await;
}

#[test]
fn interop_with_aioquic() {
    let s = Server::in_process(&[]);
    let script = format!("{}/tests/interop/aioquic_client.py", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--port", &s.quic.unwrap().port().to_string(), "--ca", &dev_ca(&s)])
        .args(["--datagrams", "100", "--stream-frames", "50"])
        .output()
        .expect("python3 with aioquic (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "aioquic client failed (is aioquic installed? scripts/setup.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["alpn"], "fleetwire/1");
    s.wait_received("quic", 150);
    let m = s.metrics();
    assert_eq!(
        metric_sum(&m, "fleetwire_datagrams_accepted_total", &[("transport", "quic")]),
        150.0
    );
    assert_eq!(metric_sum(&m, "fleetwire_quic_stream_frames_total", &[]), 50.0);
    let d = s.json("/api/devices/31337");
    assert_eq!(d["sequence"]["received"], 150);
    assert_eq!(d["sequence"]["lost"], 0);
    assert_eq!(d["readings"][0]["name"], "interop");
}

/// A client offering another ALPN (`h3`), or none, is refused and counted
/// as `reason="alpn"`: classified from the TLS alert, not from the text of
/// an error message (which counted it as `other`).
#[test]
fn a_wrong_or_missing_alpn_is_refused_and_counted_as_alpn() {
    let s = Server::in_process(&[]);
    let script = format!("{}/tests/interop/aioquic_client.py", env!("CARGO_MANIFEST_DIR"));
    for alpn in ["h3", "none"] {
        let out = std::process::Command::new("python3")
            .arg(&script)
            .args(["--port", &s.quic.unwrap().port().to_string(), "--ca", &dev_ca(&s)])
            .args(["--alpn", alpn])
            .output()
            .expect("python3 with aioquic (scripts/setup.sh installs it)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["refused"], true, "ALPN {alpn}: {r}");
    }
    s.wait_until(10, "two handshake failures", |s| {
        s.metric("fleetwire_quic_handshake_failures_total", &[]) >= 2.0
    });
    let m = s.metrics();
    let failures =
        |reason| metric_sum(&m, "fleetwire_quic_handshake_failures_total", &[("reason", reason)]);
    assert_eq!((failures("alpn"), failures("other")), (2.0, 0.0), "{m}");
    assert_eq!(metric_sum(&m, "fleetwire_datagrams_received_total", &[("transport", "quic")]), 0.0);
}

#[test]
fn address_validation_and_the_connection_limit() {
    let s = Server::in_process(&["--quic-retry", "true", "--quic-max-connections", "3"]);
    let quic = s.quic.unwrap().to_string();
    let ca = dev_ca(&s);
    // With Retry, handshakes take one more round trip and still succeed.
    let ok = sim(&[
        "--target",
        &quic,
        "--transport",
        "quic",
        "--ca",
        &ca,
        "--devices",
        "3",
        "--rate",
        "0",
        "--frames",
        "5",
    ]);
    assert_eq!(ok["errors"], 0);
    s.wait_received("quic", 18);
    s.wait_until(10, "connections to close", |s| {
        s.metric("fleetwire_quic_connections", &[]) == 0.0
    });
    // Five devices at once against a limit of three: two are refused.
    let out = sim_raw(&[
        "--target",
        &quic,
        "--transport",
        "quic",
        "--ca",
        &ca,
        "--devices",
        "5",
        "--first-id",
        "10",
        "--rate",
        "0",
        "--frames",
        "5",
    ]);
    assert!(!out.status.success(), "connections over the limit were accepted");
    s.wait_until(10, "refusals counted", |s| {
        s.metric("fleetwire_quic_connections_refused_total", &[]) == 2.0
    });
    assert_eq!(s.json("/api/summary")["devices"], 6);
}

/// A `fleetwire serve` binary on a QUIC port chosen by the test (so that a
/// restarted server is on the same port: `Server::start_in` takes port 0).
struct Fixed {
    child: std::process::Child,
    http: std::net::SocketAddr,
    /// When its QUIC endpoint said it was listening.
    quic_ready: std::time::Instant,
}

impl Drop for Fixed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port of 127.0.0.1 that is free now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve_on_quic_port(dir: &Path, port: u16) -> Fixed {
    use std::io::BufRead;
    let mut child = std::process::Command::new(BIN)
        .arg("serve")
        .args(["--udp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--quic-listen", &format!("127.0.0.1:{port}")])
        .args(["--teltonika-listen", "off", "--osmand-listen", "off", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send((std::time::Instant::now(), line));
        }
    });
    let (mut http, mut quic_ready, mut log) = (None, None, Vec::new());
    while http.is_none() || quic_ready.is_none() {
        let Ok((at, line)) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("server did not start:\n{}", log.join("\n"));
        };
        if line.contains("listening") && line.contains("transport=\"quic\"") {
            quic_ready = Some(at);
        }
        if line.contains("listening") && line.contains("transport=\"http\"") {
            http =
                line.split("addr=").nth(1).and_then(|a| a.split_whitespace().next()?.parse().ok());
        }
        log.push(line);
    }
    Fixed { child, http: http.unwrap(), quic_ready: quic_ready.unwrap() }
}

impl Fixed {
    fn json(&self, path: &str) -> serde_json::Value {
        let body = ureq::get(&format!("http://{}{path}", self.http))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }

    fn wait_quic(&self, n: u64, secs: u64) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            let r = &self.json("/api/summary")["datagrams"]["quic"]["received"];
            if r.as_u64().unwrap_or(0) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn kill(mut self) -> std::time::Instant {
        unsafe_kill(self.child.id(), "KILL");
        let _ = self.child.wait();
        std::time::Instant::now()
    }
}

/// A process's stdout lines as JSON, with the moment each was read.
fn json_lines(
    out: std::process::ChildStdout,
) -> std::sync::mpsc::Receiver<(std::time::Instant, serde_json::Value)> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
            let _ = tx.send((std::time::Instant::now(), v));
        }
    });
    rx
}

/// Issue 17 item 6: a device connected over QUIC (aioquic, which shares
/// nothing with quinn) while the server is SIGKILLed and restarted on the
/// same data dir and port learns of it at its next packet, from the
/// restarted server's stateless reset, and reconnects. Before, the
/// restarted server had new random keys: it dropped the packets of the old
/// connection as carrying an invalid connection id, sent no reset, and the
/// client kept sending into the dead connection until its idle timeout
/// (60 s).
#[test]
fn an_aioquic_client_learns_of_a_crash_and_restart_from_a_stateless_reset() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let s = serve_on_quic_port(dir.path(), port);
    let script = format!("{}/tests/interop/aioquic_client.py", env!("CARGO_MANIFEST_DIR"));
    let ca = dir.path().join("dev-cert.pem");
    let mut client = std::process::Command::new("python3")
        .arg(&script)
        .args(["--port", &port.to_string(), "--ca", ca.to_str().unwrap(), "--device", "31338"])
        .args(["--restart", "--interval", "0.2", "--wait", "10", "--after", "10"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("python3 with aioquic (scripts/setup.sh installs it)");
    let events = json_lines(client.stdout.take().unwrap());
    let next = |secs| events.recv_timeout(Duration::from_secs(secs)).expect("client event");
    assert_eq!(next(30).1["event"], "connected");
    assert!(s.wait_quic(3, 10), "the client's frames did not arrive");
    let before = s.json("/api/devices/31338")["sequence"]["received"].as_u64().unwrap();
    let killed = s.kill();
    let s = serve_on_quic_port(dir.path(), port);
    let (at, event) = next(30);
    assert_eq!(event["event"], "reset", "{event}");
    let after_ready = at.saturating_duration_since(s.quic_ready);
    eprintln!(
        "stateless reset seen by the client {:?} after the restarted server listened, \
         {:?} after SIGKILL",
        after_ready,
        at - killed
    );
    assert!(after_ready < Duration::from_millis(1500), "{after_ready:?}");
    assert_eq!(next(30).1["event"], "reconnected");
    assert!(client.wait().unwrap().success());
    assert!(s.wait_quic(10, 10), "the frames sent after reconnecting did not arrive");
    // The journal restores what the killed server had synced (at most the
    // frames it had received), then the 10 sent after reconnecting count.
    let received = s.json("/api/devices/31338")["sequence"]["received"].as_u64().unwrap();
    assert!(
        (10..=10 + before).contains(&received),
        "{received} received after the restart, {before} before the kill"
    );
}

/// `fleetwire sim` over QUIC through a SIGKILL and restart of the server:
/// the restarted server resets its connections, sim reconnects them, and
/// every device's frames reach the new server (before, sim kept sending
/// into the dead connections: the new server received nothing).
#[test]
fn sim_reconnects_after_the_server_crashed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let s = serve_on_quic_port(dir.path(), port);
    let ca = dir.path().join("dev-cert.pem");
    let sim = std::process::Command::new(BIN)
        .args(["sim", "--json", "--target", &format!("127.0.0.1:{port}"), "--transport", "quic"])
        .args(["--ca", ca.to_str().unwrap(), "--devices", "3", "--first-id", "600"])
        .args(["--rate", "10", "--duration", "12"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(s.wait_quic(9, 20), "sim's frames did not arrive");
    s.kill();
    let s = serve_on_quic_port(dir.path(), port);
    assert!(s.wait_quic(9, 8), "no frames from sim after the restart");
    assert_eq!(s.json("/api/summary")["devices"], 3);
    let out = sim.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("reconnecting"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["errors"], 0, "{summary}");
}
