//! `fleetwire send`: one datagram from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use fleetwire_proto::{
    Body, Event, FixType, Frame, Hello, MAX_FRAME_LEN, Monitoring, Position, Reading, Seq,
    Severity, encode, encode_signed,
};

use super::common::{TlsArgs, TransportArg, fail, resolve};
use super::sim::send_one;
use crate::sim::UdpSink;
use crate::sim::quic::{QuicMode, QuicSink};

/// `fleetwire send`.
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// Server address (host:port).
    #[arg(long)]
    pub(crate) target: String,
    /// Device id (1..=4294967295).
    #[arg(long)]
    pub(crate) device: u32,
    /// How to send.
    #[arg(long, value_enum, default_value = "udp")]
    pub(crate) transport: TransportArg,
    /// Sequence number; by default the next one from a counter kept per
    /// device in --state-dir, so repeated calls count up without gaps.
    #[arg(long)]
    pub(crate) seq: Option<u32>,
    /// Where the per-device sequence counters live.
    #[arg(long, env = "FLEETWIRE_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Device timestamp, Unix ms (default: now; 0 = no clock).
    #[arg(long)]
    pub(crate) timestamp_ms: Option<u64>,
    /// Sign the frame with this device key (hex): HMAC-SHA-256 tag.
    #[arg(long, env = "FLEETWIRE_AUTH_KEY")]
    pub(crate) auth_key: Option<String>,
    /// Print the datagram as hex on stdout.
    #[arg(long)]
    pub(crate) print: bool,
    /// QUIC TLS options.
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// What to send.
    #[command(subcommand)]
    pub(crate) what: What,
}

/// The message.
#[derive(Debug, Subcommand)]
pub(crate) enum What {
    /// A GNSS fix.
    Position {
        /// Latitude, degrees.
        #[arg(long, allow_negative_numbers = true)]
        lat: f64,
        /// Longitude, degrees.
        #[arg(long, allow_negative_numbers = true)]
        lon: f64,
        /// Altitude, meters.
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        alt: f64,
        /// Ground speed, m/s.
        #[arg(long, default_value_t = 0.0)]
        speed: f64,
        /// Heading, degrees.
        #[arg(long, default_value_t = 0.0)]
        heading: f64,
        /// Horizontal accuracy, m (0 = unknown).
        #[arg(long, default_value_t = 0.0)]
        hacc: f64,
        /// Fix type: none, 2d, 3d, dgnss, rtk_float, rtk_fixed.
        #[arg(long, default_value = "3d")]
        fix: String,
        /// Satellites used.
        #[arg(long, default_value_t = 0)]
        sats: u8,
    },
    /// Health readings.
    Monitoring {
        /// Battery, percent.
        #[arg(long)]
        battery: Option<u8>,
        /// Supply voltage, volts.
        #[arg(long)]
        supply: Option<f64>,
        /// Temperature, °C.
        #[arg(long, allow_negative_numbers = true)]
        temperature: Option<f64>,
        /// RSSI, dBm.
        #[arg(long, allow_negative_numbers = true)]
        rssi: Option<i8>,
        /// Uptime, seconds.
        #[arg(long)]
        uptime: Option<u32>,
        /// A named reading, name=value (repeat for more).
        #[arg(long = "reading", value_name = "NAME=VALUE")]
        readings: Vec<String>,
    },
    /// An event.
    Event {
        /// Event code.
        #[arg(long)]
        code: u16,
        /// info, notice, warning, error or critical.
        #[arg(long, default_value = "info")]
        severity: String,
        /// Short text (at most 64 bytes).
        #[arg(long)]
        text: Option<String>,
    },
    /// A boot announcement (restarts the server's sequence accounting).
    Hello {
        /// Firmware version.
        #[arg(long, default_value = "")]
        firmware: String,
        /// Model.
        #[arg(long, default_value = "")]
        model: String,
        /// Capability bits.
        #[arg(long, default_value_t = 0)]
        capabilities: u32,
    },
}

fn state_file(a: &SendArgs) -> Option<PathBuf> {
    let dir = a.state_dir.clone().or_else(|| {
        std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .map(|d| d.join("fleetwire"))
    })?;
    Some(dir.join(format!("seq-{}", a.device)))
}

/// The sequence number to use, and the counter file to advance after sending.
fn next_seq(a: &SendArgs) -> (u32, Option<PathBuf>) {
    if let Some(s) = a.seq {
        return (s, None);
    }
    let file = state_file(a);
    let s = file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| t.trim().parse::<u32>().ok())
        .unwrap_or(0);
    (s, file)
}

/// Runs `send`.
pub(crate) fn main(a: SendArgs) -> ExitCode {
    if a.device == 0 {
        return fail("--device 0 is reserved", 2);
    }
    let target = match resolve(&a.target) {
        Ok(t) => t,
        Err(e) => return fail(e, 2),
    };
    let key = match a.auth_key.as_deref().map(hex::decode).transpose() {
        Ok(k) => k,
        Err(e) => return fail(format!("--auth-key is not hex: {e}"), 2),
    };
    let (seq, counter) = next_seq(&a);
    let ts = a.timestamp_ms.unwrap_or_else(crate::clock::now_ms);
    let mut readings = Vec::new();
    let body = match body(&a.what, &mut readings) {
        Ok(b) => b,
        Err(e) => return fail(e, 2),
    };
    let readings: Vec<Reading<'_>> =
        readings.iter().map(|(n, v)| Reading { name: n, value: *v }).collect();
    let body = match body {
        Body::Monitoring(m) => {
            Body::Monitoring(Monitoring { readings: Seq::from_slice(&readings), ..m })
        }
        b => b,
    };
    let frame = Frame::new(a.device, seq, ts, body);
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = match &key {
        Some(k) => encode_signed(&frame, k, &mut buf),
        None => encode(&frame, &mut buf),
    };
    let n = match n {
        Ok(n) => n,
        Err(e) => return fail(format!("cannot encode: {e}"), 2),
    };
    let bytes = &buf[..n];
    if a.print {
        println!("{}", hex::encode(bytes));
    }
    if let Err(e) = deliver(&a, target, bytes) {
        return fail(format!("sending to {target}: {e}"), 1);
    }
    if let Some(f) = counter {
        save_counter(&f, seq.wrapping_add(1));
    }
    eprintln!("sent {} bytes: device {} sequence {} ({})", n, a.device, seq, frame.kind().as_str());
    ExitCode::SUCCESS
}

/// The frame body `what` asks for; the names and values of its readings go
/// to `readings` (the body borrows them once the caller has made views).
fn body<'a>(what: &'a What, readings: &mut Vec<(String, f64)>) -> Result<Body<'a>, String> {
    Ok(match what {
        What::Position { lat, lon, alt, speed, heading, hacc, fix, sats } => {
            let Some(fix) = FixType::from_label(fix) else {
                return Err(format!(
                    "--fix {fix:?}: use none, 2d, 3d, dgnss, rtk_float or rtk_fixed"
                ));
            };
            let cm = |v: f64| (v * 100.0).round();
            if !((0.0..=655.35).contains(speed) && (0.0..=655.35).contains(hacc)) {
                return Err("--speed and --hacc must be 0 to 655.35".into());
            }
            Body::Position(Position {
                lat_e7: (lat * 1e7).round() as i32,
                lon_e7: (lon * 1e7).round() as i32,
                alt_dm: (alt * 10.0).round() as i32,
                speed_cm_s: cm(*speed) as u16,
                heading_ddeg: ((heading.rem_euclid(360.0) * 10.0).round() as u16) % 3600,
                hacc_cm: cm(*hacc) as u16,
                fix,
                satellites: *sats,
            })
        }
        What::Monitoring { battery, supply, temperature, rssi, uptime, readings: given } => {
            for r in given {
                let Some((n, v)) = r.split_once('=') else {
                    return Err(format!("--reading {r:?}: use name=value"));
                };
                let Ok(v) = v.trim().parse::<f64>() else {
                    return Err(format!("--reading {r:?}: {v:?} is not a number"));
                };
                readings.push((n.trim().to_string(), v));
            }
            Body::Monitoring(Monitoring {
                battery_pct: *battery,
                supply_mv: supply.map(|v| (v * 1000.0).round().clamp(0.0, 65_535.0) as u16),
                temperature_cdeg: temperature
                    .map(|t| (t * 100.0).round().clamp(-32_768.0, 32_767.0) as i16),
                rssi_dbm: *rssi,
                uptime_s: *uptime,
                readings: Seq::EMPTY,
            })
        }
        What::Event { code, severity, text } => {
            let Some(severity) = Severity::from_label(severity) else {
                return Err(format!(
                    "--severity {severity:?}: use info, notice, warning, error or critical"
                ));
            };
            Body::Event(Event { code: *code, severity, text: text.as_deref() })
        }
        What::Hello { firmware, model, capabilities } => {
            Body::Hello(Hello { firmware, model, capabilities: *capabilities })
        }
    })
}

/// Sends the datagram over the transport `a` asks for.
fn deliver(a: &SendArgs, target: std::net::SocketAddr, bytes: &[u8]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        match a.transport {
            TransportArg::Udp => {
                let mut s = UdpSink::new(target).await.map_err(|e| e.to_string())?;
                send_one(&mut s, a.device, bytes).await.map_err(|e| e.to_string())
            }
            TransportArg::Quic => {
                let cfg = a.tls.quic_config()?;
                let mut s = QuicSink::new(target, &a.tls.server_name, cfg, QuicMode::Datagram)
                    .map_err(|e| e.to_string())?;
                send_one(&mut s, a.device, bytes).await.map_err(|e| e.to_string())
            }
        }
    })
}

/// Remembers the next sequence number for the device.
fn save_counter(f: &std::path::Path, next: u32) {
    if let Some(d) = f.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    if let Err(e) = std::fs::write(f, next.to_string()) {
        eprintln!("fleetwire send: warning: cannot save the sequence counter {}: {e}", f.display());
    }
}
