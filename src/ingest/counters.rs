//! The ingest path's own counters, per transport: received, accepted,
//! refused by reason, bytes. Registered once; the hot path adds per batch
//! through cached handles, and `/api/summary` reads the same handles.

use super::reason::{Reason, Transport};
use crate::telemetry::{Counter, Registry};

/// The counters of one transport.
#[derive(Debug, Clone, Default)]
pub(crate) struct TransportCounters {
    /// Datagrams (or stream records) received, before any check.
    pub(crate) received: Counter,
    /// Passed every check and reached the engine.
    pub(crate) accepted: Counter,
    /// Bytes received.
    pub(crate) bytes: Counter,
    /// Refused, indexed by [`Reason::index`].
    pub(crate) rejected: Box<[Counter]>,
}

impl TransportCounters {
    fn register(r: &Registry, t: Transport) -> Self {
        let l = [("transport", t.as_str())];
        TransportCounters {
            received: r.counter(
                "fleetwire_datagrams_received_total",
                "Datagrams (and QUIC stream records) received, before any check.",
                &l,
            ),
            accepted: r.counter(
                "fleetwire_datagrams_accepted_total",
                "Datagrams that passed every check and reached the engine.",
                &l,
            ),
            bytes: r.counter("fleetwire_received_bytes_total", "Bytes of datagrams received.", &l),
            rejected: Reason::of(t)
                .into_iter()
                .map(|reason| {
                    r.counter(
                        "fleetwire_datagrams_rejected_total",
                        "Datagrams refused, by reason (a wire-protocol check or a server policy).",
                        &[("transport", t.as_str()), ("reason", reason.as_str())],
                    )
                })
                .collect(),
        }
    }

    /// Refused datagrams over all reasons.
    pub(crate) fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(Counter::get).sum()
    }
}

/// The counters of every transport.
#[derive(Debug, Clone, Default)]
pub(crate) struct IngestCounters {
    by_transport: [TransportCounters; Transport::ALL.len()],
}

impl IngestCounters {
    /// Registers every transport's counters with `r` (all start at 0, so
    /// rates work from the first scrape).
    pub(crate) fn register(r: &Registry) -> Self {
        IngestCounters { by_transport: Transport::ALL.map(|t| TransportCounters::register(r, t)) }
    }

    /// Counters that count nowhere visible (tests and tools).
    pub(crate) fn detached() -> Self {
        IngestCounters {
            by_transport: Transport::ALL.map(|t| TransportCounters {
                rejected: Reason::of(t).into_iter().map(|_| Counter::default()).collect(),
                ..TransportCounters::default()
            }),
        }
    }

    /// The counters of `t`.
    pub(crate) fn of(&self, t: Transport) -> &TransportCounters {
        &self.by_transport[t as usize]
    }
}
