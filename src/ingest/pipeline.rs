//! The path every datagram takes, whatever its transport: count, decode,
//! apply the server's policies, hand accepted frames to the engine in a
//! batch, pass the frames that brought new records to the record sinks
//! (forwarding, live streams), and count the outcome once per batch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use arrayvec::ArrayVec;
use fleetwire_proto::{DecodeError, Frame, decode_with};
use parking_lot::Mutex;

use super::counters::IngestCounters;
use super::policy::Policy;
use super::reason::{MAX_REASONS, Reason, Transport};
use crate::engine::{Accepted, Dedup, Engine};
use crate::telemetry::{Counter, Gauge};

/// One received datagram (or QUIC stream record).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Datagram<'a> {
    /// Its bytes (possibly cut short, see `truncated`).
    pub(crate) bytes: &'a [u8],
    /// The kernel cut it to fit the receive buffer: it was longer than any frame.
    pub(crate) truncated: bool,
    /// Source address, when known.
    pub(crate) source: Option<SocketAddr>,
    /// Device id proven by a QUIC client certificate.
    pub(crate) identity: Option<u32>,
    /// When the kernel received it (Unix ns; for UDP an estimate from the
    /// kernel's time for some batches, see `transport/udp.rs`), or 0 when
    /// unknown: accepted datagrams with one count in
    /// `fleetwire_ingest_delay_seconds`.
    pub(crate) received_ns: u64,
}

/// Outcome counts of one [`Pipeline::handle`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BatchOutcome {
    /// Accepted.
    pub(crate) accepted: u64,
    /// Refused.
    pub(crate) rejected: u64,
}

/// The frames of one engine batch that brought new records (duplicates,
/// replays and refused datagrams are not in it), as a record sink sees them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewRecords<'a> {
    /// Where they came from.
    pub(crate) transport: Transport,
    /// When they arrived (server clock, Unix ms).
    pub(crate) now_ms: u64,
    batch: &'a [Accepted<'a>],
    applied: u64,
    fixes: u64,
    /// When the sender waits for its records to be stored downstream.
    pub(crate) confirm: Option<&'a Arc<Confirm>>,
}

impl<'a> NewRecords<'a> {
    /// The frames, in arrival order.
    pub(crate) fn frames(&self) -> impl Iterator<Item = &'a Frame<'a>> + '_ {
        let applied = self.applied;
        self.batch
            .iter()
            .enumerate()
            .filter(move |(i, _)| applied & (1 << i) != 0)
            .map(|(_, a)| &a.frame)
    }

    /// The new frames with whether one of their positions became the
    /// device's fix (the plausibility filter took it).
    pub(crate) fn frames_with_fix(&self) -> impl Iterator<Item = (&'a Frame<'a>, bool)> + '_ {
        let (applied, fixes) = (self.applied, self.fixes);
        self.batch
            .iter()
            .enumerate()
            .filter(move |(i, _)| applied & (1 << i) != 0)
            .map(move |(i, a)| (&a.frame, fixes & (1 << i) != 0))
    }

    /// Every frame of the batch, copies included: what a sink that
    /// confirms storage must (re)store, since the sender cannot know which
    /// of its records a previous attempt stored.
    pub(crate) fn all_frames(&self) -> impl Iterator<Item = &'a Frame<'a>> + '_ {
        self.batch.iter().map(|a| &a.frame)
    }

    /// Whether there is none.
    pub(crate) fn is_empty(&self) -> bool {
        self.applied == 0
    }
}

/// A sender waiting for its records to be stored downstream (a Teltonika
/// tracker with `teltonika_ack = "published"`): each confirming sink takes
/// a share per record ([`expect`](Self::expect)) and gives it back once
/// stored ([`confirm`](Self::confirm)); when every share is back after the
/// sender handed out all its records ([`arm`](Self::arm)), `on_done` runs
/// once. A confirmation dropped before that (a record dropped from a full
/// buffer, the server stopping) counts as withheld: the sender resends.
pub(crate) struct Confirm {
    /// Shares taken and not yet given back.
    pending: AtomicU32,
    armed: AtomicBool,
    on_done: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    counts: ConfirmCounts,
}

/// How a sender's confirmations are counted.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConfirmCounts {
    /// Confirmations still waiting.
    pub(crate) waiting: Gauge,
    /// Confirmations dropped incomplete.
    pub(crate) withheld: Counter,
}

impl Confirm {
    /// A confirmation running `on_done` once complete, counted in `counts`.
    pub(crate) fn new(
        on_done: impl FnOnce() + Send + 'static,
        counts: &ConfirmCounts,
    ) -> Arc<Self> {
        counts.waiting.add(1.0);
        Arc::new(Confirm {
            pending: AtomicU32::new(0),
            armed: AtomicBool::new(false),
            on_done: Mutex::new(Some(Box::new(on_done))),
            counts: counts.clone(),
        })
    }

    /// A sink took a record to confirm.
    pub(crate) fn expect(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// A sink stored one of the records it took.
    pub(crate) fn confirm(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.fire_if_complete();
        }
    }

    /// The sender handed out every record.
    pub(crate) fn arm(&self) {
        self.armed.store(true, Ordering::Release);
        self.fire_if_complete();
    }

    fn fire_if_complete(&self) {
        if self.armed.load(Ordering::Acquire) && self.pending.load(Ordering::Acquire) == 0 {
            if let Some(f) = self.on_done.lock().take() {
                self.counts.waiting.add(-1.0);
                f();
            }
        }
    }
}

impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirm")
            .field("pending", &self.pending)
            .field("armed", &self.armed)
            .finish()
    }
}

impl Drop for Confirm {
    fn drop(&mut self) {
        if self.on_done.get_mut().is_some() {
            self.counts.waiting.add(-1.0);
            self.counts.withheld.inc();
        }
    }
}

/// Where accepted records go besides the engine (the seam forwarding and
/// live streams plug into). Called on the receive path: an implementation
/// must not block or wait for anything slower than a short lock.
pub(crate) trait RecordSink: Send + Sync {
    /// Takes the new records of one batch of at most 64 frames.
    fn push(&self, records: &NewRecords<'_>);
}

/// The shared ingest path.
pub(crate) struct Pipeline {
    engine: Arc<Engine>,
    counters: IngestCounters,
    policy: Policy,
    sinks: Vec<Arc<dyn RecordSink>>,
    last_debug_ms: AtomicU64,
}

/// Frames per engine call (and bits of [`crate::engine::IngestOutcome::applied`]).
const CHUNK: usize = 64;

impl Pipeline {
    /// A pipeline feeding `engine` under `policy`, counting into `counters`.
    pub(crate) fn new(engine: Arc<Engine>, counters: IngestCounters, policy: Policy) -> Self {
        Pipeline { engine, counters, policy, sinks: Vec::new(), last_debug_ms: AtomicU64::new(0) }
    }

    /// Also passes every batch's new records to `sink`.
    pub(crate) fn with_sink(mut self, sink: Arc<dyn RecordSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// The counters of every transport.
    pub(crate) fn counters(&self) -> &IngestCounters {
        &self.counters
    }

    /// The policies (keys, rate limits).
    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// At most one debug line per second about refused datagrams.
    fn debug_refusal(
        &self,
        now_ms: u64,
        t: Transport,
        reason: Reason,
        source: Option<SocketAddr>,
        len: usize,
    ) {
        let last = self.last_debug_ms.load(Ordering::Relaxed);
        if now_ms >= last.saturating_add(1000)
            && self
                .last_debug_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::debug!(
                transport = t.as_str(),
                reason = reason.as_str(),
                ?source,
                len,
                "datagram refused (at most one such line per second)"
            );
        }
    }

    /// Processes datagrams that arrived at `now_ms` on transport `t`.
    pub(crate) fn handle(
        &self,
        t: Transport,
        now_ms: u64,
        datagrams: &[Datagram<'_>],
    ) -> BatchOutcome {
        let counters = self.counters.of(t);
        let mut out = BatchOutcome::default();
        let mut rejected = [0u64; MAX_REASONS];
        let mut bytes = 0u64;
        let delay = &self.counters.delay;
        let mut delays = delay.batch();
        for chunk in datagrams.chunks(CHUNK) {
            let mut batch: ArrayVec<Accepted<'_>, CHUNK> = ArrayVec::new();
            // Kernel receive times of the accepted datagrams that have one.
            let mut stamps: ArrayVec<u64, CHUNK> = ArrayVec::new();
            for d in chunk {
                bytes += d.bytes.len() as u64;
                match self.check(t, now_ms, d) {
                    Ok(a) => {
                        batch.push(a);
                        if d.received_ns != 0 {
                            stamps.push(d.received_ns);
                        }
                    }
                    Err(reason) => {
                        rejected[reason.index(t)] += 1;
                        out.rejected += 1;
                        self.debug_refusal(now_ms, t, reason, d.source, d.bytes.len());
                    }
                }
            }
            let done = self.engine.ingest(now_ms, &batch);
            if !stamps.is_empty() {
                // One clock read per batch: when its frames were applied.
                let applied = crate::clock::now_ns();
                // The datagrams of a UDP batch mostly share one receive
                // time (see transport/udp.rs): each run of equal times is
                // counted at once.
                for run in stamps.chunk_by(|a, b| a == b) {
                    delay.count_n(&mut delays, applied.saturating_sub(run[0]), run.len() as u64);
                }
            }
            let new = NewRecords {
                transport: t,
                now_ms,
                batch: &batch,
                applied: done.applied,
                fixes: done.fixes,
                confirm: None,
            };
            if !new.is_empty() {
                for s in &self.sinks {
                    s.push(&new);
                }
            }
            out.accepted += batch.len() as u64;
        }
        delay.record(&mut delays);
        counters.received.add(datagrams.len() as u64);
        counters.bytes.add(bytes);
        counters.accepted.add(out.accepted);
        if out.rejected > 0 {
            for (c, n) in counters.rejected.iter().zip(rejected) {
                c.add(n);
            }
        }
        out
    }

    fn check<'a>(
        &self,
        t: Transport,
        now_ms: u64,
        d: &Datagram<'a>,
    ) -> Result<Accepted<'a>, Reason> {
        if d.truncated {
            return Err(Reason::Decode(DecodeError::TooLong));
        }
        let frame = decode_with(d.bytes, super::crc::crc32c).map_err(Reason::Decode)?;
        if let Some(id) = d.identity {
            if frame.device_id != id {
                return Err(Reason::IdentityMismatch);
            }
        }
        self.policy.check(t, now_ms, d.source, &frame)?;
        Ok(Accepted { wire: d.bytes, ..Accepted::new(frame, d.bytes.len()) })
    }

    /// Counts a datagram (or request) of another protocol that its decoder
    /// refused, or that could not be attributed to a device.
    pub(crate) fn refuse(
        &self,
        t: Transport,
        now_ms: u64,
        bytes: usize,
        source: Option<SocketAddr>,
        reason: Reason,
    ) {
        let c = self.counters.of(t);
        c.received.inc();
        c.bytes.add(bytes as u64);
        c.rejected[reason.index(t)].inc();
        self.debug_refusal(now_ms, t, reason, source, bytes);
    }

    /// Admits one datagram (or request) of another protocol, which its
    /// decoder attributed to `device`: applies the rate limits and counts it
    /// as received, and as accepted or refused. Its records then go in with
    /// [`Admitted::apply`]; they are told apart by device and record time
    /// (those protocols have no sequence numbers), so a resent datagram
    /// brings nothing twice.
    pub(crate) fn admit(
        &self,
        t: Transport,
        now_ms: u64,
        bytes: usize,
        source: Option<SocketAddr>,
        device: u32,
    ) -> Result<Admitted<'_>, Reason> {
        if let Err(reason) = self.policy.check_limits(now_ms, source, device) {
            self.refuse(t, now_ms, bytes, source, reason);
            return Err(reason);
        }
        let c = self.counters.of(t);
        c.received.inc();
        c.bytes.add(bytes as u64);
        c.accepted.inc();
        Ok(Admitted { pipeline: self, t, now_ms, bytes, device })
    }
}

/// A datagram of another protocol that passed the policies: its records go
/// to the engine and the record sinks.
pub(crate) struct Admitted<'p> {
    pipeline: &'p Pipeline,
    t: Transport,
    now_ms: u64,
    bytes: usize,
    device: u32,
}

impl Admitted<'_> {
    /// Applies frames made from the datagram (at most 64 at a time, each for
    /// the admitted device, with the record's own time as timestamp).
    /// Returns how many brought new records (the others were copies).
    pub(crate) fn apply(&self, frames: &[Frame<'_>]) -> u32 {
        self.apply_confirmed(frames, None)
    }

    /// [`apply`](Self::apply), and when `confirm` is given, the sinks that
    /// confirm storage take every frame (copies too) with it.
    pub(crate) fn apply_confirmed(
        &self,
        frames: &[Frame<'_>],
        confirm: Option<&Arc<Confirm>>,
    ) -> u32 {
        let mut new = 0;
        for chunk in frames.chunks(CHUNK) {
            let mut batch: ArrayVec<Accepted<'_>, CHUNK> = ArrayVec::new();
            for f in chunk.iter().filter(|f| f.device_id == self.device) {
                let mut a = Accepted::new(*f, self.bytes);
                a.dedup = Dedup::RecordTime;
                batch.push(a);
            }
            let done = self.pipeline.engine.ingest(self.now_ms, &batch);
            let records = NewRecords {
                transport: self.t,
                now_ms: self.now_ms,
                batch: &batch,
                applied: done.applied,
                fixes: done.fixes,
                confirm,
            };
            if !records.is_empty() || confirm.is_some() {
                for s in &self.pipeline.sinks {
                    s.push(&records);
                }
            }
            new += done.applied.count_ones();
        }
        new
    }
}
