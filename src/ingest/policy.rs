//! Server policies applied to well-formed frames: UDP authentication tags
//! with replay protection, and rate limits per source address and device.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use fleetwire_proto::{DecodeError, Frame};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::keys::{Keys, KeysError, read_keys_file};
use super::limiter::Limiter;
use super::reason::{Reason, Transport};
use super::replay::ReplayWindows;
use crate::telemetry::{Counter, Gauge, Registry};

/// How UDP frames must be authenticated (`udp_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UdpAuth {
    /// Tags are not checked.
    Off,
    /// Devices with a key must sign (verified, with replay protection);
    /// devices without a key may send unsigned frames.
    Optional,
    /// Every frame must carry a tag that verifies with its device's key.
    Required,
}

/// The policy's slice of the configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PolicyConfig {
    /// Authentication of UDP frames.
    pub(crate) udp_auth: UdpAuth,
    /// The keys file, reloaded on SIGHUP; `None` = no keys.
    pub(crate) keys_file: Option<PathBuf>,
    /// Datagrams per second from one source address; 0 = unlimited.
    pub(crate) rate_source: f64,
    /// Datagrams per second for one device id; 0 = unlimited.
    pub(crate) rate_device: f64,
    /// Burst of both limits, datagrams.
    pub(crate) burst: f64,
    /// Most source addresses the source limiter remembers.
    pub(crate) max_sources: usize,
    /// Most device ids the device limiter remembers.
    pub(crate) max_devices: usize,
}

/// Counters the policy keeps of itself.
#[derive(Debug, Clone, Default)]
struct PolicyMetrics {
    reloads_ok: Counter,
    reloads_failed: Counter,
    keys: Gauge,
}

/// The policies of one server.
pub(crate) struct Policy {
    udp_auth: UdpAuth,
    keys_path: Option<PathBuf>,
    keys: RwLock<Arc<Keys>>,
    replay: ReplayWindows,
    sources: Option<Arc<Mutex<Limiter<IpAddr>>>>,
    devices: Option<Mutex<Limiter<u32>>>,
    metrics: PolicyMetrics,
}

impl Policy {
    /// The policies `cfg` asks for, with `keys` (instead of the keys file),
    /// registering their series with `registry` when given.
    pub(crate) fn new(cfg: &PolicyConfig, keys: Keys, registry: Option<&Registry>) -> Self {
        let sources = (cfg.rate_source > 0.0).then(|| {
            Arc::new(Mutex::new(Limiter::new(cfg.rate_source, cfg.burst, cfg.max_sources)))
        });
        let devices = (cfg.rate_device > 0.0)
            .then(|| Mutex::new(Limiter::new(cfg.rate_device, cfg.burst, cfg.max_devices)));
        let metrics = match registry {
            Some(r) => {
                let src = sources.clone();
                r.gauge_fn(
                    "fleetwire_rate_limiter_sources",
                    "Source addresses tracked by the rate limiter.",
                    &[],
                    move || src.as_ref().map_or(0, |l| l.lock().len()) as f64,
                );
                let reload = |result| {
                    r.counter(
                        "fleetwire_key_reloads_total",
                        "Reloads of the device keys file, by result.",
                        &[("result", result)],
                    )
                };
                PolicyMetrics {
                    reloads_ok: reload("ok"),
                    reloads_failed: reload("failed"),
                    keys: r.gauge(
                        "fleetwire_device_keys",
                        "Devices with an authentication key.",
                        &[],
                    ),
                }
            }
            None => PolicyMetrics::default(),
        };
        metrics.keys.set(keys.len() as f64);
        Policy {
            udp_auth: cfg.udp_auth,
            keys_path: cfg.keys_file.clone(),
            keys: RwLock::new(Arc::new(keys)),
            replay: ReplayWindows::default(),
            sources,
            devices,
            metrics,
        }
    }

    /// The policies `cfg` asks for, loading the keys file. A keys file
    /// with neither a key nor a comment line is refused when signatures are
    /// checked ([`KeysError::EmptyAtStart`]: a truncated file would refuse
    /// every signed device); one with a comment line only starts without
    /// keys.
    pub(crate) fn load(cfg: &PolicyConfig, registry: &Registry) -> Result<Self, KeysError> {
        let keys = match &cfg.keys_file {
            Some(p) => {
                let f = read_keys_file(p)?;
                if f.keys.is_empty() && !f.commented && cfg.udp_auth != UdpAuth::Off {
                    return Err(KeysError::EmptyAtStart { path: p.clone() });
                }
                f.keys
            }
            None => Keys::new(),
        };
        Ok(Policy::new(cfg, keys, Some(registry)))
    }

    /// Re-reads the keys file and counts the outcome; on error the old
    /// keys stay. A file with neither a key nor a comment line is refused
    /// while keys are in use ([`KeysError::Empty`]: a truncated file would
    /// otherwise refuse every signed device); one with a comment line only
    /// removes every key. Returns the number of keys loaded.
    pub(crate) fn reload_keys(&self) -> Result<usize, KeysError> {
        let Some(p) = &self.keys_path else { return Ok(0) };
        let read = read_keys_file(p).and_then(|f| {
            if f.keys.is_empty() && !f.commented && !self.keys.read().is_empty() {
                Err(KeysError::Empty { path: p.clone() })
            } else {
                Ok(f.keys)
            }
        });
        match read {
            Ok(keys) => {
                let n = keys.len();
                *self.keys.write() = Arc::new(keys);
                self.metrics.reloads_ok.inc();
                self.metrics.keys.set(n as f64);
                Ok(n)
            }
            Err(e) => {
                self.metrics.reloads_failed.inc();
                Err(e)
            }
        }
    }

    /// Whether `device` has a key.
    pub(crate) fn has_key(&self, device: u32) -> bool {
        self.keys.read().contains_key(&device)
    }

    /// The anti-replay windows of the signed devices.
    pub(crate) fn replay_windows(&self) -> &ReplayWindows {
        &self.replay
    }

    /// Replaces the anti-replay windows (restored from the data dir).
    pub(crate) fn set_replay_windows(&mut self, windows: ReplayWindows) {
        self.replay = windows;
    }

    /// Checks a decoded frame against the policies, in this order: the
    /// source's rate limit, the authentication tag (UDP), the replay window
    /// (only for frames whose tag verified; it moves only for them), the
    /// device's rate limit.
    #[inline]
    pub(crate) fn check(
        &self,
        t: Transport,
        now_ms: u64,
        source: Option<SocketAddr>,
        frame: &Frame<'_>,
    ) -> Result<(), Reason> {
        // Nothing to check (the default): a branch per datagram, not three
        // calls.
        if self.sources.is_none() && self.devices.is_none() && self.udp_auth == UdpAuth::Off {
            return Ok(());
        }
        self.check_source(now_ms, source)?;
        if t == Transport::Udp
            && self.check_auth(frame)?
            && !self.replay.accept(frame.device_id, frame.sequence)
        {
            return Err(Reason::Replay);
        }
        self.check_device(now_ms, frame.device_id)
    }

    /// The rate limits alone, for a datagram of another protocol that its
    /// decoder attributed to `device` (those protocols carry no tags).
    pub(crate) fn check_limits(
        &self,
        now_ms: u64,
        source: Option<SocketAddr>,
        device: u32,
    ) -> Result<(), Reason> {
        self.check_source(now_ms, source)?;
        self.check_device(now_ms, device)
    }

    fn check_source(&self, now_ms: u64, source: Option<SocketAddr>) -> Result<(), Reason> {
        match (&self.sources, source) {
            (Some(l), Some(src)) if !l.lock().allow(src.ip(), now_ms) => Err(Reason::RateLimited),
            _ => Ok(()),
        }
    }

    fn check_device(&self, now_ms: u64, device: u32) -> Result<(), Reason> {
        match &self.devices {
            Some(l) if !l.lock().allow(device, now_ms) => Err(Reason::RateLimited),
            _ => Ok(()),
        }
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

    const K32: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn policy(path: &std::path::Path) -> Policy {
        let cfg = PolicyConfig {
            udp_auth: UdpAuth::Required,
            keys_file: Some(path.to_path_buf()),
            rate_source: 0.0,
            rate_device: 0.0,
            burst: 1.0,
            max_sources: 1,
            max_devices: 1,
        };
        Policy::load(&cfg, &Registry::default()).unwrap()
    }

    #[test]
    fn an_empty_keys_file_is_not_reloaded_unless_it_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(&p, format!("42 {K32}\n")).unwrap();
        let policy = policy(&p);
        assert!(policy.has_key(42));
        // Truncated (a half-written file, a failed copy): refused, the key stays.
        for empty in ["", "\n", "  \n\n"] {
            std::fs::write(&p, empty).unwrap();
            let e = policy.reload_keys().unwrap_err().to_string();
            assert!(e.contains("empty") && e.contains("# empty"), "{e}");
            assert!(policy.has_key(42));
        }
        // A file that says so on a comment line removes every key.
        std::fs::write(&p, "# empty\n").unwrap();
        assert_eq!(policy.reload_keys().unwrap(), 0);
        assert!(!policy.has_key(42));
    }

    #[test]
    fn an_empty_keys_file_at_start_is_refused_unless_it_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        let cfg = |auth| PolicyConfig {
            udp_auth: auth,
            keys_file: Some(p.clone()),
            rate_source: 0.0,
            rate_device: 0.0,
            burst: 1.0,
            max_sources: 1,
            max_devices: 1,
        };
        for empty in ["", "\n", "  \n\n"] {
            std::fs::write(&p, empty).unwrap();
            for auth in [UdpAuth::Required, UdpAuth::Optional] {
                let Err(e) = Policy::load(&cfg(auth), &Registry::default()) else {
                    panic!("an empty keys file was taken at start")
                };
                assert!(matches!(e, KeysError::EmptyAtStart { .. }), "{e}");
                assert!(e.to_string().contains("# empty"), "{e}");
            }
        }
        std::fs::write(&p, "# no devices sign yet\n").unwrap();
        let policy = Policy::load(&cfg(UdpAuth::Required), &Registry::default()).unwrap();
        assert!(!policy.has_key(42));
    }
}
