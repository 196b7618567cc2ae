//! The engine's fleet counters and their vocabulary: record kinds, filter
//! reasons and event severities.

use serde::{Deserialize, Serialize};

/// What a record is (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordKind {
    /// A GNSS fix.
    Position = 0,
    /// Health and named readings.
    Monitoring = 1,
    /// A device event.
    Event = 2,
    /// Device information after boot.
    Hello = 3,
}

impl RecordKind {
    /// Every kind, in counter order.
    pub(crate) const ALL: [RecordKind; 4] =
        [RecordKind::Position, RecordKind::Monitoring, RecordKind::Event, RecordKind::Hello];

    /// The `kind` label value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            RecordKind::Position => "position",
            RecordKind::Monitoring => "monitoring",
            RecordKind::Event => "event",
            RecordKind::Hello => "hello",
        }
    }
}

/// Records counted by kind. Serialised as a plain array of four counts, in
/// [`RecordKind::ALL`] order (the snapshot format).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct RecordCounts([u64; 4]);

impl RecordCounts {
    /// The count of `k`.
    pub(crate) fn get(&self, k: RecordKind) -> u64 {
        self.0[k as usize]
    }

    /// Counts one record of kind `k`.
    pub(crate) fn count(&mut self, k: RecordKind) {
        self.0[k as usize] += 1;
    }

    /// Every kind with its count.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (RecordKind, u64)> + '_ {
        RecordKind::ALL.into_iter().map(|k| (k, self.get(k)))
    }

    /// All records.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn add(&mut self, o: &RecordCounts) {
        self.0.iter_mut().zip(o.0).for_each(|(a, b)| *a += b);
    }
}

/// Event severities, in wire order (the `severity` label).
pub(crate) const SEVERITIES: [&str; 5] = ["info", "notice", "warning", "error", "critical"];

/// Why the plausibility filter kept a position out of the track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum FilterReason {
    /// Fix type 0: the receiver has no fix.
    NoFix = 0,
    /// Exactly (0, 0): an uninitialised receiver, not a ship off Africa.
    NullIsland = 1,
    /// Reaching it from the last fix needs more than `max_speed`.
    ImplausibleSpeed = 2,
    /// Sample time too far in the future. No longer counted: such a frame is
    /// now taken at the server's clock (counted in
    /// [`ShardTotals::future`]); kept for the label and the snapshot's
    /// counter array, which carries earlier counts on.
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
    pub(crate) const ALL: [FilterReason; 7] = [
        FilterReason::NoFix,
        FilterReason::NullIsland,
        FilterReason::ImplausibleSpeed,
        FilterReason::FutureTimestamp,
        FilterReason::StaleTimestamp,
        FilterReason::LowAccuracy,
        FilterReason::OutOfOrder,
    ];

    /// Metric label.
    pub(crate) const fn as_str(self) -> &'static str {
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

/// Upper bounds of the fleet's transit delay histogram, seconds: arrival
/// minus the device's timestamp. A device clock ahead of the server's
/// gives a negative delay, counted in the first bucket (`le="0"`).
pub(crate) const TRANSIT_BOUNDS: &[f64; 16] = &[
    0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    86_400.0,
];

/// [`TRANSIT_BOUNDS`] in milliseconds (what frames are counted by).
const TRANSIT_LIMITS_MS: [i64; TRANSIT_BOUNDS.len()] = {
    let mut ms = [0i64; TRANSIT_BOUNDS.len()];
    let mut i = 0;
    while i < ms.len() {
        ms[i] = (TRANSIT_BOUNDS[i] * 1000.0) as i64;
        i += 1;
    }
    ms
};

/// Frames with a device timestamp by transit delay (arrival minus device
/// time): the store-and-forward and clock-skew signal of the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TransitCounts {
    /// Per bucket of [`TRANSIT_BOUNDS`] (not cumulative), the last +Inf.
    pub counts: [u64; TRANSIT_BOUNDS.len() + 1],
    /// Sum of the delays, milliseconds.
    pub sum_ms: i64,
}

impl TransitCounts {
    /// Counts a frame that took `transit_ms` (negative: device clock ahead).
    pub(crate) fn count(&mut self, transit_ms: i64) {
        let i = TRANSIT_LIMITS_MS.partition_point(|&l| l < transit_ms);
        self.counts[i] += 1;
        self.sum_ms = self.sum_ms.saturating_add(transit_ms);
    }

    fn add(&mut self, o: &TransitCounts) {
        self.counts.iter_mut().zip(o.counts).for_each(|(a, b)| *a += b);
        self.sum_ms = self.sum_ms.saturating_add(o.sum_ms);
    }
}

/// Fleet counters (monotonic except `online`), per shard and summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShardTotals {
    /// Records by kind.
    pub records: RecordCounts,
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
    /// Records of frames dated more than `max_future` ahead of the server
    /// clock, by kind: taken at the server's clock instead. (This field and
    /// the next are missing from the snapshots of earlier versions, where
    /// they read as 0.)
    #[serde(default, deserialize_with = "or_default")]
    pub future: RecordCounts,
    /// Records whose earlier sample time replaced a stored one that was
    /// ahead of the server clock (the device's clock jumped back), by kind.
    #[serde(default, deserialize_with = "or_default")]
    pub clock_resets: RecordCounts,
    /// New frames with a device timestamp, by transit delay (missing from
    /// earlier snapshots, where it reads as empty).
    #[serde(default, deserialize_with = "or_default")]
    pub transit: TransitCounts,
}

/// A field that an older snapshot header does not have: postcard has no
/// field names, so a header written before the field existed ends where it
/// would start, and reading it fails; that reads as the default.
fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(T::deserialize(d).unwrap_or_default())
}

impl ShardTotals {
    /// Frames missing right now (skipped, not arrived since).
    pub(crate) fn lost(&self) -> u64 {
        self.gaps.saturating_sub(self.reordered)
    }

    /// Frames confirmed lost (out of the window without arriving): monotonic.
    pub(crate) fn lost_confirmed(&self) -> u64 {
        self.gaps.saturating_sub(self.reordered + self.pending)
    }

    pub(crate) fn add(&mut self, o: &ShardTotals) {
        let add = |a: &mut [u64], b: &[u64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        self.records.add(&o.records);
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
        self.future.add(&o.future);
        self.clock_resets.add(&o.clock_resets);
        self.transit.add(&o.transit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transit_buckets_count_in_milliseconds_of_their_bounds() {
        assert_eq!(
            TRANSIT_LIMITS_MS,
            [
                0, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000,
                900_000, 3_600_000, 86_400_000
            ]
        );
        let mut t = TransitCounts::default();
        for ms in [-5, 0, 10, 11, 86_400_000, 86_400_001] {
            t.count(ms);
        }
        // A clock ahead and 0 in le="0"; on a bound in its bucket; beyond
        // the last in +Inf.
        assert_eq!(
            (t.counts[0], t.counts[1], t.counts[2], t.counts[15], t.counts[16]),
            (2, 1, 1, 1, 1)
        );
        assert_eq!(t.sum_ms, -5 + 10 + 11 + 86_400_000 + 86_400_001);
    }
}
