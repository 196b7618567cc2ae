//! QUIC ingest (quinn + rustls): live samples as DATAGRAM frames (RFC 9221),
//! backlog on unidirectional streams as length-prefixed frames, optional
//! client certificates whose device id is authoritative.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::FutureExt;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs;
use crate::config::{ClientAuth, Config, ConfigError};
use crate::ingest::{Datagram, Pipeline, Transport};
use crate::now_ms;
use crate::server::BindError;

/// The one ALPN protocol we speak.
pub const ALPN: &[u8] = b"fleetwire/1";

/// Size of a client's outgoing DATAGRAM buffer.
pub const CLIENT_DATAGRAM_SEND_BUFFER: usize = 1 << 20;

/// Most DATAGRAM frames handed to the pipeline in one call.
const DATAGRAM_BATCH: usize = 64;
/// Unidirectional (backlog) streams a client may have open at once.
pub const MAX_STREAMS: u32 = 4;
/// Flow-control window of one stream, bytes.
pub const STREAM_WINDOW: u32 = 32 * 1024;
/// Flow-control window of a connection (all its streams), bytes.
pub const CONNECTION_WINDOW: u32 = 64 * 1024;

/// A running QUIC endpoint.
pub struct QuicHandle {
    /// The bound address.
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl QuicHandle {
    /// Stops accepting, closes every connection and waits for the endpoint
    /// to go idle (at most 1 s).
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"server shutting down");
        self.task.abort();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
    }
}

/// The rustls server configuration `cfg` asks for.
pub fn tls_config(cfg: &Config) -> Result<rustls::ServerConfig, BindError> {
    let tls = |e: &dyn std::fmt::Display| BindError::Tls(e.to_string());
    // Unusable TLS files are configuration errors naming their key.
    let invalid = |key: &'static str, e: &dyn std::fmt::Display| {
        BindError::Config(ConfigError::Invalid { key, reason: e.to_string() })
    };
    let (chain, key) = if cfg.quic_cert.as_os_str().is_empty() {
        let (cert, key) = certs::dev_certificate(&cfg.data_dir).map_err(|e| tls(&e))?;
        (vec![cert], key)
    } else {
        certs::load_chain_and_key(&cfg.quic_cert, &cfg.quic_key).map_err(|e| match &e {
            certs::CertError::Pem { path, .. } | certs::CertError::Io { path, .. }
                if *path == cfg.quic_key =>
            {
                invalid("quic_key", &e)
            }
            _ => invalid("quic_cert", &e),
        })?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?;
    let builder = match cfg.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        mode => {
            let roots = certs::load_roots(&cfg.quic_client_ca)
                .map_err(|e| invalid("quic_client_ca", &e))?;
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let v = if mode == ClientAuth::Optional { v.allow_unauthenticated() } else { v };
            builder.with_client_cert_verifier(v.build().map_err(|e| tls(&e))?)
        }
    };
    let mut server = builder.with_single_cert(chain, key).map_err(|e| tls(&e))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    // 0-RTT stays off: telemetry sent in early data could be replayed.
    server.max_early_data_size = 0;
    Ok(server)
}

/// Starts the QUIC endpoint on `socket`.
pub fn start(
    cfg: &Config,
    socket: std::net::UdpSocket,
    pipeline: Arc<Pipeline>,
) -> Result<QuicHandle, BindError> {
    let tls = tls_config(cfg)?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| BindError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            cfg.quic_idle_timeout
                .try_into()
                .map_err(|_| BindError::Tls("quic_idle_timeout too large".into()))?,
        ))
        .datagram_receive_buffer_size(Some(cfg.quic_datagram_buffer.max(2048)))
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
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| BindError::Tls(format!("QUIC endpoint: {e}")))?;
    let addr = endpoint.local_addr().map_err(|e| BindError::Tls(e.to_string()))?;
    let max = cfg.quic_max_connections;
    let retry = cfg.quic_retry;
    let ep = endpoint.clone();
    let task = tokio::spawn(async move {
        let open = Arc::new(AtomicUsize::new(0));
        while let Some(incoming) = ep.accept().await {
            let metrics = pipeline.metrics();
            if retry && !incoming.remote_address_validated() {
                let _ = incoming.retry();
                continue;
            }
            // Count the connection before spawning, so a burst of handshakes
            // cannot slip past the limit.
            if open.fetch_add(1, Ordering::Relaxed) >= max {
                open.fetch_sub(1, Ordering::Relaxed);
                metrics.quic_connections_refused.increment(1);
                incoming.refuse();
                continue;
            }
            let (pipeline, open) = (pipeline.clone(), open.clone());
            tokio::spawn(async move {
                pipeline.metrics().quic_connections.increment(1.0);
                handle_connection(incoming, &pipeline).await;
                pipeline.metrics().quic_connections.decrement(1.0);
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    Ok(QuicHandle { addr, endpoint, task })
}

/// Classifies a failed handshake for `fleetwire_quic_handshake_failures_total`.
pub fn handshake_failure_reason(e: &quinn::ConnectionError) -> &'static str {
    let text = e.to_string().to_lowercase();
    if matches!(e, quinn::ConnectionError::TimedOut) {
        "timeout"
    } else if text.contains("unknownissuer")
        || text.contains("unknown issuer")
        || text.contains("unknown ca")
    {
        "unknown_ca"
    } else if text.contains("no certificate")
        || text.contains("nocertificatespresented")
        || text.contains("certificate required")
    {
        "no_certificate"
    } else if text.contains("certificate") {
        "bad_certificate"
    } else if text.contains("application protocol") || text.contains("alpn") {
        "alpn"
    } else {
        "other"
    }
}

async fn handle_connection(incoming: quinn::Incoming, pipeline: &Arc<Pipeline>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            let reason = handshake_failure_reason(&e);
            pipeline.metrics().handshake_failed(reason);
            tracing::debug!(%remote, error = %e, reason, "QUIC handshake failed");
            return;
        }
    };
    // With a client certificate, its device id is authoritative; one from
    // our CA that names no device names device 0, so every frame on the
    // connection is refused (identity_mismatch) instead of claiming any id.
    let identity = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|leaf| certs::device_id_of(leaf).unwrap_or(0)));
    tracing::debug!(%remote, ?identity, "QUIC connection");
    let datagrams = {
        let (conn, pipeline) = (conn.clone(), pipeline.clone());
        tokio::spawn(async move { datagram_loop(&conn, &pipeline, identity).await })
    };
    let streams = {
        let (conn, pipeline) = (conn.clone(), pipeline.clone());
        tokio::spawn(async move {
            while let Ok(recv) = conn.accept_uni().await {
                let (pipeline, remote) = (pipeline.clone(), conn.remote_address());
                tokio::spawn(async move { stream_loop(recv, &pipeline, identity, remote).await });
            }
        })
    };
    let reason = conn.closed().await;
    tracing::debug!(%remote, %reason, "QUIC connection closed");
    let _ = datagrams.await;
    streams.abort();
}

async fn datagram_loop(conn: &quinn::Connection, pipeline: &Pipeline, identity: Option<u32>) {
    let source = Some(conn.remote_address());
    let mut batch: Vec<Bytes> = Vec::with_capacity(DATAGRAM_BATCH);
    let mut carry: Option<Bytes> = None;
    let mut total_read = 0u64;
    let mut dropped_reported = 0u64;
    loop {
        match carry.take() {
            Some(b) => batch.push(b),
            None => match conn.read_datagram().await {
                Ok(b) => batch.push(b),
                Err(_) => {
                    // Closed: whatever quinn received and we never read was dropped.
                    let dropped = conn.stats().frame_rx.datagram.saturating_sub(total_read);
                    if dropped > dropped_reported {
                        pipeline
                            .metrics()
                            .quic_datagrams_dropped
                            .increment(dropped - dropped_reported);
                    }
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
        total_read += batch.len() as u64;
        if drained {
            // quinn counts every DATAGRAM frame it receives and drops the
            // oldest when its buffer is full. Right after finding the buffer
            // empty, every frame counted so far was either read or dropped,
            // so the difference is exact. (If one arrived in between, it is
            // read next round and the count waits for the next drain.)
            let received = conn.stats().frame_rx.datagram;
            match conn.read_datagram().now_or_never() {
                Some(Ok(b)) => carry = Some(b),
                Some(Err(_)) => {}
                None => {
                    let dropped = received.saturating_sub(total_read);
                    if dropped > dropped_reported {
                        pipeline
                            .metrics()
                            .quic_datagrams_dropped
                            .increment(dropped - dropped_reported);
                        dropped_reported = dropped;
                    }
                }
            }
        }
        let views: Vec<Datagram<'_>> = batch
            .iter()
            .map(|b| Datagram { bytes: b, truncated: false, source, identity })
            .collect();
        pipeline.handle(Transport::Quic, now_ms(), &views);
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
    pipeline: &Pipeline,
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
            Ok(_) | Err(_) => {
                incomplete(pipeline, source, identity);
                return;
            }
        }
        let len = usize::from(u16::from_be_bytes(len));
        let (keep, truncated) = if len > buf.len() { (buf.len(), true) } else { (len, false) };
        let mut got = read_full(&mut recv, &mut buf[..keep]).await.unwrap_or_default();
        let mut rest = len - keep;
        while got == keep && rest > 0 {
            let mut skip = [0u8; 256];
            let step = rest.min(skip.len());
            match read_full(&mut recv, &mut skip[..step]).await {
                Ok(n) if n == step => rest -= step,
                _ => {
                    got = 0;
                    break;
                }
            }
        }
        if got != keep {
            incomplete(pipeline, source, identity);
            return;
        }
        pipeline.metrics().quic_stream_frames.increment(1);
        let d = Datagram { bytes: &buf[..keep], truncated, source, identity };
        pipeline.handle(Transport::Quic, now_ms(), &[d]);
    }
}

/// A stream that ended inside a frame: counted as `too_short`.
fn incomplete(pipeline: &Pipeline, source: Option<SocketAddr>, identity: Option<u32>) {
    pipeline.metrics().quic_stream_frames.increment(1);
    pipeline.handle(
        Transport::Quic,
        now_ms(),
        &[Datagram { bytes: &[], truncated: false, source, identity }],
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

/// Builds a client configuration for `sim` / `send`: trusts `ca` (PEM),
/// presents `cert`/`key` when given.
pub fn client_config(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<quinn::ClientConfig, String> {
    let roots = certs::load_roots(ca).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((cert, key)) => {
            let (chain, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) =
                certs::load_chain_and_key(cert, key).map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Ask the server to acknowledge every 10th packet (ACK frequency
    // extension): for a stream of small datagrams, acknowledgements are
    // otherwise a large share of the server's packets.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(9u32.into())
        .max_ack_delay(Some(std::time::Duration::from_millis(10)));
    transport
        .keep_alive_interval(Some(std::time::Duration::from_secs(15)))
        .datagram_send_buffer_size(CLIENT_DATAGRAM_SEND_BUFFER)
        .ack_frequency_config(Some(ack));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}
