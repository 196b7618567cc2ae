//! The forwarder's slice of the configuration: `[forward.nats]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[forward.nats]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated; empty = forwarding off.
    pub url: String,
    /// User name (with `password`).
    pub user: String,
    /// Password.
    pub password: String,
    /// Token authentication.
    pub token: String,
    /// A `.creds` file (JWT + NKey).
    pub creds_file: std::path::PathBuf,
    /// Subjects are `<subject_prefix>.<device>.<kind>`.
    pub subject_prefix: String,
    /// JetStream stream, created if absent with subjects `<subject_prefix>.>`.
    pub stream: String,
    /// Retention: oldest messages are removed after this age ("0s" = no limit).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Retention: most bytes in the stream (0 = no limit).
    pub max_bytes: i64,
    /// Retention: most messages in the stream (0 = no limit).
    pub max_messages: i64,
    /// "file" or "memory".
    pub storage: String,
    /// Stream replicas (in a JetStream cluster).
    pub replicas: usize,
    /// JetStream de-duplication window for retried publishes.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Most records waiting to be published; beyond, the oldest is dropped.
    pub buffer: usize,
    /// Most publishes in flight (awaiting acknowledgement) at once.
    pub batch: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: String::new(),
            user: String::new(),
            password: String::new(),
            token: String::new(),
            creds_file: std::path::PathBuf::new(),
            subject_prefix: "fleetwire".into(),
            stream: "FLEETWIRE".into(),
            max_age: Duration::from_secs(7 * 86_400),
            max_bytes: 0,
            max_messages: 0,
            storage: "file".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            buffer: 100_000,
            batch: 256,
        }
    }
}

/// `[forward]` configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// NATS JetStream.
    pub nats: NatsConfig,
}

/// Most records the forwarding buffer may be set to hold.
const MAX_BUFFER: usize = 10_000_000;

impl NatsConfig {
    /// The servers of `url`: each comma-separated entry must name its
    /// scheme and a host. (async-nats itself takes `true` for the host
    /// `true` and an empty entry for a server, and retries them forever.)
    pub(crate) fn server_addrs(&self) -> Result<Vec<async_nats::ServerAddr>, String> {
        self.url
            .split(',')
            .map(|u| {
                let u = u.trim();
                if !u.contains("://") {
                    return Err(format!("{u:?} has no scheme (nats://, tls://, ws://, wss://)"));
                }
                let addr: async_nats::ServerAddr = u.parse().map_err(|e| format!("{u:?}: {e}"))?;
                if addr.host().is_empty() {
                    return Err(format!("{u:?} has no host"));
                }
                Ok(addr)
            })
            .collect()
    }

    /// Whether forwarding is on.
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// Checks values; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !self.enabled() {
            return Ok(());
        }
        let ok_token = |s: &str| {
            !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !ok_token(&self.subject_prefix) {
            return Err((
                "forward.nats.subject_prefix",
                "must be a single subject token ([A-Za-z0-9_-]+)",
            ));
        }
        if !ok_token(&self.stream) {
            return Err(("forward.nats.stream", "must be a stream name ([A-Za-z0-9_-]+)"));
        }
        if !matches!(self.storage.as_str(), "file" | "memory") {
            return Err(("forward.nats.storage", "must be \"file\" or \"memory\""));
        }
        if self.buffer == 0 || self.buffer > MAX_BUFFER {
            return Err(("forward.nats.buffer", "must be 1 to 10000000"));
        }
        if self.max_bytes < 0 {
            return Err(("forward.nats.max_bytes", "must be 0 (no limit) or more"));
        }
        if self.max_messages < 0 {
            return Err(("forward.nats.max_messages", "must be 0 (no limit) or more"));
        }
        if self.batch == 0 || self.batch > 65_536 {
            return Err(("forward.nats.batch", "must be 1 to 65536"));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(("forward.nats.replicas", "must be 1 to 5"));
        }
        if self.server_addrs().is_err() {
            return Err((
                "forward.nats.url",
                "must be one or more comma-separated NATS URLs like nats://127.0.0.1:4222 \
                 (scheme nats, tls, ws or wss, and a host)",
            ));
        }
        if !self.creds_file.as_os_str().is_empty() && !self.creds_file.is_file() {
            return Err(("forward.nats.creds_file", "is not a readable file"));
        }
        Ok(())
    }
}
