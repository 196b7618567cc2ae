//! Why a datagram is refused, and why a frame cannot be written.

/// The reason a datagram is refused by [`decode`](crate::decode) or by
/// [`AuthTag::verify`](crate::AuthTag::verify).
///
/// One variant per reason; [`as_str`](Self::as_str) gives the stable label a
/// server uses as the Prometheus `reason` label. Variants are listed in the
/// order a receiver checks them (PROTOCOL.md, "Receiver algorithm").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than header + CRC (25 bytes), or than header + tag + CRC
    /// (41 bytes) when the authentication flag is set.
    #[error("datagram too short")]
    TooShort,
    /// Longer than 1200 bytes.
    #[error("datagram too long")]
    TooLong,
    /// The first two bytes are not `"FW"`.
    #[error("bad magic")]
    BadMagic,
    /// The version byte is not 1.
    #[error("unsupported protocol version")]
    UnsupportedVersion,
    /// The CRC-32C trailer does not match the bytes before it.
    #[error("bad checksum")]
    BadChecksum,
    /// A flag bit this version does not define is set.
    #[error("unknown flag bits set")]
    UnknownFlags,
    /// The message kind (or a batch sample's kind) is not defined.
    #[error("unknown message kind")]
    UnknownKind,
    /// Device id 0 is reserved and never valid.
    #[error("device id 0 is reserved")]
    BadDeviceId,
    /// The payload is not valid postcard for its kind: truncated, a varint
    /// too long for its type, an option tag other than 0 or 1, or text that
    /// is not UTF-8.
    #[error("malformed payload")]
    MalformedPayload,
    /// Bytes are left between the end of the payload and the tag / CRC.
    #[error("trailing bytes after payload")]
    TrailingBytes,
    /// A field holds a value outside its documented range (latitude,
    /// heading, battery, a non-finite reading, a text too long, ...).
    #[error("value out of range")]
    OutOfRange,
    /// More named readings (32) or batch samples (128) than allowed.
    #[error("too many items")]
    TooManyItems,
    /// A reading name is empty, too long, uses a character outside
    /// `[A-Za-z0-9_.-]`, starts with a digit, `.` or `-`, or repeats a name
    /// already in the same record.
    #[error("bad reading name")]
    BadName,
    /// A batch is empty or holds a sample of a kind that may not be batched
    /// (Hello, Batch).
    #[error("bad batch")]
    BadBatch,
    /// The authentication tag does not verify with the device's key.
    #[error("bad authentication tag")]
    BadAuthTag,
}

impl DecodeError {
    /// Every variant, in check order.
    pub const ALL: [DecodeError; 15] = [
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

    /// The stable, snake_case label for this reason (a Prometheus label value).
    pub const fn as_str(self) -> &'static str {
        match self {
            DecodeError::TooShort => "too_short",
            DecodeError::TooLong => "too_long",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::UnsupportedVersion => "unsupported_version",
            DecodeError::BadChecksum => "bad_checksum",
            DecodeError::UnknownFlags => "unknown_flags",
            DecodeError::UnknownKind => "unknown_kind",
            DecodeError::BadDeviceId => "bad_device_id",
            DecodeError::MalformedPayload => "malformed_payload",
            DecodeError::TrailingBytes => "trailing_bytes",
            DecodeError::OutOfRange => "out_of_range",
            DecodeError::TooManyItems => "too_many_items",
            DecodeError::BadName => "bad_name",
            DecodeError::BadBatch => "bad_batch",
            DecodeError::BadAuthTag => "bad_auth_tag",
        }
    }

    /// The variant whose label is `s`, if any.
    pub fn from_label(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// Why [`encode`](crate::encode) could not write a frame.
///
/// The encoder refuses to write anything a receiver would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is too small for the frame.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The frame would be longer than 1200 bytes.
    #[error("frame would exceed 1200 bytes")]
    TooLong,
    /// The frame holds a value a receiver would refuse; the variant says
    /// which rule it breaks ([`DecodeError::OutOfRange`], `BadName`, ...).
    #[error("invalid frame: {0}")]
    Invalid(DecodeError),
}
