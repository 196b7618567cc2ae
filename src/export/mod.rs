//! What leaves the server besides forwarding: the HTTP API ([`http`]) and
//! the Prometheus rendering of engine state ([`render`]); every other
//! series comes from the components through the telemetry registry.

pub(crate) mod auth;
pub(crate) mod http;
pub(crate) mod pool;
pub(crate) mod render;
pub(crate) mod serve;
