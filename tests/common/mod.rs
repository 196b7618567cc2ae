//! Test helpers: a fleetwire server on loopback ports chosen by the kernel
//! (in-process through `server::run`, or the `fleetwire serve` binary for
//! tests of signals, exit codes, logs and memory), its HTTP API, and the
//! other subcommands.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_fleetwire");

/// How the server runs.
enum Proc {
    /// The `fleetwire serve` binary.
    Child(Child),
    /// `server::run` on a thread of this process, with its own runtime.
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<Result<fleetwire::server::RunSummary, String>>>,
    },
}

/// A running server.
pub struct Server {
    proc: Proc,
    pub udp: SocketAddr,
    pub quic: Option<SocketAddr>,
    pub http: SocketAddr,
    /// Teltonika (UDP) and OsmAnd (HTTP) listeners.
    pub teltonika: Option<SocketAddr>,
    pub osmand: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

fn addr_after(line: &str, transport: &str) -> Option<SocketAddr> {
    if !line.contains("listening") || !line.contains(&format!("transport=\"{transport}\"")) {
        return None;
    }
    let i = line.find("addr=")? + 5;
    line[i..].split_whitespace().next()?.parse().ok()
}

impl Server {
    /// Runs the server in this process through `server::run`, with the
    /// configuration `fleetwire serve` would take from `args` (on 127.0.0.1
    /// port 0 for UDP, QUIC and HTTP, with a fresh data dir).
    pub fn in_process(args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Server::in_process_in(&dir, args);
        s._tmp = Some(tmp);
        s
    }

    /// Like [`in_process`], with a given data dir (kept by the caller).
    pub fn in_process_in(data_dir: &Path, args: &[&str]) -> Server {
        let dir = data_dir.to_str().expect("utf-8 path").to_string();
        let mut full = vec![
            "--udp-listen",
            "127.0.0.1:0",
            "--quic-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--teltonika-listen",
            "127.0.0.1:0",
            "--osmand-listen",
            "127.0.0.1:0",
            "--data-dir",
            &dir,
        ];
        full.extend_from_slice(args);
        let cfg = fleetwire::serve_config(&full).expect("configuration");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let l = fleetwire::server::Listeners::bind(&cfg).map_err(|e| e.to_string())?;
                let _ = addr_tx.send((
                    l.udp_addr(),
                    l.quic_addr(),
                    l.http_addr(),
                    l.teltonika_addr(),
                    l.osmand_addr(),
                ));
                let stop = async {
                    let _ = stop_rx.await;
                };
                fleetwire::server::run(cfg, l, stop).await.map_err(|e| e.to_string())
            })
        });
        let Ok((udp, quic, http, teltonika, osmand)) =
            addr_rx.recv_timeout(Duration::from_secs(30))
        else {
            panic!("in-process server did not start: {:?}", thread.join());
        };
        // Bound is not yet serving: wait until HTTP answers.
        let s = Server {
            proc: Proc::InProcess { stop: Some(stop_tx), thread: Some(thread) },
            udp: udp.unwrap_or_else(|| "0.0.0.0:0".parse().unwrap()),
            quic,
            http: http.expect("http listener"),
            teltonika,
            osmand,
            data_dir: data_dir.to_path_buf(),
            log: Default::default(),
            _tmp: None,
        };
        s.wait_until(30, "HTTP to answer", |s| ureq::get(&s.url("/healthz")).call().is_ok());
        s
    }

    /// Stops an in-process server (what SIGTERM does to the binary) and
    /// returns what it reported.
    pub fn stop(mut self) -> fleetwire::server::RunSummary {
        match &mut self.proc {
            Proc::InProcess { stop, thread } => {
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
                let t = thread.take().expect("running");
                t.join().expect("server thread").expect("server run")
            }
            Proc::Child(_) => panic!("stop() is for in-process servers; use terminate()"),
        }
    }

    /// The server process's id (binary servers only).
    pub fn pid(&self) -> u32 {
        match &self.proc {
            Proc::Child(c) => c.id(),
            Proc::InProcess { .. } => panic!("an in-process server has no process of its own"),
        }
    }

    /// Starts `fleetwire serve` on 127.0.0.1 port 0 for UDP, QUIC and HTTP,
    /// with `args` appended, and a fresh data dir.
    pub fn start(args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Server::start_in(&dir, args);
        s._tmp = Some(tmp);
        s
    }

    /// Like [`start`], with a given data dir (kept by the caller).
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args([
                "--udp-listen",
                "127.0.0.1:0",
                "--quic-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--teltonika-listen",
                "127.0.0.1:0",
                "--osmand-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn fleetwire serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                log2.lock().unwrap().push(line);
            }
        });
        let (mut udp, mut quic, mut http, mut teltonika, mut osmand) =
            (None, None, None, None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        let quic_wanted = !args.windows(2).any(|w| w == ["--quic-listen", "off"]);
        while udp.is_none() || http.is_none() || (quic_wanted && quic.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    udp = udp.or(addr_after(&line, "udp"));
                    quic = quic.or(addr_after(&line, "quic"));
                    http = http.or(addr_after(&line, "http"));
                    teltonika = teltonika.or(addr_after(&line, "teltonika"));
                    osmand = osmand.or(addr_after(&line, "osmand"));
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("server did not start; log:\n{}", log.lock().unwrap().join("\n"))
                }
            }
        }
        Server {
            proc: Proc::Child(child),
            udp: udp.unwrap(),
            quic,
            http: http.unwrap(),
            teltonika,
            osmand,
            data_dir: data_dir.to_path_buf(),
            log,
            _tmp: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn get(&self, path: &str) -> String {
        ureq::get(&self.url(path)).call().expect("GET").body_mut().read_to_string().expect("body")
    }

    pub fn json(&self, path: &str) -> Value {
        serde_json::from_str(&self.get(path)).expect("json")
    }

    pub fn status(&self, path: &str) -> u16 {
        match ureq::get(&self.url(path)).config().http_status_as_error(false).build().call() {
            Ok(r) => r.status().as_u16(),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics")
    }

    /// Sum of a metric's samples whose label set contains every `labels` pair.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// Polls `f` until it returns true (or panics after `secs`).
    pub fn wait_until(&self, secs: u64, what: &str, mut f: impl FnMut(&Server) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}; server log:\n{}",
            self.log.lock().unwrap().join("\n")
        );
    }

    /// Waits until received = accepted + rejected and the count is `n`.
    pub fn wait_received(&self, transport: &str, n: u64) {
        self.wait_until(30, &format!("{n} {transport} datagrams"), |s| s.received(transport) >= n);
    }

    /// Datagrams received on a transport (from /api/summary: cheap to poll).
    pub fn received(&self, transport: &str) -> u64 {
        self.json("/api/summary")["datagrams"][transport]["received"].as_u64().unwrap_or(0)
    }

    /// Sends SIGTERM and waits for the exit status (binary servers only).
    pub fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        let t = Instant::now();
        let Proc::Child(child) = &mut self.proc else {
            panic!("terminate() is for the binary; use stop()")
        };
        unsafe_kill(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return (st, t.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not exit within 10 s of SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.proc {
            Proc::Child(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Proc::InProcess { stop, thread } => {
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

/// Sends a signal with kill(1) (no unsafe code in tests).
pub fn unsafe_kill(pid: u32, sig: &str) {
    let st =
        Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("kill");
    assert!(st.success());
}

/// Sums the samples of `name` in a Prometheus text exposition whose labels
/// include every pair in `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, labelset) = match series.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        if labels.iter().all(|(k, v)| labelset.contains(&format!("{k}=\"{v}\""))) {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// Runs a `fleetwire` subcommand to completion.
pub fn fleetwire(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run fleetwire")
}

/// Runs `fleetwire sim ... --json` and returns its summary.
pub fn sim(args: &[&str]) -> Value {
    let mut a = vec!["sim", "--json"];
    a.extend_from_slice(args);
    let out = fleetwire(&a);
    assert!(
        out.status.success(),
        "sim failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("sim json")
}

/// The golden vectors of the wire protocol.
pub fn vectors(file: &str) -> Vec<Value> {
    let p = format!("{}/proto/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A UDP socket for sending test datagrams.
pub fn udp_sender() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
}
