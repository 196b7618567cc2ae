//! Per-device sequence accounting: lost, duplicate, reordered and late
//! frames from the wrapping u32 sequence number, with a 64-frame window.

use serde::{Deserialize, Serialize};

/// How many sequence numbers below the highest one are remembered.
pub(crate) const WINDOW: u32 = 64;
/// A forward jump larger than this is taken as a restart of the device's
/// counter, not as that many lost frames.
pub(crate) const MAX_JUMP: u32 = 65_536;
/// This many consecutive frames behind the window are taken as a restart.
pub(crate) const STALE_RUN_RESET: u8 = 4;

/// What one sequence number turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeqOutcome {
    /// The first frame seen from the device.
    First,
    /// Newer than every frame so far; `gap` frames between are missing.
    Ahead {
        /// Sequence numbers skipped (counted lost until they arrive).
        gap: u32,
    },
    /// Older than the newest, inside the window, not seen before: it fills
    /// a gap (no longer lost).
    Reordered,
    /// Already seen.
    Duplicate,
    /// Older than the window: too late to tell (counted `late`).
    Late,
    /// The device's counter restarted (reboot, Hello, or a jump too large).
    Restart,
}

/// Sequence state and counters of one device.
///
/// `bits` bit `i` set means sequence number `highest - 1 - i` has been
/// received (or was before the device's first frame / last restart).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SeqTracker {
    started: bool,
    stale_run: u8,
    highest: u32,
    bits: u64,
    /// Window positions from before the first frame (or the last restart):
    /// never counted as gaps, so a frame arriving there is late, not a
    /// reordered gap filler.
    #[serde(default)]
    unknown: u64,
    /// Distinct frames received.
    pub received: u64,
    /// Sequence numbers skipped when a newer frame arrived (monotonic).
    /// Each one is later either filled (`reordered`), still awaited inside
    /// the window ([`pending`](Self::pending)) or confirmed lost.
    pub gaps: u64,
    /// Frames received more than once (extra copies).
    pub duplicates: u64,
    /// Frames that arrived after a newer one, inside the window.
    pub reordered: u64,
    /// Frames that arrived older than the window, or from before the first
    /// frame seen.
    pub late: u64,
    /// Counter restarts.
    pub restarts: u64,
}

impl SeqTracker {
    /// Skipped sequence numbers still inside the window (may yet arrive):
    /// none before the first frame (a device told apart by record time
    /// never starts its tracker).
    pub(crate) fn pending(&self) -> u64 {
        if !self.started {
            return 0;
        }
        u64::from((!self.bits & !self.unknown).count_ones())
    }

    /// Frames missing right now: skipped and not arrived since.
    pub(crate) fn lost(&self) -> u64 {
        // Saturating like the fleet totals: a state restored from an older
        // or damaged snapshot must not panic a scrape.
        self.gaps.saturating_sub(self.reordered)
    }

    /// Frames confirmed lost: skipped and out of the window without arriving.
    /// Monotonic (a counter), unlike [`lost`](Self::lost).
    pub(crate) fn lost_confirmed(&self) -> u64 {
        self.gaps.saturating_sub(self.reordered).saturating_sub(self.pending())
    }

    /// The newest sequence number seen, if any.
    pub(crate) fn highest(&self) -> Option<u32> {
        self.started.then_some(self.highest)
    }

    /// Whether the position `d` (< 0) behind the highest is a skipped
    /// number still inside the window.
    fn is_gap(&self, d: i32) -> bool {
        let back = d.unsigned_abs();
        d < 0 && back <= WINDOW && (self.bits | self.unknown) & (1u64 << (back - 1)) == 0
    }

    fn restart(&mut self, seq: u32) -> SeqOutcome {
        self.highest = seq;
        self.bits = 0;
        self.unknown = u64::MAX;
        self.stale_run = 0;
        self.received += 1;
        if self.started {
            self.restarts += 1;
            SeqOutcome::Restart
        } else {
            self.started = true;
            SeqOutcome::First
        }
    }

    /// Accounts for a frame with sequence number `seq`. `hello` marks a
    /// boot announcement, which starts a new epoch unless it is a copy of
    /// the newest frame or a late arrival that fills a gap in the window
    /// (a Hello that was overtaken by the frames after it).
    ///
    /// This is accounting only: replay protection of signed frames has its
    /// own window (`crate::replay`), which never moves backwards.
    pub(crate) fn observe(&mut self, seq: u32, hello: bool) -> SeqOutcome {
        if !self.started {
            return self.restart(seq);
        }
        let d = seq.wrapping_sub(self.highest) as i32;
        if hello && d != 0 && !self.is_gap(d) {
            return self.restart(seq);
        }
        if d > 0 {
            let d = d.unsigned_abs();
            if d > MAX_JUMP {
                return self.restart(seq);
            }
            let gap = d - 1;
            self.gaps += u64::from(gap);
            // Shift the window and record the old highest at bit d-1.
            self.bits = if d >= 64 { 0 } else { self.bits << d };
            self.unknown = if d >= 64 { 0 } else { self.unknown << d };
            if d <= 64 {
                self.bits |= 1u64 << (d - 1);
            }
            self.highest = seq;
            self.received += 1;
            self.stale_run = 0;
            SeqOutcome::Ahead { gap }
        } else if d == 0 {
            self.duplicates += 1;
            SeqOutcome::Duplicate
        } else {
            let back = d.unsigned_abs();
            if back <= WINDOW {
                self.stale_run = 0;
                let bit = 1u64 << (back - 1);
                if self.bits & bit != 0 {
                    self.duplicates += 1;
                    SeqOutcome::Duplicate
                } else if self.unknown & bit != 0 {
                    // From before the first frame we saw: never a gap.
                    self.bits |= bit;
                    self.received += 1;
                    self.late += 1;
                    SeqOutcome::Late
                } else {
                    self.bits |= bit;
                    self.reordered += 1;
                    self.received += 1;
                    SeqOutcome::Reordered
                }
            } else {
                self.stale_run += 1;
                if self.stale_run >= STALE_RUN_RESET {
                    return self.restart(seq);
                }
                self.late += 1;
                SeqOutcome::Late
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed(seqs: &[u32]) -> SeqTracker {
        let mut t = SeqTracker::default();
        for &s in seqs {
            t.observe(s, false);
        }
        t
    }

    /// A state whose counters disagree (restored from an older or damaged
    /// snapshot) gives 0, as the fleet totals do, instead of panicking the
    /// scrape that asks.
    #[test]
    fn inconsistent_counters_saturate() {
        let t = SeqTracker { gaps: 2, reordered: 5, ..SeqTracker::default() };
        assert_eq!(t.lost(), 0);
        assert_eq!(t.lost_confirmed(), 0);
    }

    /// A tracker no frame started (a device told apart by record time, such
    /// as a Teltonika tracker) awaits nothing: before this, it reported its
    /// 64 window positions as pending, and a restart added them to the
    /// fleet's pending count.
    #[test]
    fn an_unstarted_tracker_awaits_nothing() {
        let t = SeqTracker { received: 12, ..SeqTracker::default() };
        assert_eq!((t.pending(), t.lost(), t.lost_confirmed()), (0, 0, 0));
    }

    #[test]
    fn in_order() {
        let t = feed(&[0, 1, 2, 3, 4]);
        assert_eq!((t.received, t.lost(), t.duplicates, t.reordered), (5, 0, 0, 0));
    }

    #[test]
    fn gap_then_fill() {
        let mut t = feed(&[0, 1, 4]);
        assert_eq!(t.lost(), 2);
        assert_eq!(t.observe(2, false), SeqOutcome::Reordered);
        assert_eq!(t.lost(), 1);
        assert_eq!(t.observe(2, false), SeqOutcome::Duplicate);
        assert_eq!((t.received, t.lost(), t.duplicates, t.reordered), (4, 1, 1, 1));
    }

    #[test]
    fn duplicates_of_newest_and_older() {
        let t = feed(&[5, 5, 6, 5, 6]);
        assert_eq!((t.received, t.duplicates), (2, 3));
    }

    #[test]
    fn wraps_around() {
        let t = feed(&[u32::MAX - 1, u32::MAX, 0, 1]);
        assert_eq!((t.received, t.lost(), t.restarts), (4, 0, 0));
        let mut t = feed(&[u32::MAX, 1]);
        assert_eq!(t.lost(), 1);
        assert_eq!(t.observe(0, false), SeqOutcome::Reordered);
        assert_eq!(t.lost(), 0);
    }

    #[test]
    fn window_edges() {
        let mut t = feed(&[100]);
        t.observe(100 + 64, false);
        assert_eq!(t.lost(), 63);
        // 100 is exactly 64 behind: inside the window, already seen.
        assert_eq!(t.observe(100, false), SeqOutcome::Duplicate);
        assert_eq!(t.observe(101, false), SeqOutcome::Reordered);
        assert_eq!(t.observe(99, false), SeqOutcome::Late);
        assert_eq!((t.pending(), t.lost_confirmed()), (62, 0));
        t.observe(100 + 64 + 65, false);
        assert_eq!(t.lost(), 62 + 64);
        // The window now holds only skipped numbers (165..=228); the 62
        // earlier gaps fell out of it unfilled.
        assert_eq!((t.pending(), t.lost_confirmed()), (64, 62));
        assert_eq!(t.observe(100 + 64 + 1, false), SeqOutcome::Reordered);
        assert_eq!((t.pending(), t.lost_confirmed()), (63, 62));
    }

    #[test]
    fn restarts() {
        let mut t = feed(&[1000, 1001]);
        assert_eq!(t.observe(0, true), SeqOutcome::Restart);
        assert_eq!(t.observe(1, false), SeqOutcome::Ahead { gap: 0 });
        assert_eq!(t.lost(), 0);
        // A copy of the Hello is a duplicate, not another restart.
        let mut t = feed(&[0]);
        assert_eq!(t.observe(0, true), SeqOutcome::Duplicate);
        // A jump beyond MAX_JUMP restarts.
        let mut t = feed(&[0]);
        assert_eq!(t.observe(MAX_JUMP + 1, false), SeqOutcome::Restart);
        assert_eq!(t.lost(), 0);
        // Four consecutive frames behind the window restart.
        let mut t = feed(&[5000]);
        for s in 0..3 {
            assert_eq!(t.observe(s, false), SeqOutcome::Late);
        }
        assert_eq!(t.observe(3, false), SeqOutcome::Restart);
        assert_eq!(t.observe(4, false), SeqOutcome::Ahead { gap: 0 });
    }

    #[test]
    fn frames_from_before_the_first_one_are_late_not_duplicates() {
        let mut t = feed(&[10]);
        assert_eq!(t.observe(9, false), SeqOutcome::Late);
        assert_eq!(t.observe(8, false), SeqOutcome::Late);
        assert_eq!(t.observe(9, false), SeqOutcome::Duplicate);
        assert_eq!((t.received, t.late, t.duplicates, t.lost(), t.pending()), (3, 2, 1, 0, 0));
        // Real gaps after the first frame still work.
        t.observe(13, false);
        assert_eq!((t.lost(), t.pending()), (2, 2));
        assert_eq!(t.observe(12, false), SeqOutcome::Reordered);
        assert_eq!((t.lost(), t.pending(), t.lost_confirmed()), (1, 1, 0));
    }

    #[test]
    fn a_hello_overtaken_by_later_frames_fills_its_gap() {
        // The Hello (seq 0) arrives after frames 1 and 2: it is reordered,
        // not a reboot, and the frames after it are not counted again.
        let mut t = feed(&[5]);
        assert_eq!(t.observe(0, true), SeqOutcome::Restart);
        t.observe(2, false);
        assert_eq!(t.observe(1, true), SeqOutcome::Reordered);
        assert_eq!(t.observe(3, false), SeqOutcome::Ahead { gap: 0 });
        assert_eq!((t.received, t.lost(), t.duplicates, t.restarts), (5, 0, 0, 1));
        // A Hello reusing a number already received is a reboot.
        assert_eq!(t.observe(1, true), SeqOutcome::Restart);
    }

    proptest! {
        /// Any permutation-with-copies of a sequence inside the window:
        /// lost + received = span, and duplicates = extra copies.
        #[test]
        fn accounting_identity(n in 1u32..300, start: u32,
                               reverse in proptest::collection::vec(any::<bool>(), 40),
                               drops in proptest::collection::btree_set(1u32..300, 0..30),
                               dups in proptest::collection::btree_set(0u32..300, 0..30)) {
            let kept: Vec<u32> = (0..n).filter(|i| *i == 0 || !drops.contains(i)).collect();
            // Reverse some chunks of 8 (never the first frame): a frame moves
            // at most 7 places, so it stays inside the window.
            let mut order = vec![kept[0]];
            for (c, chunk) in kept[1..].chunks(8).enumerate() {
                let mut chunk = chunk.to_vec();
                if reverse[c % reverse.len()] { chunk.reverse(); }
                order.extend(chunk);
            }
            let mut copies = 0u64;
            let mut sent = Vec::new();
            for s in order { sent.push(s); if dups.contains(&s) { sent.push(s); copies += 1; } }
            let mut t = SeqTracker::default();
            for s in &sent { t.observe(start.wrapping_add(*s), false); }
            let max = *sent.iter().max().unwrap();
            let delivered = (0..=max).filter(|i| *i == 0 || !drops.contains(i)).count() as u64;
            prop_assert_eq!(t.received, delivered);
            prop_assert_eq!(t.lost(), u64::from(max) + 1 - delivered);
            prop_assert_eq!(t.duplicates, copies);
            prop_assert_eq!(t.late, 0);
        }
    }
}
