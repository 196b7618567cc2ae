//! CRC-32C of a datagram with the CPU's CRC32 instruction, eight bytes per
//! instruction.
//!
//! Written here rather than taken from the `crc32c` crate (which
//! `fleetwire-proto` uses): that crate is built for long buffers, and on a
//! datagram of 40 to 60 bytes its set-up (three-way split tables, aligned
//! head and tail byte by byte, two empty passes of its parallel loop) cost
//! 90 to 160 instructions against about 25 here (BENCHMARKS.md). The
//! result is the same function; the test checks them against each other.
#![allow(unsafe_code)]

/// CRC-32C (Castagnoli) of `bytes`: [`fleetwire_proto::crc32c`], with the
/// CPU's CRC32 instruction where it has one (SSE 4.2).
#[inline]
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2, which is all `sse42` needs.
        return unsafe { sse42(bytes) };
    }
    fleetwire_proto::crc32c(bytes)
}

/// The CRC over unaligned 8-byte loads, then the 4-, 2- and 1-byte rest.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn sse42(bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64};
    let mut crc = u64::from(u32::MAX);
    let mut rest = bytes;
    while let Some((word, tail)) = rest.split_first_chunk::<8>() {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(*word));
        rest = tail;
    }
    let mut crc = crc as u32;
    if let Some((word, tail)) = rest.split_first_chunk::<4>() {
        crc = _mm_crc32_u32(crc, u32::from_le_bytes(*word));
        rest = tail;
    }
    if let Some((word, tail)) = rest.split_first_chunk::<2>() {
        crc = _mm_crc32_u16(crc, u16::from_le_bytes(*word));
        rest = tail;
    }
    if let Some(&b) = rest.first() {
        crc = _mm_crc32_u8(crc, b);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_portable_crc_at_every_length_and_alignment() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        let mut buf = [0u8; 1300];
        let mut x = 0x2545_F491u32;
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        for start in 0..8 {
            for len in (0..300).chain([1199, 1200, 1291]) {
                let bytes = &buf[start..start + len];
                assert_eq!(
                    crc32c(bytes),
                    fleetwire_proto::crc32c_portable(bytes),
                    "{len} bytes at {start}"
                );
            }
        }
    }
}
