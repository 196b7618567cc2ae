//! [`decode`]: datagram in, checked [`Frame`] or [`DecodeError`] out.

use crate::auth::{AUTH_TAG_LEN, AuthTag};
use crate::checksum::crc32c;
use crate::error::DecodeError;
use crate::frame::{Frame, Kind};
use crate::wire::Cursor;
use crate::{CRC_LEN, FLAG_AUTH, HEADER_LEN, MAGIC, MAX_FRAME_LEN, MIN_FRAME_LEN, VERSION};

/// Checks one datagram completely and returns the frame it holds.
///
/// The checks run in the order of PROTOCOL.md's receiver algorithm: length,
/// magic, version, CRC-32C, flags, kind, device id, then the payload field
/// by field, then trailing bytes. The authentication tag, if present, is
/// returned in [`Frame::auth`] for the caller to verify with the device's
/// key ([`AuthTag::verify`]).
///
/// Never allocates, never panics.
///
/// # Errors
/// The first check that fails, as a [`DecodeError`].
pub fn decode(datagram: &[u8]) -> Result<Frame<'_>, DecodeError> {
    decode_with(datagram, crc32c)
}

/// [`decode`], with the caller's implementation of CRC-32C (the checksum
/// of [`crc32c`](crate::crc32c); a server may have a faster one for its
/// CPU).
///
/// # Errors
/// The first check that fails, as a [`DecodeError`].
#[inline]
pub fn decode_with(
    datagram: &[u8],
    crc32c: impl FnOnce(&[u8]) -> u32,
) -> Result<Frame<'_>, DecodeError> {
    if datagram.len() < MIN_FRAME_LEN {
        return Err(DecodeError::TooShort);
    }
    if datagram.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLong);
    }
    let (covered, crc) = datagram.split_last_chunk::<CRC_LEN>().ok_or(DecodeError::TooShort)?;
    let (header, _) = covered.split_first_chunk::<HEADER_LEN>().ok_or(DecodeError::TooShort)?;
    let [
        m0,
        m1,
        version,
        flags,
        kind,
        d0,
        d1,
        d2,
        d3,
        s0,
        s1,
        s2,
        s3,
        t0,
        t1,
        t2,
        t3,
        t4,
        t5,
        t6,
        t7,
    ] = *header;
    if [m0, m1] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion);
    }
    if crc32c(covered) != u32::from_le_bytes(*crc) {
        return Err(DecodeError::BadChecksum);
    }
    if flags & !FLAG_AUTH != 0 {
        return Err(DecodeError::UnknownFlags);
    }
    let (signed, auth) = if flags & FLAG_AUTH != 0 {
        if covered.len() < HEADER_LEN + AUTH_TAG_LEN {
            return Err(DecodeError::TooShort);
        }
        let (signed, tag) =
            covered.split_last_chunk::<AUTH_TAG_LEN>().ok_or(DecodeError::TooShort)?;
        (signed, Some(AuthTag { tag, signed }))
    } else {
        (covered, None)
    };
    let kind = Kind::from_u8(kind).ok_or(DecodeError::UnknownKind)?;
    let device_id = u32::from_le_bytes([d0, d1, d2, d3]);
    if device_id == 0 {
        return Err(DecodeError::BadDeviceId);
    }
    let sequence = u32::from_le_bytes([s0, s1, s2, s3]);
    let timestamp_ms = u64::from_le_bytes([t0, t1, t2, t3, t4, t5, t6, t7]);
    let mut cursor = Cursor::new(signed.get(HEADER_LEN..).unwrap_or_default());
    let body = cursor.body(kind)?;
    if !cursor.rest.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(Frame { device_id, sequence, timestamp_ms, body, auth })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Body, FixType, Position};
    use crate::{encode, encode_signed};

    /// The `position_basic` vector, byte by byte (PROTOCOL.md, example 1).
    const POSITION: [u8; 44] = [
        0x46, 0x57, // magic "FW"
        0x01, // version 1
        0x00, // flags: no tag
        0x01, // kind 1 = Position
        0x2a, 0x00, 0x00, 0x00, // device id 42
        0x07, 0x00, 0x00, 0x00, // sequence 7
        0x00, 0xe8, 0x97, 0xb6, 0x9a, 0x01, 0x00, 0x00, // timestamp 1764000000000 ms
        0xc0, 0x9d, 0x89, 0xcb, 0x03, // lat 481372000 (zigzag 962744000)
        0xf0, 0x9f, 0xb2, 0x6e, // lon 115755000 (zigzag 231510000)
        0x8c, 0x51, // alt 5190 dm (zigzag 10380)
        0xed, 0x0a, // speed 1389 cm/s
        0x91, 0x15, // heading 2705 = 270.5 degrees
        0xfa, 0x01, // hacc 250 cm
        0x02, // fix 3D
        0x0b, // 11 satellites
        0x72, 0xaa, 0x3d, 0x6e, // CRC-32C 0x6e3daa72, little endian
    ];

    fn munich() -> Position {
        Position {
            lat_e7: 481_372_000,
            lon_e7: 115_755_000,
            alt_dm: 5_190,
            speed_cm_s: 1_389,
            heading_ddeg: 2_705,
            hacc_cm: 250,
            fix: FixType::Fix3d,
            satellites: 11,
        }
    }

    #[test]
    fn golden_position_decodes() {
        let f = decode(&POSITION).unwrap();
        assert_eq!(f, Frame::new(42, 7, 1_764_000_000_000, Body::Position(munich())));
    }

    #[test]
    fn golden_position_encodes() {
        let f = Frame::new(42, 7, 1_764_000_000_000, Body::Position(munich()));
        let mut buf = [0u8; 64];
        let n = encode(&f, &mut buf).unwrap();
        assert_eq!(buf[..n], POSITION);
    }

    #[test]
    fn checks_run_in_order() {
        assert_eq!(decode(&POSITION[..24]), Err(DecodeError::TooShort));
        let mut long = [0u8; 1201];
        long[..44].copy_from_slice(&POSITION);
        assert_eq!(decode(&long), Err(DecodeError::TooLong));
        // A bad magic wins over a bad CRC.
        let mut m = POSITION;
        m[1] = 0;
        assert_eq!(decode(&m), Err(DecodeError::BadMagic));
        let mut m = POSITION;
        m[2] = 2;
        assert_eq!(decode(&m), Err(DecodeError::UnsupportedVersion));
        // Flags, kind and device id are only looked at after the CRC.
        for i in [3, 4, 5, 30] {
            let mut m = POSITION;
            m[i] ^= 0x40;
            assert_eq!(decode(&m), Err(DecodeError::BadChecksum), "byte {i}");
        }
    }

    #[test]
    fn signed_frame_layout() {
        let f = Frame::new(42, 7, 1_764_000_000_000, Body::Position(munich()));
        let mut buf = [0u8; 80];
        let n = encode_signed(&f, b"key", &mut buf).unwrap();
        assert_eq!(n, 44 + 16);
        assert_eq!(buf[3], crate::FLAG_AUTH);
        // Header and payload are those of the unsigned frame.
        assert_eq!(buf[4..40], POSITION[4..40]);
        let d = decode(&buf[..n]).unwrap();
        let tag = d.auth.unwrap();
        assert_eq!(tag.signed, &buf[..40]);
        assert_eq!(tag.tag[..], buf[40..56]);
        tag.verify(b"key").unwrap();
        assert_eq!(tag.verify(b"other"), Err(DecodeError::BadAuthTag));
    }

    #[test]
    fn short_buffers_and_invalid_frames_are_encode_errors() {
        let f = Frame::new(42, 7, 0, Body::Position(munich()));
        let mut small = [0u8; 43];
        assert_eq!(encode(&f, &mut small), Err(crate::EncodeError::BufferTooSmall));
        let bad = Frame::new(0, 7, 0, Body::Position(munich()));
        let mut buf = [0u8; 64];
        assert_eq!(
            encode(&bad, &mut buf),
            Err(crate::EncodeError::Invalid(DecodeError::BadDeviceId))
        );
        let bad = Frame::new(1, 7, 0, Body::Position(Position { heading_ddeg: 3600, ..munich() }));
        assert_eq!(
            encode(&bad, &mut buf),
            Err(crate::EncodeError::Invalid(DecodeError::OutOfRange))
        );
    }
}
