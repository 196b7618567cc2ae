//! The aggregation engine: per-device and fleet-wide state.
//!
//! Sans-IO: no sockets, no files, no clock reads. Time comes in as `now_ms`
//! (Unix milliseconds) with every call, so tests drive it with any clock.
//! Nothing in here returns an error: every accepted frame leaves the state
//! consistent.
//!
//! Devices are sharded by id. Each shard is a plain [`Shard`] behind its own
//! mutex, so a device's state has exactly one owner and receive threads on
//! different shards never contend; a batch of frames takes each shard's lock
//! once.
//!
//! Readers (listings, `/metrics`, upkeep, snapshots) may run at a low CPU
//! priority, and a reader the scheduler preempts while it holds a shard's
//! lock makes the receive path wait until it runs again (on a busy machine,
//! for tens of milliseconds). So the engine runs the sections where readers
//! hold locks through a [`Holder`] the server gives it: a thread at the
//! receive path's priority ([`Engine::held`]).

pub(crate) mod config;
pub(crate) mod device;
pub(crate) mod geo;
pub(crate) mod index;
pub(crate) mod journal;
pub(crate) mod prefetch;
#[cfg(test)]
#[allow(unsafe_code)]
pub(crate) mod probe;
pub(crate) mod readings;
pub(crate) mod sequence;
pub(crate) mod shard;
pub(crate) mod timing;
pub(crate) mod totals;

use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use fleetwire_proto::Frame;
use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;

pub(crate) use config::EngineConfig;
pub(crate) use device::Device;
pub(crate) use journal::{LogChunk, RecordError};
pub(crate) use shard::{Shard, Slots};
pub(crate) use totals::{FilterReason, RecordKind, SEVERITIES, ShardTotals, TRANSIT_BOUNDS};

/// How the engine tells a new frame from a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dedup {
    /// By sequence number (fleetwire's own frames): the 64-frame window
    /// accounts for loss, duplicates and reordering.
    Sequence,
    /// By record time and kind (protocols without sequence numbers, such as
    /// Teltonika and OsmAnd): a copy of one of the device's 32 most recent
    /// records is a duplicate; there is no loss accounting.
    RecordTime,
}

/// A frame that passed every check, with what the transport knows of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepted<'a> {
    /// The frame.
    pub frame: Frame<'a>,
    /// Size of the datagram (or stream record) it came in.
    pub bytes: usize,
    /// How copies are recognised.
    pub dedup: Dedup,
    /// The frame's bytes as they arrived in fleetwire's wire format, when it
    /// came in that format (the journal copies them instead of encoding the
    /// frame again); empty for frames made from another protocol.
    pub wire: &'a [u8],
}

impl<'a> Accepted<'a> {
    /// A frame of fleetwire's wire format that came in `bytes` bytes.
    pub(crate) fn new(frame: Frame<'a>, bytes: usize) -> Self {
        Accepted { frame, bytes, dedup: Dedup::Sequence, wire: &[] }
    }
}

/// What [`Shard::apply`] did with one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// It brought new records (it was not a copy).
    pub(crate) new: bool,
    /// One of its positions became the device's fix.
    pub(crate) fix: bool,
}

/// What [`Engine::ingest`] did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IngestOutcome {
    /// Bit `i` set: frame `i` of the batch brought new records (only the
    /// first 64 frames are reported; the pipeline passes at most 64).
    pub applied: u64,
    /// Bit `i` set: a position of frame `i` passed the plausibility filter
    /// and became the device's fix.
    pub fixes: u64,
}

/// A shard at the moment a snapshot copied it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShardMark {
    /// What it had counted.
    pub totals: ShardTotals,
    /// Frames its journal log had written down in this run.
    pub position: u64,
}

/// Fleet totals plus sizes, summed over shards.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Summary {
    /// Counters.
    #[serde(flatten)]
    pub totals: ShardTotals,
    /// Devices tracked.
    pub devices: u64,
    /// Devices holding an exported-series slot.
    pub exported: u64,
}

/// Runs the section it is given (on a thread of its choice) and returns
/// once the section has run: where readers hold shard locks.
pub(crate) type Holder = Arc<dyn Fn(&mut (dyn FnMut() + Send)) + Send + Sync>;

/// The sharded engine.
pub(crate) struct Engine {
    cfg: EngineConfig,
    shards: Box<[Mutex<Shard>]>,
    /// The hash of every shard's id index.
    hasher: index::IdHasher,
    slots: Slots,
    holder: OnceLock<Holder>,
    /// Heap allocations made by readers while holding a shard lock (tests).
    #[cfg(test)]
    pub(crate) allocations_under_lock: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cfg", &self.cfg)
            .field("shards", &self.shards.len())
            .field("holder", &self.holder.get().is_some())
            .finish_non_exhaustive()
    }
}

/// Most devices the shards' slabs have room for from the start, over all
/// shards (2,097,152: about 850 MB of address space, not memory, beside the
/// default `max_devices` of 1,000,000); beyond, a slab grows as it fills.
const ROOM_MAX: usize = 1 << 21;

/// Devices a paged reader visits under one lock ([`Engine::visit_after`]).
pub(crate) const VISIT_PAGE: usize = 1024;

impl Engine {
    /// An engine with `shards` shards (rounded up to a power of two).
    pub(crate) fn new(cfg: EngineConfig, shards: usize) -> Self {
        let n = shards.clamp(1, 1024).next_power_of_two();
        // One keyed hash of device ids for every shard's index.
        let hasher = index::IdHasher::default();
        Engine {
            slots: Slots::new(cfg.max_exported_devices, cfg.max_devices),
            shards: (0..n)
                .map(|_| {
                    let room = cfg.max_devices_per_shard.min(ROOM_MAX / n);
                    Mutex::new(Shard::with_room(room, hasher))
                })
                .collect(),
            hasher,
            cfg,
            holder: OnceLock::new(),
            #[cfg(test)]
            allocations_under_lock: Default::default(),
        }
    }

    /// Sets where readers hold shard locks from now on (once; later calls
    /// are ignored). Without one, they hold them on their own thread.
    pub(crate) fn set_holder(&self, holder: Holder) {
        let _ = self.holder.set(holder);
    }

    /// Runs `f` through the [`Holder`] (inline without one) and returns its
    /// result: for a reader's sections that take shard locks, so that a
    /// low-priority reader's locks are held at the receive path's priority.
    /// Keep `f` to copying: whatever it does runs at that priority.
    pub(crate) fn held<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let mut f = Some(f);
        let mut out = None;
        let mut section = || {
            if let Some(f) = f.take() {
                out = Some(f());
            }
        };
        if let Some(h) = self.holder.get() {
            h(&mut section);
        }
        // Runs here if the holder did not run it (it never fails to).
        section();
        match out {
            Some(r) => r,
            None => unreachable!("the section ran"),
        }
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The shard a device id belongs to (Fibonacci hashing of the id).
    pub(crate) fn shard_of(&self, id: u32) -> usize {
        let h = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 32) as usize & (self.shards.len() - 1)
    }

    /// Applies a batch of accepted frames that arrived at `now_ms`, taking
    /// each involved shard's lock once. Says which frames brought new
    /// records (not duplicates).
    ///
    /// With many devices, every frame meets a device that is not in cache
    /// (its index slot, its state, its neighbours in the eviction list).
    /// So the batch's shards are locked first (in ascending order, so two
    /// receive threads cannot deadlock), every device of the batch is
    /// looked up and its state prefetched, and only then are the frames
    /// applied (in arrival order): the misses of a batch overlap, and the
    /// results are those of applying the frames one by one.
    pub(crate) fn ingest(&self, now_ms: u64, batch: &[Accepted<'_>]) -> IngestOutcome {
        const CHUNK: usize = 64;
        let mut out = IngestOutcome::default();
        // Words of the shard bit set in use (at most 16: 1024 shards).
        let words = self.shards.len().div_ceil(64);
        for (c, chunk) in batch.chunks(CHUNK).enumerate() {
            let base = c * CHUNK;
            let n = chunk.len();
            if n == 1 {
                // One frame (a receiver keeping up reads a datagram or two
                // per call): no ordering to do.
                let mut g = self.shards[self.shard_of(chunk[0].frame.device_id)].lock();
                let r = g.apply(now_ms, &chunk[0], &self.cfg, &self.slots);
                if base < 64 {
                    out.applied |= u64::from(r.new) << base;
                    out.fixes |= u64::from(r.fix) << base;
                }
                continue;
            }
            let mut shard_of = [0u16; CHUNK];
            for (s, a) in shard_of.iter_mut().zip(chunk) {
                *s = self.shard_of(a.frame.device_id) as u16;
            }
            // The batch's shards as a bit set (at most 1024 shards), locked
            // in ascending order; a frame's guard is its shard's rank.
            let mut mask = [0u64; 16];
            for &s in &shard_of[..n] {
                mask[usize::from(s >> 6)] |= 1 << (s & 63);
            }
            // Their locks' lines first, all at once: taking a lock is an
            // atomic instruction, which waits for its line before the next
            // can start.
            for (w, &bits) in mask.iter().enumerate().take(words) {
                let mut b = bits;
                while b != 0 {
                    prefetch::prefetch_head(&self.shards[w * 64 + b.trailing_zeros() as usize]);
                    b &= b - 1;
                }
            }
            let mut guards: arrayvec::ArrayVec<MutexGuard<'_, Shard>, CHUNK> =
                arrayvec::ArrayVec::new();
            let mut below = [0u8; 16];
            for (w, &bits) in mask.iter().enumerate().take(words) {
                below[w] = guards.len() as u8;
                let mut b = bits;
                while b != 0 {
                    let s = w * 64 + b.trailing_zeros() as usize;
                    let g = self.shards[s].lock();
                    g.prefetch_own();
                    guards.push(g);
                    b &= b - 1;
                }
            }
            let mut guard_of = [0u8; CHUNK];
            for (g, &s) in guard_of.iter_mut().zip(&shard_of[..n]) {
                let (w, bit) = (usize::from(s >> 6), s & 63);
                let lower = mask[w] & ((1u64 << bit) - 1);
                *g = below[w] + lower.count_ones() as u8;
            }
            // Where each device's index lookup begins, for the whole batch
            // (the misses overlap), then the lookups, each starting to load
            // its device's state.
            let mut hash = [0u64; CHUNK];
            for ((a, &g), h) in chunk.iter().zip(&guard_of).zip(&mut hash) {
                *h = self.hasher.hash_one(a.frame.device_id);
                guards[usize::from(g)].prefetch_index(*h);
            }
            let mut hint = [0u32; CHUNK];
            for (((a, &g), &h), s) in chunk.iter().zip(&guard_of).zip(&hash).zip(&mut hint) {
                *s = guards[usize::from(g)].prefetch(a.frame.device_id, h);
            }
            // The frames in arrival order, each under its shard's lock:
            // the results of applying them one by one.
            for (j, (a, (&g, &h))) in chunk.iter().zip(guard_of.iter().zip(&hint)).enumerate() {
                let r = guards[usize::from(g)].apply_at(h, now_ms, a, &self.cfg, &self.slots);
                let k = base + j;
                if k < 64 {
                    out.applied |= u64::from(r.new) << k;
                    out.fixes |= u64::from(r.fix) << k;
                }
            }
        }
        out
    }

    /// Periodic upkeep (call about once a second). Returns the devices that
    /// went online or offline since the last tick (id, now online).
    pub(crate) fn tick(&self, now_ms: u64) -> Vec<(u32, bool)> {
        let mut transitions = Vec::new();
        // Walks of whole shards, one lock at a time, held at the receive
        // path's priority: 32 shards per section, so that handing sections
        // to the holder costs little beside the walks.
        for group in self.shards.chunks(32) {
            self.held(|| {
                for s in group {
                    s.lock().tick(now_ms, &self.cfg, &self.slots, &mut transitions);
                }
            });
        }
        transitions
    }

    /// Makes the next tick look at every device of every shard (tests:
    /// what the walk of only the silent devices must agree with).
    #[cfg(test)]
    pub(crate) fn walk_all_next_tick(&self) {
        for s in self.shards.iter() {
            s.lock().walk_all_next_tick();
        }
    }

    /// Fleet totals.
    pub(crate) fn summary(&self) -> Summary {
        let mut sum = Summary { exported: self.slots.exported.used() as u64, ..Default::default() };
        // Called from low-priority threads too: held like a reader's copy.
        self.held(|| {
            for s in self.shards.iter() {
                let s = s.lock();
                sum.totals.add(&s.totals);
                sum.devices += s.len() as u64;
            }
        });
        sum
    }

    /// Runs `f` on the device, if tracked.
    pub(crate) fn with_device<T>(&self, id: u32, f: impl FnOnce(&Device) -> T) -> Option<T> {
        let shard = self.shards[self.shard_of(id)].lock();
        #[cfg(test)]
        let _held = probe::Held::new(&self.allocations_under_lock);
        shard.get(id).map(f)
    }

    /// The ids of devices `keep` accepts, in order, above `after` (from the
    /// first, without), skipping `skip` of them and returning at most
    /// `take`. Costs about `skip + take` plus 256 per shard (a merge of the
    /// shards' sorted ids, read 256 at a time under each lock), not the
    /// fleet; and, in a shard where devices were created or removed since
    /// the last listing, putting its ids in order.
    pub(crate) fn page_ids(
        &self,
        after: Option<u32>,
        skip: usize,
        take: usize,
        keep: &dyn Fn(&Device) -> bool,
    ) -> Vec<u32> {
        use std::cmp::Reverse;
        use std::collections::{BinaryHeap, VecDeque};
        const LOOK: usize = 256;
        struct Cursor {
            buf: VecDeque<u32>,
            last: Option<u32>,
            done: bool,
        }
        let refill = |s: usize, c: &mut Cursor| {
            let mut got = Vec::new();
            while got.is_empty() && !c.done {
                let mut shard = self.shards[s].lock();
                c.last = shard.ids_after(c.last, LOOK, keep, &mut got);
                c.done = c.last.is_none();
            }
            c.buf.extend(got);
        };
        let mut cursors: Vec<Cursor> = (0..self.shards.len())
            .map(|_| Cursor { buf: VecDeque::new(), last: after, done: false })
            .collect();
        let mut heap = BinaryHeap::new();
        for (s, c) in cursors.iter_mut().enumerate() {
            refill(s, c);
            if let Some(&id) = c.buf.front() {
                heap.push(Reverse((id, s)));
            }
        }
        let (mut out, mut skip) = (Vec::with_capacity(take.min(1 << 16)), skip);
        while out.len() < take {
            let Some(Reverse((id, s))) = heap.pop() else { break };
            let c = &mut cursors[s];
            c.buf.pop_front();
            if skip > 0 {
                skip -= 1;
            } else {
                out.push(id);
            }
            if c.buf.is_empty() {
                refill(s, c);
            }
            if let Some(&next) = c.buf.front() {
                heap.push(Reverse((next, s)));
            }
        }
        out
    }

    /// How many shards there are.
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Calls `f` on up to `budget` devices of shard `s` with ids above
    /// `after`, in id order, under the shard's lock (keep `f` short).
    /// Returns the last id visited, or `None` when the shard has no more:
    /// a cursor that walks the fleet a page at a time.
    pub(crate) fn visit_after(
        &self,
        s: usize,
        after: Option<u32>,
        budget: usize,
        f: &mut dyn FnMut(&Device),
    ) -> Option<u32> {
        let mut shard = self.shards.get(s)?.lock();
        shard.visit_after(after, budget, f)
    }

    /// Calls `f` for every device holding an export slot (at most
    /// `max_exported_devices`), shard by shard in id order, [`VISIT_PAGE`]
    /// devices per lock.
    pub(crate) fn visit_exported_paged(&self, f: &mut dyn FnMut(&Device)) {
        for s in self.shards.iter() {
            let mut after = None;
            loop {
                let last = s.lock().visit_exported_after(after, VISIT_PAGE, f);
                match last {
                    Some(id) => after = Some(id),
                    None => break,
                }
            }
        }
    }

    /// Calls `f` for every device of each shard in turn, holding one shard's
    /// lock at a time. Keep `f` short: ingest on that shard waits.
    pub(crate) fn for_each_shard(&self, mut f: impl FnMut(&Shard)) {
        for s in self.shards.iter() {
            let shard = s.lock();
            #[cfg(test)]
            let _held = probe::Held::new(&self.allocations_under_lock);
            f(&shard);
        }
    }

    /// Calls `f` with a copy of each shard's devices in turn, until it
    /// returns false, with what the shard had counted and its journal
    /// position at the moment of the copy (the lock is held only while
    /// copying, through the [`Holder`]).
    pub(crate) fn for_each_shard_marked(&self, f: &mut dyn FnMut(Vec<Device>, ShardMark) -> bool) {
        for s in self.shards.iter() {
            let (devices, mark) = self.held(|| {
                let s = s.lock();
                (
                    s.devices().to_vec(),
                    ShardMark { totals: s.totals.clone(), position: s.log.position() },
                )
            });
            if !f(devices, mark) {
                return;
            }
        }
    }

    /// Turns the journal's log of applied frames on or off in every shard.
    pub(crate) fn set_journaling(&self, on: bool) {
        for s in self.shards.iter() {
            s.lock().log.set_enabled(on);
        }
    }

    /// Takes every shard's log of applied frames since the last call (shard
    /// index and records), leaving buffers of `spares` in their place.
    pub(crate) fn take_logs(&self, spares: &mut Vec<Vec<u8>>) -> Vec<(usize, LogChunk)> {
        let mut out = Vec::with_capacity(self.shards.len());
        for (i, s) in self.shards.iter().enumerate() {
            let spare = spares.pop().unwrap_or_default();
            out.push((i, s.lock().log.take(spare)));
        }
        out
    }

    /// Frames the journal's log could not write down since start.
    pub(crate) fn unrecorded(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().log.unrecorded()).sum()
    }

    /// Applies journal records in their order, skipping the first `skip`
    /// (a snapshot holds them already). Returns the records applied and
    /// the error that ended the read early, if one did.
    pub(crate) fn replay(&self, records: &[u8], skip: u64) -> (u64, Option<RecordError>) {
        let mut applied = 0;
        for (k, r) in journal::records(records).enumerate() {
            match r {
                Ok(_) if (k as u64) < skip => {}
                Ok(r) => {
                    let mut shard = self.shards[self.shard_of(r.accepted.frame.device_id)].lock();
                    shard.apply(r.now_ms, &r.accepted, &self.cfg, &self.slots);
                    applied += 1;
                }
                Err(e) => return (applied, Some(e)),
            }
        }
        (applied, None)
    }

    /// Puts restored devices back (from a snapshot), least recently seen first.
    ///
    /// Sorted in place and taken from the back, so the restored devices and
    /// the vector they came in are not both whole in memory at once (1 M
    /// devices are hundreds of MB).
    pub(crate) fn restore(&self, mut devices: Vec<Device>, totals: Option<ShardTotals>) {
        // Beyond max_devices (the configuration may have shrunk since the
        // snapshot), the most recently seen are kept.
        let mut dropped = 0u64;
        let max = self.cfg.max_devices.max(1);
        if devices.len() > max {
            devices.select_nth_unstable_by_key(max, |d| std::cmp::Reverse(d.last_seen_ms));
            dropped += (devices.len() - max) as u64;
            devices.truncate(max);
            devices.shrink_to_fit();
        }
        // Shard by shard, most recently seen first: popping from the back
        // gives the last shard's devices least recently seen first, the
        // order they go in so that the eviction order is right.
        devices.sort_unstable_by_key(|d| {
            (self.shard_of(d.id), std::cmp::Reverse(d.last_seen_ms), d.id)
        });
        let mut counts = vec![0usize; self.shards.len()];
        for d in &devices {
            if let Some(c) = counts.get_mut(self.shard_of(d.id)) {
                *c += 1;
            }
        }
        // Per shard, keep the most recently seen devices that fit (the
        // configuration may have shrunk since the snapshot).
        let cap = self.cfg.max_devices_per_shard.max(1);
        for (s, &here) in counts.iter().enumerate().rev() {
            let mut shard = self.shards[s].lock();
            shard.reserve(here.min(cap));
            // `rank` is the device's place among its shard's, newest first.
            for rank in (0..here).rev() {
                let Some(d) = devices.pop() else { break };
                if rank >= cap {
                    dropped += 1;
                } else {
                    shard.restore(d, &self.slots);
                }
            }
            drop(shard);
            if devices.len() < devices.capacity() / 2 {
                devices.shrink_to_fit();
            }
        }
        if let Some(mut t) = totals {
            t.pending = 0;
            t.online = 0;
            t.evicted += dropped;
            self.shards[0].lock().totals = t;
        } else {
            self.shards[0].lock().totals.evicted += dropped;
        }
        // Each shard accounts for the awaited frames of its own devices.
        for s in self.shards.iter() {
            let mut s = s.lock();
            s.totals.pending = s.devices().iter().map(|d| d.seq.pending()).sum();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
