//! CRC-32C (Castagnoli): polynomial 0x1EDC6F41 (reflected 0x82F63B78),
//! init 0xFFFFFFFF, input and output reflected, xorout 0xFFFFFFFF.
//! Check value of ASCII "123456789": 0xE3069283.

/// CRC-32C of `bytes`.
///
/// With the `std` feature this uses the CPU's CRC32 instructions (SSE 4.2 on
/// x86-64, the CRC extension on AArch64) when the running CPU has them, and a
/// software fallback otherwise (the `crc32c` crate). Without `std` it uses a
/// portable table-driven implementation (the `crc` crate).
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(feature = "std")]
    {
        crc32c::crc32c(bytes)
    }
    #[cfg(not(feature = "std"))]
    {
        crc32c_portable(bytes)
    }
}

/// The portable table-driven CRC-32C (1 KiB table), available in every
/// build so the hardware path can be checked and measured against it.
#[inline]
pub fn crc32c_portable(bytes: &[u8]) -> u32 {
    const CRC: crc::Crc<u32, crc::Table<1>> =
        crc::Crc::<u32, crc::Table<1>>::new(&crc::CRC_32_ISCSI);
    CRC.checksum(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_portable(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn hardware_agrees_with_portable() {
        let mut buf = [0u8; 300];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(151).wrapping_add(7);
        }
        for len in 0..buf.len() {
            assert_eq!(crc32c(&buf[..len]), crc32c_portable(&buf[..len]), "len {len}");
        }
    }
}
