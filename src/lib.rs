//! fleetwire: real-time telemetry ingest for IoT fleets.
//!
//! See `ARCHITECTURE.md` for the map. The data path, top to bottom:
//! `transport` (UDP and QUIC sockets) → `ingest` (decode with
//! `fleetwire_proto`, policy) → `engine` (sans-IO aggregation) → `export`
//! (Prometheus, HTTP) and `forward` (NATS). Composition happens only in
//! [`server`] and `cli`. The public API is what the binary, the integration
//! tests and the fuzz crate need: [`server::run`] with [`config::Config`]
//! and [`server::Listeners`].
#![warn(missing_docs, unreachable_pub)]
#![deny(unsafe_code)]

pub(crate) mod certs;
pub(crate) mod clock;
pub mod config;
pub(crate) mod engine;
pub(crate) mod export;
pub(crate) mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod ingest;
pub(crate) mod journal;
pub(crate) mod protocols;
pub mod server;
pub mod sim;
pub(crate) mod snapshot;
pub(crate) mod store;
pub(crate) mod stream;
pub(crate) mod telemetry;
pub(crate) mod transport;
pub(crate) mod views;

pub(crate) mod cli;

pub use cli::{main, serve_config};
pub use export::auth::TokensError;
pub use forward::{ForwardConfig, NatsConfig};
pub use ingest::{DevicesFileError, KeysError, UdpAuth};
pub use protocols::osmand::SpeedUnit;
pub use store::StoreError;
pub use transport::quic::{ClientAuth, StartError as QuicStartError};
pub use transport::teltonika::TeltonikaAck;
