//! The stream's two protocols: Server-Sent Events (`GET /api/stream`,
//! `event:` the message type, `id:` its number, `data:` its JSON; a comment
//! line as keep-alive) and WebSocket (`GET /api/ws`, one text frame per
//! message with its `id` in the JSON, pings as keep-alive). Both take the
//! same filters; both answer `400` naming a bad parameter and `503` when
//! `stream_max_clients` are connected.

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use futures_util::stream::Stream;
use serde_json::json;

use super::StreamHub;
use super::client::{Client, Filter};
use super::message::Message;
use crate::telemetry::Gauge;

fn error(status: StatusCode, error: &str, param: Option<&str>, message: String) -> Response {
    (status, Json(json!({"error": error, "parameter": param, "message": message}))).into_response()
}

/// The client for a request: its filter and its place, or the refusal.
fn client(
    hub: &Arc<StreamHub>,
    query: &str,
    last_id: Option<u64>,
) -> Result<Client, Box<Response>> {
    let filter = Filter::parse(query).map_err(|e| {
        error(StatusCode::BAD_REQUEST, "bad_parameter", Some(&e.param), e.to_string())
    })?;
    let slot = hub.join().ok_or_else(|| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_clients",
            None,
            format!("{} stream clients are connected (stream_max_clients)", hub.cfg.max_clients),
        ))
    })?;
    Ok(Client::start(slot, filter, last_id))
}

/// Counts a client in a protocol's gauge while alive.
struct Connected(Gauge);

impl Connected {
    fn new(g: &Gauge) -> Self {
        g.add(1.0);
        Connected(g.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.add(-1.0);
    }
}

/// `GET /api/stream`.
pub(crate) fn sse(hub: &Arc<StreamHub>, query: &str, headers: &HeaderMap) -> Response {
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let c = match client(hub, query, last_id) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let gauge = Connected::new(&hub.metrics.sse);
    let keepalive = hub.cfg.keepalive;
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // nginx buffers responses unless told not to.
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(sse_chunks(c, gauge, keepalive)),
    )
        .into_response()
}

/// Most bytes of messages put into one SSE chunk (one write).
const CHUNK: usize = 8 << 10;

/// Most messages fed to a WebSocket before one flush.
const WS_BATCH: usize = 256;

/// The SSE body: each chunk holds the next message and whatever else is
/// already waiting (up to [`CHUNK`] bytes), so a busy stream costs a write
/// per batch, not per message; a comment line after `keepalive` of quiet.
fn sse_chunks(
    c: Client,
    gauge: Connected,
    keepalive: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold((c, gauge), move |(mut c, gauge)| async move {
        let first = match tokio::time::timeout(keepalive, c.next()).await {
            Err(_) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), (c, gauge))),
            Ok(None) => return None,
            Ok(Some(m)) => m,
        };
        let mut out = Vec::with_capacity(first.json.len() + 64);
        write_sse(&mut out, &first, c.resume_id);
        while out.len() < CHUNK {
            let Some(m) = c.try_next() else { break };
            write_sse(&mut out, &m, c.resume_id);
        }
        Some((Ok(Bytes::from(out)), (c, gauge)))
    })
}

/// Appends an SSE event: `event:` the message type, `id:` its number
/// (broadcast messages carry their own, snapshot messages the number the
/// snapshot was taken at: a reconnect resumes there), `data:` its JSON
/// (compact JSON has no line breaks).
fn write_sse(out: &mut Vec<u8>, m: &Message, resume_id: u64) {
    let id = if m.id == 0 { resume_id } else { m.id };
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(m.kind.as_str().as_bytes());
    out.extend_from_slice(b"\nid: ");
    let _ = write!(out, "{id}");
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(m.json.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// `GET /api/ws`.
pub(crate) fn ws(hub: &Arc<StreamHub>, query: &str, upgrade: WebSocketUpgrade) -> Response {
    let c = match client(hub, query, None) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let (gauge, keepalive) = (Connected::new(&hub.metrics.ws), hub.cfg.keepalive);
    let hub = hub.clone();
    upgrade
        .max_message_size(4096)
        .on_upgrade(move |socket| async move {
            ws_loop(socket, c, keepalive, &hub).await;
            drop(gauge);
        })
        .into_response()
}

/// The message as a WebSocket text frame: its JSON with its number first.
fn ws_text(m: &Message, resume_id: u64) -> String {
    let id = if m.id == 0 { resume_id } else { m.id };
    match m.json.strip_prefix('{') {
        Some(rest) => format!("{{\"id\":{id},{rest}"),
        None => m.json.clone(),
    }
}

/// Sends messages and pings until the client leaves, sends something other
/// than a pong or a close (the stream takes no commands), or cannot take a
/// message within two keep-alive intervals (it stopped reading).
async fn ws_loop(mut socket: WebSocket, mut c: Client, keepalive: Duration, hub: &StreamHub) {
    let mut ping = tokio::time::interval(keepalive);
    ping.reset();
    let send_timeout = keepalive * 2;
    loop {
        let out = tokio::select! {
            m = c.next() => match m {
                Some(m) => WsMessage::Text(ws_text(&m, c.resume_id).into()),
                None => break,
            },
            _ = ping.tick() => WsMessage::Ping(Default::default()),
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Pong(_) | WsMessage::Ping(_))) => continue,
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {
                    hub.metrics.closed_garbage.inc();
                    let _ = socket.send(WsMessage::Close(None)).await;
                    break;
                }
            },
        };
        // What else is waiting goes with it, in one flush.
        let send = async {
            socket.feed(out).await?;
            for _ in 1..WS_BATCH {
                let Some(m) = c.try_next() else { break };
                socket.feed(WsMessage::Text(ws_text(&m, c.resume_id).into())).await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(send_timeout, send).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                // Not reading: its window is full already; close it.
                hub.metrics.closed_slow.inc();
                break;
            }
        }
    }
}
