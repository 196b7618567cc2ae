//! `fleetwire bench ...`: the tools of the benchmark suite (`bench/run.sh`).
//!
//! * `sink`: the kernel's limit: a receiver that only counts datagrams,
//!   with the same `recvmmsg` batches as `serve`, and reports its CPU time.
//! * `flood`: sends frames from many distinct device ids (for the memory
//!   measurements) without keeping them in memory.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use fleetwire_proto::{
    Body, FixType, Frame, MAX_FRAME_LEN, Monitoring, Position, Reading, Seq, encode,
};

use super::common::resolve;
use crate::sim::udp::BatchSender;
use crate::transport::sys;
use crate::transport::udp::{SLOT, bind_for, inode, kernel_drops};

/// Benchmark tools.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// The live stream's delay from sendmmsg to a stream client (JSON).
    Latency(super::latency::LatencyArgs),
    /// Count datagrams with recvmmsg and nothing else; print JSON when idle.
    Sink {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Requested receive buffer, bytes.
        #[arg(long, default_value_t = 16 << 20)]
        recv_buffer: usize,
        /// Datagrams per recvmmsg call.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Exit after this much silence once traffic has started, seconds.
        #[arg(long, default_value_t = 2.0)]
        idle: f64,
        /// Exit after this long in any case, seconds.
        #[arg(long, default_value_t = 600.0)]
        max_seconds: f64,
    },
    /// The receive path's own CPU per datagram, without sockets: a
    /// recording (`sim --record`) fed through decode, policy and engine in
    /// batches as `serve` receives them, on the default configuration
    /// (journal off, as in `bench/run.sh`'s full-speed trials); JSON.
    Engine {
        /// The recording.
        capture: std::path::PathBuf,
        /// Times to feed it (the first creates the devices).
        #[arg(long, default_value_t = 1)]
        loops: u32,
        /// Datagrams per batch (a `recvmmsg` call of `serve`; its
        /// `udp_batch`).
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
    /// Send one Position frame (or Monitoring frames with `--readings`)
    /// for each of N distinct device ids.
    Flood {
        /// Server UDP address.
        #[arg(long)]
        target: String,
        /// Number of distinct device ids.
        #[arg(long)]
        ids: u64,
        /// Datagrams per second (0 = as fast as the socket takes them).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Seed of the pseudo-random id sequence (a bijection of 1..=2^32-1,
        /// so ids never repeat).
        #[arg(long, default_value_t = 1)]
        seed: u32,
        /// Send, per device, `--frames` Monitoring frames with this many
        /// named readings instead of one Position frame.
        #[arg(long, default_value_t = 0)]
        readings: usize,
        /// Monitoring frames per device (with `--readings`).
        #[arg(long, default_value_t = 1)]
        frames: u32,
    },
}

/// CPU seconds (user + system) this process has used.
pub(crate) fn self_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A device id for index `i`: an invertible mix of `i`, so ids are distinct
/// and look random.
fn id_for(i: u64, seed: u32) -> u32 {
    let mut x = (i as u32).wrapping_add(seed);
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    if x == 0 { 0x5eed_5eed } else { x }
}

/// Runs a bench command.
pub(crate) fn main(c: BenchCommand) -> ExitCode {
    match c {
        BenchCommand::Latency(a) => super::latency::main(a),
        BenchCommand::Sink { listen, recv_buffer, batch, idle, max_seconds } => {
            sink(listen, recv_buffer, batch, idle, max_seconds)
        }
        BenchCommand::Engine { capture, loops, batch } => engine_cost(&capture, loops, batch),
        BenchCommand::Flood { target, ids, rate, seed, readings, frames } => match resolve(&target)
        {
            Ok(t) => flood(t, ids, rate, seed, (readings, frames)),
            Err(e) => {
                eprintln!("fleetwire bench: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// CPU seconds this thread has used.
fn thread_cpu_seconds() -> f64 {
    sys::thread_cpu_ns().map_or(0.0, |ns| ns as f64 * 1e-9)
}

fn engine_cost(capture: &std::path::Path, loops: u32, batch: usize) -> ExitCode {
    use crate::ingest::{Datagram, IngestCounters, Pipeline, Policy, RecordSink, Transport};
    let datagrams = match crate::sim::record::read_all(capture) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("fleetwire bench engine: {}: {e}", capture.display());
            return ExitCode::FAILURE;
        }
    };
    // One buffer, in order, as the kernel would hand them over.
    let mut bytes = Vec::with_capacity(datagrams.iter().map(Vec::len).sum());
    let mut spans = Vec::with_capacity(datagrams.len());
    for d in &datagrams {
        spans.push((bytes.len(), d.len()));
        bytes.extend_from_slice(d);
    }
    drop(datagrams);
    let cfg = crate::config::Config::default();
    let registry = crate::telemetry::Registry::new();
    let engine =
        std::sync::Arc::new(crate::engine::Engine::new(cfg.engine(), cfg.effective_shards()));
    let hub = crate::stream::StreamHub::new(cfg.stream(), engine.clone(), &registry);
    let policy = Policy::new(&cfg.policy(), Default::default(), None);
    let pipeline = Pipeline::new(engine.clone(), IngestCounters::register(&registry), policy)
        .with_sink(hub as std::sync::Arc<dyn RecordSink>);
    let source = Some(SocketAddr::from(([127, 0, 0, 1], 40_000)));
    let (mut fed, mut accepted) = (0u64, 0u64);
    let mut ticks = 0u64;
    let cpu0 = thread_cpu_seconds();
    let wall = Instant::now();
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    // Each batch copied into receive slots first, as recvmmsg leaves them
    // (SLOT bytes apart, so each datagram starts aligned).
    let batch = batch.clamp(1, sys::MAX_BATCH);
    let mut slots = vec![0u8; batch * SLOT];
    for _ in 0..loops {
        for chunk in spans.chunks(batch) {
            for (slot, &(at, len)) in slots.chunks_mut(SLOT).zip(chunk) {
                let kept = len.min(SLOT);
                slot[..kept].copy_from_slice(&bytes[at..at + kept]);
            }
            let mut batch_of: arrayvec::ArrayVec<Datagram<'_>, { sys::MAX_BATCH }> =
                arrayvec::ArrayVec::new();
            batch_of.extend(slots.chunks(SLOT).zip(chunk).map(|(slot, &(_, len))| Datagram {
                // Cut to the slot, as the kernel cuts it (MSG_TRUNC).
                bytes: &slot[..len.min(SLOT)],
                truncated: len > SLOT,
                source,
                identity: None,
                received_ns: 0,
            }));
            // One clock read per batch, as the receive loop does.
            let now = crate::clock::now_ms();
            let out = pipeline.handle(Transport::Udp, now, &batch_of);
            fed += chunk.len() as u64;
            accepted += out.accepted;
            // Upkeep about once a second, as in serve (on this thread here).
            if fed % 4096 < chunk.len() as u64 && Instant::now() >= next_tick {
                engine.tick(now);
                ticks += 1;
                next_tick += Duration::from_secs(1);
            }
        }
    }
    let cpu = thread_cpu_seconds() - cpu0;
    let v = serde_json::json!({
        "datagrams": fed,
        "accepted": accepted,
        "devices": engine.summary().devices,
        "upkeep_ticks": ticks,
        "cpu_seconds": cpu,
        "wall_seconds": wall.elapsed().as_secs_f64(),
        "cpu_ns_per_datagram": cpu / fed.max(1) as f64 * 1e9,
    });
    println!("{v}");
    ExitCode::SUCCESS
}

fn sink(
    listen: SocketAddr,
    recv_buffer: usize,
    batch: usize,
    idle: f64,
    max_seconds: f64,
) -> ExitCode {
    let bound = match bind_for("bench sink", listen, recv_buffer, false) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("fleetwire bench sink: {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let inode = inode(&bound.socket);
    let addr = bound.socket.local_addr().ok();
    eprintln!("sink listening on {addr:?}");
    let cpu0 = self_cpu_seconds();
    let counted = count_only(&bound.socket, batch, idle, max_seconds);
    let cpu = self_cpu_seconds() - cpu0;
    let drops = inode.map_or(0, |i| kernel_drops(&[i]));
    let v = serde_json::json!({
        "received": counted.datagrams,
        "bytes": counted.bytes,
        "kernel_drops": drops,
        "cpu_seconds": cpu,
        "active_seconds": counted.active_seconds,
        "granted_buffer": bound.granted_buffer / 2,
    });
    println!("{v}");
    ExitCode::SUCCESS
}

fn flood(
    target: SocketAddr,
    ids: u64,
    rate: f64,
    seed: u32,
    (readings, frames): (usize, u32),
) -> ExitCode {
    let names: Vec<String> = (0..readings.min(32)).map(|i| format!("reading_{i:02}")).collect();
    let frames = if names.is_empty() { 1 } else { frames.max(1) };
    const BATCH: usize = 64;
    let start = Instant::now();
    let sender = match BatchSender::connect(target) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleetwire bench flood: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let mut sent = 0u64;
    let now = crate::clock::now_ms();
    let mut i = 0u64;
    let total = ids * u64::from(frames);
    while i < total {
        batch.clear();
        while batch.len() < BATCH && i < total {
            let (id, seq) = (id_for(i % ids.max(1), seed), (i / ids.max(1)) as u32);
            if !names.is_empty() {
                let r: Vec<Reading<'_>> = names
                    .iter()
                    .map(|n| Reading { name: n, value: f64::from(seq) + f64::from(id % 100) })
                    .collect();
                let m = Monitoring { readings: Seq::from_slice(&r), ..Monitoring::EMPTY };
                let t = now + u64::from(seq) * 1000;
                if let Ok(n) = encode(&Frame::new(id, seq, t, Body::Monitoring(m)), &mut buf) {
                    batch.push(buf[..n].to_vec());
                }
                i += 1;
                continue;
            }
            let p = Position {
                lat_e7: 480_000_000 + (id % 1_000_000) as i32,
                lon_e7: 110_000_000 + (id / 4096 % 1_000_000) as i32,
                alt_dm: 5_000,
                speed_cm_s: 0,
                heading_ddeg: 0,
                hacc_cm: 300,
                fix: FixType::Fix3d,
                satellites: 8,
            };
            if let Ok(n) = encode(&Frame::new(id, 0, now, Body::Position(p)), &mut buf) {
                batch.push(buf[..n].to_vec());
            }
            i += 1;
        }
        match sender.send(&batch) {
            Ok(n) => sent += n,
            Err(e) => {
                eprintln!("fleetwire bench flood: {e}");
                return ExitCode::FAILURE;
            }
        }
        if rate > 0.0 {
            let ahead = sent as f64 / rate - start.elapsed().as_secs_f64();
            if ahead > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(ahead));
            }
        }
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"sent": sent, "elapsed_s": el, "rate": sent as f64 / el.max(1e-9)})
    );
    ExitCode::SUCCESS
}

/// What [`count_only`] saw.
#[derive(Debug, Clone, Copy, Default)]
struct Counted {
    /// Datagrams received.
    datagrams: u64,
    /// Bytes received.
    bytes: u64,
    /// From the first datagram to the last, seconds.
    active_seconds: f64,
}

/// The benchmark's bare receiver: reads with the same `recvmmsg` batches as
/// the server and only counts. Returns after `idle` seconds without a
/// datagram (once one has arrived), or after `max_seconds`.
fn count_only(socket: &UdpSocket, batch: usize, idle: f64, max_seconds: f64) -> Counted {
    let mut rx = sys::Batch::new(batch.clamp(1, sys::MAX_BATCH), SLOT);
    let mut c = Counted::default();
    let start = std::time::Instant::now();
    let mut first: Option<std::time::Instant> = None;
    let mut last = std::time::Instant::now();
    while start.elapsed().as_secs_f64() < max_seconds {
        match rx.recv(socket, true) {
            Ok(n) if n > 0 => {
                let now = std::time::Instant::now();
                first.get_or_insert(now);
                last = now;
                c.datagrams += n as u64;
                for i in 0..n {
                    c.bytes += rx.get(i).0.len() as u64;
                }
            }
            _ => {
                if first.is_some() && last.elapsed().as_secs_f64() >= idle {
                    break;
                }
            }
        }
    }
    c.active_seconds = first.map_or(0.0, |f| (last - f).as_secs_f64());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_ids_are_distinct_and_never_zero() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            let id = id_for(i, 1);
            assert_ne!(id, 0);
            assert!(seen.insert(id), "repeat at {i}");
        }
    }
}
