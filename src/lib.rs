//! fleetwire: real-time telemetry ingest for IoT fleets.
//!
//! See `ARCHITECTURE.md` for the map. The layers, from the wire inwards:
//! [`transport`] (UDP and QUIC sockets) → `fleetwire_proto::decode` →
//! [`engine`] (sans-IO aggregation) → [`export`] (Prometheus and HTTP).
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod engine;
