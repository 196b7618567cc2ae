//! The whole ingest path: datagrams → decode → policy → engine → export
//! (`fleetwire::fuzzing::IngestHarness`, which checks the invariants after
//! every datagram and panics when one breaks).
//!
//! Input: an 8-byte start clock, then records of [1 byte: seconds to
//! advance in the low 6 bits; 0x40: engine tick; 0x80: QUIC instead of
//! UDP] [2 bytes: length, little endian, modulo 1300; bit 15: rewrite the
//! CRC-32C trailer so mutated frames get past the checksum into the payload
//! parser and the engine] [that many bytes: the datagram]. The source
//! address comes from the length's high byte (8 sources), so the rate
//! limits and the replay windows see several senders. At the end the
//! Prometheus rendering and a snapshot round trip must work on whatever
//! state results.
#![no_main]

use fleetwire::fuzzing::IngestHarness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let h = IngestHarness::new();
    let (clock, mut rest) = match data.split_first_chunk::<8>() {
        Some((c, r)) => (u64::from_le_bytes(*c) >> 20, r),
        None => return,
    };
    let mut now = clock;
    let mut scratch = Vec::new();
    while let Some((&[step, l0, l1], r)) = rest.split_first_chunk::<3>() {
        let raw_len = u16::from_le_bytes([l0, l1]);
        let len = usize::from(raw_len & 0x7fff) % 1300;
        let (bytes, r2) = r.split_at(len.min(r.len()));
        rest = r2;
        let bytes = if raw_len & 0x8000 != 0 && bytes.len() >= 4 {
            scratch.clear();
            scratch.extend_from_slice(bytes);
            let n = scratch.len() - 4;
            let crc = fleetwire_proto::crc32c(&scratch[..n]);
            scratch[n..].copy_from_slice(&crc.to_le_bytes());
            &scratch[..]
        } else {
            bytes
        };
        now = now.saturating_add(u64::from(step & 0x3f) * 1000);
        let source = std::net::SocketAddr::from(([10, 0, 0, (raw_len >> 8) as u8 & 7], 4480));
        h.handle(step & 0x80 != 0, now, bytes, source);
        if step & 0x40 != 0 {
            h.tick(now);
        }
    }
    h.tick(now);
    h.render_and_snapshot(now);
});
