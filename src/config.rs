//! Server configuration: built-in defaults, then an optional TOML file,
//! then `FLEETWIRE_*` environment variables, then command-line flags (each
//! layer overrides the one before).
//!
//! Every key is at the top level, so the same name works everywhere:
//! `offline_after = "2m"` in the file, `FLEETWIRE_OFFLINE_AFTER=2m` in the
//! environment, `--offline-after 2m` on the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;
use crate::forward::ForwardConfig;
use crate::ingest::{PolicyConfig, RegistryConfig, UdpAuth};
use crate::protocols::osmand::SpeedUnit;
use crate::stream::StreamConfig;
use crate::transport::osmand::OsmandConfig;
use crate::transport::quic::{ClientAuth, QuicConfig};
use crate::transport::teltonika::{TeltonikaAck, TeltonikaConfig};
use crate::transport::udp::UdpConfig;

/// The complete server configuration. See `fleetwire config default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// UDP ingest address, or "off".
    pub udp_listen: String,
    /// QUIC ingest address, or "off".
    pub quic_listen: String,
    /// HTTP address for /metrics and the API, or "off".
    pub http_listen: String,
    /// Teltonika (Codec 8 / 8E over UDP) address, or "off".
    pub teltonika_listen: String,
    /// When Teltonika packets are acknowledged.
    pub teltonika_ack: TeltonikaAck,
    /// OsmAnd / Traccar Client HTTP address, or "off".
    pub osmand_listen: String,
    /// Unit of the OsmAnd `speed` parameter: knots, kmh, mps or mph.
    pub osmand_speed_unit: SpeedUnit,
    /// Token OsmAnd clients must send (Bearer or `token=`); empty = none.
    pub osmand_token: String,
    /// `<token> <role>` per line; when set, the API needs a token. Reloaded on SIGHUP.
    pub http_tokens_file: PathBuf,
    /// Whether /metrics needs a token too (with http_tokens_file).
    pub metrics_auth: bool,
    /// A tile URL template for the map (`https://.../{z}/{x}/{y}.png`); empty = the offline outline only.
    pub map_tiles_url: String,
    /// Most live-stream clients at once.
    pub stream_max_clients: usize,
    /// Keep-alive interval of live-stream connections.
    #[serde(with = "humantime_serde")]
    pub stream_keepalive: Duration,
    /// Messages kept for live-stream resumes (Last-Event-ID).
    pub stream_replay: usize,
    /// Oldest message kept for resumes.
    #[serde(with = "humantime_serde")]
    pub stream_replay_age: Duration,
    /// Messages a live-stream client may fall behind before it is told `dropped`.
    pub stream_client_queue: usize,
    /// Identifiers (IMEIs, phone ids) with device ids and names; empty = none.
    pub devices_file: PathBuf,
    /// Whether unknown identifiers get a device id of their own.
    pub auto_register: bool,
    /// Most auto-registered identifiers.
    pub auto_register_limit: usize,
    /// Directory for the snapshot and the development certificate.
    pub data_dir: PathBuf,
    /// UDP receive threads (SO_REUSEPORT sockets).
    pub udp_threads: usize,
    /// Requested SO_RCVBUF per UDP socket, bytes.
    pub udp_recv_buffer: usize,
    /// Datagrams per recvmmsg call.
    pub udp_batch: usize,
    /// Longest pause a UDP receive thread takes between reads under
    /// sustained load, so that a read takes many datagrams ("0s": none).
    #[serde(with = "humantime_serde")]
    pub udp_linger: Duration,
    /// Engine shards (rounded up to a power of two).
    pub engine_shards: usize,
    /// A device silent for longer is offline (see `offline_after_factor`).
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// Offline after this many of the device's recent reporting intervals of
    /// silence, when that is longer than `offline_after`.
    pub offline_after_factor: f64,
    /// The longest offline threshold a device's interval can give.
    #[serde(with = "humantime_serde")]
    pub offline_after_max: Duration,
    /// A device silent for longer loses its per-device series.
    #[serde(with = "humantime_serde")]
    pub series_ttl: Duration,
    /// Most devices with per-device series on /metrics.
    pub max_exported_devices: usize,
    /// Most devices tracked; the one silent longest is evicted first.
    pub max_devices: usize,
    /// Fixes implying a higher speed (m/s) are refused.
    pub max_speed: f64,
    /// Sample times further ahead of the server clock are refused.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Sample times older than this are refused.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Fixes with a worse horizontal accuracy (m) are refused; 0 = no limit.
    pub max_hacc: f64,
    /// Radius (m) within which the odometer ignores movement.
    pub stationary_radius: f64,
    /// Reported speed (m/s) from which a device counts as moving.
    pub moving_speed: f64,
    /// Without reported speed, stopped after the position has not changed this long.
    #[serde(with = "humantime_serde")]
    pub stop_after: Duration,
    /// Sliding window for reading statistics.
    #[serde(with = "humantime_serde")]
    pub reading_window: Duration,
    /// Most samples kept per reading and device.
    pub reading_samples: usize,
    /// Most distinct reading names per device.
    pub max_readings_per_device: usize,
    /// Most bytes all devices together may hold in reading samples and
    /// names and device info (split evenly over the engine shards).
    pub max_reading_memory: usize,
    /// How often the device state is written to the data dir; "0s" = only at shutdown.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// How often the frames applied since the last sync are appended to the
    /// journal in the data dir and synced: a crash loses at most this much
    /// accepted state; "0s" = no journal (a crash loses what came since the
    /// last snapshot).
    #[serde(with = "humantime_serde")]
    pub journal_interval: Duration,
    /// Whether to save and restore device state at all.
    pub snapshot: bool,
    /// QUIC server certificate chain (PEM); empty = a development certificate in data_dir.
    pub quic_cert: PathBuf,
    /// QUIC server private key (PEM).
    pub quic_key: PathBuf,
    /// CA certificate(s) (PEM) that device client certificates must chain to.
    pub quic_client_ca: PathBuf,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// Most concurrent QUIC connections.
    pub quic_max_connections: usize,
    /// Close QUIC connections idle for longer (devices send keep-alives to stay).
    #[serde(with = "humantime_serde")]
    pub quic_idle_timeout: Duration,
    /// QUIC datagram receive buffer per connection, bytes.
    pub quic_datagram_buffer: usize,
    /// Require address validation (a Retry round trip) before a handshake.
    pub quic_retry: bool,
    /// UDP frame authentication policy.
    pub udp_auth: UdpAuth,
    /// Device keys file (`<device id> <hex key>` per line); reloaded on SIGHUP.
    pub keys_file: PathBuf,
    /// Datagrams per second allowed from one source address; 0 = unlimited.
    pub rate_limit_source: f64,
    /// Datagrams per second allowed for one device id; 0 = unlimited.
    pub rate_limit_device: f64,
    /// Burst size of both limits, in datagrams.
    pub rate_limit_burst: f64,
    /// Most source addresses tracked by the rate limiter.
    pub rate_limit_sources: usize,
    /// Forwarding of accepted records (`[forward.nats]`).
    pub forward: ForwardConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            udp_listen: "0.0.0.0:4480".into(),
            quic_listen: "0.0.0.0:4481".into(),
            http_listen: "0.0.0.0:9480".into(),
            teltonika_listen: "0.0.0.0:5027".into(),
            teltonika_ack: TeltonikaAck::Accepted,
            osmand_listen: "0.0.0.0:5055".into(),
            osmand_speed_unit: SpeedUnit::Knots,
            osmand_token: String::new(),
            http_tokens_file: PathBuf::new(),
            metrics_auth: false,
            map_tiles_url: String::new(),
            stream_max_clients: 1000,
            stream_keepalive: Duration::from_secs(15),
            stream_replay: 10_000,
            stream_replay_age: Duration::from_secs(60),
            stream_client_queue: 16_384,
            devices_file: PathBuf::new(),
            auto_register: true,
            auto_register_limit: 100_000,
            data_dir: "fleetwire-data".into(),
            udp_threads: 1,
            udp_recv_buffer: 16 << 20,
            udp_batch: 32,
            udp_linger: Duration::from_micros(100),
            engine_shards: 256,
            offline_after: Duration::from_secs(60),
            offline_after_factor: 3.0,
            offline_after_max: Duration::from_secs(3600),
            series_ttl: Duration::from_secs(600),
            max_exported_devices: 10_000,
            max_devices: 1_000_000,
            max_speed: 100.0,
            max_future: Duration::from_secs(300),
            max_age: Duration::from_secs(7 * 86_400),
            max_hacc: 0.0,
            stationary_radius: 10.0,
            moving_speed: 1.0,
            stop_after: Duration::from_secs(30),
            reading_window: Duration::from_secs(60),
            reading_samples: 128,
            max_readings_per_device: 32,
            max_reading_memory: 128 << 20,
            snapshot_interval: Duration::from_secs(60),
            journal_interval: Duration::from_secs(1),
            snapshot: true,
            quic_cert: PathBuf::new(),
            quic_key: PathBuf::new(),
            quic_client_ca: PathBuf::new(),
            client_auth: ClientAuth::None,
            quic_max_connections: 100_000,
            quic_idle_timeout: Duration::from_secs(60),
            quic_datagram_buffer: 64 << 10,
            quic_retry: false,
            udp_auth: UdpAuth::Off,
            keys_file: PathBuf::new(),
            rate_limit_source: 0.0,
            rate_limit_device: 0.0,
            rate_limit_burst: 100.0,
            rate_limit_sources: 65_536,
            forward: ForwardConfig::default(),
        }
    }
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, an environment variable or a flag could not be read as the
    /// key's type, or names an unknown key.
    #[error("{}", describe(.0))]
    Parse(#[from] Box<figment::Error>),
    /// A value was read but is not allowed.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The config file named on the command line does not exist.
    #[error("config file {0} not found")]
    MissingFile(PathBuf),
}

/// The name of the command-line layer (see [`Flags`]).
const FLAGS: &str = "command-line flags";

/// Command-line flags as a configuration layer, named so that an error
/// points at the flag rather than at the code that merged them.
struct Flags<'a, T>(&'a T);

impl<T: Serialize> figment::Provider for Flags<'_, T> {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(FLAGS)
    }
    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::defaults(self.0).data()
    }
}

/// Figment's errors in the words of this configuration: the key as it is
/// written in the file (`offline_after`, `forward.nats.url`), and where the
/// value came from (the file, the environment variable, the flag), without
/// figment's profile prefix (`default.`) or code locations.
fn describe(e: &figment::Error) -> String {
    let all: Vec<String> = e.clone().into_iter().map(|e| describe_one(&e)).collect();
    all.join("; ")
}

fn describe_one(e: &figment::Error) -> String {
    use figment::error::Kind;
    let key = e.path.join(".");
    if let Kind::UnknownField(field, _) = &e.kind {
        // The path names the field already, or (in some cases) its table.
        let key = match e.path.last() {
            Some(last) if last == field => key,
            Some(_) => format!("{key}.{field}"),
            None => field.clone(),
        };
        return format!("unknown key `{key}`{}", origin(e, &key));
    }
    if key.is_empty() {
        return format!("{}{}", e.kind, origin(e, &key));
    }
    format!("invalid value for `{key}`{}: {}", origin(e, &key), e.kind)
}

/// " (in <file>)", " (environment variable FLEETWIRE_<KEY>)", " (flag --<key>)".
fn origin(e: &figment::Error, key: &str) -> String {
    let Some(md) = &e.metadata else { return String::new() };
    match &md.source {
        Some(figment::Source::File(p)) => format!(" (in {})", p.display()),
        _ if md.name == FLAGS && !key.is_empty() => {
            format!(" (flag --{})", key.replace(['.', '_'], "-"))
        }
        _ if md.name.contains("environment") && !key.is_empty() => format!(
            " (environment variable FLEETWIRE_{})",
            key.to_ascii_uppercase().replace('.', "__")
        ),
        _ => format!(" (from {})", md.name),
    }
}

/// A listen address setting: an address, or disabled.
pub(crate) fn listen_addr(
    key: &'static str,
    value: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    match value.trim() {
        "" | "off" | "none" => Ok(None),
        v => v.parse().map(Some).map_err(|e| ConfigError::Invalid {
            key,
            reason: format!("{v:?} is not an address like 0.0.0.0:4480 or [::]:4480 ({e})"),
        }),
    }
}

impl Config {
    /// Layers defaults, `file` (if any), the environment and `overrides`
    /// (command-line flags, already as a key/value map) and checks the result.
    pub fn load(file: Option<&Path>, overrides: &impl Serialize) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::MissingFile(f.to_path_buf()));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig
            .merge(
                Env::prefixed("FLEETWIRE_")
                    .ignore(&["config", "auth_key", "state_dir", "tail_server"])
                    .split("__"),
            )
            .merge(Flags(overrides));
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let inv = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.into() });
        listen_addr("udp_listen", &self.udp_listen)?;
        listen_addr("quic_listen", &self.quic_listen)?;
        listen_addr("http_listen", &self.http_listen)?;
        listen_addr("teltonika_listen", &self.teltonika_listen)?;
        listen_addr("osmand_listen", &self.osmand_listen)?;
        if !(self.offline_after_factor.is_finite()
            && (1.0..=100.0).contains(&self.offline_after_factor))
        {
            return inv("offline_after_factor", "must be 1 to 100");
        }
        if self.offline_after_max < self.offline_after {
            return inv("offline_after_max", "must be at least offline_after");
        }
        self.validate_http()?;
        self.validate_sizes()?;
        if self.teltonika_ack == TeltonikaAck::Published && !self.forward.nats.enabled() {
            return inv(
                "teltonika_ack",
                "\"published\" needs forwarding to NATS (forward.nats.url)",
            );
        }
        if self.udp_threads == 0 || self.udp_threads > 64 {
            return inv("udp_threads", "must be 1 to 64");
        }
        if self.udp_batch == 0 || self.udp_batch > 1024 {
            return inv("udp_batch", "must be 1 to 1024");
        }
        if self.udp_linger > Duration::from_millis(10) {
            return inv("udp_linger", "must be at most 10ms");
        }
        if self.engine_shards == 0 || self.engine_shards > 1024 {
            return inv("engine_shards", "must be 1 to 1024");
        }
        if self.offline_after.is_zero() {
            return inv("offline_after", "must be longer than 0s");
        }
        if self.series_ttl.is_zero() {
            return inv("series_ttl", "must be longer than 0s");
        }
        if !(self.max_speed.is_finite() && self.max_speed > 0.0) {
            return inv("max_speed", "must be a positive number of m/s");
        }
        if !(self.max_hacc.is_finite() && (0.0..=655.35).contains(&self.max_hacc)) {
            return inv("max_hacc", "must be 0 (no limit) to 655.35 m");
        }
        if !(self.stationary_radius.is_finite() && self.stationary_radius >= 0.0) {
            return inv("stationary_radius", "must be 0 or more meters");
        }
        if !(self.moving_speed.is_finite() && self.moving_speed >= 0.0) {
            return inv("moving_speed", "must be 0 or more m/s");
        }
        if self.reading_window.is_zero() {
            return inv("reading_window", "must be longer than 0s");
        }
        if self.reading_samples == 0 || self.reading_samples > 65_536 {
            return inv("reading_samples", "must be 1 to 65536");
        }
        if self.max_readings_per_device > 1024 {
            return inv("max_readings_per_device", "must be at most 1024");
        }
        if self.client_auth != ClientAuth::None && self.quic_client_ca.as_os_str().is_empty() {
            return inv("quic_client_ca", "is required when client_auth is optional or required");
        }
        if self.quic_cert.as_os_str().is_empty() != self.quic_key.as_os_str().is_empty() {
            return inv("quic_key", "quic_cert and quic_key go together");
        }
        if self.udp_auth != UdpAuth::Off && self.keys_file.as_os_str().is_empty() {
            return inv("keys_file", "is required when udp_auth is optional or required");
        }
        for (key, v) in [
            ("rate_limit_source", self.rate_limit_source),
            ("rate_limit_device", self.rate_limit_device),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return inv(key, "must be 0 (unlimited) or a positive rate");
            }
        }
        if !(self.rate_limit_burst.is_finite() && self.rate_limit_burst >= 1.0) {
            return inv("rate_limit_burst", "must be at least 1");
        }
        if let Err((key, reason)) = self.forward.nats.validate() {
            return inv(key, reason);
        }
        Ok(())
    }

    /// Every size and count against a sane maximum: what is allocated
    /// grows with use, but a bound far beyond any machine is a mistake
    /// (or a typo) better said at start than found out later.
    fn validate_sizes(&self) -> Result<(), ConfigError> {
        const GIB: usize = 1 << 30;
        let sizes: [(&'static str, usize, usize, usize); 8] = [
            ("max_devices", self.max_devices, 1, 100_000_000),
            ("max_exported_devices", self.max_exported_devices, 0, 1_000_000),
            ("auto_register_limit", self.auto_register_limit, 0, 10_000_000),
            ("max_reading_memory", self.max_reading_memory, 0, 64 * GIB),
            ("udp_recv_buffer", self.udp_recv_buffer, 0, GIB),
            ("quic_max_connections", self.quic_max_connections, 1, 1_000_000),
            ("quic_datagram_buffer", self.quic_datagram_buffer, 0, 16 << 20),
            ("rate_limit_sources", self.rate_limit_sources, 1, 16 << 20),
        ];
        for (key, v, min, max) in sizes {
            if !(min..=max).contains(&v) {
                let reason = format!("must be {min} to {max}");
                return Err(ConfigError::Invalid { key, reason });
            }
        }
        Ok(())
    }

    /// The HTTP, stream and map settings.
    fn validate_http(&self) -> Result<(), ConfigError> {
        let inv = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.into() });
        if self.stream_max_clients > 100_000 {
            return inv("stream_max_clients", "must be at most 100000");
        }
        if self.stream_keepalive < Duration::from_secs(1)
            || self.stream_keepalive > Duration::from_secs(3600)
        {
            return inv("stream_keepalive", "must be 1s to 1h");
        }
        if self.stream_replay > 1_000_000 {
            return inv("stream_replay", "must be at most 1000000");
        }
        if self.stream_client_queue < 16 || self.stream_client_queue > 65_536 {
            return inv("stream_client_queue", "must be 16 to 65536");
        }
        if self.metrics_auth && self.http_tokens_file.as_os_str().is_empty() {
            return inv("metrics_auth", "needs http_tokens_file");
        }
        Ok(())
    }

    /// Shards actually used: `engine_shards` rounded up to a power of two,
    /// but never more than `max_devices` (so that every shard has a share
    /// of at least one device).
    pub(crate) fn effective_shards(&self) -> usize {
        let mut n = self.engine_shards.clamp(1, 1024).next_power_of_two();
        while n > 1 && n > self.max_devices {
            n /= 2;
        }
        n
    }

    /// The engine's slice.
    pub(crate) fn engine(&self) -> EngineConfig {
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let shards = self.effective_shards();
        EngineConfig {
            offline_after_ms: ms(self.offline_after),
            offline_after_factor: self.offline_after_factor,
            offline_after_max_ms: ms(self.offline_after_max),
            series_ttl_ms: ms(self.series_ttl),
            max_exported_devices: self.max_exported_devices,
            max_devices: self.max_devices,
            max_devices_per_shard: (2 * self.max_devices / shards).clamp(1, self.max_devices),
            max_speed_m_s: self.max_speed,
            relocate_after: 3,
            max_future_ms: ms(self.max_future),
            max_age_ms: ms(self.max_age),
            max_hacc_cm: (self.max_hacc * 100.0).round() as u16,
            stationary_radius_m: self.stationary_radius,
            moving_speed_m_s: self.moving_speed,
            stop_after_ms: ms(self.stop_after),
            reading_window_ms: ms(self.reading_window),
            reading_samples: self.reading_samples,
            max_readings_per_device: self.max_readings_per_device,
            max_heap_per_shard: self.max_reading_memory / shards,
        }
    }
    /// The policy's slice.
    pub(crate) fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            udp_auth: self.udp_auth,
            keys_file: (!self.keys_file.as_os_str().is_empty()).then(|| self.keys_file.clone()),
            rate_source: self.rate_limit_source,
            rate_device: self.rate_limit_device,
            burst: self.rate_limit_burst,
            max_sources: self.rate_limit_sources,
            // The device limiter remembers as many devices as are tracked,
            // up to 4 Mi.
            max_devices: self.max_devices.min(4 << 20),
        }
    }

    /// The device registry's slice.
    pub(crate) fn registry(&self) -> RegistryConfig {
        RegistryConfig {
            devices_file: (!self.devices_file.as_os_str().is_empty())
                .then(|| self.devices_file.clone()),
            auto_register: self.auto_register,
            limit: self.auto_register_limit,
        }
    }

    /// The live stream's slice.
    pub(crate) fn stream(&self) -> StreamConfig {
        StreamConfig {
            max_clients: self.stream_max_clients,
            keepalive: self.stream_keepalive,
            replay: self.stream_replay,
            replay_age: self.stream_replay_age,
            client_queue: self.stream_client_queue,
        }
    }

    /// The Teltonika transport's slice.
    pub(crate) fn teltonika(&self) -> TeltonikaConfig {
        TeltonikaConfig { batch: self.udp_batch, ack: self.teltonika_ack }
    }

    /// The OsmAnd transport's slice.
    pub(crate) fn osmand(&self) -> OsmandConfig {
        OsmandConfig { speed_unit: self.osmand_speed_unit, token: self.osmand_token.clone() }
    }

    /// The UDP transport's slice.
    pub(crate) fn udp(&self) -> UdpConfig {
        UdpConfig {
            threads: self.udp_threads,
            recv_buffer: self.udp_recv_buffer,
            batch: self.udp_batch,
            linger: self.udp_linger,
        }
    }

    /// The QUIC transport's slice.
    pub(crate) fn quic(&self) -> QuicConfig {
        QuicConfig {
            cert: (!self.quic_cert.as_os_str().is_empty())
                .then(|| (self.quic_cert.clone(), self.quic_key.clone())),
            data_dir: self.data_dir.clone(),
            client_auth: self.client_auth,
            client_ca: self.quic_client_ca.clone(),
            max_connections: self.quic_max_connections,
            idle_timeout: self.quic_idle_timeout,
            datagram_buffer: self.quic_datagram_buffer,
            retry: self.quic_retry,
        }
    }
}

/// The commented default configuration printed by `fleetwire config default`.
pub const DEFAULT_TOML: &str = include_str!("default-config.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_defaults_are_the_defaults() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).expect("default config parses");
        assert_eq!(parsed, Config::default());
        // Every key is written out (uncommented) in the template.
        let table: toml::Table = toml::from_str(DEFAULT_TOML).unwrap();
        let json = serde_json::to_value(Config::default()).unwrap();
        for key in json.as_object().unwrap().keys() {
            assert!(table.contains_key(key), "{key} missing from default-config.toml");
        }
        let nats = table["forward"]["nats"].as_table().unwrap();
        for key in json["forward"]["nats"].as_object().unwrap().keys() {
            assert!(nats.contains_key(key), "forward.nats.{key} missing from default-config.toml");
        }
    }

    #[test]
    fn the_engine_defaults_are_the_configuration_defaults() {
        let (a, b) = (EngineConfig::default(), Config::default().engine());
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn layers_and_errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("f.toml", "offline_after = \"2m\"\nmax_devices = 5\n")?;
            jail.set_env("FLEETWIRE_MAX_DEVICES", "7");
            let flags = serde_json::json!({"udp_listen": "127.0.0.1:1"});
            let c = Config::load(Some(Path::new("f.toml")), &flags).unwrap();
            assert_eq!(c.offline_after, Duration::from_secs(120));
            assert_eq!(c.max_devices, 7);
            assert_eq!(c.udp_listen, "127.0.0.1:1");

            jail.set_env("FLEETWIRE_MAX_DEVICES", "many");
            let e = Config::load(None, &serde_json::json!({})).unwrap_err().to_string();
            assert!(e.to_lowercase().contains("max_devices"), "{e}");

            jail.set_env("FLEETWIRE_MAX_DEVICES", "7");
            jail.create_file("bad.toml", "ofline_after = \"2m\"\n")?;
            let e = Config::load(Some(Path::new("bad.toml")), &serde_json::json!({}))
                .unwrap_err()
                .to_string();
            assert!(e.contains("ofline_after"), "{e}");

            let e = Config::load(None, &serde_json::json!({"udp_listen": "nope"}))
                .unwrap_err()
                .to_string();
            assert!(e.contains("udp_listen"), "{e}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn sizes_and_urls_out_of_reason_are_refused_naming_the_key() {
        use serde_json::json;
        let nats = |extra: serde_json::Value| {
            let mut n = json!({"url": "nats://127.0.0.1:4222"});
            n.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            json!({"forward": {"nats": n}})
        };
        let cases = [
            (json!({"rate_limit_sources": 1_000_000_000_000_000u64}), "rate_limit_sources"),
            (json!({"rate_limit_sources": 0}), "rate_limit_sources"),
            (json!({"max_devices": 1_000_000_000_000_000u64}), "max_devices"),
            (json!({"max_exported_devices": 1_000_000_000_000u64}), "max_exported_devices"),
            (json!({"auto_register_limit": 1_000_000_000_000u64}), "auto_register_limit"),
            (json!({"udp_recv_buffer": 1_000_000_000_000u64}), "udp_recv_buffer"),
            (json!({"udp_linger": "11ms"}), "udp_linger"),
            (json!({"max_reading_memory": 1_000_000_000_000_000u64}), "max_reading_memory"),
            (json!({"quic_max_connections": 1_000_000_000_000u64}), "quic_max_connections"),
            (json!({"quic_datagram_buffer": 1_000_000_000_000u64}), "quic_datagram_buffer"),
            (nats(json!({"buffer": 1_000_000_000_000u64})), "forward.nats.buffer"),
            (nats(json!({"max_bytes": -1})), "forward.nats.max_bytes"),
            (nats(json!({"max_messages": -1})), "forward.nats.max_messages"),
            (json!({"forward": {"nats": {"url": ",,,"}}}), "forward.nats.url"),
            (json!({"forward": {"nats": {"url": "true"}}}), "forward.nats.url"),
            (json!({"forward": {"nats": {"url": "nats://"}}}), "forward.nats.url"),
            (
                json!({"forward": {"nats": {"url": "nats://a:4222,,nats://b:4222"}}}),
                "forward.nats.url",
            ),
        ];
        figment::Jail::expect_with(|_| {
            for (flags, key) in &cases {
                let e = Config::load(None, flags).map(|_| ()).unwrap_err().to_string();
                assert!(e.contains(key), "{flags} does not name {key}: {e}");
            }
            // What is fine stays fine.
            let ok = json!({"forward": {"nats": {"url": "nats://a:4222, tls://b:4222,nats://[::1]"}},
                "max_devices": 10_000_000, "rate_limit_sources": 1_000_000});
            Config::load(None, &ok).map_err(|e| e.to_string()).unwrap();
            Ok(())
        });
    }
}
