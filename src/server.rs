//! `fleetwire serve`: binds the sockets, wires transports → pipeline →
//! engine → export and forwarding, and shuts down in a written order.
//!
//! Like mini-redis, [`run`] takes already-bound sockets ([`Listeners`]) and
//! a shutdown future, so tests bind port 0 and stop the server when they
//! like. [`Running::start`] is a list of named phases; [`Running::shutdown`]
//! says the order things stop in. There is one stop signal (a
//! [`CancellationToken`]) that every task watches; nothing is aborted.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::{Config, ConfigError, listen_addr};
use crate::engine::{Engine, RecordKind};
use crate::export::auth::{Tokens, TokensError};
use crate::export::http::{self, HttpState};
use crate::forward::{self, Forwarder};
use crate::ingest::replay::ReplayWindows;
use crate::ingest::{
    DeviceRegistry, DevicesFileError, IngestCounters, KeysError, Pipeline, Policy, RecordSink,
};
use crate::journal::{self, Journal, JournalMark, JournalMetrics};
use crate::snapshot;
use crate::store::{Store, StoreError};
use crate::stream::StreamHub;
use crate::telemetry::{Counter, Registry};
use crate::transport::osmand;
use crate::transport::quic::{self, QuicEndpoint};
use crate::transport::teltonika::TeltonikaReceiver;
use crate::transport::udp::{self, BoundUdp, UdpReceivers};

/// Sockets bound before the server runs.
pub struct Listeners {
    udp: Vec<BoundUdp>,
    quic: Option<BoundUdp>,
    http: Option<std::net::TcpListener>,
    teltonika: Option<BoundUdp>,
    osmand: Option<std::net::TcpListener>,
}

/// A TCP listener for `key`'s address, non-blocking (for tokio).
fn tcp_listener(
    key: &'static str,
    value: &str,
) -> Result<Option<std::net::TcpListener>, ServerError> {
    let Some(a) = listen_addr(key, value)? else { return Ok(None) };
    std::net::TcpListener::bind(a)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map(Some)
        .map_err(|source| ServerError::Bind { key, addr: a, source })
}

impl Listeners {
    /// Binds everything `cfg` asks for.
    pub fn bind(cfg: &Config) -> Result<Listeners, ServerError> {
        let bind = |key, source| move |a| ServerError::Bind { key, addr: a, source };
        let udp = match listen_addr("udp_listen", &cfg.udp_listen)? {
            Some(a) => udp::bind_all(a, cfg.udp_recv_buffer, cfg.udp_threads)
                .map_err(|e| bind("udp_listen", e)(a))?,
            None => Vec::new(),
        };
        let quic = match listen_addr("quic_listen", &cfg.quic_listen)? {
            Some(a) => Some(
                udp::bind_for("QUIC", a, cfg.udp_recv_buffer, false)
                    .map_err(|e| bind("quic_listen", e)(a))?,
            ),
            None => None,
        };
        let http = tcp_listener("http_listen", &cfg.http_listen)?;
        let teltonika = match listen_addr("teltonika_listen", &cfg.teltonika_listen)? {
            Some(a) => Some(
                udp::bind_for("Teltonika", a, cfg.udp_recv_buffer, false)
                    .map_err(|e| bind("teltonika_listen", e)(a))?,
            ),
            None => None,
        };
        let osmand = tcp_listener("osmand_listen", &cfg.osmand_listen)?;
        Ok(Listeners { udp, quic, http, teltonika, osmand })
    }

    /// The bound UDP ingest address.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.first().and_then(|u| u.local_addr().ok())
    }

    /// The bound QUIC address.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|u| u.local_addr().ok())
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound Teltonika address.
    pub fn teltonika_addr(&self) -> Option<SocketAddr> {
        self.teltonika.as_ref().and_then(|u| u.local_addr().ok())
    }

    /// The bound OsmAnd address.
    pub fn osmand_addr(&self) -> Option<SocketAddr> {
        self.osmand.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Why the server could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The setting naming the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The keys file could not be read.
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// The devices file could not be read.
    #[error(transparent)]
    Devices(#[from] DevicesFileError),
    /// The API tokens file could not be read.
    #[error(transparent)]
    Tokens(#[from] TokensError),
    /// The QUIC endpoint could not start.
    #[error(transparent)]
    Quic(#[from] quic::StartError),
    /// A thread or the HTTP listener could not be started.
    #[error("cannot start {what}: {source}")]
    Start {
        /// What.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The server stopped, but its final snapshot could not be written:
    /// what changed since the last snapshot that was written is lost.
    #[error(
        "the final snapshot could not be written ({0}); the device state since the last \
         snapshot written is lost"
    )]
    FinalSnapshot(StoreError),
}

impl ServerError {
    /// Whether a setting is to blame: the exit code is then 2.
    pub fn is_config(&self) -> bool {
        match self {
            ServerError::Config(_)
            | ServerError::Keys(_)
            | ServerError::Devices(_)
            | ServerError::Tokens(_) => true,
            ServerError::Quic(e) => e.is_config(),
            ServerError::Bind { .. }
            | ServerError::Start { .. }
            | ServerError::FinalSnapshot(_) => false,
        }
    }
}

/// What the server did, reported when it stops.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Devices tracked at the end.
    pub devices: u64,
    /// Records accepted over the server's life (restored counters included).
    pub records: u64,
    /// Where the final snapshot went, if one was written.
    pub snapshot: Option<PathBuf>,
}

/// Runs the server until `shutdown` resolves, then stops it (see
/// [`Running::shutdown`]); SIGHUP reloads the keys and tokens while it
/// runs. An error if it could not start, or if its final snapshot could
/// not be written.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, ServerError> {
    let hangup = Arc::new(Notify::new());
    let server = Running::start(cfg, listeners, hangup.clone()).await?;
    let hangups = tokio::spawn(forward_hangups(hangup, server.stop.clone()));
    shutdown.await;
    let summary = server.shutdown().await;
    let _ = hangups.await;
    summary
}

/// Runs the server as `fleetwire serve` does, with the process's
/// [`Signals`] (installed before anything was bound or restored): until
/// SIGTERM or SIGINT, which stops it, also when it came during start-up
/// (the restore completes, so the final snapshot holds at least what was
/// restored); a SIGHUP during start-up is applied once the server runs.
pub async fn serve(
    cfg: Config,
    listeners: Listeners,
    signals: Signals,
) -> Result<RunSummary, ServerError> {
    let server = Running::start(cfg, listeners, signals.hangup.clone()).await?;
    signals.started.store(true, Ordering::SeqCst);
    if signals.stop.is_cancelled() {
        tracing::info!("started: stopping at once (a stop signal came during start-up)");
    }
    signals.stop.cancelled().await;
    server.shutdown().await
}

/// The signals of a `fleetwire serve` process, listened to from the start
/// (before the sockets are bound and the state restored, which takes
/// seconds with a million devices), so that none of them ends the process
/// by its default action: SIGTERM and SIGINT stop the server (once it has
/// started), SIGHUP reloads the keys and tokens (once it has started, if
/// it came before). Each is logged when it arrives.
pub struct Signals {
    stop: CancellationToken,
    hangup: Arc<Notify>,
    started: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the handlers of SIGTERM, SIGINT and SIGHUP (Ctrl-C only,
    /// without Unix signals). Must be called within a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        let signals = Signals {
            stop: CancellationToken::new(),
            hangup: Arc::new(Notify::new()),
            started: Arc::new(AtomicBool::new(false)),
        };
        let (stop, hangup, started) =
            (signals.stop.clone(), signals.hangup.clone(), signals.started.clone());
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            // Registered here, before this returns: a signal that comes
            // later is seen, whenever the task below gets to run.
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let mut hup = signal(SignalKind::hangup())?;
            tokio::spawn(async move {
                loop {
                    let name = tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = int.recv() => "SIGINT",
                        _ = hup.recv() => {
                            if !started.load(Ordering::SeqCst) {
                                tracing::info!(
                                    "SIGHUP during start-up: the keys and tokens are reloaded \
                                     once the server runs"
                                );
                            }
                            hangup.notify_one();
                            continue;
                        }
                    };
                    stopping(name, &stop, &started);
                }
            });
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            let _ = (&hangup, &started);
            while tokio::signal::ctrl_c().await.is_ok() {
                stopping("Ctrl-C", &stop, &started);
            }
        });
        Ok(signals)
    }
}

/// A stop signal arrived: says so and stops the server.
fn stopping(name: &str, stop: &CancellationToken, started: &AtomicBool) {
    if stop.is_cancelled() {
        tracing::info!(signal = name, "stop signal received; already stopping");
    } else if started.load(Ordering::SeqCst) {
        tracing::info!(signal = name, "stop signal received");
    } else {
        tracing::info!(
            signal = name,
            "stop signal received during start-up: stopping once the state is restored"
        );
    }
    stop.cancel();
}

/// Hands each SIGHUP to `hangup` until `stop` (for [`run`]; [`serve`]
/// gets them from its [`Signals`]).
async fn forward_hangups(hangup: Arc<Notify>, stop: CancellationToken) {
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = hup.recv() => hangup.notify_one(),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (hangup, stop);
}

/// How long a stopping server keeps publishing buffered records to NATS.
const FORWARD_DRAIN: Duration = Duration::from_secs(2);
/// How long a stopping server waits for HTTP requests in progress.
const HTTP_DRAIN: Duration = Duration::from_millis(500);

/// Writes the state files (anti-replay windows, then the engine snapshot),
/// one save at a time, and counts the outcome.
struct Saver {
    store: Store,
    /// The data dir (for errors).
    dir: PathBuf,
    engine: Arc<Engine>,
    pipeline: Arc<Pipeline>,
    registry: Arc<DeviceRegistry>,
    /// Synced and moved to a new file before each snapshot, compacted
    /// after it.
    journal: Arc<parking_lot::Mutex<Journal>>,
    /// Periodic saves give up at the stop signal: the final one follows.
    stop: CancellationToken,
    snapshots: Counter,
    failures: Counter,
}

impl Saver {
    fn new(
        dir: &std::path::Path,
        (engine, pipeline, registry): (Arc<Engine>, Arc<Pipeline>, Arc<DeviceRegistry>),
        journal: Arc<parking_lot::Mutex<Journal>>,
        stop: CancellationToken,
        r: &Registry,
    ) -> Self {
        Saver {
            store: Store::new(dir),
            dir: dir.to_path_buf(),
            engine,
            pipeline,
            registry,
            journal,
            stop,
            snapshots: r.counter(
                "fleetwire_snapshots_total",
                "Device-state snapshots written to the data dir.",
                &[],
            ),
            failures: r.counter(
                "fleetwire_snapshot_failures_total",
                "Device-state snapshot writes that failed.",
                &[],
            ),
        }
    }

    /// Saves now (blocking). Saves never overlap: the store lets one
    /// writer in at a time. A `periodic` save gives up between two shards
    /// once the stop signal came (`Cancelled`: the final save, which is
    /// not periodic, writes the newer state right after). A failure is
    /// counted and logged.
    fn save(&self, periodic: bool) -> Result<(), StoreError> {
        let t = Instant::now();
        let cancel = || periodic && self.stop.is_cancelled();
        let r = self.store.exclusive(|dir| -> Result<(usize, usize), StoreError> {
            self.registry.save_if_changed(dir)?;
            self.pipeline.policy().replay_windows().save(dir)?;
            // The journal up to now goes to disk and a new file begins: the
            // snapshot records that replay starts there.
            let at = {
                let mut j = self.journal.lock();
                (j.run(), j.rotate(&self.engine, now_ms()))
            };
            let (bytes, devices, mark) =
                snapshot::write_engine(&self.engine, dir, now_ms(), at, &cancel)?;
            self.journal.lock().compact(&mark);
            Ok((bytes, devices))
        });
        match r {
            Ok((bytes, devices)) => {
                self.snapshots.inc();
                tracing::debug!(devices, bytes, elapsed = ?t.elapsed(), "snapshot written");
                Ok(())
            }
            Err(StoreError::Cancelled) => {
                tracing::debug!(elapsed = ?t.elapsed(), "periodic snapshot given up: stopping");
                Err(StoreError::Cancelled)
            }
            Err(e) => {
                self.failures.inc();
                tracing::error!(error = %e, "snapshot failed");
                Err(e)
            }
        }
    }

    /// Writes the device registry if it changed (new auto-registrations
    /// are durable within a second, not only at the next snapshot).
    fn save_registry(&self) {
        if let Err(e) = self.store.exclusive(|dir| self.registry.save_if_changed(dir)) {
            tracing::error!(error = %e, "saving the device registry failed");
        }
    }

    /// [`save`](Self::save) on a blocking thread.
    async fn save_async(self: &Arc<Self>, periodic: bool) -> Result<(), StoreError> {
        let me = self.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || me.save(periodic)).await.unwrap_or_else(|e| {
            self.failures.inc();
            tracing::error!(error = %e, "snapshot failed: the snapshot task ended");
            Err(StoreError::Io { path: dir, source: std::io::Error::other(e.to_string()) })
        })
    }
}

/// A started server.
pub struct Running {
    stop: CancellationToken,
    started: Instant,
    cfg: Config,
    engine: Arc<Engine>,
    saver: Arc<Saver>,
    forwarder: Option<(Arc<Forwarder>, tokio::task::JoinHandle<()>)>,
    udp: UdpReceivers,
    quic: Option<QuicEndpoint>,
    teltonika: Option<TeltonikaReceiver>,
    osmand: Option<tokio::task::JoinHandle<()>>,
    http: Option<tokio::task::JoinHandle<()>>,
    stream: tokio::task::JoinHandle<()>,
    upkeep: tokio::task::JoinHandle<()>,
    journal: Option<tokio::task::JoinHandle<()>>,
    listening: Vec<(&'static str, String)>,
}

impl Running {
    /// Starts the server on `listeners`, phase by phase: restore the state
    /// (engine, policies, device registry), start forwarding, build the
    /// pipeline, then the UDP receivers, the QUIC endpoint, the Teltonika
    /// and OsmAnd listeners, HTTP and the upkeep task. Each notification
    /// of `hangup` (SIGHUP) reloads the keys and the API tokens, one that
    /// came before once the server runs.
    pub async fn start(
        cfg: Config,
        listeners: Listeners,
        hangup: Arc<Notify>,
    ) -> Result<Running, ServerError> {
        let started = Instant::now();
        let stop = CancellationToken::new();
        let registry = Registry::new();
        let (engine, journal, replayed) = restore_engine(&cfg, &registry);
        let engine = Arc::new(engine);
        let policy = restore_policy(&cfg, &engine, &registry)?;
        let devices = Arc::new(DeviceRegistry::load(&cfg.registry(), &cfg.data_dir, &registry)?);
        let tokens = load_tokens(&cfg, &registry)?;
        let forwarder = start_forwarder(&cfg, &registry, &stop);
        let hub = StreamHub::new(cfg.stream(), engine.clone(), &registry);
        let stream_task = tokio::spawn(hub.clone().run(stop.clone()));
        let mut pipeline =
            Pipeline::new(engine.clone(), IngestCounters::register(&registry), policy)
                .with_sink(hub.clone() as Arc<dyn RecordSink>);
        if let Some((fw, _)) = &forwarder {
            pipeline = pipeline.with_sink(fw.clone() as Arc<dyn RecordSink>);
        }
        let pipeline = Arc::new(pipeline);
        let mut listening = Vec::new();
        let udp = start_udp(&cfg, listeners.udp, &pipeline, &registry, &stop, &mut listening)?;
        let quic = start_quic(&cfg, listeners.quic, &pipeline, &registry, &mut listening)?;
        let foreign = (&pipeline, &devices, &*registry, &stop);
        let teltonika = start_teltonika(&cfg, listeners.teltonika, foreign, &mut listening)?;
        let osmand = start_osmand(&cfg, listeners.osmand, foreign, &mut listening)?;
        let parts = (engine.clone(), pipeline.clone(), devices.clone());
        let saver =
            Arc::new(Saver::new(&cfg.data_dir, parts, journal.clone(), stop.clone(), &registry));
        let journal = start_journal(&cfg, journal, &engine, &stop);
        let http = match listeners.http {
            Some(l) => {
                let state = HttpState {
                    engine: engine.clone(),
                    registry: registry.clone(),
                    pipeline: pipeline.clone(),
                    devices: devices.clone(),
                    forwarder: forwarder.as_ref().map(|(f, _)| f.clone()),
                    started,
                    listening: Vec::new(),
                    stream: hub.clone(),
                    tokens: tokens.clone(),
                    map_tiles_url: (!cfg.map_tiles_url.is_empty())
                        .then(|| cfg.map_tiles_url.clone()),
                };
                Some(start_http(l, state, &stop, &mut listening)?)
            }
            None => None,
        };
        let snap_every =
            (cfg.snapshot && !cfg.snapshot_interval.is_zero()).then_some(cfg.snapshot_interval);
        // After a replay, a snapshot soon, so that crash after crash does
        // not lengthen the journal the next start replays.
        let snap_soon = replayed > 0;
        let tasks =
            Upkeep { snap_every, snap_soon, saver: saver.clone(), pipeline, hub, tokens, hangup };
        let upkeep = tokio::spawn(upkeep(tasks, stop.clone()));
        Ok(Running {
            stop,
            started,
            cfg,
            engine,
            saver,
            forwarder,
            udp,
            quic,
            teltonika,
            osmand,
            http,
            stream: stream_task,
            upkeep,
            journal,
            listening,
        })
    }

    /// The addresses listened on, by transport (`udp`, `quic`, `http`).
    pub fn listening(&self) -> &[(&'static str, String)] {
        &self.listening
    }

    /// Stops the server, in this order:
    /// 1. the stop signal: receive threads read what is queued in their
    ///    sockets (1 s at most), HTTP finishes the requests in progress, a
    ///    periodic snapshot being written is given up between two shards
    ///    (the old file stays), the forwarder's drain time (2 s) starts;
    /// 2. the UDP and Teltonika receive threads end; the QUIC endpoint
    ///    closes (each connection hands what it has read to the pipeline
    ///    first); the OsmAnd listener finishes its requests;
    /// 3. nothing can be accepted any more: the forwarder is told, publishes
    ///    what is buffered and counts what it could not as dropped;
    /// 4. the upkeep task ends (awaited, never aborted: no snapshot is cut
    ///    off mid-file, none overlaps the next), then the journal's sync
    ///    task (a sync in progress finishes); HTTP ends;
    /// 5. the final tick and the final snapshot (after every other save,
    ///    which the store serialises anyway; it syncs the journal first and
    ///    deletes it once written), then the totals are logged.
    ///
    /// An error when the final snapshot could not be written (`fleetwire
    /// serve` exits non-zero; the journal, synced before the attempt, still
    /// holds what changed since the last snapshot).
    pub async fn shutdown(self) -> Result<RunSummary, ServerError> {
        tracing::info!("shutting down: draining sockets");
        self.stop.cancel();
        self.udp.join().await;
        if let Some(t) = self.teltonika {
            t.join().await;
        }
        if let Some(q) = self.quic {
            q.shutdown().await;
        }
        if let Some(o) = self.osmand {
            let _ = tokio::time::timeout(HTTP_DRAIN, o).await;
        }
        if let Some((fw, task)) = self.forwarder {
            fw.close();
            // The task itself gives up FORWARD_DRAIN after the stop signal
            // and counts what it could not publish; this timeout only
            // guards against a bug there.
            let _ = tokio::time::timeout(FORWARD_DRAIN + Duration::from_secs(1), task).await;
        }
        let _ = self.upkeep.await;
        if let Some(j) = self.journal {
            let _ = j.await;
        }
        let _ = self.stream.await;
        if let Some(t) = self.http {
            let _ = tokio::time::timeout(HTTP_DRAIN, t).await;
        }
        self.engine.tick(now_ms());
        let saved = match self.cfg.snapshot {
            true => Some(self.saver.save_async(false).await),
            false => None,
        };
        let snapshot = match &saved {
            Some(Ok(())) => Some(self.cfg.data_dir.join(snapshot::FILE)),
            _ => None,
        };
        let summary = self.engine.summary();
        let t = &summary.totals;
        tracing::info!(
            devices = summary.devices,
            positions = t.records.get(RecordKind::Position),
            monitoring = t.records.get(RecordKind::Monitoring),
            events = t.records.get(RecordKind::Event),
            lost = t.lost(),
            duplicates = t.duplicates,
            reordered = t.reordered,
            uptime = ?self.started.elapsed(),
            snapshot = ?snapshot,
            "stopped"
        );
        if let Some(Err(e)) = saved {
            return Err(ServerError::FinalSnapshot(e));
        }
        Ok(RunSummary { devices: summary.devices, records: t.records.total(), snapshot })
    }
}

/// Phase 1: the engine, with the devices of the last snapshot and the
/// frames of the journal after it; the journal this run writes (after the
/// files there), and the number of frames replayed.
fn restore_engine(cfg: &Config, r: &Registry) -> (Engine, Arc<parking_lot::Mutex<Journal>>, u64) {
    let engine = Engine::new(cfg.engine(), cfg.effective_shards());
    if let Some(h) = lock_holder() {
        engine.set_holder(h);
    }
    let mut mark: Option<JournalMark> = None;
    let mut replay = journal::ReplayReport::default();
    if cfg.snapshot {
        let file = cfg.data_dir.join(snapshot::FILE);
        if file.exists() {
            tracing::info!(file = %file.display(), "restoring device state");
        }
        match snapshot::read(&cfg.data_dir) {
            Ok(Some(s)) => {
                let (n, taken_ms) = (s.device_count(), s.taken_ms);
                mark = s.journal.clone();
                engine.restore(s.devices, Some(s.totals));
                tracing::info!(devices = n, taken_ms, dir = %cfg.data_dir.display(), "restored device state");
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "could not restore device state; starting empty"),
        }
        replay = journal::replay(&cfg.data_dir, mark.as_ref(), &engine);
        for (path, why) in &replay.damaged {
            tracing::warn!(file = %path.display(), reason = %why, "journal replayed up to damage (the crash cut it)");
        }
        if replay.files > 0 {
            tracing::info!(
                files = replay.files,
                frames = replay.records,
                skipped = replay.skipped,
                "replayed the journal"
            );
        }
    }
    let journal = Journal::new(&cfg.data_dir, replay.next_file, JournalMetrics::new(r));
    engine.set_journaling(cfg.snapshot && !cfg.journal_interval.is_zero());
    (engine, Arc::new(parking_lot::Mutex::new(journal)), replay.records)
}

/// The thread where the engine's readers hold shard locks (`engine-hold`,
/// at the receive threads' priority where the server may raise it): a
/// listing or snapshot thread preempted with a lock held would make the
/// receive path wait for it. One thread, so at most one such section runs
/// at a time and high-priority copying never takes more than a core. None
/// (sections run on the reader's own thread) if it cannot be started.
pub(crate) fn lock_holder() -> Option<crate::engine::Holder> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "engine-hold".into())
        .start_handler(|_| {
            if let Err(e) =
                crate::transport::sys::set_thread_nice(crate::transport::sys::RECEIVE_NICE)
            {
                tracing::debug!(error = %e, "the engine's lock holder keeps the default priority");
            }
        })
        .build();
    match pool {
        Ok(pool) => Some(Arc::new(move |section: &mut (dyn FnMut() + Send)| pool.install(section))),
        Err(e) => {
            tracing::warn!(error = %e, "could not start the engine's lock holder thread");
            None
        }
    }
}

/// Phase 1 too: the journal's syncs, every `journal_interval` until the
/// stop signal (the final snapshot syncs what is left first).
fn start_journal(
    cfg: &Config,
    journal: Arc<parking_lot::Mutex<Journal>>,
    engine: &Arc<Engine>,
    stop: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if !cfg.snapshot || cfg.journal_interval.is_zero() {
        return None;
    }
    // Twice per interval: what a sync takes arrives on disk only when its
    // write ends, so syncing once an interval could lose an interval plus
    // a write; at half the interval, a crash loses at most half an interval
    // plus a write, within `journal_interval` while a write takes less
    // than half of it (`fleetwire_journal_sync_seconds` shows).
    let (every, engine, stop) = (cfg.journal_interval / 2, engine.clone(), stop.clone());
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (j, e) = (journal.clone(), engine.clone());
            let r = tokio::task::spawn_blocking(move || j.lock().sync(&e, now_ms())).await;
            if let Ok(Err(e)) = r {
                // Counted each time; said at most once a minute.
                if warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(60)) {
                    warned = Some(Instant::now());
                    tracing::warn!(error = %e, "journal write failed: a crash now loses what came since the last snapshot");
                }
            }
        }
    }))
}

/// Phase 1 too: the policies, with the anti-replay windows of the last
/// snapshot, seeded from the engine's sequence state of keyed devices.
fn restore_policy(cfg: &Config, engine: &Engine, r: &Registry) -> Result<Policy, ServerError> {
    let mut policy = Policy::load(&cfg.policy(), r)?;
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
    Ok(policy)
}

/// Phase 2: the NATS forwarder and its publisher task, when configured.
fn start_forwarder(
    cfg: &Config,
    r: &Registry,
    stop: &CancellationToken,
) -> Option<(Arc<Forwarder>, tokio::task::JoinHandle<()>)> {
    if !cfg.forward.nats.enabled() {
        return None;
    }
    let fw = Arc::new(Forwarder::new(cfg.forward.nats.clone(), r));
    let task = tokio::spawn(forward::publisher::run(fw.clone(), stop.clone(), FORWARD_DRAIN));
    Some((fw, task))
}

/// Phase 3: a receive thread per UDP socket.
fn start_udp(
    cfg: &Config,
    sockets: Vec<BoundUdp>,
    pipeline: &Arc<Pipeline>,
    r: &Registry,
    stop: &CancellationToken,
    listening: &mut Vec<(&'static str, String)>,
) -> Result<UdpReceivers, ServerError> {
    if let Some(a) = sockets.first().and_then(|b| b.local_addr().ok()) {
        tracing::info!(transport = "udp", addr = %a, threads = cfg.udp_threads, "listening");
        listening.push(("udp", a.to_string()));
    }
    UdpReceivers::start(sockets, &cfg.udp(), pipeline, r, stop)
        .map_err(|source| ServerError::Start { what: "a UDP receive thread", source })
}

/// Phase 4: the QUIC endpoint.
fn start_quic(
    cfg: &Config,
    socket: Option<BoundUdp>,
    pipeline: &Arc<Pipeline>,
    r: &Registry,
    listening: &mut Vec<(&'static str, String)>,
) -> Result<Option<QuicEndpoint>, ServerError> {
    let Some(socket) = socket else { return Ok(None) };
    let q = QuicEndpoint::start(socket, &cfg.quic(), pipeline, r)?;
    if let Ok(a) = q.local_addr() {
        tracing::info!(transport = "quic", addr = %a, alpn = "fleetwire/1", "listening");
        listening.push(("quic", a.to_string()));
    }
    Ok(Some(q))
}

/// What the listeners of other protocols share: the pipeline, the device
/// registry, the telemetry registry and the stop signal.
type Foreign<'a> =
    (&'a Arc<Pipeline>, &'a Arc<DeviceRegistry>, &'a Registry, &'a CancellationToken);

/// Phase 4b: the Teltonika receive thread.
fn start_teltonika(
    cfg: &Config,
    socket: Option<BoundUdp>,
    (pipeline, devices, r, stop): Foreign<'_>,
    listening: &mut Vec<(&'static str, String)>,
) -> Result<Option<TeltonikaReceiver>, ServerError> {
    let Some(socket) = socket else { return Ok(None) };
    if let Ok(a) = socket.local_addr() {
        tracing::info!(transport = "teltonika", addr = %a, "listening (Codec 8 / 8E over UDP)");
        listening.push(("teltonika", a.to_string()));
    }
    TeltonikaReceiver::start(socket, &cfg.teltonika(), pipeline, devices, r, stop)
        .map(Some)
        .map_err(|source| ServerError::Start { what: "the Teltonika receive thread", source })
}

/// Phase 4c: the OsmAnd HTTP listener.
fn start_osmand(
    cfg: &Config,
    listener: Option<std::net::TcpListener>,
    (pipeline, devices, r, stop): Foreign<'_>,
    listening: &mut Vec<(&'static str, String)>,
) -> Result<Option<tokio::task::JoinHandle<()>>, ServerError> {
    let Some(l) = listener else { return Ok(None) };
    let addr = l.local_addr().ok();
    let l = tokio::net::TcpListener::from_std(l)
        .map_err(|source| ServerError::Start { what: "the OsmAnd listener", source })?;
    if let Some(a) = addr {
        tracing::info!(transport = "osmand", addr = %a, "listening (OsmAnd / Traccar Client HTTP)");
        listening.push(("osmand", a.to_string()));
    }
    Ok(Some(osmand::spawn(l, &cfg.osmand(), pipeline, devices, r, stop.clone())))
}

/// Phase 5: HTTP.
fn start_http(
    l: std::net::TcpListener,
    mut state: HttpState,
    stop: &CancellationToken,
    listening: &mut Vec<(&'static str, String)>,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let addr = l.local_addr().ok();
    let l = tokio::net::TcpListener::from_std(l)
        .map_err(|source| ServerError::Start { what: "the HTTP listener", source })?;
    if let Some(a) = addr {
        tracing::info!(transport = "http", addr = %a, "listening (/metrics, /api, /map, /healthz)");
        listening.push(("http", a.to_string()));
        if state.tokens.is_none() && !a.ip().is_loopback() {
            tracing::warn!(
                addr = %a,
                "the HTTP API (every device's position, the live stream) is open to anyone \
                 who reaches this address: set http_tokens_file, or listen on 127.0.0.1"
            );
        }
    }
    state.listening = listening.clone();
    Ok(http::spawn(l, state, stop.clone()))
}

/// Phase 6: once a second the engine's tick (online/offline, series
/// expiry), every `snapshot_interval` a snapshot, and a keys reload on
/// SIGHUP; until the stop signal, which it sees only between two of these,
/// so a snapshot in progress is finished or, at the stop signal, given up
/// between two shards (the final snapshot follows).
async fn upkeep(u: Upkeep, stop: CancellationToken) {
    let Upkeep { snap_every, mut snap_soon, saver, pipeline, hub, tokens, hangup } = u;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_snap = Instant::now();
    loop {
        tokio::select! {
            // The stop signal first: a tick that is due must not start
            // another snapshot after it.
            biased;
            _ = stop.cancelled() => return,
            _ = hangup.notified() => reload_on_hangup(pipeline.policy(), tokens.as_deref()),
            _ = tick.tick() => {
                let transitions = saver.engine.tick(now_ms());
                hub.transitions(&transitions);
                let s = saver.clone();
                let _ = tokio::task::spawn_blocking(move || s.save_registry()).await;
                if snap_every.is_some_and(|every| snap_soon || last_snap.elapsed() >= every) {
                    snap_soon = false;
                    let _ = saver.save_async(true).await;
                    // The interval runs from the end of a save, so a save
                    // longer than the interval is not followed at once by
                    // the next.
                    last_snap = Instant::now();
                }
            }
        }
    }
}

/// What the upkeep task looks after.
struct Upkeep {
    snap_every: Option<Duration>,
    /// A snapshot at the first tick (the journal was replayed).
    snap_soon: bool,
    saver: Arc<Saver>,
    pipeline: Arc<Pipeline>,
    hub: Arc<StreamHub>,
    tokens: Option<Arc<Tokens>>,
    /// SIGHUP.
    hangup: Arc<Notify>,
}

/// SIGHUP: the device keys and the API tokens are read again.
fn reload_on_hangup(policy: &Policy, tokens: Option<&Tokens>) {
    match policy.reload_keys() {
        Ok(n) => tracing::info!(keys = n, "reloaded device keys (SIGHUP)"),
        Err(e) => tracing::error!(error = %e, "keys reload failed; keeping the previous keys"),
    }
    if let Some(t) = tokens {
        match t.reload() {
            Ok(n) => tracing::info!(tokens = n, "reloaded API tokens (SIGHUP)"),
            Err(e) => {
                tracing::error!(error = %e, "tokens reload failed; keeping the previous tokens")
            }
        }
    }
}

/// Phase 1 too: the API tokens, when `http_tokens_file` is set.
fn load_tokens(cfg: &Config, r: &Registry) -> Result<Option<Arc<Tokens>>, ServerError> {
    if cfg.http_tokens_file.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(Tokens::load(&cfg.http_tokens_file, cfg.metrics_auth, r)?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lock_holder_runs_sections_on_its_thread_at_the_receive_priority() {
        let holder = super::lock_holder().unwrap();
        let mut seen = None;
        let here = std::thread::current().id();
        holder(&mut || {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let nice = rest.split(' ').nth(16).unwrap().parse::<i32>().unwrap();
            let me = std::thread::current();
            seen = Some((me.name().map(String::from), me.id() != here, nice));
        });
        let (name, elsewhere, nice) = seen.unwrap();
        assert_eq!(name.as_deref(), Some("engine-hold"));
        assert!(elsewhere);
        // Root may raise a thread's priority; others keep the default.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        let root = uid.split_whitespace().nth(1) == Some("0");
        assert_eq!(nice, if root { crate::transport::sys::RECEIVE_NICE } else { 0 });
    }
}
