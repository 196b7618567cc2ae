//! The path every datagram takes, whatever its transport: count, decode,
//! apply the server's policies, hand accepted frames to the engine in a
//! batch, and count the outcome with cached metric handles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrayvec::ArrayVec;
use fleetwire_proto::{DecodeError, decode};

use crate::engine::{Accepted, Engine};
use crate::export::metrics::Metrics;
use crate::policy::Policy;

/// Where a datagram came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain UDP.
    Udp,
    /// QUIC DATAGRAM frames and streams.
    Quic,
}

impl Transport {
    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Quic => "quic",
        }
    }
}

/// Why a datagram was refused: a wire-protocol check or a server policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Refused by `fleetwire_proto::decode` (or tag verification).
    Decode(DecodeError),
    /// A tag is required and the frame has none.
    AuthRequired,
    /// A tag is required and there is no key for the device.
    UnknownKey,
    /// The sequence number was already accepted or is older than the window.
    Replay,
    /// The source or the device is over its rate limit.
    RateLimited,
    /// The frame's device id is not the one of the client certificate.
    IdentityMismatch,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 20] = [
        Reason::Decode(DecodeError::TooShort),
        Reason::Decode(DecodeError::TooLong),
        Reason::Decode(DecodeError::BadMagic),
        Reason::Decode(DecodeError::UnsupportedVersion),
        Reason::Decode(DecodeError::BadChecksum),
        Reason::Decode(DecodeError::UnknownFlags),
        Reason::Decode(DecodeError::UnknownKind),
        Reason::Decode(DecodeError::BadDeviceId),
        Reason::Decode(DecodeError::MalformedPayload),
        Reason::Decode(DecodeError::TrailingBytes),
        Reason::Decode(DecodeError::OutOfRange),
        Reason::Decode(DecodeError::TooManyItems),
        Reason::Decode(DecodeError::BadName),
        Reason::Decode(DecodeError::BadBatch),
        Reason::Decode(DecodeError::BadAuthTag),
        Reason::AuthRequired,
        Reason::UnknownKey,
        Reason::Replay,
        Reason::RateLimited,
        Reason::IdentityMismatch,
    ];

    /// The `reason` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Decode(e) => e.as_str(),
            Reason::AuthRequired => "auth_required",
            Reason::UnknownKey => "unknown_key",
            Reason::Replay => "replay",
            Reason::RateLimited => "rate_limited",
            Reason::IdentityMismatch => "identity_mismatch",
        }
    }

    /// Whether this reason can happen on `t` (only those get a counter).
    pub const fn applies_to(self, t: Transport) -> bool {
        !matches!(
            (self, t),
            (Reason::IdentityMismatch, Transport::Udp)
                | (
                    Reason::AuthRequired
                        | Reason::UnknownKey
                        | Reason::Replay
                        | Reason::Decode(DecodeError::BadAuthTag),
                    Transport::Quic,
                )
        )
    }

    /// Position of this reason's counter among the counters of `t`.
    pub fn index(self, t: Transport) -> usize {
        Reason::ALL.iter().filter(|r| r.applies_to(t)).position(|r| *r == self).unwrap_or(0)
    }
}

/// One received datagram (or QUIC stream record).
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// Its bytes (possibly cut short, see `truncated`).
    pub bytes: &'a [u8],
    /// The kernel cut it to fit the receive buffer: it was longer than any frame.
    pub truncated: bool,
    /// Source address, when known.
    pub source: Option<SocketAddr>,
    /// Device id proven by a QUIC client certificate.
    pub identity: Option<u32>,
}

/// Outcome counts of one [`Pipeline::handle`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Accepted.
    pub accepted: u64,
    /// Refused.
    pub rejected: u64,
}

/// The shared ingest path.
pub struct Pipeline {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    policy: Policy,
    forward: Option<Arc<crate::forward::Forwarder>>,
    last_debug_ms: AtomicU64,
}

const CHUNK: usize = 64;

impl Pipeline {
    /// A pipeline feeding `engine`, counting into `metrics`.
    pub fn new(engine: Arc<Engine>, metrics: Arc<Metrics>, policy: Policy) -> Self {
        Pipeline { engine, metrics, policy, forward: None, last_debug_ms: AtomicU64::new(0) }
    }

    /// Also queues every accepted record for `forward`.
    pub fn with_forwarder(mut self, forward: Arc<crate::forward::Forwarder>) -> Self {
        self.forward = Some(forward);
        self
    }

    /// The forwarder, if records are forwarded.
    pub fn forwarder(&self) -> Option<&Arc<crate::forward::Forwarder>> {
        self.forward.as_ref()
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The policies (keys, rate limits).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// At most one debug line per second about refused datagrams.
    fn debug_refusal(&self, now_ms: u64, t: Transport, reason: Reason, d: &Datagram<'_>) {
        let last = self.last_debug_ms.load(Ordering::Relaxed);
        if now_ms >= last + 1000
            && self
                .last_debug_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::debug!(
                transport = t.as_str(),
                reason = reason.as_str(),
                source = ?d.source,
                len = d.bytes.len(),
                "datagram refused (at most one such line per second)"
            );
        }
    }

    /// Processes datagrams that arrived at `now_ms` on transport `t`.
    pub fn handle(&self, t: Transport, now_ms: u64, datagrams: &[Datagram<'_>]) -> BatchOutcome {
        let counters = self.metrics.transport(t);
        let mut out = BatchOutcome::default();
        let mut rejected = [0u64; Reason::ALL.len()];
        let mut bytes = 0u64;
        for chunk in datagrams.chunks(CHUNK) {
            let mut batch: ArrayVec<Accepted<'_>, CHUNK> = ArrayVec::new();
            for d in chunk {
                bytes += d.bytes.len() as u64;
                match self.check(t, now_ms, d) {
                    Ok(a) => batch.push(a),
                    Err(reason) => {
                        rejected[reason.index(t)] += 1;
                        out.rejected += 1;
                        self.debug_refusal(now_ms, t, reason, d);
                    }
                }
            }
            let done = self.engine.ingest(now_ms, &batch);
            if let Some(fw) = &self.forward {
                for (i, a) in batch.iter().enumerate() {
                    if done.applied & (1 << i) != 0 {
                        fw.push_frame(&a.frame, now_ms, t);
                    }
                }
            }
            out.accepted += batch.len() as u64;
        }
        let totals = &counters.totals;
        totals.received.fetch_add(datagrams.len() as u64, Ordering::Relaxed);
        totals.accepted.fetch_add(out.accepted, Ordering::Relaxed);
        totals.rejected.fetch_add(out.rejected, Ordering::Relaxed);
        counters.received.increment(datagrams.len() as u64);
        counters.bytes.increment(bytes);
        counters.accepted.increment(out.accepted);
        for (c, n) in counters.rejected.iter().zip(rejected) {
            if n > 0 {
                c.increment(n);
            }
        }
        out
    }

    fn check<'a>(
        &self,
        t: Transport,
        now_ms: u64,
        d: &Datagram<'a>,
    ) -> Result<Accepted<'a>, Reason> {
        if d.truncated {
            return Err(Reason::Decode(DecodeError::TooLong));
        }
        let frame = decode(d.bytes).map_err(Reason::Decode)?;
        if let Some(id) = d.identity {
            if frame.device_id != id {
                return Err(Reason::IdentityMismatch);
            }
        }
        self.policy.check(t, now_ms, d.source, &frame)?;
        Ok(Accepted { frame, bytes: d.bytes.len() })
    }
}
