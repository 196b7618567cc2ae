//! [`encode`] and [`encode_signed`]: frame in, bytes out.

use crate::auth::{AUTH_TAG_LEN, compute_tag};
use crate::checksum::crc32c;
use crate::error::{DecodeError, EncodeError};
use crate::frame::Frame;
use crate::wire::{Payload, check_body};
use crate::{CRC_LEN, FLAG_AUTH, HEADER_LEN, MAGIC, MAX_FRAME_LEN, VERSION};

/// Writes `frame` (without authentication tag) into `out` and returns the
/// number of bytes written. `frame.auth` is ignored.
///
/// # Errors
/// [`EncodeError::Invalid`] when the frame holds a value a receiver would
/// refuse; [`EncodeError::TooLong`] beyond 1200 bytes;
/// [`EncodeError::BufferTooSmall`] when `out` cannot hold it.
pub fn encode(frame: &Frame<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    encode_inner(frame, None, out)
}

/// Like [`encode`], and appends the 16-byte HMAC-SHA-256 tag computed with
/// `key` over header and payload (and sets the authentication flag).
///
/// # Errors
/// As [`encode`].
pub fn encode_signed(frame: &Frame<'_>, key: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    encode_inner(frame, Some(key), out)
}

fn encode_inner(
    frame: &Frame<'_>,
    key: Option<&[u8]>,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    if frame.device_id == 0 {
        return Err(EncodeError::Invalid(DecodeError::BadDeviceId));
    }
    check_body(&frame.body).map_err(EncodeError::Invalid)?;
    let full = |out: &[u8]| {
        if out.len() >= MAX_FRAME_LEN { EncodeError::TooLong } else { EncodeError::BufferTooSmall }
    };
    let Some((header, rest)) = out.split_first_chunk_mut::<HEADER_LEN>() else {
        return Err(EncodeError::BufferTooSmall);
    };
    let payload_len = match postcard::to_slice(&Payload(&frame.body), rest) {
        Ok(p) => p.len(),
        Err(_) => return Err(full(out)),
    };
    let flags = if key.is_some() { FLAG_AUTH } else { 0 };
    let mut h = [0u8; HEADER_LEN];
    h[..2].copy_from_slice(&MAGIC);
    h[2] = VERSION;
    h[3] = flags;
    h[4] = frame.body.kind() as u8;
    h[5..9].copy_from_slice(&frame.device_id.to_le_bytes());
    h[9..13].copy_from_slice(&frame.sequence.to_le_bytes());
    h[13..21].copy_from_slice(&frame.timestamp_ms.to_le_bytes());
    *header = h;
    let mut len = HEADER_LEN + payload_len;
    let tag_len = if key.is_some() { AUTH_TAG_LEN } else { 0 };
    let total = len + tag_len + CRC_LEN;
    if total > MAX_FRAME_LEN {
        return Err(EncodeError::TooLong);
    }
    if total > out.len() {
        return Err(EncodeError::BufferTooSmall);
    }
    if let Some(key) = key {
        let tag = compute_tag(key, &out[..len]);
        out[len..len + AUTH_TAG_LEN].copy_from_slice(&tag);
        len += AUTH_TAG_LEN;
    }
    let crc = crc32c(&out[..len]);
    out[len..len + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(len + CRC_LEN)
}
