//! `fleetwire bench latency`: the live stream's delay, from the sender's
//! `sendmmsg` to a stream client reading the update. Sends Position frames
//! of `--devices` devices at `--rate` (each stamped with its send time, in
//! ms, as the device timestamp), while `--clients` SSE clients read
//! `/api/stream?kind=position` (the first one measures) and `--stuck` more
//! connect and never read. Prints the delays (p50, p99, max, ms) as JSON.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetwire_proto::{Body, FixType, Frame, MAX_FRAME_LEN, Position, encode};
use parking_lot::Mutex;

use crate::clock::now_ms;
use crate::sim::udp::BatchSender;

/// The flags of `bench latency`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LatencyArgs {
    /// Server UDP address.
    #[arg(long)]
    udp: SocketAddr,
    /// Server HTTP address.
    #[arg(long)]
    http: SocketAddr,
    /// Datagrams per second.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Sending time, seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Devices sending.
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// Stream clients that read (the first measures).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Stream clients that connect and never read.
    #[arg(long, default_value_t = 0)]
    stuck: usize,
}

/// Opens `/api/stream?kind=position` and returns the socket once the
/// response head is read.
fn open(http: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(http)?;
    s.write_all(b"GET /api/stream?kind=position HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::Error::other("closed before the response"));
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(String::from_utf8_lossy(&head).into_owned()));
    }
    Ok(s)
}

/// Reads the stream until `stop`, recording delays of position messages
/// (when `record`) as received time minus the frame's time.
fn read(
    mut s: TcpStream,
    stop: &AtomicBool,
    record: Option<&Mutex<Vec<u64>>>,
    messages: &AtomicU64,
) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 256 << 10];
    let mut carry = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let n = match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        };
        let now = now_ms();
        carry.extend_from_slice(&buf[..n]);
        // Whole lines only; chunk-size lines of the chunked encoding carry
        // no "time_ms" and are skipped like any other line.
        let Some(end) = carry.iter().rposition(|&c| c == b'\n') else { continue };
        let mut position = false;
        for line in carry[..end].split(|&c| c == b'\n') {
            if let Some(e) = line.strip_prefix(b"event:") {
                position = e.trim_ascii() == b"position";
                continue;
            }
            if !line.starts_with(b"data:") {
                continue;
            }
            messages.fetch_add(1, Ordering::Relaxed);
            // Snapshots and notices carry older times: updates only.
            let (Some(rec), true) = (record, position) else { continue };
            let text = String::from_utf8_lossy(line);
            if let Some(t) = text.split("\"time_ms\":").nth(1).and_then(|r| {
                r.split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse::<u64>().ok())
            }) {
                rec.lock().push(now.saturating_sub(t));
            }
        }
        carry.drain(..=end);
    }
}

/// Sends Position frames at `rate` for `seconds`, each stamped with its
/// send time; devices move a metre a frame (plausible for the filter).
fn send(a: &LatencyArgs) -> Result<u64, String> {
    let sender = BatchSender::connect(a.udp)?;
    let start = Instant::now();
    let mut buf = [0u8; MAX_FRAME_LEN];
    let (mut sent, mut seq) = (0u64, 0u32);
    let batch = 64usize;
    while start.elapsed().as_secs_f64() < a.seconds {
        let mut out = Vec::with_capacity(batch);
        let now = now_ms();
        for _ in 0..batch {
            let device = 1 + (sent % u64::from(a.devices.max(1))) as u32;
            let step = (sent / u64::from(a.devices.max(1))) as i32;
            let p = Position {
                lat_e7: 480_000_000 + (device as i32 % 1000) * 1000 + step * 90,
                lon_e7: 110_000_000 + (device as i32 / 1000) * 1000,
                alt_dm: 5000,
                speed_cm_s: 100,
                heading_ddeg: 0,
                hacc_cm: 300,
                fix: FixType::Fix3d,
                satellites: 9,
            };
            let f = Frame::new(device, seq, now, Body::Position(p));
            if let Ok(n) = encode(&f, &mut buf) {
                out.push(buf[..n].to_vec());
            }
            sent += 1;
            if device == a.devices.max(1) {
                seq = seq.wrapping_add(1);
            }
        }
        sender.send(&out)?;
        let ahead = sent as f64 / a.rate - start.elapsed().as_secs_f64();
        if ahead > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(ahead));
        }
    }
    Ok(sent)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Runs `bench latency`.
pub(crate) fn main(a: LatencyArgs) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    let delays = Arc::new(Mutex::new(Vec::new()));
    let messages = Arc::new(AtomicU64::new(0));
    let mut stuck = Vec::new();
    let mut readers = Vec::new();
    for i in 0..a.clients + a.stuck {
        let s = match open(a.http) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fleetwire bench latency: stream client {i}: {e}");
                return ExitCode::FAILURE;
            }
        };
        if i >= a.clients {
            // Connected, never read: its window on the server fills.
            let _ = s.set_nonblocking(true);
            stuck.push(s);
            continue;
        }
        let (stop, delays, messages) = (stop.clone(), delays.clone(), messages.clone());
        readers.push(std::thread::spawn(move || {
            read(s, &stop, (i == 0).then_some(&*delays), &messages);
        }));
    }
    // The snapshots go out first.
    std::thread::sleep(Duration::from_millis(500));
    let sent = match send(&a) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("fleetwire bench latency: {e}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.join();
    }
    drop(stuck);
    let mut d = std::mem::take(&mut *delays.lock());
    d.sort_unstable();
    let v = serde_json::json!({
        "sent": sent,
        "measured": d.len(),
        "messages_all_clients": messages.load(Ordering::Relaxed),
        "p50_ms": percentile(&d, 0.5),
        "p99_ms": percentile(&d, 0.99),
        "max_ms": d.last().copied().unwrap_or(0),
    });
    println!("{v}");
    ExitCode::SUCCESS
}
