//! Serving HTTP with the limits a service exposed to the internet needs: a
//! header-read timeout (a request's head must arrive within it, and an idle
//! keep-alive connection is closed after it: a slowloris client holds a
//! connection for seconds, not forever), and a cap on open connections
//! below the process's file-descriptor limit (raised to its hard limit at
//! start), leaving descriptors for sockets, snapshots and the data dir.
//! When full, the oldest connection that has not sent a request yet makes
//! room (so slow connections cannot keep a health check out), else the new
//! one is closed at once; both are counted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::telemetry::{Counter, Gauge, Registry};
use crate::transport::sys;

/// A request's head must arrive within this; an idle keep-alive
/// connection is closed after it.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection whose client takes no bytes of a response for this long is
/// closed.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request head, and most bytes queued for one connection's writes.
const MAX_BUF: usize = 16 << 10;
/// File descriptors kept free of HTTP connections (sockets, snapshot and
/// state files, the process's own).
const RESERVED_FDS: u64 = 256;

/// The connections of one listener, as counted.
#[derive(Debug, Clone)]
pub(crate) struct HttpMetrics {
    open: Gauge,
    refused: Counter,
}

impl HttpMetrics {
    /// The series of the listener called `listener` (`api`, `osmand`).
    pub(crate) fn register(r: &Registry, listener: &str) -> Self {
        HttpMetrics {
            open: r.gauge(
                "fleetwire_http_connections",
                "Open HTTP connections, by listener.",
                &[("listener", listener)],
            ),
            refused: r.counter(
                "fleetwire_http_connections_refused_total",
                "HTTP connections closed at once because the listener had its maximum open (below the file-descriptor limit).",
                &[("listener", listener)],
            ),
        }
    }
}

/// The most connections a listener keeps open: its share (`share` of the
/// listeners) of the descriptors beyond the reserve.
pub(crate) fn max_connections(share: u64) -> usize {
    let limit = sys::raise_nofile_limit();
    (limit.saturating_sub(RESERVED_FDS) / share.max(1)).clamp(16, 1 << 20) as usize
}

/// A connection as the accept loop sees it.
struct Conn {
    /// Ends the connection.
    close: CancellationToken,
    /// It has sent a whole request head.
    proven: Arc<AtomicBool>,
}

/// The connections that have not yet sent a request, oldest first: when
/// the listener is full, the oldest of them makes room for a new one, so a
/// flood of slow connections cycles through itself and cannot keep a real
/// client (a health check) out.
#[derive(Default)]
struct Unproven(Mutex<VecDeque<Conn>>);

impl Unproven {
    /// Closes the oldest connection that still has not sent a request;
    /// false when there is none.
    fn evict_oldest(&self) -> bool {
        let mut q = self.0.lock();
        while let Some(c) = q.pop_front() {
            if !c.proven.load(Ordering::Relaxed) && !c.close.is_cancelled() {
                c.close.cancel();
                return true;
            }
        }
        false
    }

    fn push(&self, c: Conn) {
        let mut q = self.0.lock();
        q.retain(|c| !c.proven.load(Ordering::Relaxed) && !c.close.is_cancelled());
        q.push_back(c);
    }
}

/// Serves `router` on `listener` until `stop`, then lets the requests in
/// progress finish.
pub(crate) fn spawn(
    listener: tokio::net::TcpListener,
    router: Router,
    max: usize,
    metrics: HttpMetrics,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(Semaphore::new(max));
    let unproven = Arc::new(Unproven::default());
    tokio::spawn(async move {
        let conns = tokio_util::task::TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: wait instead of spinning.
                        tracing::debug!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let slot = match slots.clone().try_acquire_owned() {
                Ok(s) => s,
                Err(_) => {
                    // Full: the oldest connection that never sent a request
                    // goes; none such, the new one is refused.
                    metrics.refused.inc();
                    if !unproven.evict_oldest() {
                        drop(stream);
                        continue;
                    }
                    match tokio::time::timeout(
                        Duration::from_millis(200),
                        slots.clone().acquire_owned(),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        _ => {
                            drop(stream);
                            continue;
                        }
                    }
                }
            };
            let conn = Conn { close: stop.child_token(), proven: Arc::new(AtomicBool::new(false)) };
            let (close, proven) = (conn.close.clone(), conn.proven.clone());
            unproven.push(conn);
            let (router, open) = (router.clone(), metrics.open.clone());
            conns.spawn(async move {
                open.add(1.0);
                serve_connection(stream, peer, router, close, proven).await;
                open.add(-1.0);
                drop(slot);
            });
        }
        conns.close();
        conns.wait().await;
    })
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    close: CancellationToken,
    proven: Arc<AtomicBool>,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        proven.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // MAX_BUF: the most a request head may be, and what hyper queues for a
    // client before it stops asking the body for more: a stream client that
    // stops reading holds this much, not hyper's default ~400 KB.
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).max_buf_size(MAX_BUF);
    // A client that takes no bytes for WRITE_TIMEOUT is gone or stuck: its
    // connection closes, and the response it held (memory, an expensive
    // request's turn) is let go.
    // Responses go out whole or as stream batches: Nagle would only hold a
    // stream's next batch back until the client's delayed ACK (tens of ms).
    let _ = stream.set_nodelay(true);
    let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
    stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let io = TokioIo::new(Box::pin(stream));
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = close.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}
