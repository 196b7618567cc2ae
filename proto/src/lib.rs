//! The fleetwire wire format.
//!
//! Every datagram a device sends to a fleetwire server is one *frame*:
//!
//! ```text
//! +-------+---------+-------+------+-----------+----------+--------------+---------+-----------+--------+
//! | magic | version | flags | kind | device id | sequence | timestamp ms | payload | [auth tag] | CRC-32C |
//! |  2 B  |   1 B   |  1 B  | 1 B  |  u32 LE   |  u32 LE  |    u64 LE    | postcard|   16 B     | u32 LE  |
//! +-------+---------+-------+------+-----------+----------+--------------+---------+-----------+--------+
//! ```
//!
//! `PROTOCOL.md` next to this crate is the normative, language-neutral
//! specification; this crate is its reference implementation.
//!
//! * [`decode`] checks a datagram completely (size, magic, version, CRC,
//!   flags, kind, every payload field and range) and returns a [`Frame`]
//!   that borrows from the datagram. It never allocates and never panics:
//!   any input yields either a frame or a [`DecodeError`], whose
//!   [`as_str`](DecodeError::as_str) is a stable metric label.
//! * [`encode`] writes a frame into a caller-provided buffer; [`encode_signed`]
//!   also appends the HMAC-SHA-256 authentication tag.
//!
//! The crate is `#![no_std]` unless its `std` feature is on (the default),
//! in which case CRC-32C uses the CPU's CRC instructions when present.
//!
//! ```
//! use fleetwire_proto::{decode, encode, Body, FixType, Frame, Position};
//!
//! let frame = Frame::new(42, 7, 1_700_000_000_000, Body::Position(Position {
//!     lat_e7: 483_584_000, lon_e7: 116_502_000, alt_dm: 5_190,
//!     speed_cm_s: 1_250, heading_ddeg: 900, hacc_cm: 350,
//!     fix: FixType::Fix3d, satellites: 9,
//! }));
//! let mut buf = [0u8; fleetwire_proto::MAX_FRAME_LEN];
//! let n = encode(&frame, &mut buf).unwrap();
//! assert!(n <= fleetwire_proto::MAX_POSITION_FRAME_LEN);
//! assert_eq!(decode(&buf[..n]).unwrap(), frame);
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod checksum;
mod decode;
mod encode;
mod error;
mod frame;
#[cfg(feature = "json")]
pub mod json;
mod seq;
mod wire;

pub use auth::{AUTH_TAG_LEN, AuthTag};
pub use checksum::{crc32c, crc32c_portable};
pub use decode::{decode, decode_with};
pub use encode::{encode, encode_signed};
pub use error::{DecodeError, EncodeError};
pub use frame::{
    Batch, Body, Event, FixType, Frame, Hello, Kind, Monitoring, Position, Reading, Record, Sample,
    Severity, capabilities,
};
pub use seq::{Seq, SeqIter};

/// The two magic bytes that start every frame: ASCII `"FW"`.
pub const MAGIC: [u8; 2] = *b"FW";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Flag bit 0: a 16-byte authentication tag sits between payload and CRC.
pub const FLAG_AUTH: u8 = 0x01;
/// Length of the fixed header that precedes the payload.
pub const HEADER_LEN: usize = 21;
/// Length of the CRC-32C trailer.
pub const CRC_LEN: usize = 4;
/// The shortest possible frame: header and CRC around an empty payload.
pub const MIN_FRAME_LEN: usize = HEADER_LEN + CRC_LEN;
/// The longest frame a receiver accepts (one QUIC DATAGRAM over the IPv6
/// minimum MTU without fragmentation).
pub const MAX_FRAME_LEN: usize = 1200;
/// The longest possible Position frame without authentication tag.
pub const MAX_POSITION_FRAME_LEN: usize = 48;
/// The most named readings one Monitoring record may carry.
pub const MAX_READINGS: usize = 32;
/// The longest reading name, in bytes.
pub const MAX_NAME_LEN: usize = 32;
/// The longest event text, in bytes.
pub const MAX_EVENT_TEXT_LEN: usize = 64;
/// The longest Hello firmware or model string, in bytes.
pub const MAX_HELLO_TEXT_LEN: usize = 32;
/// The most samples one Batch may carry.
pub const MAX_BATCH_SAMPLES: usize = 128;
/// The QUIC application protocol (ALPN) of fleetwire frames over QUIC
/// (PROTOCOL.md section 8): the only one a server accepts.
pub const QUIC_ALPN: &[u8] = b"fleetwire/1";
