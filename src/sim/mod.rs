//! `fleetwire sim`: a fleet of simulated devices with deterministic fault
//! injection, over UDP or QUIC; and the recording format `replay` reads.
//!
//! Fault accounting is what a sequence-number receiver can observe, so a
//! server's counters can be compared with the summary exactly:
//! * `lost`: frames dropped or corrupted in flight that a later frame of the
//!   same device reveals (a drop after a device's last delivered frame is
//!   invisible to any receiver and counted in `dropped_tail` instead);
//! * `duplicated`: extra copies sent;
//! * `reordered`: frames held back and sent after the device's next frame;
//! * `corrupted`: frames sent with one bit flipped (refused by the CRC).
//!
//! The boot Hello of each device is sent first and never faulted.

pub(crate) mod foreign;
pub(crate) mod model;
pub mod quic;
pub(crate) mod record;
pub(crate) mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use model::{SimDevice, frame_buf};

/// Fault probabilities, as fractions (0..=1).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// Drop the frame.
    pub loss: f64,
    /// Send the frame twice.
    pub dup: f64,
    /// Send the frame after the device's next one.
    pub reorder: f64,
    /// Flip one bit of the frame.
    pub corrupt: f64,
}

/// What the simulator did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct Summary {
    /// Devices simulated.
    pub devices: u64,
    /// Datagrams (or stream records) put on the wire, copies and corrupted ones included.
    pub sent: u64,
    /// Distinct frames generated (Hello included).
    pub frames: u64,
    /// Records delivered intact, once each (what the server should count in
    /// `fleetwire_records_total`).
    pub records: u64,
    /// Frames the receiver can tell are missing (see module docs).
    pub lost: u64,
    /// Frames dropped (including `dropped_tail`).
    pub dropped: u64,
    /// Drops after a device's last delivered frame: invisible to a receiver.
    pub dropped_tail: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Frames delivered after a newer frame of the same device.
    pub reordered: u64,
    /// Frames sent corrupted.
    pub corrupted: u64,
    /// Send errors.
    pub errors: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Wall-clock duration of the run, seconds.
    pub elapsed_s: f64,
    /// Datagrams per second achieved.
    pub rate: f64,
}

/// One datagram to put on the wire, for one device.
pub(crate) struct Out {
    /// The device.
    pub device: u32,
    /// The bytes.
    pub bytes: Vec<u8>,
}

#[derive(Default)]
struct DeviceFaultState {
    /// A frame held back, whether it is to be duplicated, and how many
    /// unrevealed drops came before it.
    held: Option<(Vec<u8>, bool, u64)>,
    unrevealed: u64,
}

/// Applies faults to each device's frames, deterministically for a seed.
pub(crate) struct Injector {
    rng: StdRng,
    faults: Faults,
    state: HashMap<u32, DeviceFaultState>,
    /// Counts so far.
    pub summary: Summary,
}

impl Injector {
    /// A new injector.
    pub(crate) fn new(seed: u64, faults: Faults) -> Self {
        Injector {
            rng: StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xfa17),
            faults,
            state: HashMap::new(),
            summary: Summary::default(),
        }
    }

    /// A frame to send unfaulted (the boot Hello).
    pub(crate) fn clean(&mut self, device: u32, frame: &[u8], out: &mut Vec<Out>) {
        self.summary.frames += 1;
        self.summary.records += 1;
        out.push(Out { device, bytes: frame.to_vec() });
    }

    /// Decides what happens to `frame` of `device`; pushes the datagrams to send.
    pub(crate) fn frame(&mut self, device: u32, frame: &[u8], out: &mut Vec<Out>) {
        self.summary.frames += 1;
        let f = self.faults;
        let st = self.state.entry(device).or_default();
        let r: f64 = self.rng.random();
        if r < f.loss {
            self.summary.dropped += 1;
            st.unrevealed += 1;
            return;
        }
        let r: f64 = self.rng.random();
        if r < f.corrupt {
            let mut bad = frame.to_vec();
            let bit = self.rng.random_range(0..bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            self.summary.corrupted += 1;
            st.unrevealed += 1;
            out.push(Out { device, bytes: bad });
            return;
        }
        let dup = self.rng.random::<f64>() < f.dup;
        let reorder = self.rng.random::<f64>() < f.reorder;
        if reorder && st.held.is_none() {
            st.held = Some((frame.to_vec(), dup, st.unrevealed));
            return;
        }
        // Delivered intact as the device's newest frame: reveals earlier drops.
        self.summary.lost += st.unrevealed;
        st.unrevealed = 0;
        self.summary.records += 1;
        out.push(Out { device, bytes: frame.to_vec() });
        if dup {
            self.summary.duplicated += 1;
            out.push(Out { device, bytes: frame.to_vec() });
        }
        if let Some((held, held_dup, _)) = st.held.take() {
            self.summary.reordered += 1;
            self.summary.records += 1;
            out.push(Out { device, bytes: held.clone() });
            if held_dup {
                self.summary.duplicated += 1;
                out.push(Out { device, bytes: held });
            }
        }
    }

    /// End of the run: frames still held are sent (in order, so not
    /// reordered); drops not revealed by a later frame are tail drops.
    pub(crate) fn finish(&mut self, out: &mut Vec<Out>) {
        let mut devices: Vec<_> = self.state.keys().copied().collect();
        devices.sort_unstable();
        for d in devices {
            let Some(st) = self.state.get_mut(&d) else { continue };
            if let Some((held, dup, before)) = st.held.take() {
                // Sent last, so it is the newest frame: it reveals the drops
                // before it, not those after.
                self.summary.lost += before;
                st.unrevealed -= before;
                self.summary.records += 1;
                out.push(Out { device: d, bytes: held.clone() });
                if dup {
                    self.summary.duplicated += 1;
                    out.push(Out { device: d, bytes: held });
                }
            }
            self.summary.dropped_tail += st.unrevealed;
            st.unrevealed = 0;
        }
    }
}

/// Where the datagrams go.
#[allow(async_fn_in_trait)]
pub(crate) trait Sink {
    /// Sends one datagram of `device`.
    async fn send(&mut self, device: u32, bytes: &[u8]) -> std::io::Result<()>;
    /// Waits until everything sent has left.
    async fn flush(&mut self) -> std::io::Result<()>;
    /// Prepares to send for these devices (connects, for QUIC).
    async fn prepare(&mut self, _devices: &[u32]) -> std::io::Result<()> {
        Ok(())
    }
}

/// Plain UDP: datagrams go out with `sendmmsg(2)`, `batch` at a time (1 for
/// paced runs, so every frame leaves when it is due).
pub(crate) struct UdpSink {
    sender: udp::BatchSender,
    pending: Vec<Vec<u8>>,
    batch: usize,
}

impl UdpSink {
    /// A socket for `target`.
    pub(crate) async fn new(target: SocketAddr) -> std::io::Result<Self> {
        Self::batched(target, 1)
    }

    /// A socket for `target` sending `batch` datagrams per system call.
    pub(crate) fn batched(target: SocketAddr, batch: usize) -> std::io::Result<Self> {
        let sender = udp::BatchSender::connect(target).map_err(std::io::Error::other)?;
        Ok(UdpSink { sender, pending: Vec::with_capacity(batch.max(1)), batch: batch.clamp(1, 64) })
    }

    fn send_pending(&mut self) -> std::io::Result<()> {
        let r = self.sender.send(&self.pending).map(|_| ()).map_err(std::io::Error::other);
        self.pending.clear();
        r
    }
}

impl Sink for UdpSink {
    async fn send(&mut self, _device: u32, bytes: &[u8]) -> std::io::Result<()> {
        self.pending.push(bytes.to_vec());
        if self.pending.len() >= self.batch { self.send_pending() } else { Ok(()) }
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        self.send_pending()
    }
}

/// Plan of a run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Devices.
    pub devices: u32,
    /// First device id.
    pub first_id: u32,
    /// Frames per second per device (0 = as fast as possible).
    pub rate: f64,
    /// Telemetry frames per device.
    pub frames_per_device: u64,
    /// Seed.
    pub seed: u64,
    /// Faults.
    pub faults: Faults,
    /// Center of the fleet (degrees).
    pub center: (f64, f64),
    /// Progress line on stderr.
    pub progress: bool,
}

#[derive(Default)]
struct Counters {
    sent: u64,
    errors: u64,
    bytes: u64,
}

async fn flush_out<S: Sink>(
    out: &mut Vec<Out>,
    sink: &mut S,
    rec: &mut Option<&mut record::Writer>,
    c: &mut Counters,
) {
    for o in out.drain(..) {
        if let Some(r) = rec.as_deref_mut() {
            let _ = r.write(&o.bytes);
        }
        c.bytes += o.bytes.len() as u64;
        match sink.send(o.device, &o.bytes).await {
            Ok(()) => c.sent += 1,
            Err(_) => c.errors += 1,
        }
    }
}

/// Runs a simulation against `sink`; records every datagram to `record`.
pub(crate) async fn run<S: Sink>(
    plan: &Plan,
    sink: &mut S,
    mut record: Option<&mut record::Writer>,
) -> Summary {
    let start = Instant::now();
    let now_ms = crate::clock::now_ms;
    let mut inj = Injector::new(plan.seed, plan.faults);
    let mut devices: Vec<SimDevice> = (0..plan.devices)
        .map(|i| SimDevice::new(plan.first_id.wrapping_add(i).max(1), plan.seed, plan.center))
        .collect();
    let mut buf = frame_buf();
    let mut out = Vec::new();
    let ids: Vec<u32> = devices.iter().map(|d| d.id).collect();
    if let Err(e) = sink.prepare(&ids).await {
        tracing::warn!(error = %e, "could not prepare every device's connection");
    }
    // Paced runs stamp frames with the real clock; unpaced (load) runs with
    // a synthetic clock advancing 1 ms per frame of a device, so timestamps
    // stay plausible however fast frames go out.
    let t0 = now_ms();
    let clock = |k: u64| if plan.rate > 0.0 { now_ms() } else { t0 + k };
    for d in &mut devices {
        let n = d.hello(clock(0), &mut buf);
        inj.clean(d.id, &buf[..n], &mut out);
    }
    let mut last_progress = Instant::now();
    let dt = if plan.rate > 0.0 { 1.0 / plan.rate } else { 0.001 };
    let total = plan.frames_per_device * u64::from(plan.devices);
    let mut done = 0u64;
    let mut c = Counters::default();
    flush_out(&mut out, sink, &mut record, &mut c).await;
    for k in 0..plan.frames_per_device {
        for (i, d) in devices.iter_mut().enumerate() {
            if plan.rate > 0.0 {
                // Device i's k-th frame is due at (k + 1 + i/N) / rate.
                let due = (k as f64 + 1.0 + i as f64 / f64::from(plan.devices)) * dt;
                let ahead = due - start.elapsed().as_secs_f64();
                if ahead > 0.002 {
                    tokio::time::sleep(Duration::from_secs_f64(ahead)).await;
                }
            }
            let n = d.next_frame(clock(k + 1), dt, &mut buf);
            inj.frame(d.id, &buf[..n], &mut out);
            flush_out(&mut out, sink, &mut record, &mut c).await;
            done += 1;
            if done % 16 == 0 {
                // Unpaced runs rarely wait: let the runtime's other tasks
                // (QUIC connection drivers) run on this worker too.
                tokio::task::yield_now().await;
            }
        }
        if plan.progress && last_progress.elapsed() > Duration::from_millis(500) {
            last_progress = Instant::now();
            let el = start.elapsed().as_secs_f64();
            eprint!(
                "\rsim: {done}/{total} frames, {} datagrams sent, {:.0}/s, {} lost {} dup {} reordered {} corrupt   ",
                c.sent,
                c.sent as f64 / el.max(1e-9),
                inj.summary.dropped,
                inj.summary.duplicated,
                inj.summary.reordered,
                inj.summary.corrupted
            );
        }
    }
    inj.finish(&mut out);
    flush_out(&mut out, sink, &mut record, &mut c).await;
    if let Err(e) = sink.flush().await {
        eprintln!("sim: {e}");
        c.errors += 1;
    }
    if let Some(r) = record {
        let _ = r.flush();
    }
    if plan.progress {
        eprintln!();
    }
    let mut s = inj.summary;
    s.devices = u64::from(plan.devices);
    s.sent = c.sent;
    s.errors = c.errors;
    s.bytes = c.bytes;
    s.elapsed_s = start.elapsed().as_secs_f64();
    s.rate = s.sent as f64 / s.elapsed_s.max(1e-9);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Accepted, Engine, EngineConfig};

    /// The injector's summary is exactly what the engine observes.
    #[test]
    fn injected_faults_match_engine_accounting() {
        for seed in 0..20 {
            let faults = Faults { loss: 0.05, dup: 0.05, reorder: 0.05, corrupt: 0.05 };
            let mut inj = Injector::new(seed, faults);
            let mut devs: Vec<SimDevice> =
                (1..=20).map(|id| SimDevice::new(id, seed, (48.0, 11.0))).collect();
            let mut out = Vec::new();
            let mut buf = frame_buf();
            let t0 = 1_764_000_000_000u64;
            for d in &mut devs {
                let n = d.hello(t0, &mut buf);
                inj.clean(d.id, &buf[..n], &mut out);
            }
            for k in 0..100u64 {
                for d in &mut devs {
                    let n = d.next_frame(t0 + k * 1000, 1.0, &mut buf);
                    inj.frame(d.id, &buf[..n], &mut out);
                }
            }
            inj.finish(&mut out);
            let e = Engine::new(EngineConfig::default(), 4);
            let mut rejected = 0;
            for o in &out {
                match fleetwire_proto::decode(&o.bytes) {
                    Ok(f) => {
                        e.ingest(t0 + 200_000, &[Accepted::new(f, o.bytes.len())]);
                    }
                    Err(_) => rejected += 1,
                }
            }
            let s = &inj.summary;
            let t = e.summary().totals;
            assert_eq!(rejected, s.corrupted, "seed {seed}");
            assert_eq!(t.lost(), s.lost, "seed {seed}");
            assert_eq!(t.duplicates, s.duplicated, "seed {seed}");
            assert_eq!(t.reordered, s.reordered, "seed {seed}");
            assert_eq!(t.records.total(), s.records, "seed {seed}");
            assert_eq!(out.len() as u64, s.records + s.duplicated + s.corrupted);
            assert!(s.lost > 0 && s.duplicated > 0 && s.reordered > 0 && s.corrupted > 0);
        }
    }
}
