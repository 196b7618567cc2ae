//! A shard's index of its devices: device id to slab index.
//!
//! Open addressing with linear probing over 8-byte slots, each the id in
//! its low half and the slab index in its high half (all ones is an empty
//! slot: no slab index is `u32::MAX`, the eviction list's end marker),
//! kept at most half full, so
//! that a lookup almost always reads one cache line (eight slots). That
//! line is known from the id alone, before the lookup: `Engine::ingest`
//! asks for the lines of a whole batch first, so their misses overlap,
//! then looks the devices up. Written here rather than taken from
//! `hashbrown` (which it replaces): hashbrown cannot say where a key's
//! group is before it looks, and its lookups (control bytes, then the
//! bucket) were two misses in a row for every datagram of a receiver
//! draining a full queue (BENCHMARKS.md).
//!
//! Ids come from the network, so the slot of an id is a keyed hash of it
//! (foldhash with a per-process random seed, what hashbrown uses by
//! default): ids chosen to collide cannot be computed offline. Removal
//! shifts the slots that follow back (no tombstones), so the probe runs
//! stay as short as the load allows.

use std::hash::BuildHasher;

/// The keyed hash of device ids, shared by an engine's indexes (so a batch
/// hashes each id once, whatever shard it goes to).
pub(crate) type IdHasher = foldhash::fast::RandomState;

/// Device id to slab index.
#[derive(Clone)]
pub(crate) struct IdIndex {
    /// `(slab index << 32) | id`, or [`EMPTY`]. A power of two long.
    slots: Vec<u64>,
    len: usize,
    hasher: IdHasher,
}

impl std::fmt::Debug for IdIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdIndex").field("len", &self.len).field("slots", &self.slots.len()).finish()
    }
}

impl Default for IdIndex {
    fn default() -> Self {
        IdIndex::new(IdHasher::default())
    }
}

/// Slots of a new index.
const MIN_SLOTS: usize = 16;

/// An empty slot (slab index `u32::MAX`, which no device has).
const EMPTY: u64 = u64::MAX;

fn id_of(slot: u64) -> u32 {
    slot as u32
}

fn value_of(slot: u64) -> u32 {
    (slot >> 32) as u32
}

impl IdIndex {
    /// An empty index hashing ids with `hasher`.
    pub(crate) fn new(hasher: IdHasher) -> Self {
        IdIndex { slots: vec![EMPTY; MIN_SLOTS], len: 0, hasher }
    }

    /// The hash of `id` (for [`Self::prefetch`] and [`Self::get_hashed`]).
    #[inline]
    pub(crate) fn hash(&self, id: u32) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot a probe for `id` starts at.
    #[inline]
    fn home(&self, id: u32) -> usize {
        self.hash(id) as usize & self.mask()
    }

    /// Asks the CPU to load the line where a lookup of the id whose
    /// [`Self::hash`] is `hash` starts (a hint: it changes nothing).
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        if let Some(s) = self.slots.get(hash as usize & self.mask()) {
            super::prefetch::prefetch(s);
        }
    }

    /// Where `id` is, or the empty slot where it would go.
    #[inline]
    fn find(&self, id: u32) -> (usize, bool) {
        self.find_hashed(id, self.hash(id))
    }

    /// [`Self::find`] for an id whose [`Self::hash`] is `hash`.
    #[inline]
    fn find_hashed(&self, id: u32, hash: u64) -> (usize, bool) {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        // At most half full: an empty slot ends every probe.
        loop {
            match self.slots[i] {
                EMPTY => return (i, false),
                s if id_of(s) == id => return (i, true),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// The slab index of `id`.
    #[inline]
    pub(crate) fn get(&self, id: u32) -> Option<u32> {
        self.get_hashed(id, self.hash(id))
    }

    /// The slab index of `id`, whose [`Self::hash`] is `hash`.
    #[inline]
    pub(crate) fn get_hashed(&self, id: u32, hash: u64) -> Option<u32> {
        match self.find_hashed(id, hash) {
            (i, true) => Some(value_of(self.slots[i])),
            _ => None,
        }
    }

    /// Whether `id` is in.
    pub(crate) fn contains(&self, id: u32) -> bool {
        self.find(id).1
    }

    /// Sets the slab index of `id` (`value` below `u32::MAX`).
    pub(crate) fn insert(&mut self, id: u32, value: u32) {
        debug_assert!(value != u32::MAX, "not a slab index");
        let (i, found) = self.find(id);
        if found {
            self.slots[i] = (u64::from(value) << 32) | u64::from(id);
            return;
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow_to((self.len + 1) * 2);
            return self.insert(id, value);
        }
        self.slots[i] = (u64::from(value) << 32) | u64::from(id);
        self.len += 1;
    }

    /// Takes `id` out (backward-shift deletion: the slots after it that
    /// could sit closer to their home move back, so no probe meets a gap
    /// it should not).
    pub(crate) fn remove(&mut self, id: u32) {
        let (mut hole, found) = self.find(id);
        if !found {
            return;
        }
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s == EMPTY {
                break;
            }
            let home = self.home(id_of(s));
            // The slot at j may move back into the hole unless its home
            // lies cyclically in (hole, j].
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
    }

    /// Makes room for `n` more entries without growing on the way.
    pub(crate) fn reserve(&mut self, n: usize) {
        let need = (self.len + n) * 2;
        if need > self.slots.len() {
            self.grow_to(need);
        }
    }

    /// Rebuilds with at least `min_slots` slots (a power of two).
    fn grow_to(&mut self, min_slots: usize) {
        let n = min_slots.max(MIN_SLOTS).next_power_of_two();
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; n]);
        let mask = n - 1;
        for s in old.into_iter().filter(|&s| s != EMPTY) {
            let mut i = self.home(id_of(s));
            while self.slots[i] != EMPTY {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }

    /// Heap bytes of the table.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn insert_get_remove() {
        let mut x = IdIndex::default();
        assert_eq!(x.get(7), None);
        for id in 1..=1000u32 {
            x.insert(id, id * 3);
        }
        assert_eq!(x.len(), 1000);
        assert!(x.heap_bytes() <= 4096 * 8);
        for id in 1..=1000u32 {
            assert_eq!(x.get(id), Some(id * 3));
        }
        x.insert(500, 1);
        assert_eq!((x.get(500), x.len()), (Some(1), 1000));
        for id in (1..=1000u32).step_by(2) {
            x.remove(id);
        }
        for id in 1..=1000u32 {
            assert_eq!(x.get(id), (id % 2 == 0).then(|| if id == 500 { 1 } else { id * 3 }));
        }
        assert_eq!(x.len(), 500);
        // Every id is a key, 0 and u32::MAX too.
        x.insert(0, 9);
        x.insert(u32::MAX, 10);
        assert_eq!((x.get(0), x.get(u32::MAX), x.len()), (Some(9), Some(10), 502));
        x.remove(0);
        assert_eq!((x.get(0), x.get(u32::MAX), x.len()), (None, Some(10), 501));
    }

    proptest! {
        /// Whatever the operations, the index answers what a map would.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec(
            (0u8..4, prop_oneof![0u32..64, any::<u32>()], 0..u32::MAX), 0..600)) {
            let mut x = IdIndex::default();
            let mut m = std::collections::HashMap::new();
            for (op, id, v) in ops {
                match op {
                    0 | 1 => {
                        x.insert(id, v);
                        m.insert(id, v);
                    }
                    2 => {
                        x.remove(id);
                        m.remove(&id);
                    }
                    _ => x.reserve(id as usize % 100),
                }
                prop_assert_eq!(x.len(), m.len());
                prop_assert!(x.len() * 2 <= x.slots.len());
            }
            for (&id, &v) in &m {
                prop_assert_eq!(x.get(id), Some(v));
            }
            for id in 0..64u32 {
                prop_assert_eq!(x.get(id), m.get(&id).copied());
                prop_assert_eq!(x.contains(id), m.contains_key(&id));
            }
        }
    }
}
