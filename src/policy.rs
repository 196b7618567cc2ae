//! Server policies applied to well-formed frames: UDP authentication tags
//! with replay protection, and rate limits per source address and device.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetwire_proto::{DecodeError, Frame};
use lru::LruCache;
use parking_lot::{Mutex, RwLock};

use crate::config::{Config, UdpAuth};
use crate::ingest::{Reason, Transport};
use crate::replay::ReplayWindows;

/// Device keys: device id → HMAC key.
pub type Keys = HashMap<u32, Box<[u8]>>;

/// Why a keys file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file could not be read.
    #[error("cannot read keys file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not `<device id> <hex key>`.
    #[error("keys file {path}, line {line}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Reads a keys file: one `<device id> <hex key>` per line; blank lines and
/// lines starting with `#` are ignored.
pub fn load_keys(path: &Path) -> Result<Keys, KeysError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| KeysError::Io { path: path.into(), source })?;
    let mut keys = Keys::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |reason| KeysError::Syntax { path: path.into(), line: i + 1, reason };
        let mut parts = line.split_whitespace();
        let id: u32 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|id| *id != 0)
            .ok_or_else(|| syntax("expected a device id 1..=4294967295"))?;
        let key = parts
            .next()
            .and_then(|s| hex::decode(s).ok())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| syntax("expected the key as hex"))?;
        if parts.next().is_some() {
            return Err(syntax("unexpected text after the key"));
        }
        keys.insert(id, key.into_boxed_slice());
    }
    Ok(keys)
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
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
/// forgotten first, so a flood of spoofed sources cannot grow it.
#[derive(Debug)]
pub struct Limiter<K: std::hash::Hash + Eq> {
    rate: f64,
    burst: f64,
    buckets: LruCache<K, Bucket>,
}

impl<K: std::hash::Hash + Eq> Limiter<K> {
    /// `rate` per second with bursts of `burst`, for at most `cap` keys.
    pub fn new(rate: f64, burst: f64, cap: usize) -> Self {
        let cap = NonZeroUsize::new(cap.max(1)).unwrap_or(NonZeroUsize::MIN);
        Limiter { rate, burst, buckets: LruCache::new(cap) }
    }

    /// Takes one token for `key`.
    pub fn allow(&mut self, key: K, now_ms: u64) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .get_or_insert_mut(key, || Bucket { tokens: burst, last_ms: now_ms })
            .allow(now_ms, rate, burst)
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The policies of one server.
pub struct Policy {
    udp_auth: UdpAuth,
    keys_path: Option<PathBuf>,
    keys: RwLock<Arc<Keys>>,
    replay: ReplayWindows,
    sources: Option<Mutex<Limiter<IpAddr>>>,
    devices: Option<Mutex<Limiter<u32>>>,
}

impl Policy {
    /// No authentication, no limits.
    pub fn permissive() -> Self {
        Policy {
            udp_auth: UdpAuth::Off,
            keys_path: None,
            keys: RwLock::new(Arc::default()),
            replay: ReplayWindows::default(),
            sources: None,
            devices: None,
        }
    }

    /// Policies from parts (for tools and fuzzing): `udp_auth` with `keys`,
    /// rate limits per source and device (0 = none) with `burst`, and the
    /// most sources and devices the limiters track.
    pub fn new(
        udp_auth: UdpAuth,
        keys: Keys,
        (rate_source, rate_device, burst): (f64, f64, f64),
        (max_sources, max_devices): (usize, usize),
    ) -> Self {
        fn limiter<K: std::hash::Hash + Eq>(
            rate: f64,
            burst: f64,
            cap: usize,
        ) -> Option<Mutex<Limiter<K>>> {
            (rate > 0.0).then(|| Mutex::new(Limiter::new(rate, burst, cap)))
        }
        Policy {
            udp_auth,
            keys_path: None,
            keys: RwLock::new(Arc::new(keys)),
            replay: ReplayWindows::default(),
            sources: limiter(rate_source, burst, max_sources),
            devices: limiter(rate_device, burst, max_devices),
        }
    }

    /// The policies `cfg` asks for (loading the keys file).
    pub fn from_config(cfg: &Config) -> Result<Self, KeysError> {
        let keys_path = (!cfg.keys_file.as_os_str().is_empty()).then(|| cfg.keys_file.clone());
        let keys = match &keys_path {
            Some(p) => load_keys(p)?,
            None => Keys::new(),
        };
        fn limiter<K: std::hash::Hash + Eq>(
            rate: f64,
            burst: f64,
            cap: usize,
        ) -> Option<Mutex<Limiter<K>>> {
            (rate > 0.0).then(|| Mutex::new(Limiter::new(rate, burst, cap)))
        }
        Ok(Policy {
            udp_auth: cfg.udp_auth,
            keys_path,
            keys: RwLock::new(Arc::new(keys)),
            replay: ReplayWindows::default(),
            sources: limiter(cfg.rate_limit_source, cfg.rate_limit_burst, cfg.rate_limit_sources),
            devices: limiter(
                cfg.rate_limit_device,
                cfg.rate_limit_burst,
                cfg.max_devices.min(4 << 20),
            ),
        })
    }

    /// Re-reads the keys file; on error the old keys stay. Returns the
    /// number of keys loaded.
    pub fn reload_keys(&self) -> Result<usize, KeysError> {
        let Some(p) = &self.keys_path else { return Ok(0) };
        let keys = load_keys(p)?;
        let n = keys.len();
        *self.keys.write() = Arc::new(keys);
        Ok(n)
    }

    /// Number of device keys.
    pub fn key_count(&self) -> usize {
        self.keys.read().len()
    }

    /// Whether `device` has a key.
    pub fn has_key(&self, device: u32) -> bool {
        self.keys.read().contains_key(&device)
    }

    /// The anti-replay windows of the signed devices.
    pub fn replay_windows(&self) -> &ReplayWindows {
        &self.replay
    }

    /// Replaces the anti-replay windows (restored from the data dir).
    pub fn set_replay_windows(&mut self, windows: ReplayWindows) {
        self.replay = windows;
    }

    /// Sources tracked by the source limiter.
    pub fn tracked_sources(&self) -> usize {
        self.sources.as_ref().map_or(0, |l| l.lock().len())
    }

    /// Checks a decoded frame against the policies, in this order: the
    /// source's rate limit, the authentication tag (UDP), the replay window
    /// (only for frames whose tag verified; it moves only for them), the
    /// device's rate limit.
    pub fn check(
        &self,
        t: Transport,
        now_ms: u64,
        source: Option<SocketAddr>,
        frame: &Frame<'_>,
    ) -> Result<(), Reason> {
        if let (Some(l), Some(src)) = (&self.sources, source) {
            if !l.lock().allow(src.ip(), now_ms) {
                return Err(Reason::RateLimited);
            }
        }
        if t == Transport::Udp
            && self.check_auth(frame)?
            && !self.replay.accept(frame.device_id, frame.sequence)
        {
            return Err(Reason::Replay);
        }
        if let Some(l) = &self.devices {
            if !l.lock().allow(frame.device_id, now_ms) {
                return Err(Reason::RateLimited);
            }
        }
        Ok(())
    }

    /// Whether the frame may go on: `Ok(true)` when its tag verified.
    fn check_auth(&self, frame: &Frame<'_>) -> Result<bool, Reason> {
        match (self.udp_auth, frame.auth) {
            (UdpAuth::Off, _) => Ok(false),
            // "optional" means: devices without a key may send unsigned
            // frames. A device with a key must sign, or anyone could move
            // its replay window with unsigned frames.
            (UdpAuth::Optional, None) => {
                if self.keys.read().contains_key(&frame.device_id) {
                    Err(Reason::AuthRequired)
                } else {
                    Ok(false)
                }
            }
            (UdpAuth::Required, None) => Err(Reason::AuthRequired),
            (mode, Some(tag)) => {
                let keys = self.keys.read().clone();
                match keys.get(&frame.device_id) {
                    None if mode == UdpAuth::Required => Err(Reason::UnknownKey),
                    None => Ok(false),
                    Some(key) => match tag.verify(key) {
                        Ok(()) => Ok(true),
                        Err(_) => Err(Reason::Decode(DecodeError::BadAuthTag)),
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn keys_file_syntax() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(&p, "# comment\n42 00ff\n\n7 abcd # trailing\n").unwrap();
        let e = load_keys(&p).unwrap_err().to_string();
        assert!(e.contains("line 4"), "{e}");
        std::fs::write(&p, "# comment\n42 00ff\n 7   abcd\n").unwrap();
        let k = load_keys(&p).unwrap();
        assert_eq!(k.get(&42).map(|k| k.to_vec()), Some(vec![0x00, 0xff]));
        assert_eq!(k.len(), 2);
        std::fs::write(&p, "0 00\n").unwrap();
        assert!(load_keys(&p).is_err());
    }
}
