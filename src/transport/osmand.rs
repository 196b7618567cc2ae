//! Phones over HTTP: the OsmAnd protocol that Traccar Client, OsmAnd and
//! Meshtastic bridges speak (port 5055 by default). `GET` or `POST` on any
//! path, with the report in the query string, a form body or Traccar
//! Client 9+'s JSON body, decoded by [`crate::protocols::osmand`]; the
//! device id resolved by the registry; the report applied through the same
//! pipeline as every other transport. `200` with an empty body when it was
//! taken, `400` with a JSON body naming the parameter when it does not
//! decode, `401` without the configured token, `429` over a rate limit.

use std::net::SocketAddr;
use std::sync::Arc;

use arrayvec::ArrayVec;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use fleetwire_proto::{Body, FixType, Frame, MAX_READINGS, Monitoring, Position, Reading, Seq};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::export::serve::{self, HttpMetrics};
use crate::ingest::{DeviceRegistry, Pipeline, Reason, Transport};
use crate::protocols::osmand::{self, OsmandReport, SpeedUnit};
use crate::telemetry::Registry;

/// The OsmAnd transport's slice of the configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OsmandConfig {
    /// Unit of the `speed` parameter (query and form; JSON is m/s).
    pub(crate) speed_unit: SpeedUnit,
    /// The token phones must send (Bearer header or `token=`); empty = none.
    pub(crate) token: String,
}

struct OsmandState {
    cfg: OsmandConfig,
    pipeline: Arc<Pipeline>,
    registry: Arc<DeviceRegistry>,
}

/// Largest request body taken (the decoder's limit too).
const BODY_LIMIT: usize = 64 * 1024;

/// Serves the OsmAnd protocol on `listener` until `stop` is cancelled,
/// with the limits of the API's listener (`export::serve`: a header-read
/// and idle timeout, a write timeout, a cap on open connections: half the
/// descriptors beyond the reserve, the API has the other half), counted as
/// `listener="osmand"`.
pub(crate) fn spawn(
    listener: tokio::net::TcpListener,
    cfg: &OsmandConfig,
    pipeline: &Arc<Pipeline>,
    devices: &Arc<DeviceRegistry>,
    telemetry: &Registry,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let state = Arc::new(OsmandState {
        cfg: cfg.clone(),
        pipeline: pipeline.clone(),
        registry: devices.clone(),
    });
    let app =
        Router::new().fallback(report).layer(DefaultBodyLimit::max(BODY_LIMIT)).with_state(state);
    let metrics = HttpMetrics::register(telemetry, "osmand");
    serve::spawn(listener, app, serve::max_connections(2), metrics, stop)
}

/// Compares two byte strings in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refused(status: StatusCode, reason: Reason, param: Option<&str>) -> Response {
    (status, Json(json!({"error": reason.as_str(), "parameter": param}))).into_response()
}

async fn report(
    State(st): State<Arc<OsmandState>>,
    ConnectInfo(source): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let t = Transport::Osmand;
    let now = now_ms();
    let query = query.unwrap_or_default();
    let size = query.len() + body.len();
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let refuse = |status, reason: Reason, param| {
        st.pipeline.refuse(t, now, size, Some(source), reason);
        refused(status, reason, param)
    };
    if !st.cfg.token.is_empty() {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|v| std::borrow::Cow::Borrowed(v.trim()));
        let sent = bearer.or_else(|| osmand::find_token(&query, &body, content_type));
        if !sent.is_some_and(|s| constant_time_eq(s.as_bytes(), st.cfg.token.as_bytes())) {
            return refuse(StatusCode::UNAUTHORIZED, Reason::BadToken, Some("token"));
        }
    }
    let r = match osmand::decode(&query, &body, content_type, st.cfg.speed_unit) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, Reason::Osmand(e.as_str()), e.param()),
    };
    let device = match st.registry.resolve(t, &r.device_id) {
        Ok(id) => id,
        Err(reason) => return refuse(StatusCode::FORBIDDEN, reason, Some("id")),
    };
    match st.pipeline.admit(t, now, size, Some(source), device) {
        Ok(admitted) => {
            let t_ms = r.timestamp_ms.unwrap_or(now);
            let readings = readings(&r);
            let readings: ArrayVec<Reading<'_>, MAX_READINGS> =
                readings.iter().map(|(n, v)| Reading { name: n, value: *v }).collect();
            let mut frames: ArrayVec<Frame<'_>, 2> = ArrayVec::new();
            if let Some(p) = position(&r) {
                frames.push(Frame::new(device, 0, t_ms, Body::Position(p)));
            }
            let health = Monitoring {
                battery_pct: r.battery_pct.map(|b| b.round().clamp(0.0, 100.0) as u8),
                readings: Seq::from_slice(&readings),
                ..Monitoring::EMPTY
            };
            if health != Monitoring::EMPTY {
                frames.push(Frame::new(device, 0, t_ms, Body::Monitoring(health)));
            }
            admitted.apply(&frames);
            StatusCode::OK.into_response()
        }
        Err(reason) => refused(StatusCode::TOO_MANY_REQUESTS, reason, None),
    }
}

/// The report's fix as a Position (none without coordinates; a fix the
/// phone marks `valid=false` has no fix).
fn position(r: &OsmandReport) -> Option<Position> {
    let p = r.position?;
    let cm = |v: f64| (v * 100.0).round().clamp(0.0, f64::from(u16::MAX)) as u16;
    Some(Position {
        lat_e7: (p.latitude_deg * 1e7).round() as i32,
        lon_e7: (p.longitude_deg * 1e7).round() as i32,
        alt_dm: p.altitude_m.map_or(0, |a| (a * 10.0).round() as i32),
        speed_cm_s: p.speed_mps.map_or(0, cm),
        heading_ddeg: p.heading_deg.map_or(0, |h| ((h * 10.0).round() as u16) % 3600),
        hacc_cm: p.accuracy_m.map_or(0, cm),
        fix: match (p.valid, p.altitude_m) {
            (false, _) => FixType::NoFix,
            (true, Some(_)) => FixType::Fix3d,
            (true, None) => FixType::Fix2d,
        },
        satellites: 0,
    })
}

/// The report's named readings: its own, plus charging, moving and the
/// phone's odometer.
fn readings(r: &OsmandReport) -> ArrayVec<(arrayvec::ArrayString<32>, f64), MAX_READINGS> {
    let mut out = ArrayVec::new();
    let mut push = |name: &str, v: f64| {
        if let (Ok(n), false) = (arrayvec::ArrayString::from(name), out.is_full()) {
            out.push((n, v));
        }
    };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    if let Some(c) = r.charging {
        push("charging", flag(c));
    }
    if let Some(m) = r.moving {
        push("moving", flag(m));
    }
    if let Some(o) = r.odometer_m {
        push("odometer_meters", o);
    }
    if let Some(h) = r.position.and_then(|p| p.hdop) {
        push("hdop", h);
    }
    for reading in &r.readings {
        push(&reading.name, reading.value);
    }
    out
}
