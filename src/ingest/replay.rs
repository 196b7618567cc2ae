//! Anti-replay windows of the devices that sign their UDP frames.
//!
//! Replay protection is a security property, kept apart from the engine's
//! sequence *accounting* (lost, duplicates, reordered): the engine may evict
//! a device when `max_devices` is reached, and restarts its accounting on a
//! Hello or a large jump, but a signed device's window is never forgotten
//! nor moved backwards. One window per device that ever had a key in this
//! server's life (16 bytes of state each), so the memory is bounded by the
//! keys file, not by what arrives. The window moves only after the frame's
//! tag verified, so a forged frame cannot move it.
//!
//! Saved to `<data_dir>/replay.state` with every snapshot and restored at
//! start. Format: the 8 bytes `FWREPL01`, a u32 little-endian CRC-32C of the
//! rest, a u32 count, then per device 16 bytes: device id (u32), highest
//! sequence number accepted (u32), window bits (u64), all little endian.

use std::collections::HashMap;
use std::path::Path;

use parking_lot::Mutex;

use crate::store::{self, StoreError};

/// How many sequence numbers below the highest one are remembered.
pub(crate) const WINDOW: u32 = 64;
/// Name of the file in the data dir.
pub(crate) const FILE: &str = "replay.state";
const MAGIC: &[u8; 8] = b"FWREPL01";
const SHARDS: usize = 16;

/// The sliding window of one device: the highest sequence number accepted
/// and which of the [`WINDOW`] numbers below it were accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    highest: u32,
    /// Bit `i` set: `highest - 1 - i` was accepted, or is from before the
    /// first frame accepted (unknown, so refused: it may be a capture).
    bits: u64,
}

impl Window {
    /// The window after accepting the device's first frame, `seq`.
    pub(crate) fn first(seq: u32) -> Self {
        Window { highest: seq, bits: u64::MAX }
    }

    /// Accepts `seq` if it was never accepted and is not older than the
    /// window, moving the window. Serial-number arithmetic (RFC 1982): a
    /// number up to 2^31 - 1 ahead of the highest is newer, so a device's
    /// counter may jump forward (a reboot that continues from a persisted
    /// value) but never go back.
    pub(crate) fn accept(&mut self, seq: u32) -> bool {
        let d = seq.wrapping_sub(self.highest) as i32;
        if d > 0 {
            let d = d.unsigned_abs();
            self.bits = if d < 64 { self.bits << d } else { 0 };
            if d <= 64 {
                self.bits |= 1u64 << (d - 1);
            }
            self.highest = seq;
            true
        } else if d == 0 {
            false
        } else {
            let back = d.unsigned_abs();
            if back > WINDOW {
                return false;
            }
            let bit = 1u64 << (back - 1);
            let fresh = self.bits & bit == 0;
            self.bits |= bit;
            fresh
        }
    }
}

/// The windows of every signed device, sharded to keep lock hold times
/// short when several receive threads verify frames.
#[derive(Debug)]
pub(crate) struct ReplayWindows {
    shards: Box<[Mutex<HashMap<u32, Window>>]>,
}

impl Default for ReplayWindows {
    fn default() -> Self {
        ReplayWindows { shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }
}

impl ReplayWindows {
    fn shard(&self, device: u32) -> &Mutex<HashMap<u32, Window>> {
        &self.shards[device as usize % SHARDS]
    }

    /// Accepts `seq` from `device` once (see [`Window::accept`]); the
    /// first frame of a device with no window is accepted and opens it.
    /// Call only for frames whose tag verified.
    pub(crate) fn accept(&self, device: u32, seq: u32) -> bool {
        let mut s = self.shard(device).lock();
        match s.get_mut(&device) {
            Some(w) => w.accept(seq),
            None => {
                s.insert(device, Window::first(seq));
                true
            }
        }
    }

    /// Marks `seq` as seen for `device`, opening a window there (everything
    /// below counts as seen too) if it has none. For devices restored from
    /// an engine snapshot, in case the replay file was lost or damaged.
    pub(crate) fn seed(&self, device: u32, seq: u32) {
        let mut s = self.shard(device).lock();
        match s.get_mut(&device) {
            Some(w) => {
                w.accept(seq);
            }
            None => {
                s.insert(device, Window::first(seq));
            }
        }
    }

    /// The window of `device`, if it has one.
    #[cfg(test)]
    pub(crate) fn get(&self, device: u32) -> Option<Window> {
        self.shard(device).lock().get(&device).copied()
    }

    /// Number of windows.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// The file's bytes.
    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[0; 4]);
        let mut n = 0u32;
        for s in self.shards.iter() {
            for (id, w) in s.lock().iter() {
                body.extend_from_slice(&id.to_le_bytes());
                body.extend_from_slice(&w.highest.to_le_bytes());
                body.extend_from_slice(&w.bits.to_le_bytes());
                n += 1;
            }
        }
        body[..4].copy_from_slice(&n.to_le_bytes());
        let mut out = Vec::with_capacity(12 + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or("not a fleetwire replay file")?;
        let (crc, body) = rest.split_first_chunk::<4>().ok_or("truncated header")?;
        if crc32c::crc32c(body) != u32::from_le_bytes(*crc) {
            return Err("checksum mismatch (truncated or damaged)");
        }
        let (n, mut entries) = body.split_first_chunk::<4>().ok_or("truncated header")?;
        if entries.len() != u32::from_le_bytes(*n) as usize * 16 {
            return Err("length does not match the count");
        }
        let windows = ReplayWindows::default();
        while let Some((e, rest)) = entries.split_first_chunk::<16>() {
            let [a, b, c, d, h0, h1, h2, h3, bits @ ..] = *e;
            let id = u32::from_le_bytes([a, b, c, d]);
            let w = Window {
                highest: u32::from_le_bytes([h0, h1, h2, h3]),
                bits: u64::from_le_bytes(bits),
            };
            windows.shard(id).lock().insert(id, w);
            entries = rest;
        }
        Ok(windows)
    }

    /// Writes the windows atomically to `dir` (temporary file, fsync,
    /// rename). Returns the bytes written.
    pub(crate) fn save(&self, dir: &Path) -> Result<usize, StoreError> {
        let bytes = self.encode();
        store::write_bytes(dir, FILE, &bytes)?;
        Ok(bytes.len())
    }

    /// Reads the windows saved in `dir`, if any. A damaged file is moved
    /// aside and reported as [`StoreError::Corrupt`].
    pub(crate) fn load(dir: &Path) -> Result<Option<Self>, StoreError> {
        let Some(bytes) = store::read_if_exists(dir, FILE)? else { return Ok(None) };
        match Self::decode(&bytes) {
            Ok(w) => Ok(Some(w)),
            Err(reason) => Err(store::move_aside(dir, FILE, reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_number_is_accepted_once() {
        let mut w = Window::first(10);
        assert!(!w.accept(10));
        // From before the first frame: may be a capture.
        assert!(!w.accept(9));
        assert!(w.accept(12));
        assert!(w.accept(11));
        assert!(!w.accept(11));
        assert!(!w.accept(12));
        // Ahead by more than the window, then an old one.
        assert!(w.accept(200));
        assert!(!w.accept(12));
        assert!(w.accept(200 - 64));
        assert!(!w.accept(200 - 65));
        // Exactly 64 ahead keeps the old highest as seen.
        let mut w = Window::first(0);
        assert!(w.accept(64));
        assert!(!w.accept(0));
        assert!(w.accept(1));
        // Wrapping.
        let mut w = Window::first(u32::MAX - 1);
        assert!(w.accept(1));
        assert!(w.accept(u32::MAX));
        assert!(!w.accept(u32::MAX - 1));
    }

    #[test]
    fn a_forward_jump_is_a_reboot_never_a_way_back() {
        let mut w = Window::first(5);
        assert!(w.accept(131_077));
        for s in 0..=5 {
            assert!(!w.accept(s), "{s}");
        }
    }

    #[test]
    fn windows_survive_a_save_and_load_and_damage_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ReplayWindows::load(dir.path()).unwrap().is_none());
        let w = ReplayWindows::default();
        for d in 1..100u32 {
            for s in [3, 1, 7] {
                w.accept(d, s * d);
            }
        }
        w.save(dir.path()).unwrap();
        let back = ReplayWindows::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.len(), 99);
        for d in 1..100u32 {
            assert_eq!(back.get(d), w.get(d));
            assert!(!back.accept(d, 7 * d));
            assert!(back.accept(d, 8 * d));
        }
        let p = dir.path().join(FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&p, bytes).unwrap();
        let e = ReplayWindows::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        assert!(!p.exists());
    }
}
