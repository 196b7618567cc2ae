//! The ingest path's own counters, per transport: received, accepted,
//! refused by reason, bytes. Registered once; the hot path adds per batch
//! through cached handles, and `/api/summary` reads the same handles.

use super::reason::{Reason, Transport};
use crate::telemetry::{Counter, Histogram, Registry};

/// Upper bounds of `fleetwire_ingest_delay_seconds`: 10 µs to 1 s.
pub(crate) const DELAY_BOUNDS: &[f64] = &[
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1,
    0.25, 0.5, 1.0,
];

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
#[derive(Debug, Clone)]
pub(crate) struct IngestCounters {
    by_transport: [TransportCounters; Transport::ALL.len()],
    /// From the kernel's receipt of a datagram to the engine having
    /// applied its frame (nanoseconds; datagrams with a kernel timestamp,
    /// UDP ingest).
    pub(crate) delay: Histogram,
}

impl IngestCounters {
    /// Registers every transport's counters with `r` (all start at 0, so
    /// rates work from the first scrape).
    pub(crate) fn register(r: &Registry) -> Self {
        IngestCounters {
            by_transport: Transport::ALL.map(|t| TransportCounters::register(r, t)),
            delay: r.histogram(
                "fleetwire_ingest_delay_seconds",
                "Time from the kernel's receipt of a UDP datagram to the engine having applied \
                 its frame, for every accepted datagram.",
                &[],
                DELAY_BOUNDS,
                1e9,
            ),
        }
    }

    /// Counters that count nowhere visible (tests and tools).
    pub(crate) fn detached() -> Self {
        IngestCounters {
            by_transport: Transport::ALL.map(|t| TransportCounters {
                rejected: Reason::of(t).into_iter().map(|_| Counter::default()).collect(),
                ..TransportCounters::default()
            }),
            delay: Histogram::detached(DELAY_BOUNDS, 1e9),
        }
    }

    /// The counters of `t`.
    pub(crate) fn of(&self, t: Transport) -> &TransportCounters {
        &self.by_transport[t as usize]
    }
}
