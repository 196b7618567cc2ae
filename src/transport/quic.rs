//! QUIC ingest (quinn + rustls): live samples as DATAGRAM frames (RFC 9221),
//! backlog on unidirectional streams as length-prefixed frames, optional
//! client certificates whose device id is authoritative.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fleetwire_proto::QUIC_ALPN;
use futures_util::FutureExt;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::udp::{BoundUdp, inode, kernel_drops};
use crate::certs::{self, CertError};
use crate::clock::now_ms;
use crate::ingest::{Datagram, Pipeline, Transport};
use crate::telemetry::{Counter, Gauge, Registry};

/// Most DATAGRAM frames handed to the pipeline in one call.
const DATAGRAM_BATCH: usize = 64;
/// Unidirectional (backlog) streams a client may have open at once.
pub(crate) const MAX_STREAMS: u32 = 4;
/// Flow-control window of one stream, bytes.
pub(crate) const STREAM_WINDOW: u32 = 32 * 1024;
/// Flow-control window of a connection (all its streams), bytes.
pub(crate) const CONNECTION_WINDOW: u32 = 64 * 1024;

/// Shortest time between two stateless resets the endpoint sends (quinn's
/// default, 20 ms, allows 50 a second for all peers together: after a
/// restart, 100,000 devices would take half an hour to all hear of it). A
/// reset is always smaller than the packet that caused it, so this only
/// bounds the rate of replies, not their size.
const RESET_INTERVAL: Duration = Duration::from_micros(100);

/// Application close code for a client that negotiated no ALPN: 0x178,
/// the value QUIC gives the TLS alert no_application_protocol (0x100 + 120)
/// that a client offering another ALPN gets.
const CLOSE_NO_ALPN: u32 = 0x178;

/// How QUIC clients must authenticate (`client_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates: any client may connect.
    None,
    /// A client certificate, if presented, must chain to `quic_client_ca`.
    Optional,
    /// Every client must present a certificate that chains to `quic_client_ca`.
    Required,
}

/// The QUIC transport's slice of the configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuicConfig {
    /// Certificate chain and key files (PEM); `None` = the development
    /// certificate in `data_dir`.
    pub(crate) cert: Option<(PathBuf, PathBuf)>,
    /// Where the development certificate and the endpoint's secret
    /// (`quic.secret`) live.
    pub(crate) data_dir: PathBuf,
    /// Client certificate policy.
    pub(crate) client_auth: ClientAuth,
    /// CA certificate(s) device certificates must chain to.
    pub(crate) client_ca: PathBuf,
    /// Most concurrent connections.
    pub(crate) max_connections: usize,
    /// Connections idle longer are closed.
    pub(crate) idle_timeout: Duration,
    /// DATAGRAM receive buffer per connection, bytes.
    pub(crate) datagram_buffer: usize,
    /// Require address validation (a Retry round trip) before a handshake.
    pub(crate) retry: bool,
}

/// Why the QUIC endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate, key or CA file named by a setting is unusable.
    #[error("invalid value for `{key}`: {source}")]
    File {
        /// The setting naming the file.
        key: &'static str,
        /// What is wrong with it.
        source: CertError,
    },
    /// The development certificate could not be made or read in the data dir.
    #[error("development certificate: {0}")]
    DevCertificate(CertError),
    /// The endpoint's secret (`quic.secret`) could not be made or read in
    /// the data dir.
    #[error("QUIC secret: {0}")]
    Secret(CertError),
    /// rustls refused the TLS configuration (a key that does not match its
    /// certificate, a CA that cannot verify anything).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// `quic_idle_timeout` is beyond what QUIC can express (2^62 ms).
    #[error("invalid value for `quic_idle_timeout`: too large")]
    IdleTimeout,
    /// quinn could not take the socket.
    #[error("QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}

impl StartError {
    /// Whether a setting is to blame (exit code 2), rather than the system.
    pub(crate) fn is_config(&self) -> bool {
        matches!(self, StartError::File { .. } | StartError::IdleTimeout | StartError::Tls(_))
    }
}

/// Why a handshake failed (the `reason` label of
/// `fleetwire_quic_handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// The client's certificate does not chain to `quic_client_ca`.
    UnknownCa,
    /// A certificate is required and the client sent none.
    NoCertificate,
    /// The client's certificate is invalid (expired, wrong usage, bad signature).
    BadCertificate,
    /// The client offered no ALPN, or not `fleetwire/1`.
    Alpn,
    /// The handshake did not complete within the idle timeout.
    Timeout,
    /// Anything else (the peer closed, a protocol violation, ...).
    Other,
}

impl HandshakeFailure {
    /// Every reason, in counter order.
    const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::UnknownCa,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::Alpn,
        HandshakeFailure::Timeout,
        HandshakeFailure::Other,
    ];

    /// The label.
    const fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::Alpn => "alpn",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }

    /// Classifies by the TLS alert our own TLS stack raised (RFC 8446
    /// section 6: QUIC carries it as crypto error 0x100 + alert, RFC 9001
    /// section 4.8). Failures the peer reported are its business: `other`.
    pub(crate) fn of(e: &quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::TimedOut => HandshakeFailure::Timeout,
            quinn::ConnectionError::TransportError(t) => HandshakeFailure::of_code(t.code),
            _ => HandshakeFailure::Other,
        }
    }

    /// The reason for a QUIC transport error code: crypto errors carry a
    /// TLS alert, anything else is `other`.
    pub(crate) fn of_code(code: quinn::TransportErrorCode) -> Self {
        match u64::from(code).checked_sub(0x100).filter(|a| *a <= 0xff) {
            Some(alert) => HandshakeFailure::of_alert(alert as u8),
            None => HandshakeFailure::Other,
        }
    }

    /// The reason for a TLS alert description.
    pub(crate) const fn of_alert(alert: u8) -> Self {
        match alert {
            // unknown_ca
            48 => HandshakeFailure::UnknownCa,
            // certificate_required
            116 => HandshakeFailure::NoCertificate,
            // bad_certificate, unsupported_certificate, certificate_revoked,
            // certificate_expired, certificate_unknown, access_denied,
            // decrypt_error (a signature that does not verify)
            42..=46 | 49 | 51 => HandshakeFailure::BadCertificate,
            // no_application_protocol
            120 => HandshakeFailure::Alpn,
            _ => HandshakeFailure::Other,
        }
    }
}

/// The QUIC transport's own series.
#[derive(Debug, Clone)]
struct QuicMetrics {
    connections: Gauge,
    handshake_failures: [Counter; HandshakeFailure::ALL.len()],
    datagrams_dropped: Counter,
    stream_frames: Counter,
    connections_refused: Counter,
}

impl QuicMetrics {
    fn register(r: &Registry, socket_inode: Option<u64>) -> Self {
        r.counter_fn(
            "fleetwire_quic_receive_buffer_drops_total",
            "UDP datagrams carrying QUIC that the kernel dropped because the QUIC socket's receive buffer was full.",
            &[],
            move || socket_inode.map_or(0, |i| kernel_drops(&[i])),
        );
        QuicMetrics {
            connections: r.gauge("fleetwire_quic_connections", "Open QUIC connections.", &[]),
            handshake_failures: HandshakeFailure::ALL.map(|f| {
                r.counter(
                    "fleetwire_quic_handshake_failures_total",
                    "QUIC handshakes that failed, by reason.",
                    &[("reason", f.as_str())],
                )
            }),
            datagrams_dropped: r.counter(
                "fleetwire_quic_datagrams_dropped_total",
                "QUIC DATAGRAM frames dropped because a connection's receive buffer was full.",
                &[],
            ),
            stream_frames: r.counter(
                "fleetwire_quic_stream_frames_total",
                "Frames received on QUIC unidirectional streams.",
                &[],
            ),
            connections_refused: r.counter(
                "fleetwire_quic_connections_refused_total",
                "QUIC connections refused because quic_max_connections was reached.",
                &[],
            ),
        }
    }

    fn handshake_failed(&self, f: HandshakeFailure) {
        self.handshake_failures[f as usize].inc();
    }
}

/// What every connection task shares.
struct Shared {
    pipeline: Arc<Pipeline>,
    metrics: QuicMetrics,
}

/// A running QUIC endpoint.
pub(crate) struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    accept: tokio::task::JoinHandle<()>,
}

/// The rustls server configuration `cfg` asks for.
fn tls_config(cfg: &QuicConfig) -> Result<rustls::ServerConfig, StartError> {
    let tls = |e: rustls::Error| StartError::Tls(e.to_string());
    let (chain, key) = match &cfg.cert {
        None => {
            let (cert, key) =
                certs::dev_certificate(&cfg.data_dir).map_err(StartError::DevCertificate)?;
            (vec![cert], key)
        }
        Some((cert, key)) => certs::load_chain_and_key(cert, key).map_err(|e| {
            let on_key = matches!(&e, CertError::Pem { path, .. } | CertError::Io { path, .. }
                if path == key);
            StartError::File { key: if on_key { "quic_key" } else { "quic_cert" }, source: e }
        })?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?;
    let builder = match cfg.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        mode => {
            let roots = certs::load_roots(&cfg.client_ca)
                .map_err(|source| StartError::File { key: "quic_client_ca", source })?;
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let v = if mode == ClientAuth::Optional { v.allow_unauthenticated() } else { v };
            builder
                .with_client_cert_verifier(v.build().map_err(|e| StartError::Tls(e.to_string()))?)
        }
    };
    let mut server = builder.with_single_cert(chain, key).map_err(tls)?;
    server.alpn_protocols = vec![QUIC_ALPN.to_vec()];
    // 0-RTT stays off: telemetry sent in early data could be replayed.
    server.max_early_data_size = 0;
    Ok(server)
}

/// The key that seals the endpoint's address-validation tokens (Retry and
/// NEW_TOKEN), derived from `secret` like the reset and connection-id keys:
/// quinn's default is random per start, so a token issued before a restart
/// no longer validated the client's address after it.
fn token_key(secret: &[u8; certs::QUIC_SECRET_LEN]) -> ring::hkdf::Prk {
    use ring::{hkdf, hmac};
    let master = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let ikm = hmac::sign(&master, b"fleetwire/1 QUIC token key");
    hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(ikm.as_ref())
}

/// The quinn server configuration: TLS, the token key derived from
/// `secret`, and the transport limits that bound what one client can make
/// the server hold.
fn server_config(
    cfg: &QuicConfig,
    secret: &[u8; certs::QUIC_SECRET_LEN],
) -> Result<quinn::ServerConfig, StartError> {
    let crypto =
        QuicServerConfig::try_from(tls_config(cfg)?).map_err(|e| StartError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::new(Arc::new(crypto), Arc::new(token_key(secret)));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(cfg.idle_timeout.try_into().map_err(|_| StartError::IdleTimeout)?))
        .datagram_receive_buffer_size(Some(cfg.datagram_buffer.max(2048)))
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(MAX_STREAMS.into())
        // Flow control bounds what a client can make the server buffer
        // (quinn's defaults allow 1.25 MB per stream and no connection
        // limit). Backlog streams are drained as they arrive, so these
        // windows only matter for a reader that falls behind; 32 KiB per
        // stream still carries ~160 KB/s of backlog at a 200 ms RTT.
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into());
    server.transport_config(Arc::new(transport));
    server.migration(true);
    Ok(server)
}

/// The endpoint configuration: its stateless-reset key and the key that
/// makes and checks its connection ids derive from `secret` (the data
/// dir's `quic.secret`), so that after a crash and restart the server
/// still takes the connection ids it issued before for its own (quinn's
/// default keys are random per start: a packet of an old connection was
/// dropped as an invalid id) and answers them with a stateless reset that
/// matches the token the peer got (RFC 9000 section 10.3): the peer closes
/// the dead connection at its next packet instead of after its idle
/// timeout.
fn endpoint_config(secret: &[u8; certs::QUIC_SECRET_LEN]) -> quinn::EndpointConfig {
    use ring::hmac;
    let master = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let derive = |label: &str| hmac::sign(&master, label.as_bytes());
    let reset = derive("fleetwire/1 QUIC stateless reset key");
    let mut cfg =
        quinn::EndpointConfig::new(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref())));
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&derive("fleetwire/1 QUIC connection id key").as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    cfg.min_reset_interval(RESET_INTERVAL);
    cfg
}

impl QuicEndpoint {
    /// Registers the QUIC series and starts the endpoint on `socket`.
    pub(crate) fn start(
        socket: BoundUdp,
        cfg: &QuicConfig,
        pipeline: &Arc<Pipeline>,
        registry: &Registry,
    ) -> Result<QuicEndpoint, StartError> {
        let secret = certs::quic_secret(&cfg.data_dir).map_err(StartError::Secret)?;
        let server = server_config(cfg, &secret)?;
        let metrics = QuicMetrics::register(registry, inode(&socket.socket));
        let endpoint = quinn::Endpoint::new(
            endpoint_config(&secret),
            Some(server),
            socket.socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(StartError::Endpoint)?;
        let shared = Arc::new(Shared { pipeline: pipeline.clone(), metrics });
        let accept =
            tokio::spawn(accept_loop(endpoint.clone(), shared, cfg.max_connections, cfg.retry));
        Ok(QuicEndpoint { endpoint, accept })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops accepting, closes every connection (their datagram loops hand
    /// what they have read to the pipeline first) and waits for the
    /// endpoint to go idle (at most 1 s).
    pub(crate) async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"server shutting down");
        self.accept.abort();
        let _ = self.accept.await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Runs until the endpoint closes (or the task is aborted at shutdown).
async fn accept_loop(ep: quinn::Endpoint, shared: Arc<Shared>, max: usize, retry: bool) {
    let open = Arc::new(AtomicUsize::new(0));
    while let Some(incoming) = ep.accept().await {
        if retry && !incoming.remote_address_validated() {
            let _ = incoming.retry();
            continue;
        }
        // Count the connection before spawning, so a burst of handshakes
        // cannot slip past the limit.
        if open.fetch_add(1, Ordering::Relaxed) >= max {
            open.fetch_sub(1, Ordering::Relaxed);
            shared.metrics.connections_refused.inc();
            incoming.refuse();
            continue;
        }
        let (shared, open) = (shared.clone(), open.clone());
        tokio::spawn(async move {
            shared.metrics.connections.add(1.0);
            handle_connection(incoming, &shared).await;
            shared.metrics.connections.add(-1.0);
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// What an accepted connection proved: the device id of its client
/// certificate, if it showed one. A certificate from our CA that names no
/// device names device 0, so every frame on the connection is refused
/// (`identity_mismatch`) instead of claiming any id.
fn identity(conn: &quinn::Connection) -> Option<u32> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|leaf| certs::device_id_of(leaf).unwrap_or(0)))
}

/// Whether the handshake agreed on our ALPN (rustls refuses a client that
/// offers others; one that offers none is refused here).
fn speaks_fleetwire(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .is_some_and(|d| d.protocol.as_deref() == Some(QUIC_ALPN))
}

async fn handle_connection(incoming: quinn::Incoming, shared: &Arc<Shared>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            let reason = HandshakeFailure::of(&e);
            shared.metrics.handshake_failed(reason);
            tracing::debug!(%remote, error = %e, reason = reason.as_str(), "QUIC handshake failed");
            return;
        }
    };
    if !speaks_fleetwire(&conn) {
        shared.metrics.handshake_failed(HandshakeFailure::Alpn);
        conn.close(CLOSE_NO_ALPN.into(), b"ALPN fleetwire/1 required");
        tracing::debug!(%remote, "QUIC client offered no ALPN: closed");
        return;
    }
    let identity = identity(&conn);
    tracing::debug!(%remote, ?identity, "QUIC connection");
    let datagrams = {
        let (conn, shared) = (conn.clone(), shared.clone());
        tokio::spawn(async move { datagram_loop(&conn, &shared, identity).await })
    };
    let streams = {
        let (conn, shared) = (conn.clone(), shared.clone());
        tokio::spawn(async move {
            while let Ok(recv) = conn.accept_uni().await {
                let (shared, remote) = (shared.clone(), conn.remote_address());
                tokio::spawn(async move { stream_loop(recv, &shared, identity, remote).await });
            }
        })
    };
    let reason = conn.closed().await;
    tracing::debug!(%remote, %reason, "QUIC connection closed");
    let _ = datagrams.await;
    streams.abort();
}

/// Counts DATAGRAM frames quinn dropped unread: quinn counts every frame it
/// receives and drops the oldest when its buffer is full.
struct DropCounter {
    read: u64,
    reported: u64,
}

impl DropCounter {
    /// Called right after the buffer was found empty: every frame counted
    /// so far was either read or dropped, so the difference is exact.
    fn settle(&mut self, received: u64, metrics: &QuicMetrics) {
        let dropped = received.saturating_sub(self.read);
        if dropped > self.reported {
            metrics.datagrams_dropped.add(dropped - self.reported);
            self.reported = dropped;
        }
    }
}

async fn datagram_loop(conn: &quinn::Connection, shared: &Shared, identity: Option<u32>) {
    let source = Some(conn.remote_address());
    let mut batch: Vec<Bytes> = Vec::with_capacity(DATAGRAM_BATCH);
    let mut carry: Option<Bytes> = None;
    let mut drops = DropCounter { read: 0, reported: 0 };
    loop {
        match carry.take() {
            Some(b) => batch.push(b),
            None => match conn.read_datagram().await {
                Ok(b) => batch.push(b),
                Err(_) => {
                    // Closed: whatever quinn received and we never read was dropped.
                    drops.settle(conn.stats().frame_rx.datagram, &shared.metrics);
                    return;
                }
            },
        }
        // Take whatever else is already buffered without waiting.
        let mut drained = false;
        while batch.len() < DATAGRAM_BATCH {
            match conn.read_datagram().now_or_never() {
                Some(Ok(b)) => batch.push(b),
                _ => {
                    drained = true;
                    break;
                }
            }
        }
        drops.read += batch.len() as u64;
        if drained {
            // (If one arrived in between, it is read next round and the
            // count waits for the next drain.)
            let received = conn.stats().frame_rx.datagram;
            match conn.read_datagram().now_or_never() {
                Some(Ok(b)) => carry = Some(b),
                Some(Err(_)) => {}
                None => drops.settle(received, &shared.metrics),
            }
        }
        let views: arrayvec::ArrayVec<Datagram<'_>, DATAGRAM_BATCH> = batch
            .iter()
            .map(|b| Datagram { bytes: b, truncated: false, source, identity, received_ns: 0 })
            .collect();
        shared.pipeline.handle(Transport::Quic, now_ms(), &views);
        drop(views);
        batch.clear();
        // quinn's datagram futures are ready as long as datagrams are
        // buffered, so this loop would not yield by itself: let the endpoint
        // and connection drivers run.
        tokio::task::yield_now().await;
    }
}

/// Reads length-prefixed frames (u16 big-endian length) from one stream
/// until it ends. A refused frame is counted and skipped; the stream goes on.
async fn stream_loop(
    mut recv: quinn::RecvStream,
    shared: &Shared,
    identity: Option<u32>,
    remote: SocketAddr,
) {
    let source = Some(remote);
    // Only frames up to the protocol's 1200 bytes are kept; the bytes of a
    // longer record are read into this buffer and thrown away.
    let mut buf = [0u8; fleetwire_proto::MAX_FRAME_LEN];
    loop {
        let mut len = [0u8; 2];
        match read_full(&mut recv, &mut len).await {
            Ok(0) => return,
            Ok(2) => {}
            Ok(_) | Err(_) => return incomplete(shared, source, identity),
        }
        let len = usize::from(u16::from_be_bytes(len));
        let (keep, truncated) = if len > buf.len() { (buf.len(), true) } else { (len, false) };
        let got = read_full(&mut recv, &mut buf[..keep]).await.unwrap_or_default();
        if got != keep || !skip(&mut recv, len - keep).await {
            return incomplete(shared, source, identity);
        }
        shared.metrics.stream_frames.inc();
        let d = Datagram { bytes: &buf[..keep], truncated, source, identity, received_ns: 0 };
        shared.pipeline.handle(Transport::Quic, now_ms(), &[d]);
    }
}

/// Reads and discards `n` bytes; false if the stream ended first.
async fn skip(recv: &mut quinn::RecvStream, mut n: usize) -> bool {
    let mut scratch = [0u8; 256];
    while n > 0 {
        let step = n.min(scratch.len());
        match read_full(recv, &mut scratch[..step]).await {
            Ok(k) if k == step => n -= step,
            _ => return false,
        }
    }
    true
}

/// A stream that ended inside a frame: counted as `too_short`.
fn incomplete(shared: &Shared, source: Option<SocketAddr>, identity: Option<u32>) {
    shared.metrics.stream_frames.inc();
    shared.pipeline.handle(
        Transport::Quic,
        now_ms(),
        &[Datagram { bytes: &[], truncated: false, source, identity, received_ns: 0 }],
    );
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
async fn read_full(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match recv.read(&mut buf[n..]).await.map_err(std::io::Error::other)? {
            None | Some(0) => break,
            Some(k) => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_name_their_reason() {
        assert_eq!(HandshakeFailure::of_alert(120), HandshakeFailure::Alpn);
        assert_eq!(HandshakeFailure::of_alert(48), HandshakeFailure::UnknownCa);
        assert_eq!(HandshakeFailure::of_alert(116), HandshakeFailure::NoCertificate);
        assert_eq!(HandshakeFailure::of_alert(42), HandshakeFailure::BadCertificate);
        assert_eq!(HandshakeFailure::of_alert(40), HandshakeFailure::Other);
        let crypto = quinn::TransportErrorCode::crypto;
        assert_eq!(HandshakeFailure::of_code(crypto(120)), HandshakeFailure::Alpn);
        assert_eq!(HandshakeFailure::of_code(crypto(48)), HandshakeFailure::UnknownCa);
        let not_tls = quinn::TransportErrorCode::PROTOCOL_VIOLATION;
        assert_eq!(HandshakeFailure::of_code(not_tls), HandshakeFailure::Other);
        assert_eq!(
            HandshakeFailure::of(&quinn::ConnectionError::TimedOut),
            HandshakeFailure::Timeout
        );
    }

    #[test]
    fn tokens_sealed_before_a_restart_open_after_it() {
        use quinn::crypto::HandshakeTokenKey;
        let (secret, other) = ([7u8; certs::QUIC_SECRET_LEN], [8u8; certs::QUIC_SECRET_LEN]);
        // A token as quinn seals it: an AEAD key from the token key and the
        // token's random bytes.
        let random = [42u8; 32];
        let mut token = b"address 127.0.0.1:4481, issued at t".to_vec();
        let plain = token.clone();
        token_key(&secret).aead_from_hkdf(&random).seal(&mut token, b"").unwrap();
        assert_ne!(token, plain);
        // The next start derives the same key from the same quic.secret...
        let mut again = token.clone();
        let opened = token_key(&secret).aead_from_hkdf(&random).open(&mut again, b"").unwrap();
        assert_eq!(opened, plain.as_slice());
        // ...and another secret (another server) cannot open it.
        let mut forged = token.clone();
        assert!(token_key(&other).aead_from_hkdf(&random).open(&mut forged, b"").is_err());
    }
}
