//! The aggregation engine: per-device and fleet-wide state.
//!
//! Sans-IO: no sockets, no files, no clock reads. Time comes in as `now_ms`
//! (Unix milliseconds) with every call, so tests drive it with any clock.
//! Nothing in here returns an error: every accepted frame leaves the state
//! consistent.
//!
//! Devices are sharded by id. Each shard is a plain [`Shard`] behind its own
//! mutex, so a device's state has exactly one owner and receive threads on
//! different shards never contend; a batch of frames takes each shard's lock
//! once.

pub mod device;
pub mod geo;
pub mod readings;
pub mod sequence;
pub mod shard;

use fleetwire_proto::Frame;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use device::Device;
pub use shard::{ExportSlots, Shard};

/// Engine settings (a subset of the server configuration), in engine units.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A device silent longer than this is offline.
    pub offline_after_ms: u64,
    /// A device silent longer than this loses its exported series.
    pub series_ttl_ms: u64,
    /// Most devices with exported per-device series.
    pub max_exported_devices: usize,
    /// Most devices tracked per shard (`max_devices / shards`).
    pub max_devices_per_shard: usize,
    /// Fixes implying a faster speed than this are refused.
    pub max_speed_m_s: f64,
    /// After this many consecutive refusals for speed, the track restarts
    /// at the new place.
    pub relocate_after: u8,
    /// Sample times further in the future than this are refused.
    pub max_future_ms: u64,
    /// Sample times older than this are refused.
    pub max_age_ms: u64,
    /// Fixes with a worse horizontal accuracy are refused (0 = no limit).
    pub max_hacc_cm: u16,
    /// The odometer ignores movement within this radius (or twice the fix's
    /// accuracy, if larger).
    pub stationary_radius_m: f64,
    /// A reported speed at or above this means moving.
    pub moving_speed_m_s: f64,
    /// Without reported speed, a device is moving until its odometer anchor
    /// has not moved for this long.
    pub stop_after_ms: u64,
    /// Sliding window of reading statistics.
    pub reading_window_ms: u64,
    /// Most samples kept per reading.
    pub reading_samples: usize,
    /// Most distinct reading names per device.
    pub max_readings_per_device: usize,
    /// Most heap bytes the devices of one shard may own (reading samples
    /// and names, device info). At the budget, new reading names are
    /// dropped (counted) and existing readings keep their allocation.
    pub max_heap_per_shard: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            offline_after_ms: 60_000,
            series_ttl_ms: 600_000,
            max_exported_devices: 10_000,
            max_devices_per_shard: 1_000_000 / 16,
            max_speed_m_s: 100.0,
            relocate_after: 3,
            max_future_ms: 300_000,
            max_age_ms: 7 * 24 * 3_600_000,
            max_hacc_cm: 0,
            stationary_radius_m: 10.0,
            moving_speed_m_s: 1.0,
            stop_after_ms: 30_000,
            reading_window_ms: 60_000,
            reading_samples: 128,
            max_readings_per_device: 32,
            max_heap_per_shard: (128 << 20) / 16,
        }
    }
}

/// Why the plausibility filter kept a position out of the track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum FilterReason {
    /// Fix type 0: the receiver has no fix.
    NoFix = 0,
    /// Exactly (0, 0): an uninitialised receiver, not a ship off Africa.
    NullIsland = 1,
    /// Reaching it from the last fix needs more than `max_speed`.
    ImplausibleSpeed = 2,
    /// Sample time too far in the future.
    FutureTimestamp = 3,
    /// Sample time older than `max_age`.
    StaleTimestamp = 4,
    /// Horizontal accuracy worse than `max_hacc`.
    LowAccuracy = 5,
    /// Not newer than the last accepted fix.
    OutOfOrder = 6,
}

impl FilterReason {
    /// Every reason, in index order.
    pub const ALL: [FilterReason; 7] = [
        FilterReason::NoFix,
        FilterReason::NullIsland,
        FilterReason::ImplausibleSpeed,
        FilterReason::FutureTimestamp,
        FilterReason::StaleTimestamp,
        FilterReason::LowAccuracy,
        FilterReason::OutOfOrder,
    ];

    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            FilterReason::NoFix => "no_fix",
            FilterReason::NullIsland => "null_island",
            FilterReason::ImplausibleSpeed => "implausible_speed",
            FilterReason::FutureTimestamp => "future_timestamp",
            FilterReason::StaleTimestamp => "stale_timestamp",
            FilterReason::LowAccuracy => "low_accuracy",
            FilterReason::OutOfOrder => "out_of_order",
        }
    }
}

/// Record kinds counted by the engine, in `ShardTotals::records` order.
pub const RECORD_KINDS: [&str; 4] = ["position", "monitoring", "event", "hello"];
/// Event severities, in wire order.
pub const SEVERITIES: [&str; 5] = ["info", "notice", "warning", "error", "critical"];

/// Fleet counters (monotonic except `online`), per shard and summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTotals {
    /// Records by kind: position, monitoring, event, hello.
    pub records: [u64; 4],
    /// Batch frames.
    pub batches: u64,
    /// Positions refused by the plausibility filter, by [`FilterReason`].
    pub filtered: [u64; 7],
    /// Events by severity.
    pub events: [u64; 5],
    /// Sequence numbers skipped (see [`sequence::SeqTracker::gaps`]).
    pub gaps: u64,
    /// Skipped numbers still awaited inside devices' windows.
    pub pending: u64,
    /// Extra copies.
    pub duplicates: u64,
    /// Frames that filled a gap late.
    pub reordered: u64,
    /// Frames older than the sequence window.
    pub late: u64,
    /// Sequence counter restarts.
    pub restarts: u64,
    /// Named readings dropped for exceeding the per-device name limit.
    pub readings_dropped: u64,
    /// Devices created (first frame, or first after eviction).
    pub devices_created: u64,
    /// Devices evicted to stay within `max_devices`.
    pub evicted: u64,
    /// Devices online at the last tick (a gauge).
    pub online: u64,
}

impl ShardTotals {
    /// Frames missing right now (skipped, not arrived since).
    pub fn lost(&self) -> u64 {
        self.gaps.saturating_sub(self.reordered)
    }

    /// Frames confirmed lost (out of the window without arriving): monotonic.
    pub fn lost_confirmed(&self) -> u64 {
        self.gaps.saturating_sub(self.reordered + self.pending)
    }

    fn add(&mut self, o: &ShardTotals) {
        let add = |a: &mut [u64], b: &[u64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        add(&mut self.records, &o.records);
        add(&mut self.filtered, &o.filtered);
        add(&mut self.events, &o.events);
        self.batches += o.batches;
        self.gaps += o.gaps;
        self.pending += o.pending;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.late += o.late;
        self.restarts += o.restarts;
        self.readings_dropped += o.readings_dropped;
        self.devices_created += o.devices_created;
        self.evicted += o.evicted;
        self.online += o.online;
    }
}

/// A frame that passed every check, with what the transport knows of it.
#[derive(Debug, Clone, Copy)]
pub struct Accepted<'a> {
    /// The frame.
    pub frame: Frame<'a>,
    /// Size of the datagram (or stream record) it came in.
    pub bytes: usize,
}

/// What [`Engine::ingest`] did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Bit `i` set: frame `i` of the batch brought new records (only the
    /// first 64 frames are reported; the pipeline passes at most 64).
    pub applied: u64,
}

/// Fleet totals plus sizes, summed over shards.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Counters.
    #[serde(flatten)]
    pub totals: ShardTotals,
    /// Devices tracked.
    pub devices: u64,
    /// Devices holding an exported-series slot.
    pub exported: u64,
}

/// The sharded engine.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    shards: Box<[Mutex<Shard>]>,
    slots: ExportSlots,
}

impl Engine {
    /// An engine with `shards` shards (rounded up to a power of two).
    pub fn new(cfg: EngineConfig, shards: usize) -> Self {
        let n = shards.clamp(1, 1024).next_power_of_two();
        Engine {
            slots: ExportSlots::new(cfg.max_exported_devices),
            cfg,
            shards: (0..n).map(|_| Mutex::new(Shard::new())).collect(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard a device id belongs to (Fibonacci hashing of the id).
    pub fn shard_of(&self, id: u32) -> usize {
        let h = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 32) as usize & (self.shards.len() - 1)
    }

    /// Applies a batch of accepted frames that arrived at `now_ms`, taking
    /// each involved shard's lock once. Says which frames brought new
    /// records (not duplicates).
    pub fn ingest(&self, now_ms: u64, batch: &[Accepted<'_>]) -> IngestOutcome {
        const CHUNK: usize = 64;
        let mut out = IngestOutcome::default();
        for (c, chunk) in batch.chunks(CHUNK).enumerate() {
            let base = c * CHUNK;
            let mut shard_of = [0usize; CHUNK];
            for (s, a) in shard_of.iter_mut().zip(chunk) {
                *s = self.shard_of(a.frame.device_id);
            }
            let mut done = [false; CHUNK];
            for i in 0..chunk.len() {
                if done[i] {
                    continue;
                }
                let s = shard_of[i];
                let mut shard = self.shards[s].lock();
                for j in i..chunk.len() {
                    if !done[j] && shard_of[j] == s {
                        let a = &chunk[j];
                        if shard.apply(now_ms, &a.frame, a.bytes, &self.cfg, &self.slots) {
                            let k = base + j;
                            if k < 64 {
                                out.applied |= 1 << k;
                            }
                        }
                        done[j] = true;
                    }
                }
            }
        }
        out
    }

    /// Periodic upkeep (call about once a second).
    pub fn tick(&self, now_ms: u64) {
        for s in self.shards.iter() {
            s.lock().tick(now_ms, &self.cfg, &self.slots);
        }
    }

    /// Fleet totals.
    pub fn summary(&self) -> Summary {
        let mut sum = Summary { exported: self.slots.used() as u64, ..Default::default() };
        for s in self.shards.iter() {
            let s = s.lock();
            sum.totals.add(&s.totals);
            sum.devices += s.len() as u64;
        }
        sum
    }

    /// Runs `f` on the device, if tracked.
    pub fn with_device<T>(&self, id: u32, f: impl FnOnce(&Device) -> T) -> Option<T> {
        self.shards[self.shard_of(id)].lock().get(id).map(f)
    }

    /// Calls `f` for every device of each shard in turn, holding one shard's
    /// lock at a time. Keep `f` short: ingest on that shard waits.
    pub fn for_each_shard(&self, mut f: impl FnMut(&Shard)) {
        for s in self.shards.iter() {
            f(&s.lock());
        }
    }

    /// Calls `f` with a copy of each shard's devices in turn; the shard's
    /// lock is held only while copying.
    pub fn for_each_shard_owned(&self, f: &mut dyn FnMut(Vec<Device>)) {
        for s in self.shards.iter() {
            let devices = s.lock().devices().to_vec();
            f(devices);
        }
    }

    /// Puts restored devices back (from a snapshot), least recently seen first.
    pub fn restore(&self, devices: Vec<Device>, totals: Option<ShardTotals>) {
        // Per shard, keep the most recently seen devices that fit (the
        // configuration may have shrunk since the snapshot), and insert them
        // least recently seen first so the eviction order is right.
        let mut per_shard: Vec<Vec<Device>> = (0..self.shards.len()).map(|_| Vec::new()).collect();
        for d in devices {
            let s = self.shard_of(d.id);
            if let Some(v) = per_shard.get_mut(s) {
                v.push(d);
            }
        }
        let cap = self.cfg.max_devices_per_shard.max(1);
        let mut dropped = 0u64;
        for (s, mut v) in per_shard.into_iter().enumerate() {
            v.sort_by_key(|d| std::cmp::Reverse(d.last_seen_ms));
            if v.len() > cap {
                dropped += (v.len() - cap) as u64;
                v.truncate(cap);
            }
            let mut shard = self.shards[s].lock();
            for d in v.into_iter().rev() {
                shard.restore(d);
            }
        }
        if let Some(mut t) = totals {
            t.pending = 0;
            t.online = 0;
            t.evicted += dropped;
            self.shards[0].lock().totals = t;
        } else {
            self.shards[0].lock().totals.evicted += dropped;
        }
        // Each shard accounts for the awaited frames of its own devices.
        for s in self.shards.iter() {
            let mut s = s.lock();
            s.totals.pending = s.devices().iter().map(|d| d.seq.pending()).sum();
        }
    }

    /// Approximate heap and table bytes used by tracked devices.
    pub fn memory_bytes(&self) -> usize {
        let mut b = 0;
        self.for_each_shard(|s| {
            b += s.table_bytes() + s.devices().iter().map(Device::heap_bytes).sum::<usize>();
        });
        b
    }
}

#[cfg(test)]
mod tests;
