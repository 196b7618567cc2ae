//! Device clocks judged against the server's.
//!
//! Two rules keep one bad timestamp from poisoning a device:
//!
//! * A frame whose timestamp is more than `max_future` ahead of the server
//!   clock is taken as if the device had no clock: its records are applied
//!   at the arrival time (batch samples at their offsets before it), and
//!   counted ([`ShardTotals::future`](super::ShardTotals)).
//! * State ordered by sample time (the last fix, the health fields, the
//!   last event, the reading windows) keeps a later sample time from being
//!   overwritten by an earlier one (reordering, backlog). But a stored time
//!   that is ahead of the server clock is only provisional: when the
//!   device's clock jumps back (a reboot without RTC, a clock corrected by
//!   GNSS or NTP), a sample dated at the server clock replaces it. Counted
//!   in [`ShardTotals::clock_resets`](super::ShardTotals).

/// How far a device time may be from the server clock and still count as
/// "now", and how far ahead a stored time must be to give way to one that
/// does: 10 s (well above network delay and NTP error, far below
/// `max_future`).
pub(crate) const CLOCK_SLACK_MS: u64 = 10_000;

/// The server clock at the arrival of a frame, with the configured lead
/// devices may have over it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// Arrival time, Unix ms (server clock).
    pub(crate) now_ms: u64,
    /// `max_future`, ms.
    pub(crate) max_future_ms: u64,
}

impl Clock {
    /// Whether a device timestamp is further ahead of the server clock
    /// than `max_future`.
    pub(crate) fn too_far_ahead(&self, t_ms: u64) -> bool {
        t_ms > self.now_ms.saturating_add(self.max_future_ms)
    }

    /// Whether `t_ms` is ahead of the server clock by more than the slack.
    pub(crate) fn ahead(&self, t_ms: u64) -> bool {
        t_ms > self.now_ms.saturating_add(CLOCK_SLACK_MS)
    }

    /// Whether a sample at `t_ms`, earlier than the stored `stored_ms`,
    /// replaces it because the stored time cannot be right: it is beyond
    /// `max_future` (kept from an older version's snapshot, or the server
    /// clock went back), or it is ahead of the server clock while `t_ms` is
    /// the server clock's time (within the slack): the device's clock
    /// jumped back.
    pub(crate) fn resets(&self, stored_ms: u64, t_ms: u64) -> bool {
        t_ms < stored_ms
            && (self.too_far_ahead(stored_ms)
                || self.ahead(stored_ms) && t_ms.abs_diff(self.now_ms) <= CLOCK_SLACK_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_000_000_000;

    #[test]
    fn only_a_stored_time_ahead_of_the_server_gives_way() {
        let c = Clock { now_ms: NOW, max_future_ms: 300_000 };
        // A reordered or backlog sample against an honest stored time.
        assert!(!c.resets(NOW - 1_000, NOW - 2_000));
        assert!(!c.resets(NOW, NOW - 86_400_000));
        // Newer samples never "reset" anything.
        assert!(!c.resets(NOW + 240_000, NOW + 250_000));
        // A stored time 4 minutes ahead gives way to one at the server clock...
        assert!(c.resets(NOW + 240_000, NOW + 1_000));
        assert!(c.resets(NOW + 240_000, NOW - 5_000));
        // ...but not to a reordered frame of a device whose clock runs fast.
        assert!(!c.resets(NOW + 240_000, NOW + 239_000));
        // Within the slack, a stored time is honest enough.
        assert!(!c.resets(NOW + CLOCK_SLACK_MS, NOW));
        // Beyond max_future (2100), any earlier time replaces it.
        assert!(c.resets(4_102_444_800_000, NOW - 86_400_000));
        assert!(c.too_far_ahead(NOW + 300_001) && !c.too_far_ahead(NOW + 300_000));
        assert!(!Clock { now_ms: u64::MAX, max_future_ms: u64::MAX }.too_far_ahead(u64::MAX));
    }
}
