//! The whole ingest path: datagrams → decode → policy → engine → export.
//!
//! Input: an 8-byte start clock, then records of [1 byte: seconds to
//! advance in the low 6 bits; 0x40: engine tick; 0x80: QUIC instead of
//! UDP] [2 bytes: length, little endian, modulo 1300; bit 15: rewrite the
//! CRC-32C trailer so mutated frames get past the checksum into the payload
//! parser and the engine] [that many bytes: the datagram]. The engine runs with tiny caps
//! so eviction and export-slot churn happen constantly; after every
//! datagram its invariants must hold, and rendering and a snapshot round
//! trip must work on whatever state results.
//!
//! The policy is on: devices 1 to 4 have keys (`udp_auth = "optional"`),
//! sources and devices are rate limited, and the source address comes from
//! the input. An unsigned frame claiming a keyed device is never accepted.
#![no_main]

use std::sync::{Arc, OnceLock};

use fleetwire::config::UdpAuth;
use fleetwire::engine::{Engine, EngineConfig};
use fleetwire::export::metrics::Metrics;
use fleetwire::ingest::{Datagram, Pipeline, Transport};
use fleetwire::policy::Policy;
use libfuzzer_sys::fuzz_target;

fn metrics() -> Arc<Metrics> {
    static M: OnceLock<Arc<Metrics>> = OnceLock::new();
    M.get_or_init(|| Arc::new(Metrics::new())).clone()
}

const PER_SHARD: usize = 4;
const SHARDS: usize = 2;
const EXPORTED: usize = 3;

fuzz_target!(|data: &[u8]| {
    let cfg = EngineConfig {
        max_devices_per_shard: PER_SHARD,
        max_exported_devices: EXPORTED,
        reading_samples: 4,
        max_readings_per_device: 3,
        max_heap_per_shard: 2048,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::new(cfg, SHARDS));
    let keys = (1..=4u32).map(|d| (d, vec![d as u8; 16].into_boxed_slice())).collect();
    let policy = Policy::new(UdpAuth::Optional, keys, (50.0, 20.0, 5.0), (4, 8));
    let pipeline = Pipeline::new(engine.clone(), metrics(), policy);
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
        let t = if step & 0x80 != 0 { Transport::Quic } else { Transport::Udp };
        let source = std::net::SocketAddr::from(([10, 0, 0, (raw_len >> 8) as u8 & 7], 4480));
        let d = Datagram { bytes, truncated: false, source: Some(source), identity: None };
        let out = pipeline.handle(t, now, &[d]);
        assert_eq!(out.accepted + out.rejected, 1);
        if let Ok(f) = fleetwire_proto::decode(bytes) {
            if t == Transport::Udp && (1..=4).contains(&f.device_id) && f.auth.is_none() {
                assert_eq!(out.accepted, 0, "unsigned frame accepted for a keyed device");
            }
        }
        let s = engine.summary();
        assert!(s.devices as usize <= PER_SHARD * SHARDS);
        assert!(s.exported as usize <= EXPORTED);
        assert!(s.totals.reordered + s.totals.pending <= s.totals.gaps);
        if step & 0x40 != 0 {
            engine.tick(now);
        }
    }
    engine.tick(now);
    let mut text = String::new();
    fleetwire::export::render::render_engine(&engine, now, &mut text);
    assert!(text.contains("fleetwire_devices{state=\"online\"}"));
    let snap = fleetwire::snapshot::take(&engine, now);
    let bytes = postcard::to_stdvec(&snap).expect("snapshot serializes");
    let back: fleetwire::snapshot::Snapshot = postcard::from_bytes(&bytes).expect("snapshot parses");
    assert_eq!(back.devices.len(), snap.devices.len());
});
