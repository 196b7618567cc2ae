//! The vocabulary of the ingest path, shared by everything that counts it:
//! where a datagram came from ([`Transport`]) and why it was refused
//! ([`Reason`]). A leaf: it imports nothing of the server.

use fleetwire_proto::DecodeError;

/// Where a datagram came from (the `transport` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Transport {
    /// Plain UDP.
    Udp,
    /// QUIC DATAGRAM frames and streams.
    Quic,
}

impl Transport {
    /// Every transport, in counter order.
    pub(crate) const ALL: [Transport; 2] = [Transport::Udp, Transport::Quic];

    /// The `transport` label value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Quic => "quic",
        }
    }
}

/// Why a datagram was refused: a wire-protocol check or a server policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
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
    pub(crate) const ALL: [Reason; 20] = [
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

    /// The `reason` label value: PROTOCOL.md's label for decode errors.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Reason::Decode(e) => e.as_str(),
            Reason::AuthRequired => "auth_required",
            Reason::UnknownKey => "unknown_key",
            Reason::Replay => "replay",
            Reason::RateLimited => "rate_limited",
            Reason::IdentityMismatch => "identity_mismatch",
        }
    }

    /// Whether this reason can happen on `t`: only those get a counter, so
    /// `/metrics` shows no series that must stay 0 forever (UDP has no
    /// client certificates, QUIC frames are not tagged).
    pub(crate) const fn applies_to(self, t: Transport) -> bool {
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

    /// The reasons of `t`, in counter order.
    pub(crate) fn of(t: Transport) -> impl Iterator<Item = Reason> {
        Reason::ALL.into_iter().filter(move |r| r.applies_to(t))
    }

    /// Position of this reason's counter among the counters of `t` (0 for a
    /// reason that does not apply, which the pipeline never produces).
    pub(crate) fn index(self, t: Transport) -> usize {
        Reason::of(t).position(|r| r == self).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_every_transport_indexes_its_own() {
        let mut labels: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
        for t in Transport::ALL {
            for (i, r) in Reason::of(t).enumerate() {
                assert_eq!(r.index(t), i);
            }
        }
        assert!(!Reason::IdentityMismatch.applies_to(Transport::Udp));
        assert!(!Reason::Replay.applies_to(Transport::Quic));
    }
}
