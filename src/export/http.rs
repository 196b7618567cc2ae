//! HTTP: `/metrics`, the JSON API, GeoJSON, health and a landing page.
//!
//! No handler computes while holding a shard lock: each copies what it
//! needs under the lock (a few plain fields per device, or one device) and
//! builds its answer after releasing it, in a blocking task when the answer
//! is large, so ingest on that shard never waits for JSON or sorting.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Extension, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::auth::{self, Tokens};
use super::render::render_engine;
use super::serve::HttpMetrics;
use crate::clock::now_ms;
use crate::engine::{Device, Engine, FilterReason, SEVERITIES};
use crate::forward::Forwarder;
use crate::ingest::{DeviceRegistry, Pipeline, Transport};
use crate::stream::StreamHub;
use crate::stream::assets;
use crate::telemetry::Registry;
use crate::views::{Brief, position_json};

/// What the handlers need.
pub(crate) struct HttpState {
    /// The engine.
    pub(crate) engine: Arc<Engine>,
    /// Every component's series.
    pub(crate) registry: Arc<Registry>,
    /// The ingest path (its counters for `/api/summary`).
    pub(crate) pipeline: Arc<Pipeline>,
    /// Identifiers of devices of other protocols (IMEIs, phone ids).
    pub(crate) devices: Arc<DeviceRegistry>,
    /// The NATS forwarder, when forwarding is on.
    pub(crate) forwarder: Option<Arc<Forwarder>>,
    /// Server start.
    pub(crate) started: Instant,
    /// Addresses the server listens on, for the landing page and /healthz.
    pub(crate) listening: Vec<(&'static str, String)>,
    /// The live stream.
    pub(crate) stream: Arc<StreamHub>,
    /// Tokens, when the API is protected.
    pub(crate) tokens: Option<Arc<Tokens>>,
    /// A tile URL template for the map (`map_tiles_url`).
    pub(crate) map_tiles_url: Option<String>,
}

/// Serves HTTP on `listener` until `stop` is cancelled (requests in
/// progress are finished).
pub(crate) fn spawn(
    listener: tokio::net::TcpListener,
    state: HttpState,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let metrics = HttpMetrics::register(&state.registry, "api");
    let app = router(Arc::new(state));
    // Half the descriptors beyond the reserve (the OsmAnd listener may have
    // the other half).
    super::serve::spawn(listener, app, super::serve::max_connections(2), metrics, stop)
}

fn router(state: Arc<HttpState>) -> Router {
    let tokens = state.tokens.clone();
    let heavy = Arc::new(Heavy::new(&state.registry));
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/summary", get(summary))
        .route("/api/devices", get(devices))
        .route("/api/devices/{id}", get(device))
        .route("/api/positions.geojson", get(geojson))
        .route("/api/stream", get(stream_sse))
        .route("/api/ws", get(stream_ws))
        .route("/map", get(map_page))
        .route("/map/", get(map_page))
        .route("/map/{*path}", get(map_asset))
        .layer(axum::Extension(heavy))
        .layer(axum::middleware::from_fn_with_state(tokens, auth::require))
        .with_state(state)
}

async fn stream_sse(
    State(st): State<Arc<HttpState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    crate::stream::serve::sse(&st.stream, q.as_deref().unwrap_or(""), &headers)
}

async fn stream_ws(
    State(st): State<Arc<HttpState>>,
    RawQuery(q): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    crate::stream::serve::ws(&st.stream, q.as_deref().unwrap_or(""), upgrade)
}

async fn map_page(State(st): State<Arc<HttpState>>) -> Html<String> {
    Html(assets::index_html(st.map_tiles_url.as_deref()))
}

async fn map_asset(Path(path): Path<String>) -> Response {
    match assets::asset(&path) {
        Some((bytes, content_type)) => {
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "no such file"}))).into_response(),
    }
}

/// Most expensive requests (listings, GeoJSON) worked on or being sent at
/// once: they walk the device table, which the receive path needs too, and
/// their bodies are large. `/metrics` is bounded apart ([`METRICS_BODIES`]).
const HEAVY_AT_ONCE: usize = 2;
/// How long an expensive request waits for its turn before a `503`.
const HEAVY_QUEUE: std::time::Duration = std::time::Duration::from_secs(5);
/// What bounds the expensive requests.
pub(crate) struct Heavy {
    /// Held while an expensive response is computed and, for listings and
    /// GeoJSON, until its body is sent or its connection closed: at most
    /// [`HEAVY_AT_ONCE`] such bodies exist at a time.
    turns: Arc<tokio::sync::Semaphore>,
    /// The last `/metrics` body and when its rendering began.
    metrics: tokio::sync::Mutex<Option<(Instant, Arc<Rendered>)>>,
    /// One per `/metrics` body alive (cached, being sent, being rendered):
    /// at most [`METRICS_BODIES`] exist at a time.
    metrics_bodies: Arc<tokio::sync::Semaphore>,
    /// The threads the expensive work runs on, below the receive path's
    /// priority.
    pool: super::pool::Pool,
    refused: crate::telemetry::Counter,
}

/// `/metrics` bodies alive at once: the cached one, an older one still
/// being sent to a slow scraper, and the next rendering. Scrapes do not take
/// the listings' turns (a stuck listing client must not stop scraping);
/// they share renderings instead.
const METRICS_BODIES: usize = 3;

/// A rendered `/metrics` body and its place among [`METRICS_BODIES`].
struct Rendered {
    body: axum::body::Bytes,
    _alive: tokio::sync::OwnedSemaphorePermit,
}

impl Heavy {
    /// The limits, counting refusals in `r`.
    pub(crate) fn new(r: &Registry) -> Self {
        Heavy {
            turns: Arc::new(tokio::sync::Semaphore::new(HEAVY_AT_ONCE)),
            metrics: tokio::sync::Mutex::new(None),
            metrics_bodies: Arc::new(tokio::sync::Semaphore::new(METRICS_BODIES)),
            // The listings' turns and one /metrics rendering (renderings
            // are serialised by the cache's lock).
            pool: super::pool::Pool::start("http-render", HEAVY_AT_ONCE + 1, HEAVY_AT_ONCE + 1),
            refused: r.counter(
                "fleetwire_http_busy_total",
                "Expensive HTTP requests (/metrics, /api/devices, /api/positions.geojson) answered 503 after waiting their turn for 5 s.",
                &[],
            ),
        }
    }
}

/// The `503` of a request that waited too long, with `Retry-After`.
fn busy(h: &Heavy) -> Response {
    h.refused.inc();
    let body =
        Json(json!({"error": "busy", "message": "too many expensive requests at once; retry"}));
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// Runs the expensive `f` on a render thread (walking the device table:
/// the async runtime also drives QUIC; below the receive path's priority)
/// once it is its turn, returning the
/// turn with the result so that the body can keep it until it is sent.
async fn held<T: Send + 'static>(
    heavy: &Heavy,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<(T, tokio::sync::OwnedSemaphorePermit), Response> {
    let turn = tokio::time::timeout(HEAVY_QUEUE, heavy.turns.clone().acquire_owned()).await;
    let Ok(Ok(turn)) = turn else {
        return Err(busy(heavy));
    };
    match heavy.pool.run(f).await {
        Ok(v) => Ok((v, turn)),
        Err(super::pool::PoolError::Busy) => Err(busy(heavy)),
        Err(super::pool::PoolError::Gone) => Err(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    }
}

/// A response body that keeps `turn` until it has been sent (or its
/// connection closed), sent in pieces of 64 KiB.
fn held_body(bytes: Vec<u8>, turn: tokio::sync::OwnedSemaphorePermit) -> axum::body::Body {
    const PIECE: usize = 64 << 10;
    let bytes = axum::body::Bytes::from(bytes);
    let pieces = futures_util::stream::unfold((bytes, Some(turn)), |(mut rest, turn)| async move {
        if rest.is_empty() {
            // The turn goes with the last piece's state.
            drop(turn);
            return None;
        }
        let piece = rest.split_to(rest.len().min(PIECE));
        Some((Ok::<_, std::convert::Infallible>(piece), (rest, turn)))
    });
    axum::body::Body::from_stream(pieces)
}

/// A body sending the shared rendering `r` in pieces of 64 KiB, keeping
/// it (and its place) until sent or the connection closed.
fn shared_body(r: Arc<Rendered>) -> axum::body::Body {
    const PIECE: usize = 64 << 10;
    let pieces = futures_util::stream::unfold((r, 0usize), |(r, at)| async move {
        if at >= r.body.len() {
            return None;
        }
        let end = r.body.len().min(at + PIECE);
        let piece = r.body.slice(at..end);
        Some((Ok::<_, std::convert::Infallible>(piece), (r, end)))
    });
    axum::body::Body::from_stream(pieces)
}

/// Everything `/metrics` shows: every component's series, then the engine's.
fn render_all(st: &HttpState) -> String {
    let mut out = String::with_capacity(64 << 10);
    // Some series are read from locks the receive path takes (the rate
    // limiter's table): at its priority, like the engine's copies.
    st.engine.held(|| st.registry.render(&mut out));
    render_engine(&st.engine, now_ms(), &mut out);
    out
}

async fn metrics(
    State(st): State<Arc<HttpState>>,
    Extension(heavy): Extension<Arc<Heavy>>,
) -> Response {
    let ok = |r: Arc<Rendered>| {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], shared_body(r))
            .into_response()
    };
    // Scrapes arriving together wait for one rendering and share its body:
    // one that began after this scrape arrived (so no scrape is answered
    // with values from before it asked; a lone scraper always renders).
    let asked = Instant::now();
    let deadline = tokio::time::Instant::from_std(asked + HEAVY_QUEUE);
    let Ok(mut cached) = tokio::time::timeout_at(deadline, heavy.metrics.lock()).await else {
        return busy(&heavy);
    };
    if let Some((_, r)) = cached.as_ref().filter(|(began, _)| *began >= asked) {
        return ok(r.clone());
    }
    let place = tokio::time::timeout_at(deadline, heavy.metrics_bodies.clone().acquire_owned());
    let Ok(Ok(place)) = place.await else {
        return busy(&heavy);
    };
    let began = Instant::now();
    match heavy.pool.run(move || render_all(&st)).await {
        Ok(body) => {
            let r = Arc::new(Rendered { body: body.into(), _alive: place });
            *cached = Some((began, r.clone()));
            ok(r)
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn healthz(State(st): State<Arc<HttpState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "uptime_seconds": st.started.elapsed().as_secs_f64(),
        "devices": st.engine.summary().devices,
        "listening": st.listening.iter().map(|(k, v)| json!({"transport": k, "address": v})).collect::<Vec<_>>(),
    }))
}

async fn index(State(st): State<Arc<HttpState>>) -> Html<String> {
    let listening: String =
        st.listening.iter().map(|(k, v)| format!("<li>{k}: <code>{v}</code></li>")).collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>fleetwire</title></head><body>\
         <h1>fleetwire {}</h1><p>Real-time telemetry ingest for IoT fleets.</p>\
         <ul><li><a href=\"/map\">/map</a> (live map)</li>\
         <li><a href=\"/metrics\">/metrics</a> (Prometheus)</li>\
         <li><a href=\"/api/summary\">/api/summary</a> (fleet totals)</li>\
         <li><a href=\"/api/devices\">/api/devices</a> (devices; ?limit=&amp;offset=&amp;after=&amp;online=true)</li>\
         <li><code>/api/devices/{{id}}</code> (one device in full)</li>\
         <li><a href=\"/api/positions.geojson\">/api/positions.geojson</a> (last positions)</li>\
         <li><code>/api/stream</code> (Server-Sent Events), <code>/api/ws</code> (WebSocket): the live stream</li>\
         <li><a href=\"/healthz\">/healthz</a></li></ul><h2>Listening</h2><ul>{listening}</ul></body></html>",
        env!("CARGO_PKG_VERSION")
    ))
}

fn forward_json(f: &Forwarder) -> Value {
    let m = &f.metrics;
    json!({
        "connected": f.connected(),
        "enqueued": m.enqueued.get(),
        "published": m.published.get(),
        "acknowledged": m.acknowledged.get(),
        "failed": m.failed.get(),
        "dropped": m.dropped.get(),
        "unconfirmed": m.unconfirmed.get(),
        "failing": m.failing.get() > 0.0,
        "buffered": f.buffered(),
    })
}

async fn summary(State(st): State<Arc<HttpState>>) -> Json<Value> {
    let s = st.engine.summary();
    let t = &s.totals;
    let datagrams: serde_json::Map<String, Value> = Transport::ALL
        .iter()
        .map(|tr| {
            let c = st.pipeline.counters().of(*tr);
            let v = json!({
                "received": c.received.get(),
                "accepted": c.accepted.get(),
                "rejected": c.rejected_total(),
            });
            (tr.as_str().to_string(), v)
        })
        .collect();
    let records: serde_json::Map<String, Value> =
        t.records.iter().map(|(k, v)| (k.as_str().to_string(), json!(v))).collect();
    let filtered: serde_json::Map<String, Value> = FilterReason::ALL
        .iter()
        .map(|r| (r.as_str().to_string(), json!(t.filtered[*r as usize])))
        .collect();
    Json(json!({
        "datagrams": datagrams,
        "devices": s.devices,
        "online": t.online.min(s.devices),
        "exported": s.exported,
        "records": records,
        "batches": t.batches,
        "lost": t.lost(),
        "lost_confirmed": t.lost_confirmed(),
        "duplicates": t.duplicates,
        "reordered": t.reordered,
        "late": t.late,
        "restarts": t.restarts,
        "evicted": t.evicted,
        "filtered": filtered,
        "readings_dropped": t.readings_dropped,
        "forward": st.forwarder.as_deref().map(forward_json),
    }))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    offset: Option<usize>,
    /// Keyset paging: devices with an id above this one.
    after: Option<u32>,
    online: Option<bool>,
}

/// Most devices per `/api/devices` page.
const MAX_PAGE: usize = 10_000;
/// Most features per `/api/positions.geojson`.
const MAX_FEATURES: usize = 100_000;

async fn devices(
    State(st): State<Arc<HttpState>>,
    Extension(heavy): Extension<Arc<Heavy>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let r = held(&heavy, move || {
        let limit = q.limit.unwrap_or(1000).min(MAX_PAGE);
        let offset = q.offset.unwrap_or(0);
        let now = now_ms();
        let off = st.engine.config();
        // A merge of the shards' sorted ids: the page costs its offset and
        // length, not the fleet. The total of an `online=` filter is the
        // count of the last upkeep tick (at most a second old).
        let keep = |d: &crate::engine::Device| q.online.is_none_or(|o| d.online(now, off) == o);
        // The locks are held at the receive path's priority (Engine::held),
        // for the copy only; the JSON is made on this thread.
        let (ids, page) = st.engine.held(|| {
            let ids = st.engine.page_ids(q.after, offset, limit, &keep);
            let page: Vec<Brief> = ids
                .iter()
                .filter_map(|id| st.engine.with_device(*id, |d| Brief::of(d, now, off)))
                .collect();
            (ids, page)
        });
        let sum = st.engine.summary();
        let total = match q.online {
            None => sum.devices,
            Some(true) => sum.totals.online,
            Some(false) => sum.devices.saturating_sub(sum.totals.online),
        };
        let next_after = (ids.len() == limit).then(|| ids.last().copied()).flatten();
        // Written entry by entry: a value tree of the whole page takes about
        // ten times the bytes of its text.
        let head =
            json!({"total": total, "offset": offset, "limit": limit, "next_after": next_after});
        let mut out = serde_json::to_vec(&head).unwrap_or_default();
        out.pop(); // the closing brace
        out.extend_from_slice(b",\"devices\":[");
        for (i, b) in page.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = serde_json::to_writer(&mut out, &b.json());
        }
        out.extend_from_slice(b"]}");
        out
    })
    .await;
    match r {
        Ok((body, turn)) => {
            ([(header::CONTENT_TYPE, "application/json")], held_body(body, turn)).into_response()
        }
        Err(r) => r,
    }
}

/// One device in full, from a copy taken under its shard's lock.
fn device_json(d: &Device, now: u64, engine: &Engine) -> Value {
    let cfg = engine.config();
    let mut scratch = Vec::new();
    let readings: Vec<Value> = d
        .readings
        .iter()
        .flat_map(|r| r.iter())
        .map(|s| {
            let st = s.stats(cfg.reading_window_ms, &mut scratch);
            json!({"name": &*s.name, "window_seconds": cfg.reading_window_ms as f64 / 1000.0, "stats": st})
        })
        .collect();
    let h = &d.health;
    json!({
        "id": d.id,
        "online": d.online(now, cfg),
        "offline_after_ms": d.offline_after_ms(cfg),
        "first_seen_ms": d.first_seen_ms,
        "last_seen_ms": d.last_seen_ms,
        "bytes": d.bytes,
        "exported": d.exported,
        "position": position_json(d.fix),
        "track": {
            "odometer_m": d.track.odometer_m, "moving": d.track.moving,
            "derived_speed_m_s": d.track.derived_speed_m_s, "derived_heading_deg": d.track.derived_heading_deg,
        },
        "sequence": {
            "highest": d.seq.highest(), "received": d.seq.received, "lost": d.seq.lost(),
            "lost_confirmed": d.seq.lost_confirmed(), "pending": d.seq.pending(),
            "duplicates": d.seq.duplicates, "reordered": d.seq.reordered, "late": d.seq.late,
            "restarts": d.seq.restarts,
        },
        "jitter_ms": d.jitter_ms,
        "latency_ms": d.latency_ms,
        "health": {
            "time_ms": h.t_ms, "battery_pct": h.battery_pct, "supply_mv": h.supply_mv,
            "temperature_c": h.temperature_cdeg.map(|t| f64::from(t) / 100.0),
            "rssi_dbm": h.rssi_dbm, "uptime_s": h.uptime_s,
        },
        "readings": readings,
        "info": d.info.as_ref().map(|i| json!({"firmware": &*i.firmware, "model": &*i.model, "capabilities": i.capabilities})),
        "last_event": d.last_event.map(|e| json!({
            "code": e.code, "severity": SEVERITIES.get(e.severity as usize), "time_ms": e.t_ms,
        })),
        "counts": d.counts,
    })
}

async fn device(State(st): State<Arc<HttpState>>, Path(id): Path<u32>) -> Response {
    let now = now_ms();
    // A copy (its readings are bounded by the per-device limits); the
    // statistics sort samples, which happens after the lock is released.
    match st.engine.with_device(id, Device::clone) {
        Some(d) => {
            let mut v = device_json(&d, now, &st.engine);
            if let Some(e) = st.devices.entry(id) {
                v["identifier"] = json!(&*e.identifier);
                v["name"] = json!(e.name.as_deref());
                v["protocol"] = json!(e.protocol.map(Transport::as_str));
            }
            Json(v).into_response()
        }
        None => {
            (StatusCode::NOT_FOUND, Json(json!({"error": format!("device {id} is not tracked")})))
                .into_response()
        }
    }
}

/// Features per piece of a streamed `/api/positions.geojson`: a response's
/// memory is one piece (about 250 bytes a feature), not the collection.
const GEOJSON_PIECE: usize = 2_048;

/// Pages of [`crate::engine::VISIT_PAGE`] devices looked at per piece, at
/// most (whatever the number of shards they span).
const GEOJSON_PIECE_PAGES: usize = 8;

/// Where a streamed GeoJSON collection stands.
struct GeoCursor {
    /// The shard being walked, and the last id looked at in it.
    shard: usize,
    after: Option<u32>,
    /// Features written so far, and most to write.
    written: usize,
    limit: usize,
    online: Option<bool>,
    /// The opening of the collection has been written.
    opened: bool,
    /// The closing bracket has been written.
    done: bool,
}

impl GeoCursor {
    /// The next piece of the collection: up to [`GEOJSON_PIECE`] features
    /// copied at the receive path's priority (Engine::held, a shard's lock
    /// for [`crate::engine::VISIT_PAGE`] devices at a time), written as text
    /// on this thread. The first piece opens the collection, the last
    /// closes it.
    fn next_piece(&mut self, engine: &Engine) -> Vec<u8> {
        let want = GEOJSON_PIECE.min(self.limit - self.written);
        let now = now_ms();
        let off = engine.config();
        let mut rows: Vec<Brief> = Vec::with_capacity(want);
        let shards = engine.shard_count();
        engine.held(|| {
            // At most this many devices looked at per piece: with a filter
            // that few devices pass, a piece may hold fewer features, but
            // no section on the lock holder walks the fleet.
            let mut budget = GEOJSON_PIECE_PAGES * crate::engine::VISIT_PAGE;
            while rows.len() < want && self.shard < shards && budget > 0 {
                let mut looked = self.after;
                let last = engine.visit_after(
                    self.shard,
                    self.after,
                    crate::engine::VISIT_PAGE.min(budget),
                    &mut |d| {
                        budget = budget.saturating_sub(1);
                        if rows.len() >= want {
                            return;
                        }
                        looked = Some(d.id);
                        if d.fix.is_some() && self.online.is_none_or(|o| d.online(now, off) == o) {
                            rows.push(Brief::of(d, now, off));
                        }
                    },
                );
                self.after = looked;
                if last.is_none() && rows.len() < want {
                    // The shard is done (every device in it looked at).
                    self.shard += 1;
                    self.after = None;
                }
            }
        });
        let mut out = Vec::with_capacity(rows.len() * 256 + 64);
        if !self.opened {
            self.opened = true;
            out.extend_from_slice(b"{\"type\":\"FeatureCollection\",\"features\":[");
        }
        for f in rows.iter().filter_map(Brief::feature) {
            if self.written > 0 {
                out.push(b',');
            }
            let _ = serde_json::to_writer(&mut out, &f);
            self.written += 1;
        }
        if self.written >= self.limit || self.shard >= shards {
            out.extend_from_slice(b"]}");
            self.done = true;
        }
        out
    }
}

/// The collection of last positions, streamed: each piece of
/// [`GEOJSON_PIECE`] features is copied and written on a render thread
/// when the client has taken the previous one, so a slow client holds one
/// piece, not up to [`MAX_FEATURES`] of them. The request's turn is held
/// until the last piece is sent (or the connection closed).
async fn geojson(
    State(st): State<Arc<HttpState>>,
    Extension(heavy): Extension<Arc<Heavy>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let cursor = Arc::new(parking_lot::Mutex::new(GeoCursor {
        shard: 0,
        after: None,
        written: 0,
        limit: q.limit.unwrap_or(10_000).min(MAX_FEATURES),
        online: q.online,
        opened: false,
        done: false,
    }));
    // The first piece is made before answering, so a busy server still
    // answers 503 rather than a broken 200.
    let (engine, c) = (st.engine.clone(), cursor.clone());
    let (first, turn) = match held(&heavy, move || c.lock().next_piece(&engine)).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    type Step = (Arc<parking_lot::Mutex<GeoCursor>>, Arc<HttpState>, Arc<Heavy>);
    let rest = futures_util::stream::unfold(
        ((cursor, st, heavy), turn),
        |((cursor, st, heavy), turn): (Step, tokio::sync::OwnedSemaphorePermit)| async move {
            if cursor.lock().done {
                // The turn is released with the last piece.
                drop(turn);
                return None;
            }
            let mut waited = std::time::Duration::ZERO;
            loop {
                let (engine, c) = (st.engine.clone(), cursor.clone());
                match heavy.pool.run(move || c.lock().next_piece(&engine)).await {
                    Ok(piece) => {
                        let piece = Ok::<_, std::io::Error>(axum::body::Bytes::from(piece));
                        return Some((piece, ((cursor, st, heavy), turn)));
                    }
                    // A thread is free for each turn's holder (the pool has
                    // one per turn and one for /metrics): busy is a
                    // moment's overlap with a job finishing (one whose
                    // client left). Not for longer than a request waits for
                    // its turn: then the body ends broken.
                    Err(super::pool::PoolError::Busy) if waited < HEAVY_QUEUE => {
                        let pause = std::time::Duration::from_millis(5);
                        tokio::time::sleep(pause).await;
                        waited += pause;
                    }
                    Err(super::pool::PoolError::Busy) => {
                        cursor.lock().done = true;
                        let e = Err(std::io::Error::other("the render threads stayed busy"));
                        return Some((e, ((cursor, st, heavy), turn)));
                    }
                    Err(super::pool::PoolError::Gone) => {
                        // The body ends broken, and the stream with it.
                        cursor.lock().done = true;
                        let e = Err(std::io::Error::other("the render thread is gone"));
                        return Some((e, ((cursor, st, heavy), turn)));
                    }
                }
            }
        },
    );
    let first = futures_util::stream::once(async move {
        Ok::<_, std::io::Error>(axum::body::Bytes::from(first))
    });
    let body = axum::body::Body::from_stream(futures_util::StreamExt::chain(first, rest));
    ([(header::CONTENT_TYPE, "application/geo+json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Accepted;
    use crate::ingest::{IngestCounters, Policy, PolicyConfig, UdpAuth};
    use fleetwire_proto::{Body, FixType, Frame, Monitoring, Position, Reading, Seq};

    const DEVICES: u32 = 2_000;

    /// A position of device `id` at `now` (a fix, moving north with the id).
    fn fix(id: u32, now: u64) -> Accepted<'static> {
        let p = Position {
            lat_e7: 480_000_000 + id as i32,
            lon_e7: 110_000_000,
            alt_dm: 0,
            speed_cm_s: 100,
            heading_ddeg: 0,
            hacc_cm: 100,
            fix: FixType::Fix3d,
            satellites: 8,
        };
        Accepted::new(Frame::new(id, 0, now, Body::Position(p)), 40)
    }

    fn state() -> Arc<HttpState> {
        let cfg = crate::config::Config::default();
        let engine = Arc::new(Engine::new(cfg.engine(), 4));
        let now = now_ms();
        for id in 1..=DEVICES {
            engine.ingest(now, &[fix(id, now)]);
        }
        let names = ["a", "b", "c"];
        for seq in 1..=20u32 {
            let r: Vec<Reading<'_>> =
                names.iter().map(|n| Reading { name: n, value: f64::from(seq) }).collect();
            let m = Monitoring { readings: Seq::from_slice(&r), ..Monitoring::EMPTY };
            let f = Frame::new(7, seq, now, Body::Monitoring(m));
            engine.ingest(now, &[Accepted::new(f, 80)]);
        }
        let policy = PolicyConfig {
            udp_auth: UdpAuth::Off,
            keys_file: None,
            rate_source: 0.0,
            rate_device: 0.0,
            burst: 1.0,
            max_sources: 1,
            max_devices: 1,
        };
        let pipeline = Pipeline::new(
            engine.clone(),
            IngestCounters::detached(),
            Policy::new(&policy, Default::default(), None),
        );
        Arc::new(HttpState {
            engine: engine.clone(),
            registry: Registry::new(),
            pipeline: Arc::new(pipeline),
            devices: Arc::new(
                crate::ingest::DeviceRegistry::load(
                    &cfg.registry(),
                    std::path::Path::new("/nonexistent-fleetwire-test-dir"),
                    &Registry::new(),
                )
                .unwrap(),
            ),
            forwarder: None,
            started: Instant::now(),
            listening: Vec::new(),
            stream: crate::stream::StreamHub::new(cfg.stream(), engine.clone(), &Registry::new()),
            tokens: None,
            map_tiles_url: None,
        })
    }

    /// Allocations made under a shard lock of the state's engine by `f`.
    fn under_lock<T>(st: &HttpState, f: impl FnOnce() -> T) -> (T, u64) {
        let a = &st.engine.allocations_under_lock;
        let before = a.load(std::sync::atomic::Ordering::Relaxed);
        let t = f();
        (t, a.load(std::sync::atomic::Ordering::Relaxed) - before)
    }

    /// The collection is streamed in pieces of [`GEOJSON_PIECE`] features
    /// across shards: every tracked device with a fix appears exactly once,
    /// a limit is met exactly, and the whole is one valid document.
    #[test]
    fn a_streamed_collection_has_every_feature_once() {
        let st = state();
        let now = now_ms();
        // 12,000 devices with a fix in all: 6 pieces, and with a filter no
        // device passes, an empty piece (a piece looks at 8 pages of 1,024).
        for id in 10_001..=20_000u32 {
            st.engine.ingest(now, &[fix(id, now)]);
        }
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let h = Arc::new(Heavy::new(&Registry::new()));
        let ids_of = |limit: usize, online: Option<bool>| {
            let q = ListQuery { limit: Some(limit), offset: None, after: None, online };
            let r = rt.block_on(geojson(State(st.clone()), Extension(h.clone()), Query(q)));
            assert_eq!(r.status(), StatusCode::OK);
            let body = rt.block_on(axum::body::to_bytes(r.into_body(), usize::MAX)).unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                let head = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                panic!("limit {limit}, online {online:?}: {e}: {head}")
            });
            assert_eq!(v["type"], "FeatureCollection");
            let mut ids: Vec<u64> = v["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].as_u64().unwrap())
                .collect();
            let n = ids.len();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), n, "a feature appears twice");
            ids
        };
        let ids = |limit| ids_of(limit, None);
        let all = ids(100_000);
        assert_eq!(ids_of(100_000, Some(true)), all);
        assert_eq!(ids_of(100_000, Some(false)), Vec::<u64>::new());
        let want: Vec<u64> = (1..=u64::from(DEVICES)).chain(10_001..=20_000).collect();
        assert_eq!(all, want);
        for limit in [1, GEOJSON_PIECE - 1, GEOJSON_PIECE, GEOJSON_PIECE + 1, 4_097, 6_999, 7_000] {
            let got = ids(limit);
            assert_eq!(got.len(), limit);
            assert!(got.iter().all(|id| all.binary_search(id).is_ok()));
        }
        // The turns were all given back.
        assert_eq!(h.turns.available_permits(), HEAVY_AT_ONCE);
    }

    /// Readers copy under the shard lock and build their answer after: the
    /// allocations made while a lock is held stay far below one per device
    /// listed (building JSON under the lock costs several per device).
    #[test]
    fn handlers_only_copy_under_the_shard_lock() {
        let st = state();
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let q = |limit| ListQuery { limit: Some(limit), offset: None, after: None, online: None };
        let h = Arc::new(Heavy::new(&Registry::new()));
        let heavy = || Extension(h.clone());
        let call = |r: Response| {
            assert_eq!(r.status(), StatusCode::OK);
            let body = rt.block_on(axum::body::to_bytes(r.into_body(), usize::MAX)).unwrap();
            serde_json::from_slice::<Value>(&body).unwrap()
        };
        let (v, list) = under_lock(&st, || {
            call(rt.block_on(devices(State(st.clone()), heavy(), Query(q(5_000)))))
        });
        assert_eq!(v["devices"].as_array().map(Vec::len), Some(DEVICES as usize));
        assert!(list < 200, "/api/devices: {list} allocations under the lock");
        let (v, geo) = under_lock(&st, || {
            call(rt.block_on(geojson(State(st.clone()), heavy(), Query(q(100_000)))))
        });
        assert_eq!(v["features"].as_array().map(Vec::len), Some(DEVICES as usize));
        assert!(geo < 200, "/api/positions.geojson: {geo} allocations under the lock");
        let (v, one) = under_lock(&st, || call(rt.block_on(device(State(st.clone()), Path(7)))));
        assert_eq!(v["readings"].as_array().map(Vec::len), Some(3));
        // The copy only: the readings table (a box and its vector), a name
        // and a sample buffer per reading.
        assert!(one <= 2 + 2 * 3, "/api/devices/7: {one} allocations under the lock");
    }
}
