//! `fleetwire serve`: binds the sockets, wires transports → pipeline →
//! engine → export, and shuts down gracefully.
//!
//! Like mini-redis, [`run`] takes already-bound sockets ([`Listeners`]) and
//! a shutdown future, so tests bind port 0 and stop the server when they like.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Config, ConfigError, listen_addr};
use crate::engine::Engine;
use crate::export::http::{AppState, router};
use crate::export::metrics::Metrics;
use crate::ingest::Pipeline;
use crate::policy::Policy;
use crate::replay::ReplayWindows;
use crate::transport::udp;
use crate::{now_ms, snapshot};

/// Sockets bound before the server runs.
pub struct Listeners {
    /// UDP ingest sockets (one per receive thread).
    pub udp: Vec<udp::BoundUdp>,
    /// QUIC ingest socket (with the same large receive buffer as UDP ingest).
    pub quic: Option<udp::BoundUdp>,
    /// HTTP listener.
    pub http: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds everything `cfg` asks for.
    pub fn bind(cfg: &Config) -> Result<Listeners, BindError> {
        let udp = match listen_addr("udp_listen", &cfg.udp_listen)? {
            Some(a) => udp::bind_all(a, cfg.udp_recv_buffer, cfg.udp_threads)
                .map_err(|e| BindError::Io("udp_listen", a, e))?,
            None => Vec::new(),
        };
        let quic = match listen_addr("quic_listen", &cfg.quic_listen)? {
            Some(a) => Some(
                udp::bind_for("QUIC", a, cfg.udp_recv_buffer, false)
                    .map_err(|e| BindError::Io("quic_listen", a, e))?,
            ),
            None => None,
        };
        let http = match listen_addr("http_listen", &cfg.http_listen)? {
            Some(a) => {
                let l = std::net::TcpListener::bind(a)
                    .map_err(|e| BindError::Io("http_listen", a, e))?;
                l.set_nonblocking(true).map_err(|e| BindError::Io("http_listen", a, e))?;
                Some(l)
            }
            None => None,
        };
        Ok(Listeners { udp, quic, http })
    }

    /// The bound UDP ingest address.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.first().and_then(|u| u.socket.local_addr().ok())
    }
    /// The bound QUIC address.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|u| u.socket.local_addr().ok())
    }
    /// The bound HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A setting is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be bound.
    #[error("cannot listen on {1} ({0}): {2}")]
    Io(&'static str, SocketAddr, std::io::Error),
    /// TLS material could not be loaded or made.
    #[error("QUIC/TLS setup: {0}")]
    Tls(String),
    /// The keys file could not be read.
    #[error(transparent)]
    Keys(#[from] crate::policy::KeysError),
}

/// What the server did, reported at shutdown.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Fleet totals at the end.
    pub summary: crate::engine::Summary,
    /// Where the final snapshot went, if one was written.
    pub snapshot: Option<PathBuf>,
}

/// Runs the server until `shutdown` resolves, then stops receiving, drains
/// the sockets, writes a snapshot and returns.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, BindError> {
    let started = Instant::now();
    let engine = Arc::new(Engine::new(cfg.engine(), cfg.effective_shards()));
    if cfg.snapshot {
        match snapshot::read(&cfg.data_dir) {
            Ok(Some(s)) => {
                let n = s.devices.len();
                engine.restore(s.devices, Some(s.totals));
                tracing::info!(devices = n, taken_ms = s.taken_ms, dir = %cfg.data_dir.display(), "restored device state");
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "could not restore device state; starting empty"),
        }
    }
    let metrics = Arc::new(Metrics::new());
    let mut policy = Policy::from_config(&cfg)?;
    if cfg.snapshot {
        match ReplayWindows::load(&cfg.data_dir) {
            Ok(Some(w)) => {
                tracing::info!(devices = w.len(), "restored anti-replay windows");
                policy.set_replay_windows(w);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "could not restore anti-replay windows"),
        }
        // The engine's sequence state of keyed devices also bounds what
        // they sent: nothing at or below it is accepted again, even if the
        // replay file was lost.
        engine.for_each_shard(|s| {
            for d in s.devices() {
                if let Some(h) = d.seq.highest().filter(|_| policy.has_key(d.id)) {
                    policy.replay_windows().seed(d.id, h);
                }
            }
        });
    }
    metrics.keys_loaded.set(policy.key_count() as f64);
    let mut pipeline = Pipeline::new(engine.clone(), metrics.clone(), policy);
    let (fw_stop_tx, fw_stop_rx) = tokio::sync::watch::channel(false);
    let mut forward_task = None;
    if cfg.forward.nats.enabled() {
        let fw = Arc::new(crate::forward::Forwarder::new(
            cfg.forward.nats.clone(),
            metrics.forward.clone(),
        ));
        pipeline = pipeline.with_forwarder(fw.clone());
        forward_task = Some(tokio::spawn(crate::forward::run(fw, fw_stop_rx, FORWARD_DRAIN)));
    }
    let pipeline = Arc::new(pipeline);
    let stop = Arc::new(AtomicBool::new(false));
    let mut listening = Vec::new();

    // UDP receive threads.
    let mut udp_threads = Vec::new();
    let mut inodes = Vec::new();
    for (i, b) in listeners.udp.into_iter().enumerate() {
        let addr = b.socket.local_addr().ok();
        metrics.udp_buffer.set((b.granted_buffer / 2) as f64);
        if i == 0 {
            if let Some(a) = addr {
                tracing::info!(transport = "udp", addr = %a, threads = cfg.udp_threads, "listening");
                listening.push(("udp".to_string(), a.to_string()));
            }
        }
        inodes.extend(udp::inode(&b.socket));
        let h = udp::spawn(
            b.socket,
            cfg.udp_batch,
            pipeline.clone(),
            stop.clone(),
            format!("udp-rx-{i}"),
        )
        .map_err(|e| BindError::Tls(format!("cannot start UDP thread: {e}")))?;
        udp_threads.push(h);
    }

    // QUIC.
    let mut quic_inodes = Vec::new();
    let quic = match listeners.quic {
        Some(b) => {
            quic_inodes.extend(udp::inode(&b.socket));
            let q = crate::transport::quic::start(&cfg, b.socket, pipeline.clone())?;
            tracing::info!(transport = "quic", addr = %q.addr, alpn = "fleetwire/1", "listening");
            listening.push(("quic".to_string(), q.addr.to_string()));
            Some(q)
        }
        None => None,
    };

    // HTTP.
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http_task = match listeners.http {
        Some(l) => {
            let addr = l.local_addr().ok();
            let l = tokio::net::TcpListener::from_std(l)
                .map_err(|e| BindError::Tls(format!("http listener: {e}")))?;
            if let Some(a) = addr {
                tracing::info!(transport = "http", addr = %a, "listening (/metrics, /api, /healthz)");
                listening.push(("http".to_string(), a.to_string()));
            }
            let state = Arc::new(AppState {
                engine: engine.clone(),
                metrics: metrics.clone(),
                pipeline: Some(pipeline.clone()),
                udp_inodes: inodes.clone(),
                quic_inodes,
                started,
                listening: listening.clone(),
            });
            let app = router(state);
            Some(tokio::spawn(async move {
                let r = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = http_stop_rx.await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            }))
        }
        None => None,
    };

    // Upkeep: ticks, periodic snapshots, key reloads on SIGHUP.
    let upkeep = {
        let engine = engine.clone();
        let pipeline = pipeline.clone();
        let metrics = metrics.clone();
        let dir = cfg.data_dir.clone();
        let snap_every =
            (cfg.snapshot && !cfg.snapshot_interval.is_zero()).then_some(cfg.snapshot_interval);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_snap = Instant::now();
            loop {
                tick.tick().await;
                engine.tick(now_ms());
                if snap_every.is_some_and(|every| last_snap.elapsed() >= every) {
                    last_snap = Instant::now();
                    let (engine, metrics, dir) = (engine.clone(), metrics.clone(), dir.clone());
                    let pipeline = pipeline.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        save(&engine, pipeline.policy(), &metrics, &dir)
                    })
                    .await;
                }
            }
        })
    };
    let hup = spawn_sighup(pipeline.clone());

    shutdown.await;
    tracing::info!("shutting down: draining sockets");
    stop.store(true, Ordering::Relaxed);
    for h in udp_threads {
        let _ = tokio::task::spawn_blocking(move || h.join()).await;
    }
    if let Some(q) = quic {
        q.shutdown().await;
    }
    // Publish what is still buffered (for a few seconds at most).
    let _ = fw_stop_tx.send(true);
    if let Some(t) = forward_task {
        // The task itself gives up after FORWARD_DRAIN and counts what it
        // could not publish; this timeout only guards against a bug there.
        let _ = tokio::time::timeout(FORWARD_DRAIN + Duration::from_secs(1), t).await;
    }
    upkeep.abort();
    if let Some(h) = hup {
        h.abort();
    }
    let _ = http_stop_tx.send(());
    if let Some(t) = http_task {
        let _ = tokio::time::timeout(Duration::from_millis(500), t).await;
    }
    engine.tick(now_ms());
    let snapshot = if cfg.snapshot {
        let (e, m, d) = (engine.clone(), metrics.clone(), cfg.data_dir.clone());
        let p = pipeline.clone();
        tokio::task::spawn_blocking(move || {
            save(&e, p.policy(), &m, &d).then(|| d.join(snapshot::FILE))
        })
        .await
        .ok()
        .flatten()
    } else {
        None
    };
    let summary = engine.summary();
    let t = &summary.totals;
    tracing::info!(
        devices = summary.devices,
        positions = t.records[0],
        monitoring = t.records[1],
        events = t.records[2],
        lost = t.lost(),
        duplicates = t.duplicates,
        reordered = t.reordered,
        snapshot = ?snapshot,
        "stopped"
    );
    Ok(RunSummary { summary, snapshot })
}

/// How long a stopping server keeps publishing buffered records to NATS.
const FORWARD_DRAIN: Duration = Duration::from_secs(2);

/// Writes the anti-replay windows and a snapshot, counting the outcome.
/// Returns whether it worked.
fn save(engine: &Engine, policy: &Policy, metrics: &Metrics, dir: &std::path::Path) -> bool {
    let t = Instant::now();
    if let Err(e) = policy.replay_windows().save(dir) {
        metrics.snapshot_failures.increment(1);
        tracing::error!(error = %e, "saving the anti-replay windows failed");
        return false;
    }
    match snapshot::write_engine(engine, dir, now_ms()) {
        Ok((bytes, devices)) => {
            metrics.snapshots.increment(1);
            tracing::debug!(devices, bytes, elapsed = ?t.elapsed(), "snapshot written");
            true
        }
        Err(e) => {
            metrics.snapshot_failures.increment(1);
            tracing::error!(error = %e, "snapshot failed");
            false
        }
    }
}

#[cfg(unix)]
fn spawn_sighup(pipeline: Arc<Pipeline>) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).ok()?;
    Some(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match pipeline.policy().reload_keys() {
                Ok(n) => {
                    pipeline.metrics().key_reloads_ok.increment(1);
                    pipeline.metrics().keys_loaded.set(n as f64);
                    tracing::info!(keys = n, "reloaded device keys (SIGHUP)");
                }
                Err(e) => {
                    pipeline.metrics().key_reloads_failed.increment(1);
                    tracing::error!(error = %e, "keys reload failed; keeping the previous keys");
                }
            }
        }
    }))
}

#[cfg(not(unix))]
fn spawn_sighup(_: Arc<Pipeline>) -> Option<tokio::task::JoinHandle<()>> {
    None
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
