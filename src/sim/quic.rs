//! Sending frames over QUIC: one connection per device, frames as DATAGRAM
//! frames (with backpressure) or as length-prefixed records on one
//! unidirectional stream per device. A connection the server reset (it
//! restarted and lost it: a stateless reset, RFC 9000 section 10.3) or
//! that timed out is replaced by a new one at the device's next frame, as
//! PROTOCOL.md section 8 tells devices to do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::Sink;
use crate::certs;

/// Size of a client's outgoing DATAGRAM buffer.
const CLIENT_DATAGRAM_SEND_BUFFER: usize = 1 << 20;

/// How frames travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum QuicMode {
    /// DATAGRAM frames (RFC 9221): live samples.
    Datagram,
    /// A unidirectional stream per device, u16 big-endian length prefixes: backlog.
    Stream,
}

struct Conn {
    conn: quinn::Connection,
    stream: Option<quinn::SendStream>,
    /// Datagram send buffer space when nothing is queued.
    empty: usize,
}

impl Conn {
    fn new(conn: quinn::Connection, stream: Option<quinn::SendStream>) -> Self {
        let empty = conn.datagram_send_buffer_space();
        Conn { conn, stream, empty }
    }
}

/// A QUIC client for many devices.
pub(crate) struct QuicSink {
    endpoint: quinn::Endpoint,
    target: SocketAddr,
    server_name: String,
    mode: QuicMode,
    conns: HashMap<u32, Conn>,
    /// Devices whose connection could not be established (not retried).
    failed: std::collections::HashSet<u32>,
    /// Connections that could not be established.
    pub connect_errors: u64,
    /// Connections replaced by a new one after the server reset them or
    /// they timed out.
    pub reconnects: u64,
}

/// Why a connection ended, when a new connection may help: the server
/// reset it (it no longer knows it: it restarted) or it timed out.
fn lost(conn: &quinn::Connection) -> Option<quinn::ConnectionError> {
    match conn.close_reason() {
        Some(e @ (quinn::ConnectionError::Reset | quinn::ConnectionError::TimedOut)) => Some(e),
        _ => None,
    }
}

impl QuicSink {
    /// A client endpoint for `target` with `config`.
    pub(crate) fn new(
        target: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
        mode: QuicMode,
    ) -> std::io::Result<Self> {
        let bind: SocketAddr = if target.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
            .parse()
            .map_err(std::io::Error::other)?;
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(config);
        Ok(QuicSink {
            endpoint,
            target,
            server_name: server_name.into(),
            mode,
            conns: HashMap::new(),
            failed: Default::default(),
            connect_errors: 0,
            reconnects: 0,
        })
    }

    async fn conn(&mut self, device: u32) -> std::io::Result<&mut Conn> {
        if self.failed.contains(&device) {
            return Err(std::io::Error::other("the connection of this device failed"));
        }
        if let Some(reason) = self.conns.get(&device).and_then(|c| lost(&c.conn)) {
            self.conns.remove(&device);
            self.reconnects += 1;
            if self.reconnects == 1 {
                tracing::info!(device, %reason, "QUIC connection lost (did the server restart?): \
                    reconnecting (further reconnects at debug level)");
            } else {
                tracing::debug!(device, %reason, "QUIC connection lost: reconnecting");
            }
        }
        if !self.conns.contains_key(&device) {
            let connecting = self
                .endpoint
                .connect(self.target, &self.server_name)
                .map_err(std::io::Error::other)?;
            let conn = match connecting.await {
                Ok(c) => c,
                Err(e) => {
                    self.connect_errors += 1;
                    self.failed.insert(device);
                    return Err(std::io::Error::other(e));
                }
            };
            let stream = match self.mode {
                QuicMode::Stream => Some(conn.open_uni().await.map_err(std::io::Error::other)?),
                QuicMode::Datagram => None,
            };
            self.conns.insert(device, Conn::new(conn, stream));
        }
        self.conns.get_mut(&device).ok_or_else(|| std::io::Error::other("connection vanished"))
    }
}

impl QuicSink {
    async fn send_once(&mut self, device: u32, bytes: &[u8]) -> std::io::Result<()> {
        let c = self.conn(device).await?;
        match &mut c.stream {
            Some(s) => {
                let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
                s.write_all(&len.to_be_bytes()).await.map_err(std::io::Error::other)?;
                s.write_all(bytes).await.map_err(std::io::Error::other)
            }
            None => {
                let fits = c.conn.max_datagram_size().is_some_and(|m| bytes.len() <= m);
                if !fits {
                    return Err(std::io::Error::other("frame larger than the QUIC datagram size"));
                }
                let b = Bytes::copy_from_slice(bytes);
                // Queue without waiting while there is room, so quinn's
                // driver finds several datagrams at once and packs them
                // into one packet; wait (backpressure) only when the buffer
                // is full. Never let quinn drop a queued datagram.
                if c.conn.datagram_send_buffer_space() >= bytes.len() + 64 {
                    c.conn.send_datagram(b).map_err(std::io::Error::other)
                } else {
                    c.conn.send_datagram_wait(b).await.map_err(std::io::Error::other)
                }
            }
        }
    }
}

impl Sink for QuicSink {
    async fn send(&mut self, device: u32, bytes: &[u8]) -> std::io::Result<()> {
        match self.send_once(device, bytes).await {
            // Reset (or timed out) while this frame was being sent: once
            // more, on a new connection.
            Err(_) if self.conns.get(&device).is_some_and(|c| lost(&c.conn).is_some()) => {
                self.send_once(device, bytes).await
            }
            r => r,
        }
    }

    async fn prepare(&mut self, devices: &[u32]) -> std::io::Result<()> {
        // Handshake with up to 64 devices at a time.
        for chunk in devices.chunks(64) {
            let handshakes = chunk.iter().map(|&d| {
                let (ep, target, name, mode) =
                    (self.endpoint.clone(), self.target, self.server_name.clone(), self.mode);
                async move {
                    let fail = |e: String| (d, std::io::Error::other(e));
                    let conn = ep
                        .connect(target, &name)
                        .map_err(|e| fail(e.to_string()))?
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                    let stream = match mode {
                        QuicMode::Stream => {
                            Some(conn.open_uni().await.map_err(|e| fail(e.to_string()))?)
                        }
                        QuicMode::Datagram => None,
                    };
                    Ok::<_, (u32, std::io::Error)>((d, Conn::new(conn, stream)))
                }
            });
            let t = std::time::Instant::now();
            let results = futures_util::future::join_all(handshakes).await;
            tracing::debug!(devices = chunk.len(), elapsed = ?t.elapsed(), "QUIC handshakes done");
            for r in results {
                match r {
                    Ok((d, c)) => {
                        self.conns.insert(d, c);
                    }
                    Err((d, e)) => {
                        self.connect_errors += 1;
                        self.failed.insert(d);
                        tracing::debug!(device = d, error = %e, "QUIC connect failed");
                    }
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let t = std::time::Instant::now();
        for c in self.conns.values_mut() {
            if let Some(mut s) = c.stream.take() {
                let _ = s.finish();
                // Resolves once the server has read the stream to its end.
                let _ = tokio::time::timeout(Duration::from_secs(10), s.stopped()).await;
            }
        }
        // Wait until every queued DATAGRAM frame has left the send buffer,
        // then for the last packets to arrive.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut rtt = Duration::from_millis(1);
        for c in self.conns.values() {
            while c.conn.datagram_send_buffer_space() < c.empty
                && c.conn.close_reason().is_none()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            rtt = rtt.max(c.conn.rtt());
        }
        tracing::debug!(elapsed = ?t.elapsed(), ?rtt, "QUIC datagram buffers drained");
        tokio::time::sleep((rtt * 4).max(Duration::from_millis(50))).await;
        // A connection the server closed (a client certificate it refused,
        // say) lost what was sent on it: that is an error for the caller.
        let refused: Vec<String> = self
            .conns
            .values()
            .filter_map(|c| c.conn.close_reason())
            .map(|r| r.to_string())
            .collect();
        for c in self.conns.values() {
            c.conn.close(0u32.into(), b"done");
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
        tracing::debug!(elapsed = ?t.elapsed(), "QUIC connections closed");
        if self.reconnects > 0 {
            tracing::info!(reconnects = self.reconnects, "QUIC connections re-established");
        }
        match refused.first() {
            None => Ok(()),
            Some(r) => Err(std::io::Error::other(format!(
                "{} connection(s) closed by the server: {r}",
                refused.len()
            ))),
        }
    }
}

/// A QUIC client configuration for a fleetwire server, as `sim` and `send`
/// use it: TLS 1.3 trusting the CA certificate(s) in `ca` (PEM), presenting
/// the client certificate and key `identity` (PEM files) when given, ALPN
/// `fleetwire/1`, no early data, keep-alives every 15 s and a 1 MiB
/// DATAGRAM send buffer.
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
    tls.alpn_protocols = vec![fleetwire_proto::QUIC_ALPN.to_vec()];
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
