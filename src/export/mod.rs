//! What leaves the server: Prometheus metrics and the HTTP API.

pub mod http;
pub mod metrics;
pub mod render;
