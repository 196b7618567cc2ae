//! Nothing on the HTTP side can take the server down: slowloris
//! connections under a 1,024-descriptor limit leave `/healthz` answering and
//! snapshots written; expensive requests are bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `fleetwire serve` under `prlimit --nofile=1024:1024`, its HTTP address.
fn serve_limited(dir: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = Command::new("prlimit")
        .args(["--nofile=1024:1024", BIN, "serve"])
        .args([
            "--udp-listen",
            "127.0.0.1:0",
            "--quic-listen",
            "off",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--teltonika-listen", "off", "--osmand-listen", "off", "--snapshot-interval", "1s"])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) and the fleetwire binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("transport=\"http\"") && line.contains("listening") {
                let a = line.split("addr=").nth(1).and_then(|r| r.split_whitespace().next());
                if let Some(a) = a.and_then(|a| a.parse::<SocketAddr>().ok()) {
                    let _ = tx.send(a);
                }
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("server started");
    (child, addr)
}

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

/// 1,100 connections sending their headers a byte a second, against 1,024
/// file descriptors: `/healthz` answers within a second throughout, the
/// snapshots keep being written, the excess is refused and counted, and
/// the slow connections are closed after the header timeout (10 s).
#[test]
fn slowloris_under_a_descriptor_limit_takes_nothing_down() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, http) = serve_limited(dir.path());
    let mut slow: Vec<TcpStream> = (0..1100)
        .filter_map(|_| {
            let mut s = TcpStream::connect_timeout(&http, Duration::from_secs(1)).ok()?;
            s.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").ok()?;
            Some(s)
        })
        .collect();
    assert!(slow.len() > 1000, "{} connected", slow.len());
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(15) {
        for s in slow.iter_mut() {
            let _ = s.write_all(b"a");
        }
        let t = Instant::now();
        let ok = get(http, "/healthz").is_some();
        worst = worst.max(t.elapsed());
        assert!(ok, "/healthz unanswered {:?} into the attack", start.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(worst < Duration::from_secs(1), "/healthz took {worst:?}");
    // The slow connections were closed by the server (reads see the end).
    let closed = slow
        .iter_mut()
        .filter(|s| {
            let mut s: &TcpStream = s;
            let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
            let mut b = [0u8; 256];
            match s.read(&mut b) {
                // Whatever it read, the end (0) or a last answer: closed.
                Ok(_n) => true,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .count();
    assert!(closed > 1000, "only {closed} slow connections were closed");
    let m = get(http, "/metrics").unwrap();
    let body = m.split("\r\n\r\n").nth(1).unwrap_or("");
    assert_eq!(metric_sum(body, "fleetwire_snapshot_failures_total", &[]), 0.0, "snapshots failed");
    assert!(metric_sum(body, "fleetwire_snapshots_total", &[]) >= 5.0);
    assert!(
        metric_sum(body, "fleetwire_http_connections_refused_total", &[("listener", "api")]) > 0.0
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Expensive requests take their turn (two at a time): beyond a 5 s wait a
/// request gets `503` with `Retry-After` (counted), never an unbounded
/// pile of work; concurrent scrapes share one rendering.
#[test]
fn expensive_requests_are_bounded_and_scrapes_share_a_rendering() {
    let s = Server::in_process(&["--max-exported-devices", "2000"]);
    let out = fleetwire(&[
        "bench",
        "flood",
        "--target",
        &s.udp.to_string(),
        "--ids",
        "100000",
        "--rate",
        "50000",
    ]);
    assert!(out.status.success());
    s.wait_until(60, "the flood", |s| s.received("udp") >= 95_000);
    let url = s.url("/api/positions.geojson?limit=100000");
    let results: Vec<(u16, Option<String>)> = std::thread::scope(|t| {
        let hs: Vec<_> = (0..24)
            .map(|_| {
                t.spawn(|| {
                    let r = ureq::get(&url)
                        .config()
                        .http_status_as_error(false)
                        .build()
                        .call()
                        .unwrap();
                    let retry =
                        r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                    (r.status().as_u16(), retry)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy = results.iter().filter(|(st, _)| *st == 503).count();
    assert!(
        results
            .iter()
            .all(|(st, retry)| *st == 200 || (*st == 503 && retry.as_deref() == Some("1"))),
        "{results:?}"
    );
    assert_eq!(s.metric("fleetwire_http_busy_total", &[]) as usize, busy);
    // 32 scrapes at once: rendered far fewer times than asked (one body
    // shared while it is fresh), every one answered.
    let m = s.url("/metrics");
    let bodies: Vec<usize> = std::thread::scope(|t| {
        let hs: Vec<_> = (0..32)
            .map(|_| {
                t.spawn(|| {
                    ureq::get(&m).call().unwrap().into_body().read_to_string().unwrap().len()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(bodies.iter().all(|n| *n > 100_000), "{bodies:?}");
    let mut distinct = bodies.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() < 16, "{} different bodies for 32 scrapes", distinct.len());
    assert_eq!(s.json("/healthz")["status"], "ok");
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    kb * 1024
}

/// Clients that ask for the largest responses and then read nothing hold
/// two turns (an expensive response keeps its turn until it is sent), the
/// rest are told `503`, and after 30 s without progress their connections
/// are closed and the turns free again. The collection is streamed, so the
/// two holders cost a piece each, not a collection: memory grows by less
/// than half of one body. (Before the turns were kept, 24 stuck clients
/// held 24 bodies; before the collection was streamed, two.)
#[test]
fn clients_that_read_nothing_hold_two_turns_and_a_piece_each() {
    let s = Server::start(&["--max-exported-devices", "1000", "--snapshot", "false"]);
    let out = fleetwire(&[
        "bench",
        "flood",
        "--target",
        &s.udp.to_string(),
        "--ids",
        "100000",
        "--rate",
        "50000",
    ]);
    assert!(out.status.success());
    s.wait_until(60, "the flood", |s| s.received("udp") >= 95_000);
    let path = "/api/positions.geojson?limit=100000";
    let body = ureq::get(&s.url(path))
        .call()
        .unwrap()
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap()
        .len() as u64;
    assert!(body > 10_000_000, "{body} bytes");
    let before = rss_bytes(s.pid());
    let stuck: Vec<TcpStream> = (0..24)
        .map(|_| {
            let mut c = TcpStream::connect(s.http).unwrap();
            socket2::SockRef::from(&c).set_recv_buffer_size(4096).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: fleetwire\r\n\r\n").unwrap();
            c
        })
        .collect();
    // The queue's 5 s pass: the ones without a turn are answered 503.
    let mut peak = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(8) {
        peak = peak.max(rss_bytes(s.pid()));
        let h = Instant::now();
        assert_eq!(s.json("/healthz")["status"], "ok");
        assert!(h.elapsed() < Duration::from_secs(1), "healthz took {:?}", h.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    let grew = peak.saturating_sub(before);
    eprintln!("24 stuck clients: resident memory grew by {grew} bytes (a body is {body})");
    assert!(
        grew < body / 2,
        "resident memory grew by {grew} bytes with 24 stuck clients (one body is {body} bytes)"
    );
    assert!(s.metric("fleetwire_http_busy_total", &[]) >= 20.0);
    // After 30 s without progress the stuck connections are closed and the
    // turns are free: a new request is answered.
    s.wait_until(60, "the stuck connections to be closed", |s| {
        s.metric("fleetwire_http_connections", &[]) <= 1.0
    });
    let r = ureq::get(&s.url(path)).config().http_status_as_error(false).build().call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(stuck);
}
