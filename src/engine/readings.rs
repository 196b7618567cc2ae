//! Named readings: last value and statistics over a sliding time window.
//!
//! The window ends at the reading's newest sample (by sample time), not at
//! the server clock: a device whose clock runs behind, or a backlog batch,
//! still gets statistics over its own last `window` of samples. How old
//! that is shows in the device's last-seen time.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::timing::Clock;

/// What an allocation of `n` bytes costs in memory: glibc's malloc rounds
/// a request up to a multiple of 16 bytes with an 8-byte header (32 bytes
/// at least). Counting this keeps the reading budget close to resident
/// memory, where small allocations (names, short series) dominate.
pub(crate) fn alloc_bytes(n: usize) -> usize {
    if n == 0 { 0 } else { (n + 8).div_ceil(16).max(2) * 16 }
}

/// Samples of one named reading, newest last, at most `cap` of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReadingSeries {
    /// The reading's name as the device sends it.
    pub name: Box<str>,
    /// (sample time in Unix ms, value), in arrival order.
    samples: VecDeque<(u64, f64)>,
    /// The newest sample time seen.
    #[serde(default)]
    newest_ms: u64,
}

/// Statistics of one reading over the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct WindowStats {
    /// The value of the newest sample (by sample time), in or out of the window.
    pub last: f64,
    /// Its sample time, Unix ms.
    pub last_ms: u64,
    /// Samples inside the window.
    pub count: usize,
    /// Minimum over the window.
    pub min: f64,
    /// Maximum over the window.
    pub max: f64,
    /// Arithmetic mean over the window.
    pub mean: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
}

impl ReadingSeries {
    /// An empty series.
    pub(crate) fn new(name: &str) -> Self {
        ReadingSeries { name: name.into(), samples: VecDeque::new(), newest_ms: 0 }
    }

    /// Adds a sample, dropping the oldest beyond `cap` and those older than
    /// the window before the newest sample. With `grow` false the series
    /// keeps its allocation: when it is full, the oldest sample makes room.
    /// When the device's clock went back (see [`Clock::resets`]), the
    /// samples dated ahead of the server clock go first, and the window
    /// ends at the new sample; says whether that happened, and by how much
    /// [`Self::heap_bytes`] changed.
    pub(crate) fn push(
        &mut self,
        t_ms: u64,
        value: f64,
        clock: Clock,
        window_ms: u64,
        cap: usize,
        grow: bool,
    ) -> (bool, isize) {
        let capacity = self.samples.capacity();
        let reset = clock.resets(self.newest_ms, t_ms);
        if reset {
            self.samples.retain(|(t, _)| !clock.ahead(*t) && !clock.too_far_ahead(*t));
            self.newest_ms = self.samples.iter().map(|(t, _)| *t).max().unwrap_or(0);
        }
        self.newest_ms = self.newest_ms.max(t_ms);
        let horizon = self.newest_ms.saturating_sub(window_ms);
        while self.samples.front().is_some_and(|(t, _)| *t < horizon) {
            self.samples.pop_front();
        }
        if self.samples.len() >= cap.max(1)
            || !grow && self.samples.len() == self.samples.capacity() && !self.samples.is_empty()
        {
            self.samples.pop_front();
        }
        self.samples.push_back((t_ms, value));
        // The heap changes only when the samples' buffer grew.
        let grew = match self.samples.capacity() {
            c if c == capacity => 0,
            c => Self::samples_bytes(c) as isize - Self::samples_bytes(capacity) as isize,
        };
        (reset, grew)
    }

    /// What a samples buffer of `capacity` costs (see [`alloc_bytes`]).
    fn samples_bytes(capacity: usize) -> usize {
        alloc_bytes(capacity * std::mem::size_of::<(u64, f64)>())
    }

    /// The newest sample's value (by sample time), if any.
    pub(crate) fn last(&self) -> Option<f64> {
        self.samples.iter().max_by_key(|(t, _)| *t).map(|(_, v)| *v)
    }

    /// Number of stored samples.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }

    /// Heap bytes used by the samples and the name, as the allocator
    /// charges them (see [`alloc_bytes`]).
    pub(crate) fn heap_bytes(&self) -> usize {
        Self::samples_bytes(self.samples.capacity()) + alloc_bytes(self.name.len())
    }

    /// Statistics over the samples taken in `[newest - window, newest]`;
    /// `None` when there is no sample at all.
    pub(crate) fn stats(&self, window_ms: u64, scratch: &mut Vec<f64>) -> Option<WindowStats> {
        let &(last_ms, last) = self.samples.iter().max_by_key(|(t, _)| *t)?;
        let horizon = last_ms.saturating_sub(window_ms);
        scratch.clear();
        scratch.extend(self.samples.iter().filter(|(t, _)| *t >= horizon).map(|(_, v)| *v));
        let n = scratch.len();
        if n == 0 {
            let nan = f64::NAN;
            return Some(WindowStats {
                last,
                last_ms,
                count: 0,
                min: nan,
                max: nan,
                mean: nan,
                p50: nan,
                p95: nan,
                p99: nan,
            });
        }
        scratch.sort_unstable_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            scratch[i]
        };
        Some(WindowStats {
            last,
            last_ms,
            count: n,
            min: scratch[0],
            max: scratch[n - 1],
            mean: scratch.iter().sum::<f64>() / n as f64,
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Clock = Clock { now_ms: 1_764_000_000_000, max_future_ms: 300_000 };

    #[test]
    fn window_statistics() {
        let mut r = ReadingSeries::new("t");
        let mut s = Vec::new();
        for i in 1..=100u64 {
            r.push(i * 1000, i as f64, NOW, 1_000_000, 1000, true);
        }
        let st = r.stats(1_000_000, &mut s).unwrap();
        assert_eq!((st.count, st.min, st.max, st.mean), (100, 1.0, 100.0, 50.5));
        assert_eq!((st.p50, st.p95, st.p99), (50.0, 95.0, 99.0));
        assert_eq!((st.last, st.last_ms), (100.0, 100_000));
        // Only the last 10 s: samples 90..=100.
        let st = r.stats(10_000, &mut s).unwrap();
        assert_eq!((st.count, st.min, st.max), (11, 90.0, 100.0));
    }

    #[test]
    fn cap_and_expiry_bound_memory() {
        let mut r = ReadingSeries::new("t");
        for i in 0..10_000u64 {
            r.push(i, 1.0, NOW, 1_000_000, 64, true);
        }
        assert_eq!(r.len(), 64);
        // Old samples leave as newer ones arrive.
        r.push(10_000_000, 2.0, NOW, 60_000, 64, true);
        assert_eq!(r.len(), 1);
        let st = r.stats(60_000, &mut Vec::new()).unwrap();
        assert_eq!((st.count, st.last, st.mean), (1, 2.0, 2.0));
    }

    #[test]
    fn a_device_clock_far_behind_still_gets_statistics() {
        let mut r = ReadingSeries::new("t");
        // Samples stamped a day in the past (a backlog, or a skewed clock).
        let day_ago = 1_764_000_000_000u64 - 86_400_000;
        for i in 0..10u64 {
            r.push(day_ago + i * 1000, i as f64, NOW, 60_000, 128, true);
        }
        let st = r.stats(60_000, &mut Vec::new()).unwrap();
        assert_eq!((st.count, st.min, st.max), (10, 0.0, 9.0));
    }
}
