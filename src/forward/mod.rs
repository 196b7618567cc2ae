//! Forwarding accepted records to NATS JetStream.
//!
//! Every record the engine accepts (a batch counts each sample; duplicates
//! and replays are not records) is encoded as a standalone wire-protocol
//! frame (PROTOCOL.md: the same bytes a device would send for that one
//! record, sample time as timestamp) and published to
//! `<subject_prefix>.<device id>.<kind>` in a JetStream stream, with headers
//! `Nats-Msg-Id` (JetStream de-duplicates retries), `Fleetwire-Received-Ms`
//! and `Fleetwire-Transport`.
//!
//! The ingest path never waits for NATS: records go into a bounded buffer
//! (`buffer` records). When it is full the **oldest** record is dropped and
//! counted (`fleetwire_forward_dropped_total`). A publisher task drains the
//! buffer in batches with asynchronous acknowledgements; a record whose
//! publish fails or is not acknowledged goes back and is retried after a
//! backoff (100 ms doubling to 5 s), so a NATS outage costs at most what
//! overflows the buffer, and every such loss is counted. A record once
//! handed to NATS is never dropped (it may be in the stream already: a
//! frozen server stores it when it runs again); it is retried first until
//! acknowledged, so the stream holds exactly the acknowledged records, and
//! acknowledged + dropped = enqueued (+ `fleetwire_forward_unconfirmed_total`,
//! what shutdown cut off unacknowledged). `fleetwire_forward_failing` says
//! when publishing fails; a warning says so at most every 10 s.

//!
//! [`config`] holds the settings, [`buffer`] the bounded queue (the
//! pipeline's [`RecordSink`](crate::ingest::RecordSink)), [`publisher`] the
//! task that drains it.

pub(crate) mod buffer;
pub(crate) mod config;
pub(crate) mod publisher;

pub(crate) use buffer::Forwarder;
pub use config::{ForwardConfig, NatsConfig};
