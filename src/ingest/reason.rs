//! The vocabulary of the ingest path, shared by everything that counts it:
//! where a datagram came from ([`Transport`]) and why it was refused
//! ([`Reason`]). A leaf: it imports nothing of the server.

use arrayvec::ArrayVec;
use fleetwire_proto::DecodeError;

use crate::protocols::osmand::OsmandError;
use crate::protocols::teltonika::TeltonikaError;

/// Where a datagram came from (the `transport` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Transport {
    /// Plain UDP in fleetwire's wire format.
    Udp = 0,
    /// QUIC DATAGRAM frames and streams.
    Quic = 1,
    /// Teltonika Codec 8 / 8 Extended over UDP (commercial trackers).
    Teltonika = 2,
    /// The OsmAnd / Traccar Client HTTP protocol (phones).
    Osmand = 3,
}

impl Transport {
    /// Every transport, in counter order.
    pub(crate) const ALL: [Transport; 4] =
        [Transport::Udp, Transport::Quic, Transport::Teltonika, Transport::Osmand];

    /// The `transport` label value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Quic => "quic",
            Transport::Teltonika => "teltonika",
            Transport::Osmand => "osmand",
        }
    }
}

/// Most refusal reasons one transport has.
pub(crate) const MAX_REASONS: usize = 24;

/// Why a datagram (or request) was refused: a wire-protocol check or a
/// server policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    /// Refused by `fleetwire_proto::decode` (or tag verification).
    Decode(DecodeError),
    /// Refused by the Teltonika decoder.
    Teltonika(TeltonikaError),
    /// Refused by the OsmAnd decoder: its label.
    Osmand(&'static str),
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
    /// A tracker or phone whose identifier is not registered, and
    /// `auto_register` is off.
    UnknownDevice,
    /// A new identifier, and the registry holds `auto_register_limit` of them.
    RegistryFull,
    /// The OsmAnd request lacks the `osmand_token`, or carries another.
    BadToken,
}

/// The decode errors of fleetwire's wire format, in counter order.
const DECODE: [DecodeError; 15] = [
    DecodeError::TooShort,
    DecodeError::TooLong,
    DecodeError::BadMagic,
    DecodeError::UnsupportedVersion,
    DecodeError::BadChecksum,
    DecodeError::UnknownFlags,
    DecodeError::UnknownKind,
    DecodeError::BadDeviceId,
    DecodeError::MalformedPayload,
    DecodeError::TrailingBytes,
    DecodeError::OutOfRange,
    DecodeError::TooManyItems,
    DecodeError::BadName,
    DecodeError::BadBatch,
    DecodeError::BadAuthTag,
];

impl Reason {
    /// The `reason` label value: PROTOCOL.md's label for decode errors, the
    /// decoder's label for the other protocols.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Reason::Decode(e) => e.as_str(),
            Reason::Teltonika(e) => e.as_str(),
            Reason::Osmand(label) => label,
            Reason::AuthRequired => "auth_required",
            Reason::UnknownKey => "unknown_key",
            Reason::Replay => "replay",
            Reason::RateLimited => "rate_limited",
            Reason::IdentityMismatch => "identity_mismatch",
            Reason::UnknownDevice => "unknown_device",
            Reason::RegistryFull => "registry_full",
            Reason::BadToken => "bad_token",
        }
    }

    /// The reasons that can happen on `t`, in counter order: only those get
    /// a counter, so `/metrics` shows no series that must stay 0 forever
    /// (UDP has no client certificates, QUIC frames are not tagged, ...).
    pub(crate) fn of(t: Transport) -> ArrayVec<Reason, MAX_REASONS> {
        let mut v = ArrayVec::new();
        match t {
            Transport::Udp | Transport::Quic => {
                let tagged = t == Transport::Udp;
                v.extend(
                    DECODE
                        .into_iter()
                        .filter(|e| tagged || *e != DecodeError::BadAuthTag)
                        .map(Reason::Decode),
                );
                if tagged {
                    v.extend([Reason::AuthRequired, Reason::UnknownKey, Reason::Replay]);
                }
                v.push(Reason::RateLimited);
                if !tagged {
                    v.push(Reason::IdentityMismatch);
                }
            }
            Transport::Teltonika => {
                v.extend(TeltonikaError::ALL.into_iter().map(Reason::Teltonika));
                v.extend([Reason::UnknownDevice, Reason::RegistryFull, Reason::RateLimited]);
            }
            Transport::Osmand => {
                v.extend(OsmandError::LABELS.into_iter().map(Reason::Osmand));
                v.extend([
                    Reason::BadToken,
                    Reason::UnknownDevice,
                    Reason::RegistryFull,
                    Reason::RateLimited,
                ]);
            }
        }
        v
    }

    /// Position of this reason's counter among the counters of `t` (0 for a
    /// reason that does not apply, which the pipeline never produces).
    pub(crate) fn index(self, t: Transport) -> usize {
        Reason::of(t).iter().position(|r| r.as_str() == self.as_str()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_every_transport_indexes_its_own() {
        for t in Transport::ALL {
            let reasons = Reason::of(t);
            let mut labels: Vec<_> = reasons.iter().map(|r| r.as_str()).collect();
            labels.sort_unstable();
            labels.dedup();
            assert_eq!(labels.len(), reasons.len(), "{t:?}: labels are unique");
            for (i, r) in reasons.iter().enumerate() {
                assert_eq!(r.index(t), i);
            }
        }
        let udp = Reason::of(Transport::Udp);
        assert!(!udp.contains(&Reason::IdentityMismatch));
        assert!(!Reason::of(Transport::Quic).contains(&Reason::Replay));
        assert_eq!(udp.len(), 19);
        assert_eq!(Reason::of(Transport::Quic).len(), 16);
    }
}
