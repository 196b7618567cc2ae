//! JSON views of engine state, shared by the HTTP API and the live stream
//! so both name and scale fields the same way (`latitude`, `speed_m_s`,
//! `odometer_m`, ...). A [`Brief`] is copied under a shard's lock; its JSON
//! is built after the lock is released.

use serde_json::{Value, json};

use crate::engine::device::{Fix, Track};
use crate::engine::{Device, EngineConfig};

/// A fix as JSON (`null` without one).
pub(crate) fn position_json(fix: Option<Fix>) -> Value {
    match fix {
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

/// A device's key fields, copied under its shard's lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Brief {
    pub(crate) id: u32,
    pub(crate) online: bool,
    pub(crate) last_seen_ms: u64,
    pub(crate) fix: Option<Fix>,
    pub(crate) track: Track,
    pub(crate) battery_pct: Option<u8>,
    received: u64,
    lost: u64,
    duplicates: u64,
    reordered: u64,
}

impl Brief {
    /// The fields of `d` at `now_ms`.
    pub(crate) fn of(d: &Device, now_ms: u64, cfg: &EngineConfig) -> Self {
        Brief {
            id: d.id,
            online: d.online(now_ms, cfg),
            last_seen_ms: d.last_seen_ms,
            fix: d.fix,
            track: d.track,
            battery_pct: d.health.battery_pct,
            received: d.seq.received,
            lost: d.seq.lost(),
            duplicates: d.seq.duplicates,
            reordered: d.seq.reordered,
        }
    }

    /// The `/api/devices` entry.
    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "online": self.online,
            "last_seen_ms": self.last_seen_ms,
            "position": position_json(self.fix),
            "moving": self.track.moving,
            "odometer_m": self.track.odometer_m,
            "battery_pct": self.battery_pct,
            "received": self.received,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
        })
    }

    /// A GeoJSON feature (`None` without a fix).
    pub(crate) fn feature(&self) -> Option<Value> {
        let f = self.fix?;
        Some(json!({
            "type": "Feature",
            "id": self.id,
            "geometry": {"type": "Point", "coordinates": [f.lon(), f.lat(), f64::from(f.alt_dm) / 10.0]},
            "properties": {
                "device": self.id, "online": self.online, "moving": self.track.moving,
                "speed_m_s": f64::from(f.speed_cm_s) / 100.0, "heading_deg": f64::from(f.heading_ddeg) / 10.0,
                "odometer_m": self.track.odometer_m, "time_ms": f.t_ms,
            },
        }))
    }
}
