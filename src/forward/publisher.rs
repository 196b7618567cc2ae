//! The publisher task: drains the forwarding buffer into a JetStream
//! stream with batched, acknowledged publishes, reconnecting with backoff.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::buffer::{Forwarder, Pending};
use super::config::NatsConfig;

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
    let urls = cfg.server_addrs().map_err(|e| format!("url: {e}"))?;
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

/// Runs the publisher until the buffer is closed and empty. Once `stop` is
/// cancelled it keeps publishing for at most `drain_for` (however NATS is
/// doing), then counts whatever is still buffered as dropped (never sent)
/// or unconfirmed (sent, not acknowledged).
pub(crate) async fn run(fw: Arc<Forwarder>, stop: CancellationToken, drain_for: Duration) {
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(drain_for).await;
    };
    tokio::select! {
        _ = publish(&fw) => {}
        _ = deadline => {}
    }
    fw.drop_remaining();
    fw.set_connected(false);
}

/// Waits `backoff` and returns the next one (doubling to 5 s).
async fn back_off(backoff: Duration) -> Duration {
    tokio::time::sleep(backoff).await;
    (backoff * 2).min(Duration::from_secs(5))
}

/// How long one publish may wait for the client to take it (a NATS server
/// that stopped reading fills the connection, and publishes wait).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a batch waits for its acknowledgements.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one warning about failing publishes per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Failures of the publisher, said at `warn` level at most once per
/// [`WARN_EVERY`] (with what happened in between), and once at `info` when
/// publishing works again; the `fleetwire_forward_failing` gauge follows.
struct Failures<'a> {
    fw: &'a Forwarder,
    last_warn: Option<tokio::time::Instant>,
    /// Failures since the last warning.
    since: u64,
    /// `dropped` at the last warning.
    dropped_before: u64,
    failing: bool,
}

impl<'a> Failures<'a> {
    fn new(fw: &'a Forwarder) -> Self {
        Failures { fw, last_warn: None, since: 0, dropped_before: 0, failing: false }
    }

    fn failed(&mut self, what: &str, error: &str) {
        self.since += 1;
        self.failing = true;
        self.fw.set_failing(true);
        let now = tokio::time::Instant::now();
        if self.last_warn.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return;
        }
        let dropped = self.fw.metrics.dropped.get();
        tracing::warn!(
            error,
            url = %self.fw.cfg.url,
            failures = self.since,
            buffered = self.fw.buffered(),
            dropped = dropped - self.dropped_before.min(dropped),
            "{what}: records wait in the forwarding buffer and are retried (at most one such \
             line per 10 s; failures and dropped count since the last one)"
        );
        self.last_warn = Some(now);
        self.since = 0;
        self.dropped_before = dropped;
    }

    fn succeeded(&mut self) {
        if self.failing {
            tracing::info!(url = %self.fw.cfg.url, "publishing to NATS JetStream works again");
            self.failing = false;
            self.since = 0;
            self.last_warn = None;
        }
        self.fw.set_failing(false);
    }
}

/// Connects, makes sure the stream exists and publishes until the buffer
/// is closed and empty; on a lost connection, starts over.
async fn publish(fw: &Forwarder) {
    let cfg = fw.cfg.clone();
    let mut backoff = Duration::from_millis(100);
    let mut failures = Failures::new(fw);
    loop {
        if fw.is_closed() && fw.buffered() == 0 {
            return;
        }
        let client = match connect(&cfg).await {
            Ok(c) => c,
            Err(e) => {
                failures.failed("NATS connect failed", &e);
                backoff = back_off(backoff).await;
                continue;
            }
        };
        let js = async_nats::jetstream::new(client.clone());
        if let Err(e) = js.get_or_create_stream(stream_config(&cfg)).await {
            failures.failed("NATS JetStream stream unavailable", &e.to_string());
            backoff = back_off(backoff).await;
            continue;
        }
        tracing::info!(url = %cfg.url, stream = %cfg.stream, "forwarding accepted records to NATS JetStream");
        fw.set_connected(true);
        backoff = Duration::from_millis(100);
        loop {
            let batch = fw.take(cfg.batch);
            if batch.is_empty() {
                if fw.is_closed() {
                    return;
                }
                tokio::select! {
                    _ = fw.notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            match publish_batch(&js, fw, batch).await {
                Ok(()) => {
                    failures.succeeded();
                    backoff = Duration::from_millis(100);
                }
                Err((retry, error)) => {
                    let connected =
                        client.connection_state() == async_nats::connection::State::Connected;
                    fw.set_connected(connected);
                    fw.give_back(retry);
                    failures.failed("publishing to NATS JetStream fails", &error);
                    backoff = back_off(backoff).await;
                    if !connected {
                        // async-nats reconnects by itself; re-check the stream afterwards.
                        break;
                    }
                }
            }
        }
    }
}

/// Publishes a batch and waits for every acknowledgement. Returns the
/// records to retry (in their order; those handed to NATS marked as sent)
/// and the last error, if any failed.
async fn publish_batch(
    js: &async_nats::jetstream::Context,
    fw: &Forwarder,
    batch: Vec<Pending>,
) -> Result<(), (Vec<Pending>, String)> {
    let mut acks = Vec::with_capacity(batch.len());
    let mut failed: Vec<Pending> = Vec::new();
    let mut error = String::new();
    let mut iter = batch.into_iter();
    for mut p in iter.by_ref() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", p.msg_id.as_str());
        h.insert("Fleetwire-Received-Ms", p.received_ms.to_string().as_str());
        h.insert("Fleetwire-Transport", p.transport.as_str());
        // From here on it may reach the stream, whatever the outcome says.
        p.sent = true;
        let sent = js.publish_with_headers(p.subject.clone(), h, p.payload.clone());
        match tokio::time::timeout(PUBLISH_TIMEOUT, sent).await {
            Ok(Ok(ack)) => {
                fw.metrics.published.inc();
                acks.push((p, ack));
            }
            Ok(Err(e)) => {
                error = e.to_string();
                fw.metrics.failed.inc();
                failed.push(p);
                break;
            }
            Err(_) => {
                error = "publish timed out".into();
                fw.metrics.failed.inc();
                failed.push(p);
                break;
            }
        }
    }
    failed.extend(iter);
    let results = futures_util::future::join_all(acks.into_iter().map(|(p, ack)| async move {
        match tokio::time::timeout(ACK_TIMEOUT, ack).await {
            Ok(Ok(_)) => Ok(p),
            Ok(Err(e)) => Err((p, e.to_string())),
            Err(_) => Err((p, "acknowledgement timed out".to_string())),
        }
    }))
    .await;
    let mut nack = Vec::new();
    let mut acked = 0;
    for r in results {
        match r {
            Ok(p) => {
                acked += 1;
                fw.metrics.acknowledged.inc();
                if let Some(c) = &p.confirm {
                    c.confirm();
                }
            }
            Err((p, e)) => {
                error = e;
                fw.metrics.failed.inc();
                nack.push(p);
            }
        }
    }
    fw.done(acked);
    // Retry in the original order: acknowledged ones are done, the rest
    // (not acknowledged, then never sent) go back.
    nack.extend(failed);
    if nack.is_empty() { Ok(()) } else { Err((nack, error)) }
}
