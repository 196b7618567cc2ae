//! One shard of the engine: the devices whose id hashes to it, in a slab
//! with an intrusive least-recently-seen list for O(1) eviction.

use std::sync::atomic::{AtomicUsize, Ordering};

use fleetwire_proto::{Body, Frame, Record};

use super::device::Device;
use super::index::{IdHasher, IdIndex};
use super::journal::ShardLog;
use super::sequence::SeqOutcome;
use super::timing::Clock;
use super::{Accepted, Applied, Dedup, EngineConfig, RecordKind, ShardTotals};

/// The kind a frame's body counts as (a batch by its first kind: a frame
/// without sequence number is never a batch).
fn kind_of(body: &Body<'_>) -> RecordKind {
    match body {
        Body::Position(_) | Body::Batch(_) => RecordKind::Position,
        Body::Monitoring(_) => RecordKind::Monitoring,
        Body::Event(_) => RecordKind::Event,
        Body::Hello(_) => RecordKind::Hello,
    }
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

/// A count shared by all shards, under a cap.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    cap: usize,
}

impl Budget {
    /// `cap` units, none used.
    pub(crate) fn new(cap: usize) -> Self {
        Budget { used: AtomicUsize::new(0), cap }
    }
    /// Takes a unit if one is left.
    fn take(&self) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| (u < self.cap).then_some(u + 1))
            .is_ok()
    }
    /// Takes a unit even beyond the cap.
    fn force_take(&self) {
        self.used.fetch_add(1, Ordering::Relaxed);
    }
    fn give_back(&self) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| u.checked_sub(1));
    }
    /// Units in use.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// What all shards share.
#[derive(Debug)]
pub(crate) struct Slots {
    /// Devices with exported per-device series (`max_exported_devices`).
    pub(crate) exported: Budget,
    /// Devices tracked (`max_devices`). A shard may hold more than its
    /// share while the fleet is under the cap (ids do not spread evenly:
    /// with exactly `max_devices` devices, half the shards are above their
    /// share), up to `max_devices_per_shard`.
    pub(crate) devices: Budget,
}

impl Slots {
    /// Budgets for `exported` exported devices and `devices` devices.
    pub(crate) fn new(exported: usize, devices: usize) -> Self {
        Slots { exported: Budget::new(exported), devices: Budget::new(devices) }
    }
}

/// The devices of one shard. Plain data: no locks, no IO, no clock.
#[derive(Debug, Default)]
pub(crate) struct Shard {
    index: IdIndex,
    /// The ids, for listings in id order: `ids[..ordered]` ascending, then
    /// the ids of devices created since, in no order. The ids of devices
    /// removed since stay until [`Self::order_ids`] (a listing skips an id
    /// it cannot find). A listing page costs the page, plus, after
    /// creations or removals, an in-place sort of the shard's ids (about
    /// 4,000 with the defaults). Creating a device only appends: a
    /// BTreeSet insert and remove per created or evicted device were 5 %
    /// of serve's time with 1,000,000 devices.
    ids: Vec<u32>,
    /// How many of `ids` are in order.
    ordered: usize,
    /// The ids of devices holding an export slot, in order: `/metrics`
    /// reads these, not the fleet.
    exported: std::collections::BTreeSet<u32>,
    devices: Vec<Device>,
    links: Vec<Link>,
    /// Most recently seen.
    head: u32,
    /// Least recently seen: evicted first.
    tail: u32,
    /// Fleet counters of this shard.
    pub totals: ShardTotals,
    /// Heap bytes owned by its devices (readings, device info), kept under
    /// [`EngineConfig::max_heap_per_shard`].
    heap_bytes: usize,
    /// The frames applied since the journal last took them.
    pub(crate) log: ShardLog,
    /// Devices heard from since the last tick while offline (or new), which
    /// the tick takes online (an id may be there more than once).
    came_online: Vec<u32>,
    /// Devices the last tick found online (`was_online`).
    online: usize,
    /// The next tick looks at every device, not only the silent ones
    /// (restored devices have not been looked at).
    walk_all: bool,
    /// The newest device of the run that starts at the silent end of the
    /// eviction list (`tail`) and holds only devices that are offline and
    /// without an export slot (NIL: no such run). A tick has nothing to
    /// do for them until they send, which takes them out of the run (to
    /// the head), so its walk starts after it: devices silent for good are
    /// not looked at again every second.
    settled: u32,
}

impl Shard {
    /// An empty shard.
    pub(crate) fn new() -> Self {
        Shard { head: NIL, tail: NIL, settled: NIL, ..Default::default() }
    }

    /// An empty shard with room for `devices` devices in its slab, which
    /// then does not move until it holds more (copying every device each
    /// time it doubled). Address space only: a page is resident once a
    /// device is written to it.
    pub(crate) fn with_room(devices: usize, hasher: IdHasher) -> Self {
        let mut s = Shard { index: IdIndex::new(hasher), ..Shard::new() };
        s.devices.reserve_exact(devices);
        s.links.reserve_exact(devices);
        s
    }

    /// Number of devices tracked.
    pub(crate) fn len(&self) -> usize {
        self.devices.len()
    }

    /// The devices, in no particular order.
    pub(crate) fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// One device.
    pub(crate) fn get(&self, id: u32) -> Option<&Device> {
        self.index.get(id).and_then(|i| self.devices.get(i as usize))
    }

    /// Calls `f` on up to `budget` devices of `ids` (ascending ids, those
    /// above a cursor). Returns the last id visited, or `None` when there
    /// are no more: a cursor that walks a page at a time.
    fn visit_in(
        &self,
        ids: impl Iterator<Item = u32>,
        budget: usize,
        f: &mut dyn FnMut(&Device),
    ) -> Option<u32> {
        let mut last = None;
        for (looked, id) in ids.enumerate() {
            if looked == budget {
                return last;
            }
            if let Some(d) = self.get(id) {
                f(d);
            }
            last = Some(id);
        }
        None
    }

    /// Calls `f` on up to `budget` devices with ids above `after` (from
    /// the first, without), in id order. Returns the last id visited, or
    /// `None` when there are no more: a cursor that walks a page at a time.
    pub(crate) fn visit_after(
        &mut self,
        after: Option<u32>,
        budget: usize,
        f: &mut dyn FnMut(&Device),
    ) -> Option<u32> {
        self.order_ids();
        let from = after.map_or(0, |a| self.ids.partition_point(|&id| id <= a));
        self.visit_in(self.ids[from..].iter().copied(), budget, f)
    }

    /// Length of the id list, ordered or not (tests: it stays bounded).
    #[cfg(test)]
    pub(crate) fn id_list_len(&self) -> usize {
        self.ids.len()
    }

    /// Puts [`Self::ids`] in order: the ids of devices created since the
    /// last time sorted into the others, those of devices removed since
    /// dropped. Costs a sort of the shard's ids when devices were created
    /// or removed since, nothing otherwise.
    fn order_ids(&mut self) {
        if self.ordered == self.ids.len() && self.ids.len() == self.devices.len() {
            return;
        }
        // In place: a reader does this under the shard's lock, where
        // nothing is allocated (a stable sort would take a buffer).
        self.ids.sort_unstable();
        self.ids.dedup();
        let index = &self.index;
        self.ids.retain(|&id| index.contains(id));
        self.ordered = self.ids.len();
    }

    /// [`Self::visit_in`] over the devices holding an export slot.
    pub(crate) fn visit_exported_after(
        &self,
        after: Option<u32>,
        budget: usize,
        f: &mut dyn FnMut(&Device),
    ) -> Option<u32> {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = after.map_or(Unbounded, Excluded);
        self.visit_in(self.exported.range((from, Unbounded)).copied(), budget, f)
    }

    /// Looks at up to `budget` ids above `after` (from the first, without),
    /// in order, appending to `out` those of devices `keep` accepts.
    /// Returns the last id looked at, or `None` when the shard has no more.
    pub(crate) fn ids_after(
        &mut self,
        after: Option<u32>,
        budget: usize,
        keep: &dyn Fn(&Device) -> bool,
        out: &mut Vec<u32>,
    ) -> Option<u32> {
        self.visit_after(after, budget, &mut |d| {
            if keep(d) {
                out.push(d.id);
            }
        })
    }

    /// Starts loading the shard's own counters and log, which every frame
    /// applied to it touches (a batch meets most shards once, so they are
    /// rarely in cache).
    pub(crate) fn prefetch_own(&self) {
        super::prefetch::prefetch(&self.totals);
        super::prefetch::prefetch(&self.log);
    }

    /// Starts loading the line of the index where the lookup of an id whose
    /// hash is `hash` begins (before [`Self::prefetch`], for a whole batch).
    pub(crate) fn prefetch_index(&self, hash: u64) {
        self.index.prefetch(hash);
    }

    /// Starts loading what applying a frame of `id` (whose index hash is
    /// `hash`) will touch (its state
    /// and its place in the eviction list), without waiting for it.
    /// Returns its slab index as a hint for [`Self::apply_at`] (which checks
    /// it: devices created or evicted in between move others).
    pub(crate) fn prefetch(&self, id: u32, hash: u64) -> u32 {
        if let Some(i) = self.index.get_hashed(id, hash) {
            if let (Some(d), Some(l)) = (self.devices.get(i as usize), self.links.get(i as usize)) {
                super::prefetch::prefetch(d);
                super::prefetch::prefetch(l);
                return i;
            }
        }
        NIL
    }

    /// Heap bytes owned by the devices (readings, device info).
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.heap_bytes
    }

    fn unlink(&mut self, i: u32) {
        let Link { prev, next } = self.links[i as usize];
        match prev {
            NIL => self.head = next,
            p => self.links[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.links[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        self.links[i as usize] = Link { prev: NIL, next: self.head };
        match self.head {
            NIL => self.tail = i,
            h => self.links[h as usize].prev = i,
        }
        self.head = i;
    }

    /// Takes device `i` out of the settled run (see [`Self::settled`]):
    /// before it leaves its place in the eviction list or hears again.
    fn unsettle(&mut self, i: u32) {
        if self.settled == i {
            // Its older neighbour ends the run now (NIL: it was the tail).
            self.settled = self.links[i as usize].next;
        }
    }

    fn touch(&mut self, i: u32) {
        self.unsettle(i);
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// Removes the device at slab index `i`, moving the last one into its place.
    fn remove_at(&mut self, i: u32, slots: &Slots) {
        self.unsettle(i);
        self.unlink(i);
        let last = (self.devices.len() - 1) as u32;
        if last != i {
            if self.settled == last {
                self.settled = i;
            }
            // Re-point the moved device's neighbours and index entry.
            let Link { prev, next } = self.links[last as usize];
            match prev {
                NIL => self.head = i,
                p => self.links[p as usize].next = i,
            }
            match next {
                NIL => self.tail = i,
                n => self.links[n as usize].prev = i,
            }
            self.links[i as usize] = self.links[last as usize];
            let moved_id = self.devices[last as usize].id;
            self.index.insert(moved_id, i);
        }
        let gone = self.devices.swap_remove(i as usize);
        slots.devices.give_back();
        if gone.was_online {
            self.online -= 1;
        }
        self.heap_bytes = self.heap_bytes.saturating_sub(gone.heap_bytes());
        // Its awaited frames will never be accounted now: confirmed lost.
        self.totals.pending = self.totals.pending.saturating_sub(gone.seq.pending());
        self.links.pop();
        self.index.remove(gone.id);
        if gone.exported {
            self.exported.remove(&gone.id);
            slots.exported.give_back();
        }
    }

    /// The slab index of `id`, creating the device (and evicting the least
    /// recently seen one when the shard is full).
    fn slot_for(&mut self, id: u32, hint: u32, now_ms: u64, cap: usize, slots: &Slots) -> u32 {
        if self.devices.get(hint as usize).is_some_and(|d| d.id == id) {
            self.touch(hint);
            return hint;
        }
        if let Some(i) = self.index.get(id) {
            self.touch(i);
            return i;
        }
        let room = self.devices.len() < cap.max(1) && slots.devices.take();
        if !room {
            // The shard at its own cap, or the fleet at max_devices: the
            // shard's least recently seen device makes room, and its unit
            // of the budget passes to the new one. (An empty shard of a
            // full fleet takes one beyond the cap: at most one per shard.)
            if self.tail != NIL {
                self.remove_at(self.tail, slots);
                self.totals.evicted += 1;
            }
            slots.devices.force_take();
        }
        let i = self.devices.len() as u32;
        self.devices.push(Device::new(id, now_ms));
        self.links.push(Link { prev: NIL, next: NIL });
        self.index.insert(id, i);
        self.ids.push(id);
        if self.ids.len() > 2 * self.devices.len() + 64 {
            // Churn without listings: the removed ids are dropped once
            // they are as many as the devices.
            self.order_ids();
        }
        self.push_front(i);
        self.totals.devices_created += 1;
        i
    }

    /// Makes room for `n` more devices (before restoring them, so the
    /// tables grow once instead of doubling).
    pub(crate) fn reserve(&mut self, n: usize) {
        self.index.reserve(n);
        self.devices.reserve_exact(n);
        self.links.reserve_exact(n);
    }

    /// Inserts a device restored from a snapshot (no eviction, no counting
    /// but its unit of the device budget).
    pub(crate) fn restore(&mut self, mut d: Device, slots: &Slots) {
        if self.index.contains(d.id) {
            return;
        }
        slots.devices.force_take();
        d.exported = false;
        // Looked at by the next tick (which walks every device then).
        d.was_online = false;
        self.walk_all = true;
        self.settled = NIL;
        self.heap_bytes += d.heap_bytes();
        let i = self.devices.len() as u32;
        self.index.insert(d.id, i);
        self.ids.push(d.id);
        self.devices.push(d);
        self.links.push(Link { prev: NIL, next: NIL });
        // Restored in least-recent-first order, so each goes to the front.
        self.push_front(i);
    }

    /// Applies one accepted frame that arrived at `now_ms` in a datagram of
    /// `bytes` bytes. Cannot fail: every frame leaves the state consistent.
    /// Says whether its records were taken (not for a duplicate) and
    /// whether a position of it became the device's fix.
    pub(crate) fn apply(
        &mut self,
        now_ms: u64,
        a: &Accepted<'_>,
        cfg: &EngineConfig,
        slots: &Slots,
    ) -> Applied {
        self.apply_at(NIL, now_ms, a, cfg, slots)
    }

    /// [`Self::apply`], with the device's slab index as [`Self::prefetch`]
    /// found it (checked, and looked up again when it moved).
    pub(crate) fn apply_at(
        &mut self,
        hint: u32,
        now_ms: u64,
        a: &Accepted<'_>,
        cfg: &EngineConfig,
        slots: &Slots,
    ) -> Applied {
        self.log.record(now_ms, a);
        let frame = &a.frame;
        let i = self.slot_for(frame.device_id, hint, now_ms, cfg.max_devices_per_shard, slots);
        // Records that allocate (readings, device info) say by how much, so
        // the shard's device heap stays within its budget.
        let grow = self.heap_bytes < cfg.max_heap_per_shard;
        let (applied, heap) = self.apply_to(i, now_ms, a, cfg, slots, grow);
        self.heap_bytes = self.heap_bytes.saturating_add_signed(heap);
        applied
    }

    fn apply_to(
        &mut self,
        i: u32,
        now_ms: u64,
        a: &Accepted<'_>,
        cfg: &EngineConfig,
        slots: &Slots,
        grow: bool,
    ) -> (Applied, isize) {
        let frame = &a.frame;
        let totals = &mut self.totals;
        let tracked = self.devices.len();
        let d = &mut self.devices[i as usize];
        if !d.exported && slots.exported.take() {
            d.exported = true;
            self.exported.insert(d.id);
        }
        if !d.was_online {
            // Heard from while offline (or new): the next tick takes it
            // online. A device says so with each frame until then, so past
            // one entry per device the next tick walks them all instead.
            if self.came_online.len() < tracked {
                self.came_online.push(d.id);
            } else {
                self.walk_all = true;
            }
        }
        // A device clock beyond max_future is no clock: the frame is taken
        // at the arrival time, like one without a timestamp (so one frame
        // dated 2100 cannot hold the device's state in the future).
        let clock = Clock { now_ms, max_future_ms: cfg.max_future_ms };
        let future = clock.too_far_ahead(frame.timestamp_ms);
        let device_ts = if future { 0 } else { frame.timestamp_ms };
        d.on_arrival(now_ms, device_ts, a.bytes);
        if a.dedup == Dedup::RecordTime {
            if !d.recent_records().observe(frame.timestamp_ms, kind_of(&frame.body)) {
                totals.duplicates += 1;
                d.seq.duplicates += 1;
                return (Applied::default(), 0);
            }
            d.seq.received += 1;
        } else if !Self::account(d, totals, frame) {
            // A copy carries nothing new: do not count its records twice.
            return (Applied::default(), 0);
        }
        if future {
            Self::count_future(totals, &frame.body);
        } else if device_ts != 0 {
            let transit = i128::from(now_ms) - i128::from(device_ts);
            totals.transit.count(transit.clamp(i64::MIN.into(), i64::MAX.into()) as i64);
        }
        // Sample time: the device clock when it has one, else arrival time.
        let base = if device_ts == 0 { now_ms } else { device_ts };
        let fix_before = d.fix.map(|f| f.t_ms);
        let heap = Self::take_records(d, totals, frame, base, clock, cfg, grow);
        (Applied { new: true, fix: d.fix.map(|f| f.t_ms) != fix_before }, heap)
    }

    /// Counts the records of a frame dated beyond `max_future`.
    fn count_future(totals: &mut ShardTotals, body: &Body<'_>) {
        match body {
            Body::Batch(b) => {
                for s in b.samples.iter() {
                    totals.future.count(match s.record {
                        Record::Position(_) => RecordKind::Position,
                        Record::Monitoring(_) => RecordKind::Monitoring,
                        Record::Event(_) => RecordKind::Event,
                    });
                }
            }
            body => totals.future.count(kind_of(body)),
        }
    }

    /// Sequence accounting of a frame; false for a duplicate.
    fn account(d: &mut Device, totals: &mut ShardTotals, frame: &Frame<'_>) -> bool {
        let hello = matches!(frame.body, Body::Hello(_));
        let pending_before = d.seq.pending();
        let outcome = d.seq.observe(frame.sequence, hello);
        totals.pending = (totals.pending + d.seq.pending()).saturating_sub(pending_before);
        match outcome {
            SeqOutcome::Ahead { gap } => totals.gaps += u64::from(gap),
            SeqOutcome::Reordered => totals.reordered += 1,
            SeqOutcome::Duplicate => {
                totals.duplicates += 1;
                return false;
            }
            SeqOutcome::Late => totals.late += 1,
            SeqOutcome::Restart => totals.restarts += 1,
            SeqOutcome::First => {}
        }
        true
    }

    /// What each record of a new frame does to the device; returns the
    /// change of the device's heap bytes.
    fn take_records(
        d: &mut Device,
        totals: &mut ShardTotals,
        frame: &Frame<'_>,
        base: u64,
        clock: Clock,
        cfg: &EngineConfig,
        grow: bool,
    ) -> isize {
        match &frame.body {
            Body::Position(p) => d.on_position(p, base, clock, cfg, totals),
            Body::Monitoring(m) => return d.on_monitoring(m, base, clock, grow, cfg, totals),
            Body::Event(e) => d.on_event(e, base, clock, totals),
            Body::Hello(h) => return d.on_hello(h, grow, totals),
            Body::Batch(b) => {
                totals.batches += 1;
                let mut heap = 0;
                for s in b.samples.iter() {
                    let t = base.saturating_sub(u64::from(s.offset_ms));
                    match &s.record {
                        Record::Position(p) => d.on_position(p, t, clock, cfg, totals),
                        Record::Monitoring(m) => {
                            heap += d.on_monitoring(m, t, clock, grow, cfg, totals);
                        }
                        Record::Event(e) => d.on_event(e, t, clock, totals),
                    }
                }
                return heap;
            }
        }
        0
    }

    /// Periodic upkeep: releases the export slot of devices silent for
    /// longer than the series TTL, counts online devices and appends the
    /// devices that went online or offline since the last tick to
    /// `transitions` (id, now online).
    ///
    /// Devices come online with a frame (`apply` notes those that were
    /// offline); they go offline or past their series TTL only after a
    /// silence of at least `offline_after` or `series_ttl`. So the tick
    /// looks at the devices noted, and at the devices silent that long:
    /// from the least recently seen end of the eviction list (after the
    /// run of devices already offline and without an export slot there),
    /// up to the first heard from since. With every device
    /// reporting, that is none of them, not the whole shard (a walk of a
    /// million devices a second was the costliest work of the receive
    /// path's thread at that fleet size; BENCHMARKS.md).
    pub(crate) fn tick(
        &mut self,
        now_ms: u64,
        cfg: &EngineConfig,
        slots: &Slots,
        transitions: &mut Vec<(u32, bool)>,
    ) {
        let mut came = std::mem::take(&mut self.came_online);
        for &id in &came {
            // Still here (not evicted since), and not already taken online.
            let Some(i) = self.index.get(id) else { continue };
            let Some(d) = self.devices.get_mut(i as usize) else { continue };
            if !d.was_online && d.online(now_ms, cfg) {
                d.was_online = true;
                self.online += 1;
                transitions.push((id, true));
            }
        }
        came.clear();
        self.came_online = came;
        if std::mem::take(&mut self.walk_all) {
            self.tick_all(now_ms, cfg, slots, transitions);
            return;
        }
        // Silent for less than this: online, and within the series TTL.
        let fresh = cfg.offline_after_ms.min(cfg.series_ttl_ms);
        // From the newest settled device on (they stay settled until they
        // send), extending the run while the devices met are settled.
        let mut i = match self.settled {
            NIL => self.tail,
            s => self.links[s as usize].prev,
        };
        let mut extend = true;
        while let (Some(d), Some(l)) =
            (self.devices.get_mut(i as usize), self.links.get(i as usize))
        {
            let silent = now_ms.saturating_sub(d.last_seen_ms);
            if silent <= fresh {
                break;
            }
            if d.was_online && !d.online(now_ms, cfg) {
                d.was_online = false;
                self.online -= 1;
                transitions.push((d.id, false));
            }
            if d.exported && silent > cfg.series_ttl_ms {
                d.exported = false;
                self.exported.remove(&d.id);
                slots.exported.give_back();
            }
            extend &= !d.was_online && !d.exported;
            if extend {
                self.settled = i;
            }
            i = l.prev;
        }
        self.totals.online = self.online as u64;
    }

    /// Makes the next tick look at every device.
    #[cfg(test)]
    pub(crate) fn walk_all_next_tick(&mut self) {
        self.walk_all = true;
    }

    /// [`Self::tick`] looking at every device.
    fn tick_all(
        &mut self,
        now_ms: u64,
        cfg: &EngineConfig,
        slots: &Slots,
        transitions: &mut Vec<(u32, bool)>,
    ) {
        let mut online = 0;
        // The next incremental tick finds the settled run again.
        self.settled = NIL;
        for d in &mut self.devices {
            let on = d.online(now_ms, cfg);
            if on {
                online += 1;
            }
            if on != d.was_online {
                d.was_online = on;
                transitions.push((d.id, on));
            }
            if d.exported && now_ms.saturating_sub(d.last_seen_ms) > cfg.series_ttl_ms {
                d.exported = false;
                self.exported.remove(&d.id);
                slots.exported.give_back();
            }
        }
        self.online = online;
        self.totals.online = online as u64;
    }
}
