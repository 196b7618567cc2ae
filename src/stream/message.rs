//! The messages of the live stream, built once (JSON text) and shared by
//! every client; they carry what the filters need (device, kind, place,
//! online) beside the text. Field names and units are those of
//! `/api/devices/{id}` ([`crate::views`]).

use serde_json::{Value, json};

use crate::engine::device::{Fix, Health, Info, LastEvent, Track};
use crate::engine::{Device, Engine, EngineConfig, RecordKind, SEVERITIES};
use crate::views::position_json;
use fleetwire_proto::Position;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A device's current state (snapshot at connect or after a gap).
    Device,
    /// The end of a snapshot.
    SnapshotEnd,
    /// An accepted fix.
    Position,
    /// Health fields and readings.
    Monitoring,
    /// A device event.
    Event,
    /// Device information after boot.
    Hello,
    /// The device is heard from again.
    Online,
    /// The device fell silent (its offline threshold passed).
    Offline,
    /// The client missed messages.
    Dropped,
}

impl Kind {
    /// The `type` field, and the name a `kind=` filter uses.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Kind::Device => "device",
            Kind::SnapshotEnd => "snapshot_end",
            Kind::Position => "position",
            Kind::Monitoring => "monitoring",
            Kind::Event => "event",
            Kind::Hello => "hello",
            Kind::Online => "online",
            Kind::Offline => "offline",
            Kind::Dropped => "dropped",
        }
    }

    /// The kinds a `kind=` filter may name.
    pub(crate) const FILTERABLE: [Kind; 6] =
        [Kind::Position, Kind::Monitoring, Kind::Event, Kind::Hello, Kind::Online, Kind::Offline];

    /// Whether `kind=` filters apply (snapshots and notices always go).
    pub(crate) fn filterable(self) -> bool {
        Kind::FILTERABLE.contains(&self)
    }
}

/// One message of the stream.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    /// Sequence number (SSE `id:`); 0 for per-client messages (snapshots).
    pub(crate) id: u64,
    pub(crate) kind: Kind,
    /// The device it is about.
    pub(crate) device: Option<u32>,
    /// Where the device is, for `bbox` filters.
    pub(crate) at: Option<(f64, f64)>,
    /// Whether the device is online, for `online=` filters.
    pub(crate) online: bool,
    /// When it was made (server clock, Unix ms).
    pub(crate) at_ms: u64,
    /// The JSON object.
    pub(crate) json: String,
}

impl Message {
    fn new(
        kind: Kind,
        device: Option<u32>,
        fix: Option<Fix>,
        online: bool,
        at_ms: u64,
        v: &Value,
    ) -> Self {
        Message {
            id: 0,
            kind,
            device,
            at: fix.map(|f| (f.lon(), f.lat())),
            online,
            at_ms,
            json: v.to_string(),
        }
    }

    /// The end of a snapshot of `devices` devices.
    pub(crate) fn snapshot_end(devices: usize, now: u64) -> Self {
        let v = json!({"type": "snapshot_end", "devices": devices});
        Message::new(Kind::SnapshotEnd, None, None, true, now, &v)
    }

    /// `count` messages were missed.
    pub(crate) fn dropped(count: u64, now: u64) -> Self {
        Message::new(
            Kind::Dropped,
            None,
            None,
            true,
            now,
            &json!({"type": "dropped", "count": count}),
        )
    }

    /// A device went online or offline.
    pub(crate) fn transition(device: u32, online: bool, last_seen_ms: u64, now: u64) -> Self {
        let kind = if online { Kind::Online } else { Kind::Offline };
        let v = json!({"type": kind.as_str(), "device": device, "last_seen_ms": last_seen_ms});
        Message::new(kind, Some(device), None, online, now, &v)
    }
}

/// What a message needs of a device, copied under its shard's lock.
#[derive(Debug, Clone)]
pub(crate) struct View {
    id: u32,
    online: bool,
    last_seen_ms: u64,
    fix: Option<Fix>,
    track: Track,
    health: Health,
    info: Option<Info>,
    last_event: Option<LastEvent>,
    readings: Vec<(Box<str>, f64)>,
}

impl View {
    /// The copy (the reading names and last values only when `readings`).
    pub(crate) fn of(d: &Device, now_ms: u64, cfg: &EngineConfig, readings: bool) -> Self {
        View {
            id: d.id,
            online: d.online(now_ms, cfg),
            last_seen_ms: d.last_seen_ms,
            fix: d.fix,
            track: d.track,
            health: d.health,
            info: d.info.as_deref().cloned(),
            last_event: d.last_event,
            readings: if readings {
                d.readings
                    .iter()
                    .flat_map(|r| r.iter())
                    .filter_map(|s| s.last().map(|v| (s.name.clone(), v)))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Where the device is (longitude, latitude).
    pub(crate) fn at(&self) -> Option<(f64, f64)> {
        self.fix.map(|f| (f.lon(), f.lat()))
    }

    /// Whether it is online.
    pub(crate) fn online(&self) -> bool {
        self.online
    }

    /// Its id.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    fn info_json(&self) -> Value {
        self.info.as_ref().map_or(Value::Null, |i| {
            json!({"firmware": &*i.firmware, "model": &*i.model, "capabilities": i.capabilities})
        })
    }

    fn health_json(&self) -> Value {
        let h = &self.health;
        json!({
            "battery_pct": h.battery_pct, "supply_mv": h.supply_mv,
            "temperature_c": h.temperature_cdeg.map(|t| f64::from(t) / 100.0),
            "rssi_dbm": h.rssi_dbm, "uptime_s": h.uptime_s,
        })
    }

    /// The device's current state: a snapshot message.
    pub(crate) fn snapshot(&self, now: u64) -> Message {
        let v = json!({
            "type": "device",
            "device": self.id,
            "online": self.online,
            "moving": self.track.moving,
            "last_seen_ms": self.last_seen_ms,
            "position": position_json(self.fix),
            "odometer_m": self.track.odometer_m,
            "battery_pct": self.health.battery_pct,
            "health": self.health_json(),
            "info": self.info_json(),
        });
        Message::new(Kind::Device, Some(self.id), self.fix, self.online, now, &v)
    }
}

/// The message for a new record of `kind` at `t_ms` of `device`, from the
/// engine's state after it was applied; `None` when there is nothing to say
/// (a fix the plausibility filter refused, a device already evicted).
pub(crate) fn of_event(
    engine: &Engine,
    device: u32,
    kind: RecordKind,
    pos: Option<Position>,
    t_ms: u64,
    received_ms: u64,
) -> Option<Message> {
    let cfg = engine.config();
    let with_readings = kind == RecordKind::Monitoring;
    let v = engine.with_device(device, |d| View::of(d, received_ms, cfg, with_readings))?;
    let (kind, body) = match kind {
        RecordKind::Position => {
            // The fix the record brought (the device may have moved on since:
            // motion and odometer are its current ones).
            let fix = pos.map(|p| Fix::from_position(&p, t_ms));
            let body = json!({
                "type": "position", "device": device, "received_ms": received_ms,
                "position": position_json(fix), "moving": v.track.moving,
                "odometer_m": v.track.odometer_m,
            });
            return Some(Message::new(
                Kind::Position,
                Some(device),
                fix,
                v.online,
                received_ms,
                &body,
            ));
        }
        RecordKind::Monitoring => {
            let readings: Vec<Value> =
                v.readings.iter().map(|(n, x)| json!({"name": &**n, "value": x})).collect();
            let body = json!({
                "type": "monitoring", "device": device, "received_ms": received_ms,
                "health": v.health_json(), "readings": readings,
            });
            (Kind::Monitoring, body)
        }
        RecordKind::Event => {
            let e = v.last_event.map_or(Value::Null, |e| {
                json!({"code": e.code, "severity": SEVERITIES.get(e.severity as usize), "time_ms": e.t_ms})
            });
            let body =
                json!({"type": "event", "device": device, "received_ms": received_ms, "event": e});
            (Kind::Event, body)
        }
        RecordKind::Hello => {
            (Kind::Hello, json!({"type": "hello", "device": device, "info": v.info_json()}))
        }
    };
    Some(Message::new(kind, Some(device), v.fix, v.online, received_ms, &body))
}
