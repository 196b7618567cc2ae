//! The stream's two protocols: Server-Sent Events (`GET /api/stream`,
//! `event:` the message type, `id:` its number, `data:` its JSON; a comment
//! line as keep-alive) and WebSocket (`GET /api/ws`, one text frame per
//! message with its `id` in the JSON, pings as keep-alive). Both take the
//! same filters; both answer `400` naming a bad parameter and `503` when
//! `stream_max_clients` are connected.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
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
    Sse::new(events(c, gauge))
        .keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive"))
        .into_response()
}

fn events(c: Client, gauge: Connected) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold((c, gauge), |(mut c, gauge)| async move {
        let m = c.next().await?;
        Some((Ok(sse_event(&m, c.resume_id)), (c, gauge)))
    })
}

/// An SSE event: broadcast messages carry their own number, snapshot
/// messages the number the snapshot was taken at (a reconnect resumes
/// there).
fn sse_event(m: &Message, resume_id: u64) -> Event {
    let id = if m.id == 0 { resume_id } else { m.id };
    Event::default().event(m.kind.as_str()).id(id.to_string()).data(&m.json)
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
        match tokio::time::timeout(send_timeout, socket.send(out)).await {
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
