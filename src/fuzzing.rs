//! The ingest path for the fuzz crate (`fuzz/`): decode, policy, engine,
//! rendering and a snapshot round trip, with tiny caps so eviction and
//! export-slot churn happen all the time, under a synthetic clock. Every
//! call checks the invariants and panics when one breaks, which is what the
//! fuzzer looks for. Not a stable API.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::engine::{Engine, EngineConfig};
use crate::ingest::policy::PolicyConfig;
use crate::ingest::{Datagram, IngestCounters, Pipeline, Policy, Transport, UdpAuth};

/// Most devices per shard.
const PER_SHARD: usize = 4;
/// Most devices in all (less than the shards can hold: the budget the
/// shards share binds, as well as each shard's own cap).
const FLEET: usize = 6;
const _: () = assert!(FLEET < PER_SHARD * SHARDS);
/// Shards.
const SHARDS: usize = 2;
/// Devices with exported series.
const EXPORTED: usize = 3;
/// Devices 1 to this have keys (`udp_auth = "optional"`).
const KEYED: u32 = 4;

/// One engine and pipeline, fed datagram by datagram.
pub struct IngestHarness {
    engine: Arc<Engine>,
    pipeline: Pipeline,
}

impl Default for IngestHarness {
    fn default() -> Self {
        IngestHarness::new()
    }
}

impl IngestHarness {
    /// An empty engine (6 devices in 2 shards of at most 4, 3 exported, 4 samples of 3
    /// readings per device, 2 KiB of readings per shard) behind a policy
    /// with keys for devices 1 to 4, optional authentication, and rate
    /// limits per source (50/s) and device (20/s) with bursts of 5.
    pub fn new() -> Self {
        let cfg = EngineConfig {
            max_devices: FLEET,
            max_devices_per_shard: PER_SHARD,
            max_exported_devices: EXPORTED,
            reading_samples: 4,
            max_readings_per_device: 3,
            max_heap_per_shard: 2048,
            ..crate::config::Config::default().engine()
        };
        let engine = Arc::new(Engine::new(cfg, SHARDS));
        let keys = (1..=KEYED).map(|d| (d, vec![d as u8; 16].into_boxed_slice())).collect();
        let policy = PolicyConfig {
            udp_auth: UdpAuth::Optional,
            keys_file: None,
            rate_source: 50.0,
            rate_device: 20.0,
            burst: 5.0,
            max_sources: 4,
            max_devices: 8,
        };
        let policy = Policy::new(&policy, keys, None);
        let pipeline = Pipeline::new(engine.clone(), IngestCounters::detached(), policy);
        IngestHarness { engine, pipeline }
    }

    /// Hands one datagram to the pipeline (over QUIC when `quic`), then
    /// checks: exactly one outcome; an unsigned UDP frame claiming a keyed
    /// device is never accepted; the caps hold; the sequence counters are
    /// consistent. Returns whether it was accepted.
    pub fn handle(&self, quic: bool, now_ms: u64, bytes: &[u8], source: SocketAddr) -> bool {
        let t = if quic { Transport::Quic } else { Transport::Udp };
        let d = Datagram {
            bytes,
            truncated: false,
            source: Some(source),
            identity: None,
            received_ns: 0,
        };
        let out = self.pipeline.handle(t, now_ms, &[d]);
        assert_eq!(out.accepted + out.rejected, 1);
        if let Ok(f) = fleetwire_proto::decode(bytes) {
            if !quic && (1..=KEYED).contains(&f.device_id) && f.auth.is_none() {
                assert_eq!(out.accepted, 0, "unsigned frame accepted for a keyed device");
            }
        }
        let s = self.engine.summary();
        assert!(s.devices as usize <= FLEET);
        assert!(s.exported as usize <= EXPORTED);
        assert!(s.totals.reordered + s.totals.pending <= s.totals.gaps);
        out.accepted == 1
    }

    /// The engine's periodic upkeep.
    pub fn tick(&self, now_ms: u64) {
        self.engine.tick(now_ms);
    }

    /// Renders `/metrics` from the engine and round-trips a snapshot of it
    /// through its serialised form: both must work on whatever state the
    /// datagrams left.
    pub fn render_and_snapshot(&self, now_ms: u64) {
        let mut text = String::new();
        crate::export::render::render_engine(&self.engine, now_ms, &mut text);
        assert!(text.contains("fleetwire_devices{state=\"online\"}"));
        let snap = crate::snapshot::take(&self.engine, now_ms);
        let bytes = postcard::to_stdvec(&snap).expect("snapshot serializes");
        let back: crate::snapshot::Snapshot =
            postcard::from_bytes(&bytes).expect("snapshot parses");
        assert_eq!(back.device_count(), snap.device_count());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwire_proto::{Body, Frame};

    /// The harness's fleet cap binds before its shards' own caps, so the
    /// fuzz target meets evictions by the shared device budget.
    #[test]
    fn the_harness_fleet_is_capped_below_what_its_shards_hold() {
        let h = IngestHarness::new();
        let now = 1_700_000_000_000;
        let p = crate::engine::tests::pos(48.0, 11.0);
        let mut buf = [0u8; 256];
        for (k, id) in (10u32..30).enumerate() {
            // A second apart: the harness's rate limits refill.
            let t = now + 1000 * k as u64;
            let f = Frame::new(id, 0, t, Body::Position(p));
            let n = fleetwire_proto::encode(&f, &mut buf).unwrap();
            let source = SocketAddr::from(([127, 0, 0, 1], 1000 + k as u16));
            assert!(h.handle(false, t, &buf[..n], source), "device {id}");
        }
        let s = h.engine.summary();
        assert_eq!((s.devices as usize, s.totals.evicted), (FLEET, 20 - FLEET as u64));
    }
}
