//! The data path between the sockets and the engine, read top to bottom:
//! [`pipeline`] (count, decode, policy, engine, record sinks) uses
//! [`policy`] (tags with [`keys`] and [`replay`] windows, [`limiter`]s),
//! and everything counts in the vocabulary of [`reason`] with the handles
//! of [`counters`].

pub(crate) mod counters;
pub(crate) mod crc;
pub(crate) mod keys;
pub(crate) mod limiter;
pub(crate) mod pipeline;
pub(crate) mod policy;
pub(crate) mod reason;
pub(crate) mod registry;
pub(crate) mod replay;

pub(crate) use counters::IngestCounters;
pub use keys::KeysError;
pub(crate) use pipeline::{
    Admitted, Confirm, ConfirmCounts, Datagram, NewRecords, Pipeline, RecordSink,
};
pub use policy::UdpAuth;
pub(crate) use policy::{Policy, PolicyConfig};
pub(crate) use reason::{Reason, Transport};
pub use registry::DevicesFileError;
pub(crate) use registry::{DeviceRegistry, RegistryConfig};
