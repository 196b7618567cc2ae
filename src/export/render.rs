//! Prometheus text exposition of engine state: fleet totals and the
//! per-device series of devices holding an export slot.
//!
//! Rendered from the engine at scrape time rather than kept in the metrics
//! registry: a device's series appear when it gets a slot and vanish with
//! it (after `series_ttl` of silence), and the hot path writes no
//! per-device metric at all. Both are tables: a family is a name, a type,
//! a help text and how to read its value.

use std::fmt::Write;

use crate::engine::device::{Fix, Health, Track};
use crate::engine::readings::{ReadingSeries, WindowStats};
use crate::engine::{Engine, FilterReason, SEVERITIES, Summary, TRANSIT_BOUNDS};
use crate::telemetry::{HistogramSnapshot, escape_label, push_number, render_histogram};

/// A copy of what is exported for one device, taken under its shard lock.
struct Row {
    id: u32,
    online: bool,
    last_seen_ms: u64,
    fix: Option<Fix>,
    track: Track,
    health: Health,
    received: u64,
    lost: u64,
    duplicates: u64,
    reordered: u64,
    late: u64,
    bytes: u64,
    filtered: u32,
    jitter_ms: f64,
    latency_ms: Option<f64>,
    info: Option<(String, String)>,
    readings: Vec<(String, WindowStats)>,
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample: `name{labels} value`.
fn sample(out: &mut String, name: &str, labels: &str, v: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        let _ = write!(out, "{{{labels}}}");
    }
    out.push(' ');
    push_number(out, v);
    out.push('\n');
}

/// Samples of a fleet-wide family: an optional label pair and a value each.
type Samples = Vec<(Option<(&'static str, &'static str)>, f64)>;

/// A fleet-wide family.
struct FleetFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: fn(&Summary) -> Samples,
}

/// One unlabelled sample.
fn one(v: u64) -> Samples {
    vec![(None, v as f64)]
}

const FLEET: &[FleetFamily] = &[
    FleetFamily {
        name: "fleetwire_timestamps_future_total",
        kind: "counter",
        help: "Records of frames dated more than max_future ahead of the server clock, taken at the server's clock instead, by kind.",
        samples: |s| {
            s.totals.future.iter().map(|(k, v)| (Some(("kind", k.as_str())), v as f64)).collect()
        },
    },
    FleetFamily {
        name: "fleetwire_timestamps_clock_reset_total",
        kind: "counter",
        help: "Records whose earlier sample time replaced a kept one ahead of the server clock (the device's clock jumped back), by kind.",
        samples: |s| {
            s.totals
                .clock_resets
                .iter()
                .map(|(k, v)| (Some(("kind", k.as_str())), v as f64))
                .collect()
        },
    },
    FleetFamily {
        name: "fleetwire_devices",
        kind: "gauge",
        help: "Devices tracked, by state (online: heard from within offline_after).",
        samples: |s| {
            let online = s.totals.online.min(s.devices);
            vec![
                (Some(("state", "online")), online as f64),
                (Some(("state", "offline")), (s.devices - online) as f64),
            ]
        },
    },
    FleetFamily {
        name: "fleetwire_devices_created_total",
        kind: "counter",
        help: "Devices seen for the first time (or again after eviction).",
        samples: |s| one(s.totals.devices_created),
    },
    FleetFamily {
        name: "fleetwire_devices_evicted_total",
        kind: "counter",
        help: "Devices evicted to stay within max_devices (the one silent the longest first).",
        samples: |s| one(s.totals.evicted),
    },
    FleetFamily {
        name: "fleetwire_exported_devices",
        kind: "gauge",
        help: "Devices whose per-device series are exported (at most max_exported_devices).",
        samples: |s| one(s.exported),
    },
    FleetFamily {
        name: "fleetwire_records_total",
        kind: "counter",
        help: "Records accepted, by kind (batch samples counted by their own kind).",
        samples: |s| {
            s.totals.records.iter().map(|(k, v)| (Some(("kind", k.as_str())), v as f64)).collect()
        },
    },
    FleetFamily {
        name: "fleetwire_batches_total",
        kind: "counter",
        help: "Batch frames accepted.",
        samples: |s| one(s.totals.batches),
    },
    FleetFamily {
        name: "fleetwire_positions_filtered_total",
        kind: "counter",
        help: "Positions kept out of the track by the plausibility filter, by reason.",
        samples: |s| {
            FilterReason::ALL
                .iter()
                .zip(s.totals.filtered)
                .map(|(r, v)| (Some(("reason", r.as_str())), v as f64))
                .collect()
        },
    },
    FleetFamily {
        name: "fleetwire_events_total",
        kind: "counter",
        help: "Events reported by devices, by severity.",
        samples: |s| {
            SEVERITIES
                .iter()
                .zip(s.totals.events)
                .map(|(k, v)| (Some(("severity", *k)), v as f64))
                .collect()
        },
    },
    FleetFamily {
        name: "fleetwire_frames_lost_total",
        kind: "counter",
        help: "Frames confirmed lost: skipped sequence numbers that left the 64-frame window without arriving.",
        samples: |s| one(s.totals.lost_confirmed()),
    },
    FleetFamily {
        name: "fleetwire_frames_missing",
        kind: "gauge",
        help: "Skipped sequence numbers still inside a device's window (may yet arrive).",
        samples: |s| one(s.totals.pending),
    },
    FleetFamily {
        name: "fleetwire_frames_duplicate_total",
        kind: "counter",
        help: "Frames received more than once (extra copies, not counted as records).",
        samples: |s| one(s.totals.duplicates),
    },
    FleetFamily {
        name: "fleetwire_frames_reordered_total",
        kind: "counter",
        help: "Frames that arrived after a newer one from the same device, inside the window.",
        samples: |s| one(s.totals.reordered),
    },
    FleetFamily {
        name: "fleetwire_frames_late_total",
        kind: "counter",
        help: "Frames older than the sequence window.",
        samples: |s| one(s.totals.late),
    },
    FleetFamily {
        name: "fleetwire_sequence_restarts_total",
        kind: "counter",
        help: "Device sequence counters that restarted (Hello, or a jump too large to be loss).",
        samples: |s| one(s.totals.restarts),
    },
    FleetFamily {
        name: "fleetwire_readings_dropped_total",
        kind: "counter",
        help: "Named readings dropped: the device exceeded max_readings_per_device names, or the readings of all devices reached max_reading_memory.",
        samples: |s| one(s.totals.readings_dropped),
    },
    FleetFamily {
        name: "fleetwire_build_info",
        kind: "gauge",
        help: "Build information.",
        samples: |_| vec![(Some(("version", env!("CARGO_PKG_VERSION"))), 1.0)],
    },
];

/// A per-device family: a line per device for which `value` is Some.
struct DeviceFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&Row) -> Option<f64>,
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

const fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

const DEVICES: &[DeviceFamily] = &[
    DeviceFamily {
        name: "fleetwire_device_online",
        kind: "gauge",
        help: "1 if the device was heard from within offline_after.",
        value: |r| Some(flag(r.online)),
    },
    DeviceFamily {
        name: "fleetwire_device_last_seen_timestamp_seconds",
        kind: "gauge",
        help: "When the device's last frame arrived (server clock, Unix seconds).",
        value: |r| Some(seconds(r.last_seen_ms)),
    },
    DeviceFamily {
        name: "fleetwire_device_latitude_degrees",
        kind: "gauge",
        help: "Latitude of the last accepted fix (WGS 84).",
        value: |r| r.fix.map(|f| f.lat()),
    },
    DeviceFamily {
        name: "fleetwire_device_longitude_degrees",
        kind: "gauge",
        help: "Longitude of the last accepted fix (WGS 84).",
        value: |r| r.fix.map(|f| f.lon()),
    },
    DeviceFamily {
        name: "fleetwire_device_altitude_meters",
        kind: "gauge",
        help: "Altitude of the last accepted fix above mean sea level.",
        value: |r| r.fix.map(|f| f64::from(f.alt_dm) / 10.0),
    },
    DeviceFamily {
        name: "fleetwire_device_speed_meters_per_second",
        kind: "gauge",
        help: "Ground speed the device reported with its last accepted fix.",
        value: |r| r.fix.map(|f| f64::from(f.speed_cm_s) / 100.0),
    },
    DeviceFamily {
        name: "fleetwire_device_heading_degrees",
        kind: "gauge",
        help: "Heading the device reported with its last accepted fix.",
        value: |r| r.fix.map(|f| f64::from(f.heading_ddeg) / 10.0),
    },
    DeviceFamily {
        name: "fleetwire_device_derived_speed_meters_per_second",
        kind: "gauge",
        help: "Speed between the last two accepted fixes (great circle over time).",
        value: |r| r.fix.map(|_| r.track.derived_speed_m_s),
    },
    DeviceFamily {
        name: "fleetwire_device_derived_heading_degrees",
        kind: "gauge",
        help: "Bearing from the previous accepted fix to the last.",
        value: |r| r.fix.map(|_| r.track.derived_heading_deg),
    },
    DeviceFamily {
        name: "fleetwire_device_horizontal_accuracy_meters",
        kind: "gauge",
        help: "Horizontal accuracy of the last accepted fix (omitted when unknown).",
        value: |r| r.fix.filter(|f| f.hacc_cm > 0).map(|f| f64::from(f.hacc_cm) / 100.0),
    },
    DeviceFamily {
        name: "fleetwire_device_satellites",
        kind: "gauge",
        help: "Satellites used in the last accepted fix.",
        value: |r| r.fix.map(|f| f64::from(f.satellites)),
    },
    DeviceFamily {
        name: "fleetwire_device_fix_timestamp_seconds",
        kind: "gauge",
        help: "Sample time of the last accepted fix (Unix seconds).",
        value: |r| r.fix.map(|f| seconds(f.t_ms)),
    },
    DeviceFamily {
        name: "fleetwire_device_moving",
        kind: "gauge",
        help: "1 while the device is moving, 0 when stopped.",
        value: |r| r.fix.map(|_| flag(r.track.moving)),
    },
    DeviceFamily {
        name: "fleetwire_device_odometer_meters_total",
        kind: "counter",
        help: "Distance travelled: great-circle distance between accepted fixes, GPS jitter while stopped excluded.",
        value: |r| Some(r.track.odometer_m),
    },
    DeviceFamily {
        name: "fleetwire_device_positions_filtered_total",
        kind: "counter",
        help: "Positions of this device refused by the plausibility filter.",
        value: |r| Some(f64::from(r.filtered)),
    },
    DeviceFamily {
        name: "fleetwire_device_frames_received_total",
        kind: "counter",
        help: "Distinct frames received from the device.",
        value: |r| Some(r.received as f64),
    },
    DeviceFamily {
        name: "fleetwire_device_frames_lost_total",
        kind: "counter",
        help: "Frames of this device confirmed lost (sequence gaps that left the window).",
        value: |r| Some(r.lost as f64),
    },
    DeviceFamily {
        name: "fleetwire_device_frames_duplicate_total",
        kind: "counter",
        help: "Extra copies of frames of this device.",
        value: |r| Some(r.duplicates as f64),
    },
    DeviceFamily {
        name: "fleetwire_device_frames_reordered_total",
        kind: "counter",
        help: "Frames of this device that arrived after a newer one.",
        value: |r| Some(r.reordered as f64),
    },
    DeviceFamily {
        name: "fleetwire_device_frames_late_total",
        kind: "counter",
        help: "Frames of this device older than the sequence window.",
        value: |r| Some(r.late as f64),
    },
    DeviceFamily {
        name: "fleetwire_device_received_bytes_total",
        kind: "counter",
        help: "Bytes of accepted datagrams from the device.",
        value: |r| Some(r.bytes as f64),
    },
    DeviceFamily {
        name: "fleetwire_device_jitter_seconds",
        kind: "gauge",
        help: "Interarrival jitter (RFC 3550) from the device clock; 0 without clock.",
        value: |r| Some(r.jitter_ms / 1000.0),
    },
    DeviceFamily {
        name: "fleetwire_device_latency_seconds",
        kind: "gauge",
        help: "One-way latency of the last frame (arrival minus device timestamp; includes clock offset).",
        value: |r| r.latency_ms.map(|l| l / 1000.0),
    },
    DeviceFamily {
        name: "fleetwire_device_battery_ratio",
        kind: "gauge",
        help: "Battery state of charge, 0 to 1.",
        value: |r| r.health.battery_pct.map(|b| f64::from(b) / 100.0),
    },
    DeviceFamily {
        name: "fleetwire_device_supply_volts",
        kind: "gauge",
        help: "Supply voltage.",
        value: |r| r.health.supply_mv.map(|v| f64::from(v) / 1000.0),
    },
    DeviceFamily {
        name: "fleetwire_device_temperature_celsius",
        kind: "gauge",
        help: "Device temperature.",
        value: |r| r.health.temperature_cdeg.map(|v| f64::from(v) / 100.0),
    },
    DeviceFamily {
        name: "fleetwire_device_rssi_dbm",
        kind: "gauge",
        help: "Received signal strength.",
        value: |r| r.health.rssi_dbm.map(f64::from),
    },
    DeviceFamily {
        name: "fleetwire_device_uptime_seconds",
        kind: "gauge",
        help: "Time since the device booted, as last reported.",
        value: |r| r.health.uptime_s.map(f64::from),
    },
];

/// Copies the exported devices' rows, a page of devices at a time (only
/// copying under each lock), then computes reading statistics with no lock held.
fn collect(engine: &Engine, now_ms: u64) -> Vec<Row> {
    let cfg = engine.config();
    let mut rows = Vec::new();
    let mut series: Vec<Vec<ReadingSeries>> = Vec::new();
    // The exported devices only, a page per lock, copied at the receive
    // path's priority (Engine::held): this thread runs at a low one and must
    // not sit on a lock the receive path waits for.
    engine.held(|| {
        engine.visit_exported_paged(&mut |d| {
            series.push(d.readings.as_ref().map(|r| r.to_vec()).unwrap_or_default());
            rows.push(Row {
                id: d.id,
                online: d.online(now_ms, cfg),
                last_seen_ms: d.last_seen_ms,
                fix: d.fix,
                track: d.track,
                health: d.health,
                received: d.seq.received,
                lost: d.seq.lost_confirmed(),
                duplicates: d.seq.duplicates,
                reordered: d.seq.reordered,
                late: d.seq.late,
                bytes: d.bytes,
                filtered: d.counts.filtered,
                jitter_ms: d.jitter_ms,
                latency_ms: d.latency_ms,
                info: d.info.as_ref().map(|i| (i.firmware.to_string(), i.model.to_string())),
                readings: Vec::new(),
            });
        })
    });
    let mut scratch = Vec::new();
    for (row, series) in rows.iter_mut().zip(series) {
        row.readings = series
            .iter()
            .filter_map(|s| {
                s.stats(cfg.reading_window_ms, &mut scratch).map(|st| (s.name.to_string(), st))
            })
            .collect();
    }
    rows.sort_unstable_by_key(|r| r.id);
    rows
}

/// Appends the engine's families to `out`.
pub(crate) fn render_engine(engine: &Engine, now_ms: u64, out: &mut String) {
    let sum = engine.summary();
    for f in FLEET {
        head(out, f.name, f.kind, f.help);
        for (label, v) in (f.samples)(&sum) {
            let labels = label.map(|(k, x)| format!("{k}=\"{x}\"")).unwrap_or_default();
            sample(out, f.name, &labels, v);
        }
    }
    let t = &sum.totals.transit;
    head(
        out,
        "fleetwire_transit_delay_seconds",
        "histogram",
        "Frames with a device timestamp by transit delay: arrival minus the device's time (store-and-forward backlog, or clock skew; a clock ahead of the server's counts below 0).",
    );
    let snap = HistogramSnapshot {
        bounds: TRANSIT_BOUNDS,
        counts: t.counts.to_vec(),
        sum: t.sum_ms as f64 / 1000.0,
    };
    render_histogram(out, "fleetwire_transit_delay_seconds", "", &snap);
    let rows = collect(engine, now_ms);
    render_devices(&rows, out);
}

fn render_devices(rows: &[Row], out: &mut String) {
    for f in DEVICES {
        head(out, f.name, f.kind, f.help);
        for r in rows {
            if let Some(v) = (f.value)(r) {
                sample(out, f.name, &format!("device=\"{}\"", r.id), v);
            }
        }
    }
    head(
        out,
        "fleetwire_device_info",
        "gauge",
        "Firmware and model from the device's last Hello (value 1).",
    );
    for r in rows {
        if let Some((fw, model)) = &r.info {
            let labels = format!(
                "device=\"{}\",firmware=\"{}\",model=\"{}\"",
                r.id,
                escape_label(fw),
                escape_label(model)
            );
            sample(out, "fleetwire_device_info", &labels, 1.0);
        }
    }
    render_readings(rows, out);
}

fn render_readings(rows: &[Row], out: &mut String) {
    let labels =
        |r: &Row, name: &str| format!("device=\"{}\",name=\"{}\"", r.id, escape_label(name));
    head(out, "fleetwire_device_reading", "gauge", "Last value of a named reading.");
    for r in rows {
        for (name, st) in &r.readings {
            sample(out, "fleetwire_device_reading", &labels(r, name), st.last);
        }
    }
    head(
        out,
        "fleetwire_device_reading_window",
        "gauge",
        "Statistics of a named reading over the sliding reading_window (nearest-rank percentiles).",
    );
    for r in rows {
        for (name, st) in r.readings.iter().filter(|(_, st)| st.count > 0) {
            let l = labels(r, name);
            for (stat, v) in [
                ("min", st.min),
                ("max", st.max),
                ("mean", st.mean),
                ("p50", st.p50),
                ("p95", st.p95),
                ("p99", st.p99),
            ] {
                sample(out, "fleetwire_device_reading_window", &format!("{l},stat=\"{stat}\""), v);
            }
        }
    }
    head(
        out,
        "fleetwire_device_reading_window_samples",
        "gauge",
        "Samples of a named reading inside the sliding window.",
    );
    for r in rows {
        for (name, st) in &r.readings {
            sample(
                out,
                "fleetwire_device_reading_window_samples",
                &labels(r, name),
                st.count as f64,
            );
        }
    }
}
