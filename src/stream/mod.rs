//! The live stream: positions, readings, events, Hello info and
//! online/offline transitions pushed to clients as they are accepted, over
//! Server-Sent Events (`/api/stream`) and WebSocket (`/api/ws`), and the
//! built-in map (`/map`, [`assets`]) that follows it.
//!
//! The receive path never waits for a client. The [`StreamHub`] is a record
//! sink of the pipeline: while clients are connected (and for the replay
//! age after the last one left, so it can resume) it copies a few fields
//! of each new record (device, kind, time: no allocation) into a bounded
//! queue (full: the event is dropped and counted). One task drains it,
//! builds each message once from the engine's state (copied under the
//! device's shard lock), numbers it, keeps it in a bounded replay buffer
//! (the last `stream_replay` messages, 60 s at most, for `Last-Event-ID`
//! resumes) and broadcasts it. Each client reads the broadcast through its
//! own bounded window; one that falls behind is told how many messages it
//! missed (`dropped`) and gets the newest state of its devices again
//! (`device` messages, read a page at a time): a stuck client costs its
//! place in the shared window, one page of snapshot messages and what its
//! connection queues, never more.
//!
//! [`client`] filters, rate-limits and delivers to one client.

pub(crate) mod assets;
pub(crate) mod client;
pub(crate) mod message;
pub(crate) mod serve;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::engine::{Engine, RecordKind};
use crate::ingest::{NewRecords, RecordSink};
use crate::telemetry::{Counter, Gauge, Registry};
use fleetwire_proto::{Body, Position, Record};
pub(crate) use message::Message;

/// The stream's slice of the configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamConfig {
    /// Most clients at once (SSE and WebSocket together).
    pub(crate) max_clients: usize,
    /// Keep-alive interval (SSE comment, WebSocket ping).
    pub(crate) keepalive: Duration,
    /// Messages kept for `Last-Event-ID` resumes.
    pub(crate) replay: usize,
    /// Oldest message kept for resumes.
    pub(crate) replay_age: Duration,
    /// Messages a client may fall behind before it is told `dropped`.
    pub(crate) client_queue: usize,
}

/// What the receive path hands the stream task for one new record.
#[derive(Debug, Clone, Copy)]
struct Event {
    device: u32,
    kind: RecordKind,
    /// The fix, for a position the engine took.
    pos: Option<Position>,
    /// Sample time (device clock, else arrival).
    t_ms: u64,
    received_ms: u64,
}

/// Events waiting for the stream task at most.
const EVENT_QUEUE: usize = 65_536;

/// The stream's series.
#[derive(Debug, Clone)]
pub(crate) struct StreamMetrics {
    pub(crate) sse: Gauge,
    pub(crate) ws: Gauge,
    pub(crate) messages: Counter,
    pub(crate) dropped: Counter,
    pub(crate) refused: Counter,
    pub(crate) closed_garbage: Counter,
    pub(crate) closed_slow: Counter,
}

impl StreamMetrics {
    fn register(r: &Registry) -> Self {
        let clients = |p| {
            r.gauge(
                "fleetwire_stream_clients",
                "Clients connected to the live stream, by protocol.",
                &[("protocol", p)],
            )
        };
        StreamMetrics {
            sse: clients("sse"),
            ws: clients("websocket"),
            messages: r.counter(
                "fleetwire_stream_messages_total",
                "Messages sent to live-stream clients (snapshots, updates, keep-alives not counted).",
                &[],
            ),
            dropped: r.counter(
                "fleetwire_stream_dropped_total",
                "Live-stream messages a client missed because it fell behind, or events dropped before they became messages (the stream task's queue was full).",
                &[],
            ),
            refused: r.counter(
                "fleetwire_stream_refused_total",
                "Live-stream connections refused: stream_max_clients reached.",
                &[],
            ),
            closed_garbage: r.counter(
                "fleetwire_stream_closed_total",
                "WebSocket clients closed by the server, by reason (garbage: sent something other than a pong or a close; slow: stopped reading).",
                &[("reason", "garbage")],
            ),
            closed_slow: r.counter(
                "fleetwire_stream_closed_total",
                "WebSocket clients closed by the server, by reason (garbage: sent something other than a pong or a close; slow: stopped reading).",
                &[("reason", "slow")],
            ),
        }
    }
}

/// The hub between the pipeline and the clients.
pub(crate) struct StreamHub {
    pub(crate) cfg: StreamConfig,
    pub(crate) engine: Arc<Engine>,
    clients: AtomicUsize,
    events: mpsc::Sender<Event>,
    events_rx: Mutex<Option<mpsc::Receiver<Event>>>,
    broadcast: broadcast::Sender<Arc<Message>>,
    replay: Mutex<VecDeque<Arc<Message>>>,
    next_id: AtomicU64,
    /// Records went by with no client connected (no messages were made):
    /// a resume from before then cannot be complete.
    gap: AtomicBool,
    /// When the last client left (ms): messages are still made for
    /// `replay_age` after, so that client can resume.
    last_left_ms: AtomicU64,
    pub(crate) metrics: StreamMetrics,
}

impl StreamHub {
    /// A hub for `engine`'s devices, registering its series with `r`.
    pub(crate) fn new(cfg: StreamConfig, engine: Arc<Engine>, r: &Registry) -> Arc<Self> {
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        let (broadcast, _) = broadcast::channel(cfg.client_queue.max(16));
        Arc::new(StreamHub {
            cfg,
            engine,
            clients: AtomicUsize::new(0),
            events,
            events_rx: Mutex::new(Some(rx)),
            broadcast,
            replay: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
            gap: AtomicBool::new(false),
            last_left_ms: AtomicU64::new(0),
            metrics: StreamMetrics::register(r),
        })
    }

    /// Takes a client slot, if there is one left.
    pub(crate) fn join(self: &Arc<Self>) -> Option<ClientSlot> {
        let n = self.clients.fetch_add(1, Ordering::AcqRel);
        if n >= self.cfg.max_clients {
            self.clients.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused.inc();
            return None;
        }
        self.gap.store(false, Ordering::Release);
        Some(ClientSlot { hub: self.clone(), rx: self.broadcast.subscribe() })
    }

    /// The id the next message will have (a client that has seen every
    /// message before it resumes from here).
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.load(Ordering::Acquire)
    }

    /// The messages after `last_id` still in the replay buffer, or `None`
    /// when some of them are gone (the client needs a fresh snapshot).
    pub(crate) fn replay_after(&self, last_id: u64) -> Option<Vec<Arc<Message>>> {
        let r = self.replay.lock();
        let oldest = r.front().map_or(self.next_id(), |m| m.id);
        if last_id.saturating_add(1) < oldest {
            return None;
        }
        Some(r.iter().filter(|m| m.id > last_id).cloned().collect())
    }

    /// Whether messages are being made: while a client is connected and
    /// for `replay_age` after the last one left (it may come back with
    /// `Last-Event-ID`).
    fn active(&self, now_ms: u64) -> bool {
        self.clients.load(Ordering::Relaxed) > 0
            || now_ms.saturating_sub(self.last_left_ms.load(Ordering::Relaxed))
                < self.cfg.replay_age.as_millis() as u64
    }

    /// Notes that something happened while no client was connected: the
    /// messages it would have made do not exist, so the replay buffer is
    /// emptied and one id skipped, and a client resuming from before gets
    /// a fresh snapshot instead of a resume with a silent hole.
    fn skipped(&self) {
        if !self.gap.load(Ordering::Relaxed) && !self.gap.swap(true, Ordering::AcqRel) {
            let mut r = self.replay.lock();
            r.clear();
            self.next_id.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Numbers a message, keeps it for resumes and broadcasts it.
    fn publish(&self, mut m: Message) {
        m.id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let m = Arc::new(m);
        {
            let mut r = self.replay.lock();
            r.push_back(m.clone());
            let oldest_ms = m.at_ms.saturating_sub(self.cfg.replay_age.as_millis() as u64);
            while r.len() > self.cfg.replay || r.front().is_some_and(|f| f.at_ms < oldest_ms) {
                r.pop_front();
            }
        }
        let _ = self.broadcast.send(m);
    }

    /// Online/offline transitions found by the engine's tick.
    pub(crate) fn transitions(&self, changed: &[(u32, bool)]) {
        let now = now_ms();
        if !self.active(now) {
            if !changed.is_empty() {
                self.skipped();
            }
            return;
        }
        for &(device, online) in changed {
            let (last_seen, fix) =
                self.engine.with_device(device, |d| (d.last_seen_ms, d.fix)).unwrap_or((0, None));
            let mut m = Message::transition(device, online, last_seen, now);
            m.at = fix.map(|f| (f.lon(), f.lat()));
            self.publish(m);
        }
    }

    /// Runs the stream task: turns queued events into messages until `stop`.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut rx) = self.events_rx.lock().take() else { return };
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                e = rx.recv() => match e {
                    Some(e) => {
                        if let Some(m) = message::of_event(&self.engine, e.device, e.kind, e.pos, e.t_ms, e.received_ms) {
                            self.publish(m);
                        }
                    }
                    None => return,
                },
            }
        }
    }

    fn event(
        &self,
        device: u32,
        kind: RecordKind,
        pos: Option<Position>,
        t_ms: u64,
        received_ms: u64,
    ) {
        if self.events.try_send(Event { device, kind, pos, t_ms, received_ms }).is_err() {
            self.metrics.dropped.inc();
        }
    }
}

impl RecordSink for StreamHub {
    fn push(&self, records: &NewRecords<'_>) {
        let now = records.now_ms;
        if !self.active(now) {
            self.skipped();
            return;
        }
        for (f, fix) in records.frames_with_fix() {
            let base = if f.timestamp_ms == 0 { now } else { f.timestamp_ms };
            let d = f.device_id;
            match &f.body {
                // Only a fix the plausibility filter took moves a device.
                Body::Position(p) => {
                    if fix {
                        self.event(d, RecordKind::Position, Some(*p), base, now);
                    }
                }
                Body::Monitoring(_) => self.event(d, RecordKind::Monitoring, None, base, now),
                Body::Event(_) => self.event(d, RecordKind::Event, None, base, now),
                Body::Hello(_) => self.event(d, RecordKind::Hello, None, base, now),
                Body::Batch(b) => {
                    // A batch moves the device to its newest accepted fix: one
                    // position update; its other samples one update each.
                    let newest = b
                        .samples
                        .iter()
                        .filter_map(|s| match s.record {
                            Record::Position(p) => {
                                Some((base.saturating_sub(u64::from(s.offset_ms)), p))
                            }
                            _ => None,
                        })
                        .max_by_key(|(t, _)| *t);
                    if let (true, Some((t, p))) = (fix, newest) {
                        self.event(d, RecordKind::Position, Some(p), t, now);
                    }
                    for s in b.samples.iter() {
                        let t = base.saturating_sub(u64::from(s.offset_ms));
                        match s.record {
                            Record::Monitoring(_) => {
                                self.event(d, RecordKind::Monitoring, None, t, now)
                            }
                            Record::Event(_) => self.event(d, RecordKind::Event, None, t, now),
                            Record::Position(_) => {}
                        }
                    }
                }
            }
        }
    }
}

/// A connected client: its place in the count and its window on the
/// broadcast. Dropping it frees the place.
pub(crate) struct ClientSlot {
    pub(crate) hub: Arc<StreamHub>,
    pub(crate) rx: broadcast::Receiver<Arc<Message>>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if self.hub.clients.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.hub.last_left_ms.store(now_ms(), Ordering::Relaxed);
        }
    }
}
