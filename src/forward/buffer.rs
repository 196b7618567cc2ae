//! The bounded buffer between the ingest path and the NATS publisher: the
//! pipeline pushes every new record (never waiting), the publisher takes
//! batches; when full, the oldest record is dropped and counted.
//!
//! A record once handed to NATS without an acknowledgement is *in doubt*:
//! JetStream may have stored it (a frozen server stores what it was sent
//! once it runs again). In-doubt records wait apart, are retried first
//! (JetStream de-duplicates the copies by `Nats-Msg-Id`) and are never
//! dropped, so a record counted as dropped is never in the stream. There
//! are at most `batch` of them (what can be in flight at once).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use fleetwire_proto::{Body, Frame, MAX_FRAME_LEN, Record, encode};
use parking_lot::Mutex;

use super::config::NatsConfig;
use std::sync::Arc;

use crate::ingest::{Confirm, NewRecords, RecordSink, Transport};
use crate::telemetry::{Counter, Gauge, Registry};

/// One record waiting to be published.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// `<subject_prefix>.<device>.<kind>`.
    pub(crate) subject: String,
    /// `Nats-Msg-Id`: device, sequence, sample index and CRC, so a retried
    /// publish is de-duplicated by JetStream.
    pub(crate) msg_id: String,
    /// The record as a standalone frame.
    pub(crate) payload: Bytes,
    /// Server receive time, Unix ms.
    pub(crate) received_ms: u64,
    /// Transport it came in on.
    pub(crate) transport: Transport,
    /// The sender waiting for this record to be stored, if any.
    pub(crate) confirm: Option<Arc<Confirm>>,
    /// It was handed to NATS at least once (so it may be in the stream).
    pub(crate) sent: bool,
}

/// The forwarder's series; `/api/summary` reads the same handles.
#[derive(Debug, Clone, Default)]
pub(crate) struct ForwardMetrics {
    /// Records queued.
    pub(crate) enqueued: Counter,
    /// Records handed to NATS (retries included).
    pub(crate) published: Counter,
    /// Records JetStream acknowledged (stored in the stream).
    pub(crate) acknowledged: Counter,
    /// Publishes that failed or were not acknowledged in time (then retried).
    pub(crate) failed: Counter,
    /// Records dropped because the buffer was full (the oldest first), or
    /// still buffered when shutdown's drain time ran out; none of them was
    /// ever handed to NATS.
    pub(crate) dropped: Counter,
    /// Records handed to NATS whose acknowledgement had not come when
    /// shutdown's drain time ran out: they may or may not be in the stream.
    pub(crate) unconfirmed: Counter,
    /// Records waiting.
    pub(crate) buffered: Gauge,
    /// 1 while connected with the stream ready.
    pub(crate) connected: Gauge,
    /// 1 while publishing fails: the last attempt to connect, or to have a
    /// batch acknowledged, did not succeed.
    pub(crate) failing: Gauge,
}

impl ForwardMetrics {
    fn register(r: &Registry) -> Self {
        ForwardMetrics {
            enqueued: r.counter(
                "fleetwire_forward_enqueued_total",
                "Records queued for NATS JetStream (every record the engine accepted).",
                &[],
            ),
            published: r.counter(
                "fleetwire_forward_published_total",
                "Records handed to NATS JetStream (retries included).",
                &[],
            ),
            acknowledged: r.counter(
                "fleetwire_forward_acknowledged_total",
                "Records JetStream acknowledged (stored in the stream).",
                &[],
            ),
            failed: r.counter(
                "fleetwire_forward_failed_total",
                "Publishes that failed or were not acknowledged in time (the record is retried).",
                &[],
            ),
            dropped: r.counter(
                "fleetwire_forward_dropped_total",
                "Records dropped, never handed to NATS: the forwarding buffer was full (oldest first), or shutdown's drain time ran out.",
                &[],
            ),
            unconfirmed: r.counter(
                "fleetwire_forward_unconfirmed_total",
                "Records handed to NATS but not acknowledged when shutdown's drain time ran out (they may be in the stream).",
                &[],
            ),
            buffered: r.gauge(
                "fleetwire_forward_buffered",
                "Records waiting to be published to NATS.",
                &[],
            ),
            connected: r.gauge(
                "fleetwire_forward_connected",
                "1 while the NATS publisher is connected and its stream is ready.",
                &[],
            ),
            failing: r.gauge(
                "fleetwire_forward_failing",
                "1 while publishing to NATS fails (the last connection attempt or batch was not acknowledged); records wait, and the oldest are dropped when the buffer is full.",
                &[],
            ),
        }
    }
}

/// The records waiting: new ones (dropped oldest first when full) and
/// in-doubt ones (handed to NATS, not acknowledged; never dropped).
#[derive(Debug, Default)]
struct Queues {
    fresh: VecDeque<Pending>,
    doubt: VecDeque<Pending>,
}

impl Queues {
    fn len(&self) -> usize {
        self.fresh.len() + self.doubt.len()
    }
}

/// The bounded buffer between the ingest path and the publisher.
pub(crate) struct Forwarder {
    pub(super) cfg: NatsConfig,
    queue: Mutex<Queues>,
    /// Records taken by the publisher and not yet given back or
    /// acknowledged (counted as unconfirmed if shutdown cuts them off).
    in_flight: AtomicU64,
    pub(super) notify: tokio::sync::Notify,
    pub(crate) metrics: ForwardMetrics,
    connected: AtomicBool,
    /// No more records will come (the receive path has stopped).
    closed: AtomicBool,
}

impl Forwarder {
    /// A forwarder for `cfg`, registering its series with `registry`.
    pub(crate) fn new(cfg: NatsConfig, registry: &Registry) -> Self {
        Forwarder::with_metrics(cfg, ForwardMetrics::register(registry))
    }

    fn with_metrics(cfg: NatsConfig, metrics: ForwardMetrics) -> Self {
        Forwarder {
            queue: Mutex::new(Queues {
                fresh: VecDeque::with_capacity(cfg.buffer.min(1 << 16)),
                doubt: VecDeque::new(),
            }),
            in_flight: AtomicU64::new(0),
            cfg,
            notify: tokio::sync::Notify::new(),
            metrics,
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    /// Whether the publisher is connected.
    pub(crate) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Records waiting.
    pub(crate) fn buffered(&self) -> usize {
        self.queue.lock().len()
    }

    /// Says that no more records will come: the publisher ends once the
    /// buffer is empty.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Whether [`close`](Self::close) was called.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Queues new records, dropping the oldest new ones when full.
    fn push_all(&self, items: impl IntoIterator<Item = Pending>) {
        let mut q = self.queue.lock();
        let mut dropped = 0u64;
        let mut n = 0u64;
        for p in items {
            if q.fresh.len() >= self.cfg.buffer {
                q.fresh.pop_front();
                dropped += 1;
            }
            q.fresh.push_back(p);
            n += 1;
        }
        let len = q.len();
        drop(q);
        self.metrics.enqueued.add(n);
        self.metrics.dropped.add(dropped);
        self.metrics.buffered.set(len as f64);
        self.notify.notify_one();
    }

    /// Gives back records the publisher took (in their order) and did not
    /// get acknowledged: those handed to NATS go first in line and are
    /// never dropped; the others are the oldest new records again, and go
    /// first when the buffer is full.
    pub(super) fn give_back(&self, items: Vec<Pending>) {
        let n = items.len() as u64;
        let mut q = self.queue.lock();
        let mut dropped = 0u64;
        for p in items.into_iter().rev() {
            if p.sent {
                q.doubt.push_front(p);
            } else if q.fresh.len() >= self.cfg.buffer {
                dropped += 1;
            } else {
                q.fresh.push_front(p);
            }
        }
        let len = q.len();
        drop(q);
        self.in_flight.fetch_sub(n, Ordering::Relaxed);
        self.metrics.dropped.add(dropped);
        self.metrics.buffered.set(len as f64);
        self.notify.notify_one();
    }

    /// Counts a record the publisher took as done (acknowledged).
    pub(super) fn done(&self, n: u64) {
        self.in_flight.fetch_sub(n, Ordering::Relaxed);
    }

    /// Queues every record of an accepted frame (each taking a share of
    /// `confirm`, when given). Never blocks on NATS.
    pub(crate) fn push_frame(
        &self,
        frame: &Frame<'_>,
        now_ms: u64,
        transport: Transport,
        confirm: Option<&Arc<Confirm>>,
    ) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let base = if frame.timestamp_ms == 0 { now_ms } else { frame.timestamp_ms };
        let mut out: arrayvec::ArrayVec<Pending, 16> = arrayvec::ArrayVec::new();
        let mut one =
            |idx: usize, t_ms: u64, body: Body<'_>, out: &mut arrayvec::ArrayVec<Pending, 16>| {
                let f = Frame::new(frame.device_id, frame.sequence, t_ms, body);
                let Ok(n) = encode(&f, &mut buf) else { return };
                let payload = Bytes::copy_from_slice(&buf[..n]);
                // The frame's own CRC-32C trailer: a digest of its content
                // (kind, time, values), so a record sent again gets the same
                // id, and records of devices without sequence numbers
                // (sequence 0) get different ones. (A CRC over the frame
                // with its trailer is the same constant for every frame.)
                let crc = buf
                    .get(n.saturating_sub(4)..n)
                    .map_or(0, |t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]));
                let p = Pending {
                    subject: format!(
                        "{}.{}.{}",
                        self.cfg.subject_prefix,
                        frame.device_id,
                        body.kind().as_str()
                    ),
                    msg_id: format!("{}-{}-{}-{:08x}", frame.device_id, frame.sequence, idx, crc),
                    payload,
                    received_ms: now_ms,
                    transport,
                    confirm: confirm.map(|c| {
                        c.expect();
                        c.clone()
                    }),
                    sent: false,
                };
                if out.is_full() {
                    self.push_all(out.drain(..));
                }
                out.push(p);
            };
        match &frame.body {
            Body::Batch(b) => {
                for (i, s) in b.samples.iter().enumerate() {
                    let t = base.saturating_sub(u64::from(s.offset_ms));
                    let body = match s.record {
                        Record::Position(p) => Body::Position(p),
                        Record::Monitoring(m) => Body::Monitoring(m),
                        Record::Event(e) => Body::Event(e),
                    };
                    one(i, t, body, &mut out);
                }
            }
            body => one(0, base, *body, &mut out),
        }
        self.push_all(out);
    }

    /// Takes up to `n` records to publish, in-doubt ones first.
    pub(super) fn take(&self, n: usize) -> Vec<Pending> {
        let mut q = self.queue.lock();
        let from_doubt = n.min(q.doubt.len());
        let mut v: Vec<Pending> = q.doubt.drain(..from_doubt).collect();
        let from_fresh = (n - from_doubt).min(q.fresh.len());
        v.extend(q.fresh.drain(..from_fresh));
        self.metrics.buffered.set(q.len() as f64);
        drop(q);
        self.in_flight.fetch_add(v.len() as u64, Ordering::Relaxed);
        v
    }

    /// At shutdown, when the drain time is over: what was never handed to
    /// NATS counts as dropped, what was handed to it without an
    /// acknowledgement (waiting for a retry, or cut off in flight) as
    /// unconfirmed, so nothing accepted goes unaccounted.
    pub(super) fn drop_remaining(&self) {
        let (never, doubt) = {
            let mut q = self.queue.lock();
            let never = q.fresh.len() as u64;
            let doubt = q.doubt.len() as u64;
            q.fresh.clear();
            q.doubt.clear();
            (never, doubt)
        };
        let in_flight = self.in_flight.swap(0, Ordering::Relaxed);
        let unconfirmed = doubt + in_flight;
        let dropped = never;
        if dropped + unconfirmed > 0 {
            tracing::warn!(
                dropped,
                unconfirmed,
                "shutting down with records not yet acknowledged by NATS: counted as dropped \
                 (never sent) or unconfirmed (sent, may be in the stream)"
            );
        }
        self.metrics.dropped.add(dropped);
        self.metrics.unconfirmed.add(unconfirmed);
        self.metrics.buffered.set(0.0);
    }

    /// Says whether publishing fails (the `fleetwire_forward_failing` gauge).
    pub(super) fn set_failing(&self, f: bool) {
        self.metrics.failing.set(if f { 1.0 } else { 0.0 });
    }

    pub(super) fn set_connected(&self, c: bool) {
        self.connected.store(c, Ordering::Relaxed);
        self.metrics.connected.set(if c { 1.0 } else { 0.0 });
    }
}

impl RecordSink for Forwarder {
    fn push(&self, records: &NewRecords<'_>) {
        match records.confirm {
            // The sender waits until its records are stored: all of them,
            // copies included (JetStream de-duplicates by Nats-Msg-Id).
            Some(c) => {
                for f in records.all_frames() {
                    self.push_frame(f, records.now_ms, records.transport, Some(c));
                }
            }
            None => {
                for f in records.frames() {
                    self.push_frame(f, records.now_ms, records.transport, None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwire_proto::{Batch, Event, Sample, Seq, Severity};

    #[test]
    fn batches_become_one_message_per_sample_and_the_buffer_drops_oldest() {
        let fw = Forwarder::with_metrics(
            NatsConfig { buffer: 5, ..NatsConfig::default() },
            ForwardMetrics::default(),
        );
        let ev = |c| Record::Event(Event { code: c, severity: Severity::Info, text: None });
        let samples: Vec<Sample<'_>> =
            (0..3).map(|i| Sample { offset_ms: 1000 * (3 - i), record: ev(i as u16) }).collect();
        let f = Frame::new(9, 4, 10_000, Body::Batch(Batch { samples: Seq::from_slice(&samples) }));
        fw.push_frame(&f, 20_000, Transport::Udp, None);
        assert_eq!(fw.buffered(), 3);
        let got = fw.take(10);
        assert_eq!(got[0].subject, "fleetwire.9.event");
        let first = fleetwire_proto::decode(&got[0].payload).unwrap();
        assert_eq!((first.device_id, first.sequence, first.timestamp_ms), (9, 4, 7_000));
        assert_ne!(got[0].msg_id, got[1].msg_id);
        // Records of devices without sequence numbers (all sequence 0)
        // differ by content; the same record again has the same id.
        let at = |t| {
            Frame::new(
                9,
                0,
                t,
                Body::Event(Event { code: 1, severity: Severity::Info, text: None }),
            )
        };
        for t in [1_000, 2_000, 1_000] {
            fw.push_frame(&at(t), 5_000, Transport::Teltonika, None);
        }
        let ids: Vec<String> = fw.take(3).into_iter().map(|p| p.msg_id).collect();
        assert_ne!(ids[0], ids[1]);
        assert_eq!(ids[0], ids[2]);
        for i in 0..4u32 {
            fw.push_frame(
                &Frame::new(
                    9,
                    10 + i,
                    0,
                    Body::Event(Event { code: 1, severity: Severity::Info, text: None }),
                ),
                1,
                Transport::Quic,
                None,
            );
        }
        fw.push_frame(&f, 20_000, Transport::Udp, None);
        assert_eq!(fw.buffered(), 5);
        assert_eq!(fw.metrics.dropped.get(), 2);
        let left = fw.take(10);
        assert_eq!(
            fleetwire_proto::decode(&left[0].payload).unwrap().sequence,
            12,
            "the oldest went first"
        );
    }

    #[test]
    fn records_handed_to_nats_are_never_dropped_and_shutdown_tells_them_apart() {
        let fw = Forwarder::with_metrics(
            NatsConfig { buffer: 3, ..NatsConfig::default() },
            ForwardMetrics::default(),
        );
        let ev = |seq| {
            Frame::new(
                9,
                seq,
                0,
                Body::Event(Event { code: 1, severity: Severity::Info, text: None }),
            )
        };
        let seq_of = |p: &Pending| fleetwire_proto::decode(&p.payload).unwrap().sequence;
        for i in 0..3 {
            fw.push_frame(&ev(i), 1, Transport::Udp, None);
        }
        // The publisher takes all three and hands the first two to NATS;
        // no acknowledgement comes.
        let mut batch = fw.take(3);
        batch[0].sent = true;
        batch[1].sent = true;
        // Meanwhile the buffer fills with new records.
        for i in 3..6 {
            fw.push_frame(&ev(i), 1, Transport::Udp, None);
        }
        fw.give_back(batch);
        // The never-sent one was the oldest new record: dropped. The two in
        // doubt are kept, and come first.
        assert_eq!((fw.buffered(), fw.metrics.dropped.get()), (5, 1));
        let next = fw.take(4);
        assert_eq!(next.iter().map(seq_of).collect::<Vec<_>>(), [0, 1, 3, 4]);
        assert!(next[0].sent && next[1].sent && !next[2].sent);
        // Acknowledged: the first; the second is cut off in flight, the
        // others wait, at shutdown.
        fw.done(1);
        let (in_doubt, rest): (Vec<_>, Vec<_>) = next.into_iter().skip(1).partition(|p| p.sent);
        assert_eq!(in_doubt.len(), 1);
        fw.give_back(rest);
        fw.drop_remaining();
        let m = &fw.metrics;
        // 6 enqueued = 1 acknowledged + 4 dropped (never sent) + 1 unconfirmed.
        assert_eq!((m.enqueued.get(), m.dropped.get(), m.unconfirmed.get()), (6, 4, 1));
    }
}
