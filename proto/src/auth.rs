//! The optional authentication tag: HMAC-SHA-256 with the device's key over
//! header and payload, truncated to its first 16 bytes.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::DecodeError;

/// Length of the authentication tag in bytes.
pub const AUTH_TAG_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The authentication tag of a decoded frame, with the bytes it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthTag<'a> {
    /// The 16 tag bytes as received.
    pub tag: &'a [u8; AUTH_TAG_LEN],
    /// The bytes the tag covers: the header and the payload.
    pub signed: &'a [u8],
}

impl AuthTag<'_> {
    /// Checks the tag against `key` in constant time.
    ///
    /// # Errors
    /// [`DecodeError::BadAuthTag`] when the tag was not made with `key` over
    /// these bytes.
    pub fn verify(&self, key: &[u8]) -> Result<(), DecodeError> {
        let mut mac = HmacSha256::new_from_slice(key).map_err(|_| DecodeError::BadAuthTag)?;
        mac.update(self.signed);
        mac.verify_truncated_left(self.tag).map_err(|_| DecodeError::BadAuthTag)
    }
}

/// The tag for `signed` under `key`.
pub(crate) fn compute_tag(key: &[u8], signed: &[u8]) -> [u8; AUTH_TAG_LEN] {
    let mut out = [0u8; AUTH_TAG_LEN];
    // HMAC accepts keys of any length, so this never fails.
    if let Ok(mut mac) = HmacSha256::new_from_slice(key) {
        mac.update(signed);
        let full = mac.finalize().into_bytes();
        for (o, b) in out.iter_mut().zip(full.iter()) {
            *o = *b;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2, truncated to 128 bits (the RFC's own test case 5
    /// covers truncation to 128 bits with a different key).
    #[test]
    fn rfc4231_case2_truncated() {
        let tag = compute_tag(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            tag,
            [
                0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
                0x75, 0xc7
            ]
        );
        let a = AuthTag { tag: &tag, signed: b"what do ya want for nothing?" };
        assert_eq!(a.verify(b"Jefe"), Ok(()));
        assert_eq!(a.verify(b"jefe"), Err(DecodeError::BadAuthTag));
    }

    /// RFC 4231 test case 5: truncation to 128 bits.
    #[test]
    fn rfc4231_case5() {
        let key = [0x0c; 20];
        let tag = compute_tag(&key, b"Test With Truncation");
        assert_eq!(
            tag,
            [
                0xa3, 0xb6, 0x16, 0x74, 0x73, 0x10, 0x0e, 0xe0, 0x6e, 0x0c, 0x79, 0x6c, 0x29, 0x55,
                0x55, 0x2b
            ]
        );
    }
}
