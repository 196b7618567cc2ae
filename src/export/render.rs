//! Prometheus text exposition of engine state: fleet totals and the
//! per-device series of devices holding an export slot.
//!
//! Rendered from the engine at scrape time rather than kept in the metrics
//! registry: a device's series appear when it gets a slot and vanish with
//! it (after `series_ttl` of silence), and the hot path writes no
//! per-device metric at all.

use std::fmt::Write;

use crate::engine::device::{Fix, Health, Track};
use crate::engine::readings::WindowStats;
use crate::engine::{Engine, FilterReason, RECORD_KINDS, SEVERITIES};

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

/// Formats a sample value the way Prometheus parses it.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

/// Escapes a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One per-device family: a line per device for which `value` is Some.
fn per_device(
    out: &mut String,
    rows: &[Row],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&Row) -> Option<f64>,
) {
    head(out, name, kind, help);
    for r in rows {
        if let Some(v) = value(r) {
            let _ = writeln!(out, "{name}{{device=\"{}\"}} {}", r.id, num(v));
        }
    }
}

fn collect(engine: &Engine, now_ms: u64) -> Vec<Row> {
    let cfg = engine.config();
    let mut rows = Vec::new();
    // Under each shard's lock only copy; statistics (sorting samples for
    // percentiles) are computed after the lock is released.
    let mut series: Vec<Vec<crate::engine::readings::ReadingSeries>> = Vec::new();
    engine.for_each_shard(|shard| {
        for d in shard.devices().iter().filter(|d| d.exported) {
            series.push(d.readings.as_ref().map(|r| r.to_vec()).unwrap_or_default());
            rows.push(Row {
                id: d.id,
                online: d.online(now_ms, cfg.offline_after_ms),
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
        }
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
pub fn render_engine(engine: &Engine, now_ms: u64, out: &mut String) {
    let sum = engine.summary();
    let t = &sum.totals;
    head(
        out,
        "fleetwire_devices",
        "gauge",
        "Devices tracked, by state (online: heard from within offline_after).",
    );
    let online = t.online.min(sum.devices);
    let _ = writeln!(out, "fleetwire_devices{{state=\"online\"}} {online}");
    let _ = writeln!(out, "fleetwire_devices{{state=\"offline\"}} {}", sum.devices - online);
    head(
        out,
        "fleetwire_devices_created_total",
        "counter",
        "Devices seen for the first time (or again after eviction).",
    );
    let _ = writeln!(out, "fleetwire_devices_created_total {}", t.devices_created);
    head(
        out,
        "fleetwire_devices_evicted_total",
        "counter",
        "Devices evicted to stay within max_devices (the one silent the longest first).",
    );
    let _ = writeln!(out, "fleetwire_devices_evicted_total {}", t.evicted);
    head(
        out,
        "fleetwire_exported_devices",
        "gauge",
        "Devices whose per-device series are exported (at most max_exported_devices).",
    );
    let _ = writeln!(out, "fleetwire_exported_devices {}", sum.exported);
    head(
        out,
        "fleetwire_records_total",
        "counter",
        "Records accepted, by kind (batch samples counted by their own kind).",
    );
    for (k, v) in RECORD_KINDS.iter().zip(t.records) {
        let _ = writeln!(out, "fleetwire_records_total{{kind=\"{k}\"}} {v}");
    }
    head(out, "fleetwire_batches_total", "counter", "Batch frames accepted.");
    let _ = writeln!(out, "fleetwire_batches_total {}", t.batches);
    head(
        out,
        "fleetwire_positions_filtered_total",
        "counter",
        "Positions kept out of the track by the plausibility filter, by reason.",
    );
    for (r, v) in FilterReason::ALL.iter().zip(t.filtered) {
        let _ =
            writeln!(out, "fleetwire_positions_filtered_total{{reason=\"{}\"}} {v}", r.as_str());
    }
    head(out, "fleetwire_events_total", "counter", "Events reported by devices, by severity.");
    for (s, v) in SEVERITIES.iter().zip(t.events) {
        let _ = writeln!(out, "fleetwire_events_total{{severity=\"{s}\"}} {v}");
    }
    head(
        out,
        "fleetwire_frames_lost_total",
        "counter",
        "Frames confirmed lost: skipped sequence numbers that left the 64-frame window without arriving.",
    );
    let _ = writeln!(out, "fleetwire_frames_lost_total {}", t.lost_confirmed());
    head(
        out,
        "fleetwire_frames_missing",
        "gauge",
        "Skipped sequence numbers still inside a device's window (may yet arrive).",
    );
    let _ = writeln!(out, "fleetwire_frames_missing {}", t.pending);
    head(
        out,
        "fleetwire_frames_duplicate_total",
        "counter",
        "Frames received more than once (extra copies, not counted as records).",
    );
    let _ = writeln!(out, "fleetwire_frames_duplicate_total {}", t.duplicates);
    head(
        out,
        "fleetwire_frames_reordered_total",
        "counter",
        "Frames that arrived after a newer one from the same device, inside the window.",
    );
    let _ = writeln!(out, "fleetwire_frames_reordered_total {}", t.reordered);
    head(out, "fleetwire_frames_late_total", "counter", "Frames older than the sequence window.");
    let _ = writeln!(out, "fleetwire_frames_late_total {}", t.late);
    head(
        out,
        "fleetwire_sequence_restarts_total",
        "counter",
        "Device sequence counters that restarted (Hello, or a jump too large to be loss).",
    );
    let _ = writeln!(out, "fleetwire_sequence_restarts_total {}", t.restarts);
    head(
        out,
        "fleetwire_readings_dropped_total",
        "counter",
        "Named readings dropped: the device exceeded max_readings_per_device names, or the readings of all devices reached max_reading_memory.",
    );
    let _ = writeln!(out, "fleetwire_readings_dropped_total {}", t.readings_dropped);
    head(out, "fleetwire_build_info", "gauge", "Build information.");
    let _ = writeln!(out, "fleetwire_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));

    let rows = collect(engine, now_ms);
    render_devices(&rows, out);
}

fn render_devices(rows: &[Row], out: &mut String) {
    let s = |ms: u64| ms as f64 / 1000.0;
    per_device(
        out,
        rows,
        "fleetwire_device_online",
        "gauge",
        "1 if the device was heard from within offline_after.",
        |r| Some(if r.online { 1.0 } else { 0.0 }),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_last_seen_timestamp_seconds",
        "gauge",
        "When the device's last frame arrived (server clock, Unix seconds).",
        |r| Some(s(r.last_seen_ms)),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_latitude_degrees",
        "gauge",
        "Latitude of the last accepted fix (WGS 84).",
        |r| r.fix.map(|f| f.lat()),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_longitude_degrees",
        "gauge",
        "Longitude of the last accepted fix (WGS 84).",
        |r| r.fix.map(|f| f.lon()),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_altitude_meters",
        "gauge",
        "Altitude of the last accepted fix above mean sea level.",
        |r| r.fix.map(|f| f64::from(f.alt_dm) / 10.0),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_speed_meters_per_second",
        "gauge",
        "Ground speed the device reported with its last accepted fix.",
        |r| r.fix.map(|f| f64::from(f.speed_cm_s) / 100.0),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_heading_degrees",
        "gauge",
        "Heading the device reported with its last accepted fix.",
        |r| r.fix.map(|f| f64::from(f.heading_ddeg) / 10.0),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_derived_speed_meters_per_second",
        "gauge",
        "Speed between the last two accepted fixes (great circle over time).",
        |r| r.fix.map(|_| r.track.derived_speed_m_s),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_derived_heading_degrees",
        "gauge",
        "Bearing from the previous accepted fix to the last.",
        |r| r.fix.map(|_| r.track.derived_heading_deg),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_horizontal_accuracy_meters",
        "gauge",
        "Horizontal accuracy of the last accepted fix (omitted when unknown).",
        |r| r.fix.filter(|f| f.hacc_cm > 0).map(|f| f64::from(f.hacc_cm) / 100.0),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_satellites",
        "gauge",
        "Satellites used in the last accepted fix.",
        |r| r.fix.map(|f| f64::from(f.satellites)),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_fix_timestamp_seconds",
        "gauge",
        "Sample time of the last accepted fix (Unix seconds).",
        |r| r.fix.map(|f| s(f.t_ms)),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_moving",
        "gauge",
        "1 while the device is moving, 0 when stopped.",
        |r| r.fix.map(|_| if r.track.moving { 1.0 } else { 0.0 }),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_odometer_meters_total",
        "counter",
        "Distance travelled: great-circle distance between accepted fixes, GPS jitter while stopped excluded.",
        |r| Some(r.track.odometer_m),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_positions_filtered_total",
        "counter",
        "Positions of this device refused by the plausibility filter.",
        |r| Some(f64::from(r.filtered)),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_frames_received_total",
        "counter",
        "Distinct frames received from the device.",
        |r| Some(r.received as f64),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_frames_lost_total",
        "counter",
        "Frames of this device confirmed lost (sequence gaps that left the window).",
        |r| Some(r.lost as f64),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_frames_duplicate_total",
        "counter",
        "Extra copies of frames of this device.",
        |r| Some(r.duplicates as f64),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_frames_reordered_total",
        "counter",
        "Frames of this device that arrived after a newer one.",
        |r| Some(r.reordered as f64),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_frames_late_total",
        "counter",
        "Frames of this device older than the sequence window.",
        |r| Some(r.late as f64),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_received_bytes_total",
        "counter",
        "Bytes of accepted datagrams from the device.",
        |r| Some(r.bytes as f64),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_jitter_seconds",
        "gauge",
        "Interarrival jitter (RFC 3550) from the device clock; 0 without clock.",
        |r| Some(r.jitter_ms / 1000.0),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_latency_seconds",
        "gauge",
        "One-way latency of the last frame (arrival minus device timestamp; includes clock offset).",
        |r| r.latency_ms.map(|l| l / 1000.0),
    );
    per_device(
        out,
        rows,
        "fleetwire_device_battery_ratio",
        "gauge",
        "Battery state of charge, 0 to 1.",
        |r| r.health.battery_pct.map(|b| f64::from(b) / 100.0),
    );
    per_device(out, rows, "fleetwire_device_supply_volts", "gauge", "Supply voltage.", |r| {
        r.health.supply_mv.map(|v| f64::from(v) / 1000.0)
    });
    per_device(
        out,
        rows,
        "fleetwire_device_temperature_celsius",
        "gauge",
        "Device temperature.",
        |r| r.health.temperature_cdeg.map(|v| f64::from(v) / 100.0),
    );
    per_device(out, rows, "fleetwire_device_rssi_dbm", "gauge", "Received signal strength.", |r| {
        r.health.rssi_dbm.map(f64::from)
    });
    per_device(
        out,
        rows,
        "fleetwire_device_uptime_seconds",
        "gauge",
        "Time since the device booted, as last reported.",
        |r| r.health.uptime_s.map(f64::from),
    );

    head(
        out,
        "fleetwire_device_info",
        "gauge",
        "Firmware and model from the device's last Hello (value 1).",
    );
    for r in rows {
        if let Some((fw, model)) = &r.info {
            let _ = writeln!(
                out,
                "fleetwire_device_info{{device=\"{}\",firmware=\"{}\",model=\"{}\"}} 1",
                r.id,
                esc(fw),
                esc(model)
            );
        }
    }
    head(out, "fleetwire_device_reading", "gauge", "Last value of a named reading.");
    for r in rows {
        for (name, st) in &r.readings {
            let _ = writeln!(
                out,
                "fleetwire_device_reading{{device=\"{}\",name=\"{}\"}} {}",
                r.id,
                esc(name),
                num(st.last)
            );
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
            for (stat, v) in [
                ("min", st.min),
                ("max", st.max),
                ("mean", st.mean),
                ("p50", st.p50),
                ("p95", st.p95),
                ("p99", st.p99),
            ] {
                let _ = writeln!(
                    out,
                    "fleetwire_device_reading_window{{device=\"{}\",name=\"{}\",stat=\"{stat}\"}} {}",
                    r.id,
                    esc(name),
                    num(v)
                );
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
            let _ = writeln!(
                out,
                "fleetwire_device_reading_window_samples{{device=\"{}\",name=\"{}\"}} {}",
                r.id,
                esc(name),
                st.count
            );
        }
    }
}
