//! The engine's slice of the configuration, in engine units (ms, cm, m/s).
//! Its values come from the server configuration (`Config::engine`), the
//! one source of defaults.

/// Engine settings (a subset of the server configuration), in engine units.
#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    /// A device silent longer than this is offline (unless its own
    /// reporting interval says to wait longer).
    pub offline_after_ms: u64,
    /// A device is offline after this many of its recent reporting
    /// intervals of silence (if longer than `offline_after_ms`).
    pub offline_after_factor: f64,
    /// The longest offline threshold a device's interval can give.
    pub offline_after_max_ms: u64,
    /// A device silent longer than this loses its exported series.
    pub series_ttl_ms: u64,
    /// Most devices with exported per-device series.
    pub max_exported_devices: usize,
    /// Most devices tracked, over all shards: a new device beyond it
    /// evicts the least recently seen device of its shard.
    pub max_devices: usize,
    /// Most devices one shard holds (twice its share of `max_devices`): a
    /// shard fuller than its share does not evict while the fleet is under
    /// `max_devices`.
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

/// The defaults of `Config::default()` (tested equal there), for the
/// engine's own tests.
#[cfg(test)]
impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            offline_after_ms: 60_000,
            offline_after_factor: 3.0,
            offline_after_max_ms: 3_600_000,
            series_ttl_ms: 600_000,
            max_exported_devices: 10_000,
            max_devices: 1_000_000,
            max_devices_per_shard: 2 * 1_000_000 / 256,
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
            max_heap_per_shard: (128 << 20) / 256,
        }
    }
}
