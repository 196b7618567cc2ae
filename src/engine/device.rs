//! The state of one device and how each record changes it.

use fleetwire_proto::{Event, FixType, Hello, Monitoring, Position};
use serde::{Deserialize, Serialize};

use super::geo;
use super::readings::ReadingSeries;
use super::sequence::SeqTracker;
use super::timing::Clock;
use super::{EngineConfig, FilterReason, RecordKind, ShardTotals};

/// The last accepted GNSS fix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Fix {
    /// Sample time, Unix ms (device clock, or arrival time without clock).
    pub t_ms: u64,
    /// Latitude, 1e-7 degrees.
    pub lat_e7: i32,
    /// Longitude, 1e-7 degrees.
    pub lon_e7: i32,
    /// Altitude, decimeters.
    pub alt_dm: i32,
    /// Reported ground speed, cm/s.
    pub speed_cm_s: u16,
    /// Reported heading, 0.1 degree.
    pub heading_ddeg: u16,
    /// Horizontal accuracy, cm (0 = unknown).
    pub hacc_cm: u16,
    /// Fix type as on the wire.
    pub fix: u8,
    /// Satellites used.
    pub satellites: u8,
}

impl Fix {
    pub(crate) fn from_position(p: &Position, t_ms: u64) -> Fix {
        Fix {
            t_ms,
            lat_e7: p.lat_e7,
            lon_e7: p.lon_e7,
            alt_dm: p.alt_dm,
            speed_cm_s: p.speed_cm_s,
            heading_ddeg: p.heading_ddeg,
            hacc_cm: p.hacc_cm,
            fix: p.fix as u8,
            satellites: p.satellites,
        }
    }
    /// Latitude in degrees (a correctly rounded division, so the JSON shows
    /// the decimal the device sent).
    pub(crate) fn lat(&self) -> f64 {
        f64::from(self.lat_e7) / 1e7
    }
    /// Longitude in degrees.
    pub(crate) fn lon(&self) -> f64 {
        f64::from(self.lon_e7) / 1e7
    }
}

/// Motion derived from consecutive accepted fixes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Track {
    /// Total distance, meters (great circle between odometer anchors).
    pub odometer_m: f64,
    /// Speed between the last two accepted fixes, m/s.
    pub derived_speed_m_s: f64,
    /// Bearing between the last two accepted fixes that were far enough
    /// apart to have one, degrees.
    pub derived_heading_deg: f64,
    /// The point the odometer last advanced from (1e-7 degrees).
    anchor: Option<(i32, i32)>,
    /// When the anchor last moved, Unix ms.
    anchor_moved_ms: u64,
    /// Consecutive fixes refused for implausible speed.
    implausible_run: u8,
    /// Currently moving.
    pub moving: bool,
}

/// Last values of the well-known monitoring fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Health {
    /// When the last Monitoring record was taken, Unix ms.
    pub t_ms: u64,
    /// Battery, percent.
    pub battery_pct: Option<u8>,
    /// Supply voltage, mV.
    pub supply_mv: Option<u16>,
    /// Temperature, 0.01 °C.
    pub temperature_cdeg: Option<i16>,
    /// RSSI, dBm.
    pub rssi_dbm: Option<i8>,
    /// Uptime, s.
    pub uptime_s: Option<u32>,
}

/// What a device said in its last Hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Info {
    /// Firmware version.
    pub firmware: Box<str>,
    /// Hardware model.
    pub model: Box<str>,
    /// Capability bits.
    pub capabilities: u32,
}

/// The last event a device reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LastEvent {
    /// Event code.
    pub code: u16,
    /// Severity as on the wire.
    pub severity: u8,
    /// Sample time, Unix ms.
    pub t_ms: u64,
}

/// Per-record-kind counters of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counts {
    /// Position records.
    pub positions: u32,
    /// Monitoring records.
    pub monitoring: u32,
    /// Event records.
    pub events: u32,
    /// Hello records.
    pub hellos: u32,
    /// Positions kept out of the track by the plausibility filter.
    pub filtered: u32,
    /// Named readings dropped: the device has too many names, or the
    /// reading memory is at its budget.
    pub readings_dropped: u32,
}

/// Everything the server knows about one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Device {
    /// Device id.
    pub id: u32,
    /// First frame, server time, Unix ms.
    pub first_seen_ms: u64,
    /// Last frame, server time, Unix ms.
    pub last_seen_ms: u64,
    /// Bytes of accepted datagrams.
    pub bytes: u64,
    /// Sequence accounting.
    pub seq: SeqTracker,
    /// RFC 3550 interarrival jitter estimate, ms.
    pub jitter_ms: f64,
    /// Transit time (arrival - device timestamp) of the previous frame, ms.
    prev_transit_ms: Option<i64>,
    /// One-way latency of the last frame with a device timestamp, ms.
    pub latency_ms: Option<f64>,
    /// Last accepted fix.
    pub fix: Option<Fix>,
    /// Odometer and motion.
    pub track: Track,
    /// Last monitoring values.
    pub health: Health,
    /// Named readings (allocated at the first one).
    // Boxed: 8 bytes per device instead of 24, and most devices of a large
    // fleet have no named readings.
    #[allow(clippy::box_collection)]
    pub readings: Option<Box<Vec<ReadingSeries>>>,
    /// Last Hello.
    pub info: Option<Box<Info>>,
    /// Last event.
    pub last_event: Option<LastEvent>,
    /// Record counters.
    pub counts: Counts,
    /// Whether this device currently holds one of the exported-series slots.
    #[serde(skip)]
    pub exported: bool,
    /// Whether the last tick found it online (to report transitions).
    #[serde(skip)]
    pub was_online: bool,
    /// The device's recent reporting interval and the records of a device
    /// without sequence numbers. Saved in the snapshot as an extension after
    /// the device's record, so snapshots of earlier versions still read.
    #[serde(skip)]
    pub ext: DeviceExt,
}

/// What a device carries beyond the snapshot format of version 2 (saved as
/// an extension of the device's snapshot record; fields are only ever
/// added at its end, and a snapshot's extension without the last ones
/// still reads: see `snapshot.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct DeviceExt {
    /// Recent reporting interval, ms (0 = unknown): rises at once to a
    /// longer gap, falls slowly (a quarter of the way per report), and
    /// ignores gaps under a second (the frames of one report).
    pub(crate) interval_ms: u32,
    /// Recent records of a device whose protocol has no sequence numbers.
    pub(crate) recent: Option<Box<RecentRecords>>,
    /// The odometer's way from its anchor to the last fix, east and north
    /// in radians of arc, while it is short (see `geo::SUM_WITHIN_RAD`):
    /// the next fix adds its hop to it instead of measuring the way from
    /// the anchor again. Saved, so that a restored device goes on exactly
    /// as it would have (snapshots without it measure once).
    pub(crate) way: Option<(f32, f32)>,
}

/// How many records of a device without sequence numbers are remembered.
const RECENT: usize = 32;

/// The latest records of a device whose protocol has no sequence numbers
/// (Teltonika, OsmAnd), by record time and kind: a tracker resends a packet
/// it got no acknowledgement for, and its records must not count twice. A
/// copy of an older record than these 32 counts again (as a late copy beyond
/// the sequence window does for fleetwire's own frames).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecentRecords {
    /// `time_ms * 4 + kind + 1` of each record; 0 = empty.
    keys: [u64; RECENT],
    /// The slot the next new record goes to.
    next: u8,
}

impl RecentRecords {
    /// Remembers a record of `kind` at `t_ms`; false when it is a copy.
    pub(crate) fn observe(&mut self, t_ms: u64, kind: RecordKind) -> bool {
        let key = t_ms.saturating_mul(4).saturating_add(kind as u64 + 1);
        if self.keys.contains(&key) {
            return false;
        }
        let i = usize::from(self.next) % RECENT;
        self.keys[i] = key;
        self.next = ((i + 1) % RECENT) as u8;
        true
    }
}

/// What the plausibility filter found for a fix it lets through.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Checked {
    /// A fix after the last one (the hop from it, when measured).
    After(Option<geo::Hop>),
    /// Earlier than the last fix, whose time was ahead of the server clock:
    /// the device's clock went back.
    ClockReset,
}

impl Device {
    /// A device seen for the first time at `now_ms`.
    pub(crate) fn new(id: u32, now_ms: u64) -> Self {
        Device {
            id,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            bytes: 0,
            seq: SeqTracker::default(),
            jitter_ms: 0.0,
            prev_transit_ms: None,
            latency_ms: None,
            fix: None,
            track: Track::default(),
            health: Health::default(),
            readings: None,
            info: None,
            last_event: None,
            counts: Counts::default(),
            exported: false,
            was_online: false,
            ext: DeviceExt::default(),
        }
    }

    /// The record memory of a device without sequence numbers.
    pub(crate) fn recent_records(&mut self) -> &mut RecentRecords {
        self.ext.recent.get_or_insert_with(Box::default)
    }

    /// The silence after which this device is offline: `offline_after`, or
    /// `offline_after_factor` times its recent reporting interval if that
    /// is longer, at most `offline_after_max` (a tracker reporting every 10
    /// minutes while parked is not offline after 1).
    pub(crate) fn offline_after_ms(&self, cfg: &EngineConfig) -> u64 {
        let own = (f64::from(self.ext.interval_ms) * cfg.offline_after_factor) as u64;
        own.min(cfg.offline_after_max_ms).max(cfg.offline_after_ms)
    }

    /// Whether the device was heard from within its offline threshold.
    pub(crate) fn online(&self, now_ms: u64, cfg: &EngineConfig) -> bool {
        now_ms.saturating_sub(self.last_seen_ms) <= self.offline_after_ms(cfg)
    }

    /// Whether the device has sent anything before (its first frame has no
    /// interval).
    fn counts_any(&self) -> bool {
        self.bytes > 0
    }

    /// Heap bytes owned by this device (readings, info).
    pub(crate) fn heap_bytes(&self) -> usize {
        let r = self.readings.as_ref().map_or(0, |r| {
            Self::series_table_bytes(r) + r.iter().map(ReadingSeries::heap_bytes).sum::<usize>()
        });
        r + self.info_bytes()
    }

    /// Heap bytes of the readings table itself (the box and the vector of
    /// series, without what each series owns).
    fn series_table_bytes(r: &Vec<ReadingSeries>) -> usize {
        use super::readings::alloc_bytes;
        alloc_bytes(std::mem::size_of::<Vec<ReadingSeries>>())
            + alloc_bytes(r.capacity() * std::mem::size_of::<ReadingSeries>())
    }

    /// Heap bytes of the device info.
    fn info_bytes(&self) -> usize {
        use super::readings::alloc_bytes;
        self.info.as_ref().map_or(0, |i| {
            alloc_bytes(std::mem::size_of::<Info>())
                + alloc_bytes(i.firmware.len())
                + alloc_bytes(i.model.len())
        })
    }

    /// Arrival bookkeeping for one frame: jitter and latency from the
    /// device timestamp (when its clock is set).
    pub(super) fn on_arrival(&mut self, now_ms: u64, device_ts_ms: u64, bytes: usize) {
        let gap = now_ms.saturating_sub(self.last_seen_ms);
        if gap >= 1000 && self.counts_any() {
            let gap = u32::try_from(gap).unwrap_or(u32::MAX);
            let i = &mut self.ext.interval_ms;
            *i = if gap >= *i { gap } else { *i - (*i - gap) / 4 };
        }
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
        self.bytes += bytes as u64;
        if device_ts_ms == 0 {
            return;
        }
        // Device clocks are untrusted: any u64 may arrive, so compute wide
        // and saturate instead of overflowing.
        let transit = (i128::from(now_ms) - i128::from(device_ts_ms))
            .clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        if let Some(prev) = self.prev_transit_ms {
            // RFC 3550 section 6.4.1: J += (|D| - J) / 16.
            let d = transit.saturating_sub(prev).unsigned_abs() as f64;
            self.jitter_ms += (d - self.jitter_ms) / 16.0;
        }
        self.prev_transit_ms = Some(transit);
        self.latency_ms = Some(transit as f64);
    }

    /// Applies a Position taken at `t_ms`.
    pub(super) fn on_position(
        &mut self,
        p: &Position,
        t_ms: u64,
        clock: Clock,
        cfg: &EngineConfig,
        totals: &mut ShardTotals,
    ) {
        self.counts.positions = self.counts.positions.saturating_add(1);
        totals.records.count(RecordKind::Position);
        match self.check_position(p, t_ms, clock, cfg) {
            Err(reason) => {
                self.counts.filtered = self.counts.filtered.saturating_add(1);
                totals.filtered[reason as usize] += 1;
            }
            Ok(Checked::ClockReset) => {
                // The last fix's time came from a clock that has since gone
                // back: it orders nothing any more. The track goes on from
                // the odometer anchor, without a speed between the two.
                totals.clock_resets.count(RecordKind::Position);
                self.fix = None;
                self.track.anchor_moved_ms = self.track.anchor_moved_ms.min(t_ms);
                self.accept_fix(p, t_ms, None, cfg);
            }
            Ok(Checked::After(hop)) => self.accept_fix(p, t_ms, hop, cfg),
        }
    }

    /// The plausibility filter. Every refusal is kept out of the odometer
    /// and the last position. On success, the distance from the last
    /// accepted fix (if any), for the track to reuse. (Sample times are
    /// never beyond `max_future` here: such frames are taken at the
    /// server's clock.)
    fn check_position(
        &mut self,
        p: &Position,
        t_ms: u64,
        clock: Clock,
        cfg: &EngineConfig,
    ) -> Result<Checked, FilterReason> {
        if p.fix == FixType::NoFix {
            return Err(FilterReason::NoFix);
        }
        if p.lat_e7 == 0 && p.lon_e7 == 0 {
            return Err(FilterReason::NullIsland);
        }
        if t_ms < clock.now_ms.saturating_sub(cfg.max_age_ms) {
            return Err(FilterReason::StaleTimestamp);
        }
        if cfg.max_hacc_cm > 0 && p.hacc_cm > cfg.max_hacc_cm {
            return Err(FilterReason::LowAccuracy);
        }
        let Some(last) = self.fix else { return Ok(Checked::After(None)) };
        if t_ms <= last.t_ms {
            if clock.resets(last.t_ms, t_ms) {
                return Ok(Checked::ClockReset);
            }
            return Err(FilterReason::OutOfOrder);
        }
        let hop = geo::Hop::new(last.lat(), last.lon(), p.lat_deg(), p.lon_deg());
        let d = hop.distance_m;
        let dt = (t_ms - last.t_ms) as f64 / 1000.0;
        // Two fixes can each be off by their accuracy: at high rates GPS
        // noise alone would otherwise look like an impossible speed.
        let slack = 2.0 * f64::from(u32::from(last.hacc_cm) + u32::from(p.hacc_cm)) / 100.0;
        if (d - slack).max(0.0) / dt > cfg.max_speed_m_s {
            self.track.implausible_run = self.track.implausible_run.saturating_add(1);
            if self.track.implausible_run < cfg.relocate_after {
                return Err(FilterReason::ImplausibleSpeed);
            }
            // The same "impossible" place several times in a row: the
            // earlier fix was the bad one. Start the track afresh here,
            // without adding the jump to the odometer.
            self.track.anchor = None;
            self.fix = None;
            return Ok(Checked::After(None));
        }
        Ok(Checked::After(Some(hop)))
    }

    fn accept_fix(&mut self, p: &Position, t_ms: u64, hop: Option<geo::Hop>, cfg: &EngineConfig) {
        let new = Fix::from_position(p, t_ms);
        self.track.implausible_run = 0;
        let hop = self.fix.map(|last| {
            hop.unwrap_or_else(|| geo::Hop::new(last.lat(), last.lon(), new.lat(), new.lon()))
        });
        if let (Some(last), Some(hop)) = (self.fix, hop) {
            let dt = (t_ms - last.t_ms) as f64 / 1000.0;
            if dt > 0.0 {
                self.track.derived_speed_m_s = hop.distance_m / dt;
            }
            if hop.distance_m >= 1.0 {
                self.track.derived_heading_deg = hop.bearing_deg();
            }
        }
        // Odometer: advance only once the fix has left a radius around the
        // anchor that is larger than the fix's own noise, so a parked
        // vehicle's GPS jitter adds nothing.
        let radius = cfg.stationary_radius_m.max(2.0 * f64::from(p.hacc_cm) / 100.0);
        match self.track.anchor {
            None => {
                self.track.anchor = Some((p.lat_e7, p.lon_e7));
                self.track.anchor_moved_ms = t_ms;
                self.ext.way = Some((0.0, 0.0));
            }
            Some((alat, alon)) => {
                // The way from the anchor to this fix: the way to the last
                // fix plus the hop from it, while both are short (one
                // distance per fix; geo::SUM_ERROR_M), else measured.
                let summed = match (self.ext.way, hop) {
                    (Some((ax, ay)), Some(h)) => h.short().and_then(|(x, y)| {
                        let v = (f64::from(ax) + x, f64::from(ay) + y);
                        // Whatever its length, a hop from the anchor itself.
                        let from_anchor = ax == 0.0 && ay == 0.0;
                        (from_anchor || x.abs().max(y.abs()) < geo::SUM_WITHIN_RAD).then_some(v)
                    }),
                    _ => None,
                };
                let (d, way) = match summed {
                    Some(v) => (geo::length_m(v), Some(v)),
                    None => {
                        let h = geo::Hop::new(
                            f64::from(alat) * 1e-7,
                            f64::from(alon) * 1e-7,
                            p.lat_deg(),
                            p.lon_deg(),
                        );
                        (h.distance_m, h.short())
                    }
                };
                if d >= radius {
                    self.track.odometer_m += d;
                    self.track.anchor = Some((p.lat_e7, p.lon_e7));
                    self.track.anchor_moved_ms = t_ms;
                    self.ext.way = Some((0.0, 0.0));
                } else {
                    self.ext.way = way.map(|(x, y)| ((x as f32), (y as f32)));
                }
            }
        }
        self.track.moving = p.speed_m_s() >= cfg.moving_speed_m_s
            || t_ms.saturating_sub(self.track.anchor_moved_ms) < cfg.stop_after_ms
                && self.fix.is_some();
        self.fix = Some(new);
    }

    /// Applies a Monitoring record taken at `t_ms`. With `grow` false (the
    /// shard's reading memory is at its budget), new reading names are
    /// dropped (counted) and series keep their allocation. Returns the
    /// change of [`Self::heap_bytes`] (measured on the series it touched
    /// only, so a record without readings costs nothing to account).
    pub(super) fn on_monitoring(
        &mut self,
        m: &Monitoring<'_>,
        t_ms: u64,
        clock: Clock,
        grow: bool,
        cfg: &EngineConfig,
        totals: &mut ShardTotals,
    ) -> isize {
        self.counts.monitoring = self.counts.monitoring.saturating_add(1);
        totals.records.count(RecordKind::Monitoring);
        let reset = clock.resets(self.health.t_ms, t_ms);
        if t_ms >= self.health.t_ms || reset {
            let h = &mut self.health;
            h.t_ms = t_ms;
            h.battery_pct = m.battery_pct.or(h.battery_pct);
            h.supply_mv = m.supply_mv.or(h.supply_mv);
            h.temperature_cdeg = m.temperature_cdeg.or(h.temperature_cdeg);
            h.rssi_dbm = m.rssi_dbm.or(h.rssi_dbm);
            h.uptime_s = m.uptime_s.or(h.uptime_s);
        }
        let (series_reset, heap) = self.take_readings(m, t_ms, clock, grow, cfg, totals);
        if reset || series_reset {
            totals.clock_resets.count(RecordKind::Monitoring);
        }
        heap
    }

    /// The named readings of a Monitoring record: whether a series gave up
    /// samples dated ahead of the server clock (see [`Clock::resets`]),
    /// and the change of the device's heap bytes.
    fn take_readings(
        &mut self,
        m: &Monitoring<'_>,
        t_ms: u64,
        clock: Clock,
        grow: bool,
        cfg: &EngineConfig,
        totals: &mut ShardTotals,
    ) -> (bool, isize) {
        if m.readings.is_empty() {
            return (false, 0);
        }
        if self.readings.is_none() && !grow {
            // At the budget, a device without readings gets none.
            let n = m.readings.len() as u32;
            self.counts.readings_dropped = self.counts.readings_dropped.saturating_add(n);
            totals.readings_dropped += u64::from(n);
            return (false, 0);
        }
        let mut reset = false;
        let created = self.readings.is_none();
        let series = self.readings.get_or_insert_with(Default::default);
        let mut heap = if created { Self::series_table_bytes(series) as isize } else { 0 };
        for (k, r) in m.readings.iter().enumerate() {
            // A device sends its readings in the same order each time: the
            // k-th series first, then a search.
            let idx = match series.get(k).filter(|s| &*s.name == r.name) {
                Some(_) => Some(k),
                None => series.iter().position(|s| &*s.name == r.name),
            };
            let idx = match idx {
                Some(i) => i,
                None if series.len() < cfg.max_readings_per_device && grow => {
                    let table_before = Self::series_table_bytes(series);
                    series.push(ReadingSeries::new(r.name));
                    heap += series[series.len() - 1].heap_bytes() as isize;
                    heap += Self::series_table_bytes(series) as isize - table_before as isize;
                    series.len() - 1
                }
                None => {
                    self.counts.readings_dropped = self.counts.readings_dropped.saturating_add(1);
                    totals.readings_dropped += 1;
                    continue;
                }
            };
            let s = &mut series[idx];
            let (r, grew) =
                s.push(t_ms, r.value, clock, cfg.reading_window_ms, cfg.reading_samples, grow);
            reset |= r;
            heap += grew;
        }
        (reset, heap)
    }

    /// Applies an Event record taken at `t_ms`.
    pub(super) fn on_event(
        &mut self,
        e: &Event<'_>,
        t_ms: u64,
        clock: Clock,
        totals: &mut ShardTotals,
    ) {
        self.counts.events = self.counts.events.saturating_add(1);
        totals.records.count(RecordKind::Event);
        totals.events[e.severity as usize] += 1;
        let reset = self.last_event.is_some_and(|l| clock.resets(l.t_ms, t_ms));
        if reset {
            totals.clock_resets.count(RecordKind::Event);
        }
        if reset || self.last_event.is_none_or(|l| t_ms >= l.t_ms) {
            self.last_event = Some(LastEvent { code: e.code, severity: e.severity as u8, t_ms });
        }
    }

    /// Applies a Hello. With `grow` false (the shard's device memory is at
    /// its budget), new device info is not stored; the Hello still counts.
    /// Returns the change of [`Self::heap_bytes`].
    pub(super) fn on_hello(
        &mut self,
        h: &Hello<'_>,
        grow: bool,
        totals: &mut ShardTotals,
    ) -> isize {
        self.counts.hellos = self.counts.hellos.saturating_add(1);
        totals.records.count(RecordKind::Hello);
        let same = self.info.as_ref().is_some_and(|i| {
            &*i.firmware == h.firmware && &*i.model == h.model && i.capabilities == h.capabilities
        });
        if !same && grow {
            let before = self.info_bytes() as isize;
            self.info = Some(Box::new(Info {
                firmware: h.firmware.into(),
                model: h.model.into(),
                capabilities: h.capabilities,
            }));
            return self.info_bytes() as isize - before;
        }
        0
    }
}
