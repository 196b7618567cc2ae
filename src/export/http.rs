//! HTTP: `/metrics`, the JSON API, GeoJSON, health and a landing page.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::Engine;
use crate::engine::device::Device;
use crate::export::metrics::Metrics;
use crate::export::render::render_engine;
use crate::now_ms;
use crate::policy::Policy;

/// What the handlers need.
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// The ingest pipeline (its policies' gauges are refreshed at scrape).
    pub pipeline: Option<Arc<crate::ingest::Pipeline>>,
    /// Kernel drop counters of the UDP ingest sockets (by inode).
    pub udp_inodes: Vec<u64>,
    /// Kernel drop counters of the QUIC socket (by inode).
    pub quic_inodes: Vec<u64>,
    /// Server start.
    pub started: Instant,
    /// Addresses the server listens on, for the landing page and /healthz.
    pub listening: Vec<(String, String)>,
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/summary", get(summary))
        .route("/api/devices", get(devices))
        .route("/api/devices/{id}", get(device))
        .route("/api/positions.geojson", get(geojson))
        .with_state(state)
}

/// Refreshes gauges and counters read from outside the process (kernel
/// drops) and renders everything.
pub fn render_all(st: &AppState) -> String {
    if !st.udp_inodes.is_empty() {
        st.metrics.udp_drops.absolute(crate::transport::udp::kernel_drops(&st.udp_inodes));
    }
    if !st.quic_inodes.is_empty() {
        st.metrics.quic_drops.absolute(crate::transport::udp::kernel_drops(&st.quic_inodes));
    }
    if let Some(p) = &st.pipeline {
        let pol: &Policy = p.policy();
        st.metrics.keys_loaded.set(pol.key_count() as f64);
        st.metrics.rate_limiter_sources.set(pol.tracked_sources() as f64);
    }
    let mut out = st.metrics.render();
    render_engine(&st.engine, now_ms(), &mut out);
    out
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    match tokio::task::spawn_blocking(move || render_all(&st)).await {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn healthz(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "uptime_seconds": st.started.elapsed().as_secs_f64(),
        "devices": st.engine.summary().devices,
        "listening": st.listening.iter().map(|(k, v)| json!({"transport": k, "address": v})).collect::<Vec<_>>(),
    }))
}

async fn index(State(st): State<Arc<AppState>>) -> Html<String> {
    let listening: String =
        st.listening.iter().map(|(k, v)| format!("<li>{k}: <code>{v}</code></li>")).collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>fleetwire</title></head><body>\
         <h1>fleetwire {}</h1><p>Real-time telemetry ingest for IoT fleets.</p>\
         <ul><li><a href=\"/metrics\">/metrics</a> (Prometheus)</li>\
         <li><a href=\"/api/summary\">/api/summary</a> (fleet totals)</li>\
         <li><a href=\"/api/devices\">/api/devices</a> (devices; ?limit=&amp;offset=&amp;online=true)</li>\
         <li><code>/api/devices/{{id}}</code> (one device in full)</li>\
         <li><a href=\"/api/positions.geojson\">/api/positions.geojson</a> (last positions)</li>\
         <li><a href=\"/healthz\">/healthz</a></li></ul><h2>Listening</h2><ul>{listening}</ul></body></html>",
        env!("CARGO_PKG_VERSION")
    ))
}

async fn summary(State(st): State<Arc<AppState>>) -> Json<Value> {
    let s = st.engine.summary();
    let t = &s.totals;
    let transport = |c: &crate::export::metrics::TransportCounters| {
        use std::sync::atomic::Ordering::Relaxed;
        json!({
            "received": c.totals.received.load(Relaxed),
            "accepted": c.totals.accepted.load(Relaxed),
            "rejected": c.totals.rejected.load(Relaxed),
        })
    };
    Json(json!({
        "datagrams": {"udp": transport(&st.metrics.udp), "quic": transport(&st.metrics.quic)},
        "devices": s.devices,
        "online": t.online.min(s.devices),
        "exported": s.exported,
        "records": {"position": t.records[0], "monitoring": t.records[1], "event": t.records[2], "hello": t.records[3]},
        "batches": t.batches,
        "lost": t.lost(),
        "lost_confirmed": t.lost_confirmed(),
        "duplicates": t.duplicates,
        "reordered": t.reordered,
        "late": t.late,
        "restarts": t.restarts,
        "evicted": t.evicted,
        "filtered": crate::engine::FilterReason::ALL.iter().map(|r| (r.as_str().to_string(), json!(t.filtered[*r as usize]))).collect::<serde_json::Map<_, _>>(),
        "readings_dropped": t.readings_dropped,
        "forward": st.pipeline.as_ref().and_then(|p| p.forwarder()).map(|f| {
            use std::sync::atomic::Ordering::Relaxed;
            json!({
                "connected": f.connected(),
                "enqueued": f.stats.enqueued.load(Relaxed),
                "published": f.stats.published.load(Relaxed),
                "acknowledged": f.stats.acknowledged.load(Relaxed),
                "failed": f.stats.failed.load(Relaxed),
                "dropped": f.stats.dropped.load(Relaxed),
                "buffered": f.buffered(),
            })
        }),
    }))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    offset: Option<usize>,
    online: Option<bool>,
}

fn position_json(d: &Device) -> Value {
    match d.fix {
        None => Value::Null,
        Some(f) => json!({
            "latitude": f.lat(), "longitude": f.lon(), "altitude_m": f64::from(f.alt_dm) / 10.0,
            "speed_m_s": f64::from(f.speed_cm_s) / 100.0, "heading_deg": f64::from(f.heading_ddeg) / 10.0,
            "hacc_m": (f.hacc_cm > 0).then(|| f64::from(f.hacc_cm) / 100.0),
            "fix": fleetwire_proto::FixType::from_u8(f.fix).map(|x| x.as_str()),
            "satellites": f.satellites, "time_ms": f.t_ms,
        }),
    }
}

fn brief(d: &Device, now: u64, engine: &Engine) -> Value {
    json!({
        "id": d.id,
        "online": d.online(now, engine.config().offline_after_ms),
        "last_seen_ms": d.last_seen_ms,
        "position": position_json(d),
        "moving": d.track.moving,
        "odometer_m": d.track.odometer_m,
        "battery_pct": d.health.battery_pct,
        "received": d.seq.received,
        "lost": d.seq.lost(),
        "duplicates": d.seq.duplicates,
        "reordered": d.seq.reordered,
    })
}

/// Most devices per `/api/devices` page.
pub const MAX_PAGE: usize = 10_000;
/// Most features per `/api/positions.geojson`.
pub const MAX_FEATURES: usize = 100_000;

async fn devices(State(st): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Response {
    // Walking the device table is work for a blocking thread, not for the
    // runtime that also drives QUIC.
    let r = tokio::task::spawn_blocking(move || {
        let limit = q.limit.unwrap_or(1000).min(MAX_PAGE);
        let offset = q.offset.unwrap_or(0);
        let now = now_ms();
        let off = st.engine.config().offline_after_ms;
        // Ids first (cheap), then the page's devices.
        let mut ids = Vec::new();
        st.engine.for_each_shard(|s| {
            ids.extend(
                s.devices()
                    .iter()
                    .filter(|d| q.online.is_none_or(|o| d.online(now, off) == o))
                    .map(|d| d.id),
            );
        });
        ids.sort_unstable();
        let total = ids.len();
        let page: Vec<Value> = ids
            .iter()
            .skip(offset)
            .take(limit)
            .filter_map(|id| st.engine.with_device(*id, |d| brief(d, now, &st.engine)))
            .collect();
        json!({"total": total, "offset": offset, "limit": limit, "devices": page})
    })
    .await;
    match r {
        Ok(v) => Json(v).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn device(State(st): State<Arc<AppState>>, Path(id): Path<u32>) -> Response {
    let now = now_ms();
    let cfg = st.engine.config().clone();
    let v = st.engine.with_device(id, |d| {
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
            "online": d.online(now, cfg.offline_after_ms),
            "first_seen_ms": d.first_seen_ms,
            "last_seen_ms": d.last_seen_ms,
            "bytes": d.bytes,
            "exported": d.exported,
            "position": position_json(d),
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
                "code": e.code, "severity": crate::engine::SEVERITIES.get(e.severity as usize), "time_ms": e.t_ms,
            })),
            "counts": d.counts,
        })
    });
    match v {
        Some(v) => Json(v).into_response(),
        None => {
            (StatusCode::NOT_FOUND, Json(json!({"error": format!("device {id} is not tracked")})))
                .into_response()
        }
    }
}

async fn geojson(State(st): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Response {
    let r = tokio::task::spawn_blocking(move || {
        let limit = q.limit.unwrap_or(10_000).min(MAX_FEATURES);
        let now = now_ms();
        let off = st.engine.config().offline_after_ms;
        let mut features = Vec::new();
        st.engine.for_each_shard(|s| {
            for d in s.devices() {
                if features.len() >= limit {
                    return;
                }
                let online = d.online(now, off);
                if q.online.is_some_and(|o| o != online) {
                    continue;
                }
                if let Some(f) = d.fix {
                    features.push(json!({
                        "type": "Feature",
                        "id": d.id,
                        "geometry": {"type": "Point", "coordinates": [f.lon(), f.lat(), f64::from(f.alt_dm) / 10.0]},
                        "properties": {
                            "device": d.id, "online": online, "moving": d.track.moving,
                            "speed_m_s": f64::from(f.speed_cm_s) / 100.0, "heading_deg": f64::from(f.heading_ddeg) / 10.0,
                            "odometer_m": d.track.odometer_m, "time_ms": f.t_ms,
                        },
                    }));
                }
            }
        });
        json!({"type": "FeatureCollection", "features": features})
    })
    .await;
    match r {
        Ok(v) => ([(header::CONTENT_TYPE, "application/geo+json")], Json(v)).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
