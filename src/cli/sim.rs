//! `fleetwire sim` and `fleetwire replay`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::sim::quic::{QuicMode, QuicSink};
use crate::sim::{Faults, Plan, Sink, UdpSink, record, run};

/// Transport of `sim`, `send` and `replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    /// Plain UDP datagrams.
    Udp,
    /// QUIC (TLS 1.3, ALPN fleetwire/1).
    Quic,
}

/// TLS options of QUIC clients.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) to trust: `<data_dir>/dev-cert.pem` for a server
    /// on its development certificate, or `certs/ca.pem`.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Server name to verify (default: localhost).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
}

/// `fleetwire sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Server address (host:port): the UDP port, or the QUIC port with --transport quic.
    #[arg(long)]
    pub target: String,
    /// How to send.
    #[arg(long, value_enum, default_value = "udp")]
    pub transport: TransportArg,
    /// QUIC: DATAGRAM frames (live) or one stream per device (backlog).
    #[arg(long, value_enum, default_value = "datagram")]
    pub quic_mode: QuicMode,
    /// Number of devices.
    #[arg(long, default_value_t = 100)]
    pub devices: u32,
    /// Id of the first device (the others follow).
    #[arg(long, default_value_t = 1)]
    pub first_id: u32,
    /// Frames per second per device (0 = as fast as possible).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Run time in seconds (frames per device = rate x duration).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Frames per device (instead of --duration; needed with --rate 0).
    #[arg(long)]
    pub frames: Option<u64>,
    /// Seed: the same seed gives the same routes and the same faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Percent of frames dropped.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Percent of frames sent twice.
    #[arg(long, default_value_t = 0.0)]
    pub dup: f64,
    /// Percent of frames sent after the device's next frame.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// Percent of frames sent with one bit flipped.
    #[arg(long, default_value_t = 0.0)]
    pub corrupt: f64,
    /// Also write every datagram sent to this file (see `replay`).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Center of the fleet, "lat,lon" in degrees.
    #[arg(long, default_value = "48.137,11.575")]
    pub center: String,
    /// QUIC TLS options.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `fleetwire replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// A recording made with `sim --record`.
    pub file: PathBuf,
    /// Server UDP address.
    #[arg(long)]
    pub target: String,
    /// Datagrams per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Send the recording this many times.
    #[arg(long = "loop", default_value_t = 1)]
    pub loops: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Resolves host:port.
pub fn resolve(target: &str) -> Result<SocketAddr, String> {
    target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {target:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target:?} resolves to no address"))
}

fn percent(name: &str, v: f64) -> Result<f64, String> {
    if (0.0..=100.0).contains(&v) {
        Ok(v / 100.0)
    } else {
        Err(format!("--{name} is a percentage, 0 to 100"))
    }
}

/// A QUIC client config from TLS args.
pub fn quic_config(tls: &TlsArgs) -> Result<quinn::ClientConfig, String> {
    let ca =
        tls.ca.as_deref().ok_or("--transport quic needs --ca (the server's CA or dev-cert.pem)")?;
    let id = tls.cert.as_deref().zip(tls.key.as_deref());
    crate::transport::quic::client_config(ca, id)
}

fn fail(msg: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("fleetwire: {msg}");
    ExitCode::from(code)
}

/// Runs `sim`.
pub fn main(a: SimArgs) -> ExitCode {
    let target = match resolve(&a.target) {
        Ok(t) => t,
        Err(e) => return fail(e, 2),
    };
    let faults = match (|| -> Result<Faults, String> {
        Ok(Faults {
            loss: percent("loss", a.loss)?,
            dup: percent("dup", a.dup)?,
            reorder: percent("reorder", a.reorder)?,
            corrupt: percent("corrupt", a.corrupt)?,
        })
    })() {
        Ok(f) => f,
        Err(e) => return fail(e, 2),
    };
    let center =
        a.center.split(',').map(|s| s.trim().parse::<f64>()).collect::<Result<Vec<_>, _>>();
    let center = match center.as_deref() {
        Ok([lat, lon]) if lat.abs() <= 85.0 && lon.abs() <= 180.0 => (*lat, *lon),
        _ => return fail("--center wants \"lat,lon\" in degrees", 2),
    };
    if a.devices == 0 || a.first_id == 0 {
        return fail("--devices and --first-id must be at least 1", 2);
    }
    let frames = match a.frames {
        Some(f) => f,
        None if a.rate > 0.0 => (a.rate * a.duration).round() as u64,
        None => return fail("--rate 0 (as fast as possible) needs --frames", 2),
    };
    let plan = Plan {
        devices: a.devices,
        first_id: a.first_id,
        rate: a.rate.max(0.0),
        frames_per_device: frames,
        seed: a.seed,
        faults,
        center,
        progress: !a.json || std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let mut rec = match &a.record {
        Some(p) => match record::Writer::create(p) {
            Ok(w) => Some(w),
            Err(e) => return fail(format!("{}: {e}", p.display()), 1),
        },
        None => None,
    };
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(r) => r,
            Err(e) => return fail(e, 1),
        };
    let summary = rt.block_on(async {
        match a.transport {
            TransportArg::Udp => {
                let batch = if plan.rate > 0.0 { 1 } else { 64 };
                let mut sink = UdpSink::batched(target, batch).map_err(|e| e.to_string())?;
                Ok::<_, String>(run(&plan, &mut sink, rec.as_mut()).await)
            }
            TransportArg::Quic => {
                let cfg = quic_config(&a.tls)?;
                let mut sink = QuicSink::new(target, &a.tls.server_name, cfg, a.quic_mode)
                    .map_err(|e| e.to_string())?;
                let s = run(&plan, &mut sink, rec.as_mut()).await;
                if sink.connect_errors > 0 {
                    eprintln!(
                        "fleetwire: {} QUIC connection(s) failed (TLS? --ca, --cert)",
                        sink.connect_errors
                    );
                }
                Ok(s)
            }
        }
    });
    let s = match summary {
        Ok(s) => s,
        Err(e) => return fail(e, 1),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        eprintln!(
            "sim: {} devices, {} frames, {} datagrams sent in {:.1} s ({:.0}/s), {} records delivered; \
             injected: {} lost ({} dropped, {} of them after the last delivered frame), {} duplicated, \
             {} reordered, {} corrupted; {} send errors",
            s.devices,
            s.frames,
            s.sent,
            s.elapsed_s,
            s.rate,
            s.records,
            s.lost,
            s.dropped,
            s.dropped_tail,
            s.duplicated,
            s.reordered,
            s.corrupted,
            s.errors
        );
    }
    if s.errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Sends a recording.
pub fn replay_main(a: ReplayArgs) -> ExitCode {
    let target = match resolve(&a.target) {
        Ok(t) => t,
        Err(e) => return fail(e, 2),
    };
    let datagrams = match record::read_all(&a.file) {
        Ok(d) => d,
        Err(e) => return fail(format!("{}: {e}", a.file.display()), 1),
    };
    let start = Instant::now();
    let res = crate::transport::udp::send_all(target, &datagrams, a.loops, a.rate);
    let elapsed = start.elapsed().as_secs_f64();
    match res {
        Ok(sent) => {
            let rate = sent as f64 / elapsed.max(1e-9);
            if a.json {
                let v = serde_json::json!({"sent": sent, "elapsed_s": elapsed, "rate": rate, "recording": datagrams.len()});
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                eprintln!("replay: {sent} datagrams in {elapsed:.2} s ({rate:.0}/s)");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e, 1),
    }
}

/// Sends datagrams one by one through a sink (used by `send`).
pub async fn send_one<S: Sink>(sink: &mut S, device: u32, bytes: &[u8]) -> std::io::Result<()> {
    sink.send(device, bytes).await?;
    sink.flush().await?;
    tokio::time::sleep(Duration::from_millis(0)).await;
    Ok(())
}
