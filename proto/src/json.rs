//! A JSON view of frames, in wire units (integers exactly as on the wire).
//!
//! This is the form of the `frame` field in `vectors/*.json` and the output
//! of `fleetwire decode`. [`frame_to_json`] and [`encode_json`] are inverse:
//! `encode_json(&frame_to_json(f))` gives back the bytes of `f`.
//!
//! ```json
//! {"device_id": 42, "sequence": 7, "timestamp_ms": 1700000000000,
//!  "kind": "position", "auth": false,
//!  "position": {"lat_e7": 483584000, "lon_e7": 116502000, "alt_dm": 5190,
//!               "speed_cm_s": 1250, "heading_ddeg": 900, "hacc_cm": 350,
//!               "fix": "3d", "satellites": 9}}
//! ```

use serde_json::{Map, Value, json};

use crate::frame::{
    Batch, Body, Event, FixType, Frame, Hello, Kind, Monitoring, Position, Reading, Record, Sample,
    Severity,
};
use crate::seq::Seq;
use crate::{EncodeError, MAX_FRAME_LEN, encode, encode_signed};

/// Why [`encode_json`] could not build a frame.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// A field is missing or has the wrong JSON type.
    #[error("field `{0}` is missing or has the wrong type")]
    Field(String),
    /// The frame was built but cannot be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// The JSON view of `frame`.
pub fn frame_to_json(frame: &Frame<'_>) -> Value {
    let mut m = Map::new();
    m.insert("device_id".into(), frame.device_id.into());
    m.insert("sequence".into(), frame.sequence.into());
    m.insert("timestamp_ms".into(), frame.timestamp_ms.into());
    m.insert("kind".into(), frame.kind().as_str().into());
    m.insert("auth".into(), frame.auth.is_some().into());
    let (key, v) = body_to_json(&frame.body);
    m.insert(key.into(), v);
    Value::Object(m)
}

fn body_to_json(body: &Body<'_>) -> (&'static str, Value) {
    match body {
        Body::Position(p) => ("position", position_json(p)),
        Body::Monitoring(mon) => ("monitoring", monitoring_json(mon)),
        Body::Event(e) => ("event", event_json(e)),
        Body::Hello(h) => ("hello", hello_json(h)),
        Body::Batch(b) => {
            ("batch", Value::Array(b.samples.iter().map(|s| sample_json(&s)).collect()))
        }
    }
}

fn position_json(p: &Position) -> Value {
    json!({
        "lat_e7": p.lat_e7, "lon_e7": p.lon_e7, "alt_dm": p.alt_dm,
        "speed_cm_s": p.speed_cm_s, "heading_ddeg": p.heading_ddeg, "hacc_cm": p.hacc_cm,
        "fix": p.fix.as_str(), "satellites": p.satellites,
    })
}

fn monitoring_json(m: &Monitoring<'_>) -> Value {
    let readings: Vec<Value> =
        m.readings.iter().map(|r| json!({"name": r.name, "value": r.value})).collect();
    json!({
        "battery_pct": m.battery_pct, "supply_mv": m.supply_mv,
        "temperature_cdeg": m.temperature_cdeg, "rssi_dbm": m.rssi_dbm,
        "uptime_s": m.uptime_s, "readings": readings,
    })
}

fn event_json(e: &Event<'_>) -> Value {
    json!({"code": e.code, "severity": e.severity.as_str(), "text": e.text})
}

fn hello_json(h: &Hello<'_>) -> Value {
    json!({"firmware": h.firmware, "model": h.model, "capabilities": h.capabilities})
}

fn sample_json(s: &Sample<'_>) -> Value {
    let (key, v) = match &s.record {
        Record::Position(p) => ("position", position_json(p)),
        Record::Monitoring(m) => ("monitoring", monitoring_json(m)),
        Record::Event(e) => ("event", event_json(e)),
    };
    let mut m = Map::new();
    m.insert("offset_ms".into(), s.offset_ms.into());
    m.insert("kind".into(), s.record.kind().as_str().into());
    m.insert(key.into(), v);
    Value::Object(m)
}

// ---------------------------------------------------------------------------
// JSON -> bytes

fn field<'v>(v: &'v Value, k: &str) -> Result<&'v Value, JsonError> {
    v.get(k).ok_or_else(|| JsonError::Field(k.into()))
}

fn int<T: TryFrom<i64> + TryFrom<u64>>(v: &Value, k: &str) -> Result<T, JsonError> {
    let f = field(v, k)?;
    let bad = || JsonError::Field(k.into());
    if let Some(u) = f.as_u64() {
        T::try_from(u).map_err(|_| bad())
    } else {
        T::try_from(f.as_i64().ok_or_else(bad)?).map_err(|_| bad())
    }
}

fn opt_int<T: TryFrom<i64> + TryFrom<u64>>(v: &Value, k: &str) -> Result<Option<T>, JsonError> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => int(v, k).map(Some),
    }
}

fn string<'v>(v: &'v Value, k: &str) -> Result<&'v str, JsonError> {
    field(v, k)?.as_str().ok_or_else(|| JsonError::Field(k.into()))
}

fn position_from(v: &Value) -> Result<Position, JsonError> {
    Ok(Position {
        lat_e7: int(v, "lat_e7")?,
        lon_e7: int(v, "lon_e7")?,
        alt_dm: int(v, "alt_dm")?,
        speed_cm_s: int(v, "speed_cm_s")?,
        heading_ddeg: int(v, "heading_ddeg")?,
        hacc_cm: int(v, "hacc_cm")?,
        fix: FixType::from_label(string(v, "fix")?)
            .ok_or_else(|| JsonError::Field("fix".into()))?,
        satellites: int(v, "satellites")?,
    })
}

fn readings_from(v: &Value) -> Result<Vec<Reading<'_>>, JsonError> {
    let arr =
        field(v, "readings")?.as_array().ok_or_else(|| JsonError::Field("readings".into()))?;
    arr.iter()
        .map(|r| {
            Ok(Reading {
                name: string(r, "name")?,
                value: field(r, "value")?
                    .as_f64()
                    .ok_or_else(|| JsonError::Field("value".into()))?,
            })
        })
        .collect()
}

fn monitoring_from<'v>(
    v: &Value,
    readings: &'v [Reading<'v>],
) -> Result<Monitoring<'v>, JsonError> {
    Ok(Monitoring {
        battery_pct: opt_int(v, "battery_pct")?,
        supply_mv: opt_int(v, "supply_mv")?,
        temperature_cdeg: opt_int(v, "temperature_cdeg")?,
        rssi_dbm: opt_int(v, "rssi_dbm")?,
        uptime_s: opt_int(v, "uptime_s")?,
        readings: Seq::from_slice(readings),
    })
}

fn event_from(v: &Value) -> Result<Event<'_>, JsonError> {
    Ok(Event {
        code: int(v, "code")?,
        severity: Severity::from_label(string(v, "severity")?)
            .ok_or_else(|| JsonError::Field("severity".into()))?,
        text: match v.get("text") {
            None | Some(Value::Null) => None,
            Some(_) => Some(string(v, "text")?),
        },
    })
}

fn kind_of(v: &Value) -> Result<Kind, JsonError> {
    let k = string(v, "kind")?;
    Kind::ALL.into_iter().find(|x| x.as_str() == k).ok_or_else(|| JsonError::Field("kind".into()))
}

/// Encodes the frame described by `v` (the [`frame_to_json`] form), signing
/// it with `key` when given. `"auth"` in `v` is ignored.
///
/// # Errors
/// [`JsonError::Field`] for a missing or mistyped field;
/// [`JsonError::Encode`] when the frame cannot be encoded.
pub fn encode_json(v: &Value, key: Option<&[u8]>) -> Result<Vec<u8>, JsonError> {
    let kind = kind_of(v)?;
    let device_id = int(v, "device_id")?;
    let sequence = int(v, "sequence")?;
    let timestamp_ms = int(v, "timestamp_ms")?;
    let body_v = field(v, kind.as_str())?;
    // Storage the borrowed frame points into.
    let mut readings: Vec<Vec<Reading<'_>>> = Vec::new();
    let items: Vec<&Value> = match kind {
        Kind::Batch => {
            body_v.as_array().ok_or_else(|| JsonError::Field("batch".into()))?.iter().collect()
        }
        _ => vec![v],
    };
    for item in &items {
        if kind_of(item)? == Kind::Monitoring {
            readings.push(readings_from(field(item, "monitoring")?)?);
        } else {
            readings.push(Vec::new());
        }
    }
    let buf = vec![0u8; MAX_FRAME_LEN];
    let body = if kind == Kind::Batch {
        let samples = items
            .iter()
            .zip(&readings)
            .map(|(item, rs)| {
                let rec = match record(item, rs)? {
                    Body::Position(p) => Record::Position(p),
                    Body::Monitoring(m) => Record::Monitoring(m),
                    Body::Event(e) => Record::Event(e),
                    _ => return Err(JsonError::Field("kind".into())),
                };
                Ok(Sample { offset_ms: int(item, "offset_ms")?, record: rec })
            })
            .collect::<Result<Vec<_>, JsonError>>()?;
        let frame = Frame::new(
            device_id,
            sequence,
            timestamp_ms,
            Body::Batch(Batch { samples: Seq::from_slice(&samples) }),
        );
        return finish(&frame, key, buf);
    } else {
        record(v, readings.first().map(Vec::as_slice).unwrap_or_default())?
    };
    let frame = Frame::new(device_id, sequence, timestamp_ms, body);
    finish(&frame, key, buf)
}

fn record<'v>(item: &'v Value, rs: &'v [Reading<'v>]) -> Result<Body<'v>, JsonError> {
    Ok(match kind_of(item)? {
        Kind::Position => Body::Position(position_from(field(item, "position")?)?),
        Kind::Monitoring => Body::Monitoring(monitoring_from(field(item, "monitoring")?, rs)?),
        Kind::Event => Body::Event(event_from(field(item, "event")?)?),
        Kind::Hello => {
            let h = field(item, "hello")?;
            Body::Hello(Hello {
                firmware: string(h, "firmware")?,
                model: string(h, "model")?,
                capabilities: int(h, "capabilities")?,
            })
        }
        Kind::Batch => return Err(JsonError::Field("kind".into())),
    })
}

fn finish(frame: &Frame<'_>, key: Option<&[u8]>, mut buf: Vec<u8>) -> Result<Vec<u8>, JsonError> {
    let n = match key {
        Some(k) => encode_signed(frame, k, &mut buf)?,
        None => encode(frame, &mut buf)?,
    };
    buf.truncate(n);
    Ok(buf)
}
