//! Token buckets per key (source address, device id) with LRU-bounded
//! state, so a flood of spoofed sources cannot grow the table.

use std::num::NonZeroUsize;

use lru::LruCache;

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    /// Refills for the time since the last call (never for time going
    /// backwards), then takes a token if there is one.
    fn allow(&mut self, now_ms: u64, rate: f64, burst: f64) -> bool {
        let dt = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last_ms = now_ms.max(self.last_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Token buckets for at most `cap` keys; the least recently seen key is
/// forgotten first (and starts again with a full bucket). The table grows
/// with the keys seen, up to `cap`: nothing is allocated for the cap up
/// front, so a large cap costs only what is used.
#[derive(Debug)]
pub(crate) struct Limiter<K: std::hash::Hash + Eq> {
    rate: f64,
    burst: f64,
    cap: NonZeroUsize,
    buckets: LruCache<K, Bucket>,
}

impl<K: std::hash::Hash + Eq> Limiter<K> {
    /// `rate` per second with bursts of `burst`, for at most `cap` keys.
    pub(crate) fn new(rate: f64, burst: f64, cap: usize) -> Self {
        let cap = NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN);
        // `LruCache::new(cap)` would allocate a table for `cap` entries.
        Limiter { rate, burst, cap, buckets: LruCache::unbounded() }
    }

    /// Takes one token for `key`; false when it has none left.
    pub(crate) fn allow(&mut self, key: K, now_ms: u64) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        if self.buckets.len() >= self.cap.get() && !self.buckets.contains(&key) {
            self.buckets.pop_lru();
        }
        self.buckets
            .get_or_insert_mut(key, || Bucket { tokens: burst, last_ms: now_ms })
            .allow(now_ms, rate, burst)
    }

    /// Keys tracked.
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn token_bucket_gives_the_rate() {
        let mut l = Limiter::new(10.0, 5.0, 4);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        // 100 attempts per second for 10 s: the burst, then 10 per second.
        let allowed = (0..1000u64).filter(|i| l.allow(ip, i * 10)).count();
        assert!((100..=106).contains(&allowed), "{allowed}");
    }

    #[test]
    fn limiter_state_is_bounded() {
        let mut l = Limiter::new(1.0, 1.0, 1000);
        for i in 0..100_000u32 {
            l.allow(IpAddr::from(i.to_be_bytes()), 0);
        }
        assert_eq!(l.len(), 1000);
    }

    #[test]
    fn a_huge_cap_allocates_nothing_up_front() {
        // The cap is a bound, not a size: no table for it is allocated.
        let mut l = Limiter::new(1.0, 1.0, usize::MAX / 2);
        assert!(l.allow(7u32, 0));
        assert!(!l.allow(7u32, 0));
        assert_eq!(l.len(), 1);
        // A small cap still holds, forgetting the least recently seen key.
        let mut l = Limiter::new(1.0, 1.0, 3);
        for k in [1u32, 2, 3, 1, 4] {
            l.allow(k, 0);
        }
        assert_eq!(l.len(), 3);
        // 1 was seen after 2 and 3, so 2 went: it has a full bucket again.
        assert!(l.allow(2u32, 0));
        assert!(!l.allow(1u32, 0), "1 is still tracked, with its bucket empty");
    }
}
