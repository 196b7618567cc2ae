//! Forwarding accepted records to NATS JetStream.
//!
//! Every record the engine accepts (a batch counts each sample; duplicates
//! and replays are not records) is encoded as a standalone wire-protocol
//! frame (PROTOCOL.md: the same bytes a device would send for that one
//! record, sample time as timestamp) and published to
//! `<subject_prefix>.<device id>.<kind>` in a JetStream stream, with headers
//! `Nats-Msg-Id` (JetStream de-duplicates retries), `Fleetwire-Received-Ms`
//! and `Fleetwire-Transport`.
//!
//! The ingest path never waits for NATS: records go into a bounded buffer
//! (`buffer` records). When it is full the **oldest** record is dropped and
//! counted (`fleetwire_forward_dropped_total`). A publisher task drains the
//! buffer in batches with asynchronous acknowledgements; a record whose
//! publish fails or is not acknowledged goes back to the front of the
//! buffer and is retried after a backoff (100 ms doubling to 5 s), so a
//! NATS outage costs at most what overflows the buffer, and every such loss
//! is counted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fleetwire_proto::{Body, Frame, MAX_FRAME_LEN, Record, encode};
use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::ingest::Transport;

/// `[forward.nats]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated; empty = forwarding off.
    pub url: String,
    /// User name (with `password`).
    pub user: String,
    /// Password.
    pub password: String,
    /// Token authentication.
    pub token: String,
    /// A `.creds` file (JWT + NKey).
    pub creds_file: std::path::PathBuf,
    /// Subjects are `<subject_prefix>.<device>.<kind>`.
    pub subject_prefix: String,
    /// JetStream stream, created if absent with subjects `<subject_prefix>.>`.
    pub stream: String,
    /// Retention: oldest messages are removed after this age ("0s" = no limit).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Retention: most bytes in the stream (0 = no limit).
    pub max_bytes: i64,
    /// Retention: most messages in the stream (0 = no limit).
    pub max_messages: i64,
    /// "file" or "memory".
    pub storage: String,
    /// Stream replicas (in a JetStream cluster).
    pub replicas: usize,
    /// JetStream de-duplication window for retried publishes.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Most records waiting to be published; beyond, the oldest is dropped.
    pub buffer: usize,
    /// Most publishes in flight (awaiting acknowledgement) at once.
    pub batch: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: String::new(),
            user: String::new(),
            password: String::new(),
            token: String::new(),
            creds_file: std::path::PathBuf::new(),
            subject_prefix: "fleetwire".into(),
            stream: "FLEETWIRE".into(),
            max_age: Duration::from_secs(7 * 86_400),
            max_bytes: 0,
            max_messages: 0,
            storage: "file".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            buffer: 100_000,
            batch: 256,
        }
    }
}

/// `[forward]` configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// NATS JetStream.
    pub nats: NatsConfig,
}

impl NatsConfig {
    /// Whether forwarding is on.
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// Checks values; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !self.enabled() {
            return Ok(());
        }
        let ok_token = |s: &str| {
            !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !ok_token(&self.subject_prefix) {
            return Err((
                "forward.nats.subject_prefix",
                "must be a single subject token ([A-Za-z0-9_-]+)",
            ));
        }
        if !ok_token(&self.stream) {
            return Err(("forward.nats.stream", "must be a stream name ([A-Za-z0-9_-]+)"));
        }
        if !matches!(self.storage.as_str(), "file" | "memory") {
            return Err(("forward.nats.storage", "must be \"file\" or \"memory\""));
        }
        if self.buffer == 0 {
            return Err(("forward.nats.buffer", "must be at least 1"));
        }
        if self.batch == 0 || self.batch > 65_536 {
            return Err(("forward.nats.batch", "must be 1 to 65536"));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(("forward.nats.replicas", "must be 1 to 5"));
        }
        if self.url.split(',').any(|u| u.trim().parse::<async_nats::ServerAddr>().is_err()) {
            return Err((
                "forward.nats.url",
                "must be one or more comma-separated NATS URLs like nats://127.0.0.1:4222",
            ));
        }
        if !self.creds_file.as_os_str().is_empty() && !self.creds_file.is_file() {
            return Err(("forward.nats.creds_file", "is not a readable file"));
        }
        Ok(())
    }
}

/// One record waiting to be published.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Subject.
    pub subject: String,
    /// `Nats-Msg-Id`.
    pub msg_id: String,
    /// The record as a standalone frame.
    pub payload: Bytes,
    /// Server receive time, Unix ms.
    pub received_ms: u64,
    /// Transport it came in on.
    pub transport: Transport,
}

/// Counters of the forwarder (also exported as metrics).
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Records handed to NATS (retries included).
    pub published: AtomicU64,
    /// Records JetStream acknowledged.
    pub acknowledged: AtomicU64,
    /// Publishes that failed or were not acknowledged in time (then retried).
    pub failed: AtomicU64,
    /// Records dropped because the buffer was full (the oldest first).
    pub dropped: AtomicU64,
    /// Records queued.
    pub enqueued: AtomicU64,
}

/// Metric handles of the forwarder.
#[derive(Clone)]
pub struct ForwardMetrics {
    /// `fleetwire_forward_published_total`.
    pub published: Counter,
    /// `fleetwire_forward_acknowledged_total`.
    pub acknowledged: Counter,
    /// `fleetwire_forward_failed_total`.
    pub failed: Counter,
    /// `fleetwire_forward_dropped_total`.
    pub dropped: Counter,
    /// `fleetwire_forward_buffered`.
    pub buffered: Gauge,
    /// `fleetwire_forward_connected`.
    pub connected: Gauge,
}

/// The bounded buffer between the ingest path and the publisher.
pub struct Forwarder {
    cfg: NatsConfig,
    queue: Mutex<VecDeque<Pending>>,
    notify: tokio::sync::Notify,
    /// Counters.
    pub stats: ForwardStats,
    metrics: ForwardMetrics,
    connected: AtomicBool,
}

impl Forwarder {
    /// A forwarder for `cfg`, counting into `metrics`.
    pub fn new(cfg: NatsConfig, metrics: ForwardMetrics) -> Self {
        Forwarder {
            queue: Mutex::new(VecDeque::with_capacity(cfg.buffer.min(1 << 16))),
            cfg,
            notify: tokio::sync::Notify::new(),
            stats: ForwardStats::default(),
            metrics,
            connected: AtomicBool::new(false),
        }
    }

    /// Whether the publisher is connected.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Records waiting.
    pub fn buffered(&self) -> usize {
        self.queue.lock().len()
    }

    fn push_all(&self, items: impl IntoIterator<Item = Pending>, front: bool) {
        let mut q = self.queue.lock();
        let mut dropped = 0u64;
        let mut n = 0u64;
        for p in items {
            if front {
                // Retried records are older than everything queued: when
                // the buffer is full they are the oldest, so they go.
                // (Callers push retries newest first.)
                if q.len() >= self.cfg.buffer {
                    dropped += 1;
                } else {
                    q.push_front(p);
                }
            } else {
                if q.len() >= self.cfg.buffer {
                    q.pop_front();
                    dropped += 1;
                }
                q.push_back(p);
                n += 1;
            }
        }
        let len = q.len();
        drop(q);
        self.stats.enqueued.fetch_add(n, Ordering::Relaxed);
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            self.metrics.dropped.increment(dropped);
        }
        self.metrics.buffered.set(len as f64);
        self.notify.notify_one();
    }

    /// Queues every record of an accepted frame. Never blocks on NATS.
    pub fn push_frame(&self, frame: &Frame<'_>, now_ms: u64, transport: Transport) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let base = if frame.timestamp_ms == 0 { now_ms } else { frame.timestamp_ms };
        let mut out: arrayvec::ArrayVec<Pending, 16> = arrayvec::ArrayVec::new();
        let mut one =
            |idx: usize, t_ms: u64, body: Body<'_>, out: &mut arrayvec::ArrayVec<Pending, 16>| {
                let f = Frame::new(frame.device_id, frame.sequence, t_ms, body);
                let Ok(n) = encode(&f, &mut buf) else { return };
                let payload = Bytes::copy_from_slice(&buf[..n]);
                let crc = fleetwire_proto::crc32c(&payload);
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
                };
                if out.is_full() {
                    self.push_all(out.drain(..), false);
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
        self.push_all(out, false);
    }

    fn take(&self, n: usize) -> Vec<Pending> {
        let mut q = self.queue.lock();
        let k = n.min(q.len());
        let v: Vec<Pending> = q.drain(..k).collect();
        self.metrics.buffered.set(q.len() as f64);
        v
    }

    /// Counts what is still buffered as dropped (at shutdown, when the
    /// drain time is over), so nothing accepted goes unaccounted.
    fn drop_remaining(&self) {
        let n = {
            let mut q = self.queue.lock();
            let n = q.len();
            q.clear();
            n as u64
        };
        if n > 0 {
            tracing::warn!(
                records = n,
                "shutting down with records not yet forwarded to NATS: counted as dropped"
            );
            self.stats.dropped.fetch_add(n, Ordering::Relaxed);
            self.metrics.dropped.increment(n);
        }
        self.metrics.buffered.set(0.0);
    }

    fn set_connected(&self, c: bool) {
        self.connected.store(c, Ordering::Relaxed);
        self.metrics.connected.set(if c { 1.0 } else { 0.0 });
    }
}

async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client, String> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("fleetwire")
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None);
    if !cfg.user.is_empty() {
        opts = opts.user_and_password(cfg.user.clone(), cfg.password.clone());
    }
    if !cfg.token.is_empty() {
        opts = opts.token(cfg.token.clone());
    }
    if !cfg.creds_file.as_os_str().is_empty() {
        opts =
            opts.credentials_file(&cfg.creds_file).await.map_err(|e| format!("creds_file: {e}"))?;
    }
    let urls: Vec<async_nats::ServerAddr> = cfg
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("url: {e}"))?;
    opts.connect(urls).await.map_err(|e| e.to_string())
}

fn stream_config(cfg: &NatsConfig) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream::{Config, StorageType};
    Config {
        name: cfg.stream.clone(),
        subjects: vec![format!("{}.>", cfg.subject_prefix)],
        max_age: cfg.max_age,
        max_bytes: if cfg.max_bytes > 0 { cfg.max_bytes } else { -1 },
        max_messages: if cfg.max_messages > 0 { cfg.max_messages } else { -1 },
        storage: if cfg.storage == "memory" { StorageType::Memory } else { StorageType::File },
        num_replicas: cfg.replicas,
        duplicate_window: cfg.duplicate_window,
        ..Default::default()
    }
}

/// Runs the publisher until `stop` resolves; then publishes what is left
/// (for at most `drain_for`) and counts anything still buffered as dropped.
pub async fn run(
    fw: Arc<Forwarder>,
    stop: tokio::sync::watch::Receiver<bool>,
    drain_for: Duration,
) {
    let mut stop2 = stop.clone();
    let runner = run_inner(fw.clone(), stop, drain_for);
    tokio::pin!(runner);
    tokio::select! {
        _ = &mut runner => {}
        _ = async {
            // However the publisher is doing, stop waiting drain_for after
            // the stop signal.
            while !*stop2.borrow() {
                if stop2.changed().await.is_err() {
                    break;
                }
            }
            tokio::time::sleep(drain_for).await;
        } => {}
    }
    fw.drop_remaining();
    fw.set_connected(false);
}

async fn run_inner(
    fw: Arc<Forwarder>,
    stop: tokio::sync::watch::Receiver<bool>,
    drain_for: Duration,
) {
    let cfg = fw.cfg.clone();
    let mut backoff = Duration::from_millis(100);
    let mut stop = stop;
    'outer: loop {
        if *stop.borrow() {
            return;
        }
        let client = match connect(&cfg).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, url = %cfg.url, "NATS connect failed; retrying");
                tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = stop.changed() => return }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let js = async_nats::jetstream::new(client.clone());
        if let Err(e) = js.get_or_create_stream(stream_config(&cfg)).await {
            tracing::warn!(error = %e, stream = %cfg.stream, "JetStream stream unavailable; retrying");
            tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = stop.changed() => return }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        tracing::info!(url = %cfg.url, stream = %cfg.stream, "forwarding accepted records to NATS JetStream");
        fw.set_connected(true);
        backoff = Duration::from_millis(100);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let stopping = *stop.borrow();
            if stopping && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + drain_for);
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return;
            }
            let batch = fw.take(cfg.batch);
            if batch.is_empty() {
                if stopping {
                    return;
                }
                tokio::select! {
                    _ = fw.notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            match publish_batch(&js, &fw, batch).await {
                Ok(()) => {}
                Err(retry) => {
                    fw.set_connected(
                        client.connection_state() == async_nats::connection::State::Connected,
                    );
                    fw.push_all(retry.into_iter().rev(), true);
                    tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = stop.changed() => {} }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if client.connection_state() != async_nats::connection::State::Connected {
                        // async-nats reconnects by itself; re-check the stream afterwards.
                        fw.set_connected(false);
                        if stopping {
                            return;
                        }
                        continue 'outer;
                    }
                }
            }
        }
    }
}

/// Publishes a batch and waits for every acknowledgement. Returns the
/// records to retry, if any failed.
async fn publish_batch(
    js: &async_nats::jetstream::Context,
    fw: &Forwarder,
    batch: Vec<Pending>,
) -> Result<(), Vec<Pending>> {
    let mut acks = Vec::with_capacity(batch.len());
    let mut failed: Vec<Pending> = Vec::new();
    let mut iter = batch.into_iter();
    for p in iter.by_ref() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", p.msg_id.as_str());
        h.insert("Fleetwire-Received-Ms", p.received_ms.to_string().as_str());
        h.insert("Fleetwire-Transport", p.transport.as_str());
        match js.publish_with_headers(p.subject.clone(), h, p.payload.clone()).await {
            Ok(ack) => {
                fw.stats.published.fetch_add(1, Ordering::Relaxed);
                fw.metrics.published.increment(1);
                acks.push((p, ack));
            }
            Err(e) => {
                tracing::debug!(error = %e, "publish failed");
                fw.stats.failed.fetch_add(1, Ordering::Relaxed);
                fw.metrics.failed.increment(1);
                failed.push(p);
                break;
            }
        }
    }
    failed.extend(iter);
    let results = futures_util::future::join_all(acks.into_iter().map(|(p, ack)| async move {
        match tokio::time::timeout(Duration::from_secs(10), ack).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err((p, e.to_string())),
            Err(_) => Err((p, "acknowledgement timed out".to_string())),
        }
    }))
    .await;
    let mut nack = Vec::new();
    for r in results {
        match r {
            Ok(()) => {
                fw.stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                fw.metrics.acknowledged.increment(1);
            }
            Err((p, e)) => {
                tracing::debug!(error = %e, "publish not acknowledged");
                fw.stats.failed.fetch_add(1, Ordering::Relaxed);
                fw.metrics.failed.increment(1);
                nack.push(p);
            }
        }
    }
    // Retry in the original order: acknowledged ones are done, the rest
    // (not acknowledged, then never sent) go back to the front.
    nack.extend(failed);
    if nack.is_empty() { Ok(()) } else { Err(nack) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwire_proto::{Batch, Event, Sample, Seq, Severity};

    fn metrics() -> ForwardMetrics {
        ForwardMetrics {
            published: Counter::noop(),
            acknowledged: Counter::noop(),
            failed: Counter::noop(),
            dropped: Counter::noop(),
            buffered: Gauge::noop(),
            connected: Gauge::noop(),
        }
    }

    #[test]
    fn batches_become_one_message_per_sample_and_the_buffer_drops_oldest() {
        let fw = Forwarder::new(NatsConfig { buffer: 5, ..NatsConfig::default() }, metrics());
        let ev = |c| Record::Event(Event { code: c, severity: Severity::Info, text: None });
        let samples: Vec<Sample<'_>> =
            (0..3).map(|i| Sample { offset_ms: 1000 * (3 - i), record: ev(i as u16) }).collect();
        let f = Frame::new(9, 4, 10_000, Body::Batch(Batch { samples: Seq::from_slice(&samples) }));
        fw.push_frame(&f, 20_000, Transport::Udp);
        assert_eq!(fw.buffered(), 3);
        let got = fw.take(10);
        assert_eq!(got[0].subject, "fleetwire.9.event");
        let first = fleetwire_proto::decode(&got[0].payload).unwrap();
        assert_eq!((first.device_id, first.sequence, first.timestamp_ms), (9, 4, 7_000));
        assert_ne!(got[0].msg_id, got[1].msg_id);
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
            );
        }
        fw.push_frame(&f, 20_000, Transport::Udp);
        assert_eq!(fw.buffered(), 5);
        assert_eq!(fw.stats.dropped.load(Ordering::Relaxed), 2);
        let left = fw.take(10);
        assert_eq!(
            fleetwire_proto::decode(&left[0].payload).unwrap().sequence,
            12,
            "the oldest went first"
        );
    }
}
