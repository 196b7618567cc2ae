//! `fleetwire sim` and `fleetwire replay`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::common::{TlsArgs, TransportArg, fail, resolve};
use crate::sim::foreign::{OsmandSink, TeltonikaSink};
use crate::sim::quic::{QuicMode, QuicSink};
use crate::sim::{Faults, Plan, Sink, UdpSink, record, run};

/// Protocol of `sim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProtocolArg {
    /// fleetwire's own frames (over --transport).
    Native,
    /// Teltonika Codec 8 over UDP; device ids become IMEIs 35<id, 13 digits>.
    Teltonika,
    /// OsmAnd HTTP requests; device ids become `sim-<id>`.
    Osmand,
}

/// `fleetwire sim`.
#[derive(Debug, clap::Args)]
pub(crate) struct SimArgs {
    /// Server address (host:port): the UDP port, or the QUIC port with --transport quic.
    #[arg(long)]
    pub(crate) target: String,
    /// How to send.
    #[arg(long, value_enum, default_value = "udp")]
    pub(crate) transport: TransportArg,
    /// What the devices speak: fleetwire frames, or what a Teltonika
    /// tracker (to the Teltonika port) or an OsmAnd phone (to the OsmAnd
    /// port) would send for the same records.
    #[arg(long, value_enum, default_value = "native")]
    pub(crate) protocol: ProtocolArg,
    /// QUIC: DATAGRAM frames (live) or one stream per device (backlog).
    #[arg(long, value_enum, default_value = "datagram")]
    pub(crate) quic_mode: QuicMode,
    /// Number of devices.
    #[arg(long, default_value_t = 100)]
    pub(crate) devices: u32,
    /// Id of the first device (the others follow).
    #[arg(long, default_value_t = 1)]
    pub(crate) first_id: u32,
    /// Frames per second per device (0 = as fast as possible).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) rate: f64,
    /// Run time in seconds (frames per device = rate x duration).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Frames per device (instead of --duration; needed with --rate 0).
    #[arg(long)]
    pub(crate) frames: Option<u64>,
    /// Seed: the same seed gives the same routes and the same faults.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Percent of frames dropped.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) loss: f64,
    /// Percent of frames sent twice.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) dup: f64,
    /// Percent of frames sent after the device's next frame.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) reorder: f64,
    /// Percent of frames sent with one bit flipped.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) corrupt: f64,
    /// Also write every datagram sent to this file (see `replay`).
    #[arg(long)]
    pub(crate) record: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Center of the fleet, "lat,lon" in degrees.
    #[arg(long, default_value = "48.137,11.575")]
    pub(crate) center: String,
    /// QUIC TLS options.
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

/// `fleetwire replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// A recording made with `sim --record`.
    pub(crate) file: PathBuf,
    /// Server UDP address.
    #[arg(long)]
    pub(crate) target: String,
    /// Datagrams per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Send the recording this many times.
    #[arg(long = "loop", default_value_t = 1)]
    pub(crate) loops: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Send the recording in bursts of this many datagrams, each when a
    /// line arrives on standard input, printing a line once it has gone
    /// (for a measurement that stops the receiver while a burst fills its
    /// queue, then lets it drain a full queue: `bench/run.py`).
    #[arg(long, value_name = "N")]
    pub(crate) bursts_of: Option<usize>,
}

fn percent(name: &str, v: f64) -> Result<f64, String> {
    if (0.0..=100.0).contains(&v) {
        Ok(v / 100.0)
    } else {
        Err(format!("--{name} is a percentage, 0 to 100"))
    }
}

/// Runs `sim`.
pub(crate) fn main(a: SimArgs) -> ExitCode {
    let target = match resolve(&a.target) {
        Ok(t) => t,
        Err(e) => return fail(e, 2),
    };
    let plan = match plan(&a) {
        Ok(p) => p,
        Err(e) => return fail(e, 2),
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
        match (a.protocol, a.transport) {
            (ProtocolArg::Teltonika, _) => {
                let batch = if plan.rate > 0.0 { 1 } else { 64 };
                let mut sink = TeltonikaSink::new(target, batch).map_err(|e| e.to_string())?;
                Ok(run(&plan, &mut sink, rec.as_mut()).await)
            }
            (ProtocolArg::Osmand, _) => {
                let mut sink = OsmandSink::new(target);
                let s = run(&plan, &mut sink, rec.as_mut()).await;
                if sink.refused > 0 {
                    eprintln!("fleetwire: the server refused {} OsmAnd requests", sink.refused);
                }
                Ok(s)
            }
            (ProtocolArg::Native, TransportArg::Udp) => {
                let batch = if plan.rate > 0.0 { 1 } else { 64 };
                let mut sink = UdpSink::batched(target, batch).map_err(|e| e.to_string())?;
                Ok::<_, String>(run(&plan, &mut sink, rec.as_mut()).await)
            }
            (ProtocolArg::Native, TransportArg::Quic) => {
                let cfg = a.tls.quic_config()?;
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
    print_summary(&a, &s);
    if s.errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The simulation `a` asks for, or what is wrong with its flags.
fn plan(a: &SimArgs) -> Result<Plan, String> {
    let faults = Faults {
        loss: percent("loss", a.loss)?,
        dup: percent("dup", a.dup)?,
        reorder: percent("reorder", a.reorder)?,
        corrupt: percent("corrupt", a.corrupt)?,
    };
    let center =
        a.center.split(',').map(|s| s.trim().parse::<f64>()).collect::<Result<Vec<_>, _>>();
    let center = match center.as_deref() {
        Ok([lat, lon]) if lat.abs() <= 85.0 && lon.abs() <= 180.0 => (*lat, *lon),
        _ => return Err("--center wants \"lat,lon\" in degrees".into()),
    };
    if a.devices == 0 || a.first_id == 0 {
        return Err("--devices and --first-id must be at least 1".into());
    }
    let frames = match a.frames {
        Some(f) => f,
        None if a.rate > 0.0 => (a.rate * a.duration).round() as u64,
        None => return Err("--rate 0 (as fast as possible) needs --frames".into()),
    };
    Ok(Plan {
        devices: a.devices,
        first_id: a.first_id,
        rate: a.rate.max(0.0),
        frames_per_device: frames,
        seed: a.seed,
        faults,
        center,
        progress: !a.json || std::io::IsTerminal::is_terminal(&std::io::stderr()),
    })
}

/// The summary on stdout as JSON (`--json`), or a line on stderr.
fn print_summary(a: &SimArgs, s: &crate::sim::Summary) {
    if a.json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
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
}

/// Sends a recording.
pub(crate) fn replay_main(a: ReplayArgs) -> ExitCode {
    let target = match resolve(&a.target) {
        Ok(t) => t,
        Err(e) => return fail(e, 2),
    };
    let datagrams = match record::read_all(&a.file) {
        Ok(d) => d,
        Err(e) => return fail(format!("{}: {e}", a.file.display()), 1),
    };
    let start = Instant::now();
    let res = match a.bursts_of {
        Some(n) => crate::sim::udp::send_bursts(target, &datagrams, n.max(1)),
        None => crate::sim::udp::send_all(target, &datagrams, a.loops, a.rate),
    };
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
pub(crate) async fn send_one<S: Sink>(
    sink: &mut S,
    device: u32,
    bytes: &[u8],
) -> std::io::Result<()> {
    sink.send(device, bytes).await?;
    sink.flush().await?;
    tokio::time::sleep(Duration::from_millis(0)).await;
    Ok(())
}
