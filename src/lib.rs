//! fleetwire: real-time telemetry ingest for IoT fleets.
//!
//! See `ARCHITECTURE.md` for the map. The layers, from the wire inwards:
//! [`transport`] (UDP and QUIC sockets) → `fleetwire_proto::decode` →
//! [`engine`] (sans-IO aggregation) → [`export`] (Prometheus and HTTP).
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod certs;
pub mod config;
pub mod engine;
pub mod export;
pub mod forward;
pub mod ingest;
pub mod policy;
pub mod replay;
pub mod server;
pub mod snapshot;
pub mod transport;

/// The server clock: Unix time in milliseconds. The only clock read of the
/// ingest path; the engine gets its result as an argument.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
pub mod cli;
pub mod sim;
