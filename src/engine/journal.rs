//! The frames each shard applied, in the order it applied them: what the
//! journal writes down between two snapshots, so that a crash loses at most
//! one journal interval of accepted state.
//!
//! Replaying a shard's frames over the snapshot in the same order, at the
//! same arrival times, gives the same state: the engine is deterministic
//! (no clock of its own, no randomness), and a device lives in one shard,
//! so the order between shards does not matter.
//!
//! Sans-IO like the rest of the engine: the log is bytes in memory, taken
//! by the journal writer once an interval under the shard's lock (a swap of
//! two buffers, nothing copied).
//!
//! Record format, repeated: the arrival time (u64 little-endian Unix ms),
//! the size of the datagram it came in (u16, saturating), how copies are
//! told apart (u8: 0 sequence, 1 record time), the frame's length (u16) and
//! the frame in fleetwire's wire format: its bytes as they arrived (a
//! signature, checked on arrival, is not checked again), or for frames made
//! from another protocol, the frame encoded.

use fleetwire_proto::MAX_FRAME_LEN;

use super::{Accepted, Dedup};

/// Bytes of a record before its frame.
const RECORD_HEAD: usize = 8 + 2 + 1 + 2;

/// One shard's log of applied frames.
#[derive(Debug, Default)]
pub(crate) struct ShardLog {
    /// Whether frames are written down at all (off without a data dir, and
    /// while a journal is being replayed).
    enabled: bool,
    /// Records logged in this run before the ones in `buf`.
    first: u64,
    /// Records in `buf`.
    count: u32,
    /// The records since the journal last took them, in `buf[..used]`;
    /// the rest is zeroed room for the next record (so writing one does not
    /// clear 1,200 bytes first).
    buf: Vec<u8>,
    /// Bytes of `buf` holding records.
    used: usize,
    /// Frames that could not be written down (too long to encode).
    unrecorded: u64,
}

/// What the journal takes from a shard: `count` records numbered from
/// `first` (within this run).
#[derive(Debug, Default)]
pub(crate) struct LogChunk {
    /// Number of the first record (records logged in this run before it).
    pub first: u64,
    /// Records in `bytes`.
    pub count: u32,
    /// The records.
    pub bytes: Vec<u8>,
}

impl ShardLog {
    /// Turns logging on or off.
    pub(crate) fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    /// Records logged in this run so far (the number the next one gets):
    /// a snapshot copying this shard notes it, so a replay skips what the
    /// snapshot already holds.
    pub(crate) fn position(&self) -> u64 {
        self.first + u64::from(self.count)
    }

    /// Frames that could not be written down since start.
    pub(crate) fn unrecorded(&self) -> u64 {
        self.unrecorded
    }

    /// Writes down a frame about to be applied at `now_ms`: its bytes as
    /// they arrived when it came in the wire format, else encoded.
    #[inline]
    pub(crate) fn record(&mut self, now_ms: u64, a: &Accepted<'_>) {
        if self.enabled {
            self.write(now_ms, a);
        }
    }

    /// [`Self::record`] with logging on.
    fn write(&mut self, now_ms: u64, a: &Accepted<'_>) {
        let start = self.used;
        let room = start + RECORD_HEAD + MAX_FRAME_LEN.max(a.wire.len());
        if self.buf.len() < room {
            // Zero only the new room (the Vec doubles its capacity, but
            // pages past the length are never touched, so the log's
            // resident memory is what it holds, not twice that).
            self.buf.resize(room, 0);
        }
        let (head, frame) = self.buf[start..room].split_at_mut(RECORD_HEAD);
        let len = match a.wire.len() {
            0 => fleetwire_proto::encode(&a.frame, frame),
            n => {
                frame[..n].copy_from_slice(a.wire);
                Ok(n)
            }
        };
        let Ok(len) = len else {
            self.unrecorded += 1;
            return;
        };
        // At most a datagram: 65,535 bytes.
        let Ok(len16) = u16::try_from(len) else {
            self.unrecorded += 1;
            return;
        };
        head[..8].copy_from_slice(&now_ms.to_le_bytes());
        let bytes = u16::try_from(a.bytes).unwrap_or(u16::MAX);
        head[8..10].copy_from_slice(&bytes.to_le_bytes());
        head[10] = match a.dedup {
            Dedup::Sequence => 0,
            Dedup::RecordTime => 1,
        };
        head[11..13].copy_from_slice(&len16.to_le_bytes());
        self.used = start + RECORD_HEAD + len;
        self.count += 1;
    }

    /// Takes the records logged since the last call, leaving `spare` (an
    /// emptied buffer of an earlier chunk, so the log does not allocate
    /// once warm) in their place.
    pub(crate) fn take(&mut self, mut spare: Vec<u8>) -> LogChunk {
        spare.clear();
        // A spare left from a burst would keep its memory resident for
        // good: past four times what this interval held, start afresh.
        if spare.capacity() > 4 * self.used.max(1 << 16) {
            spare = Vec::new();
        }
        let mut bytes = std::mem::replace(&mut self.buf, spare);
        bytes.truncate(self.used);
        self.used = 0;
        let chunk = LogChunk { first: self.first, count: self.count, bytes };
        self.first += u64::from(self.count);
        self.count = 0;
        chunk
    }
}

/// Why a journal's records could not be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    /// The records end inside a record.
    #[error("a record is cut short")]
    Truncated,
    /// A record's copy mode is neither 0 nor 1.
    #[error("a record has an unknown copy mode {0}")]
    BadDedup(u8),
    /// A record's frame does not decode.
    #[error("a record's frame does not decode: {0}")]
    Frame(fleetwire_proto::DecodeError),
}

/// One record read back: the arrival time and the frame as it was accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoggedFrame<'a> {
    /// When it arrived, Unix ms.
    pub now_ms: u64,
    /// The frame, its datagram size and copy mode.
    pub accepted: Accepted<'a>,
}

/// Reads records back in order; stops at the first one that does not read
/// (what follows a damaged record cannot be trusted to be in order).
pub(crate) fn records(
    mut bytes: &[u8],
) -> impl Iterator<Item = Result<LoggedFrame<'_>, RecordError>> {
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || bytes.is_empty() {
            return None;
        }
        let r = next_record(&mut bytes);
        failed = r.is_err();
        Some(r)
    })
}

fn next_record<'a>(bytes: &mut &'a [u8]) -> Result<LoggedFrame<'a>, RecordError> {
    let (head, rest) = bytes.split_first_chunk::<RECORD_HEAD>().ok_or(RecordError::Truncated)?;
    let [t0, t1, t2, t3, t4, t5, t6, t7, b0, b1, dedup, l0, l1] = *head;
    let now_ms = u64::from_le_bytes([t0, t1, t2, t3, t4, t5, t6, t7]);
    let size = usize::from(u16::from_le_bytes([b0, b1]));
    let dedup = match dedup {
        0 => Dedup::Sequence,
        1 => Dedup::RecordTime,
        d => return Err(RecordError::BadDedup(d)),
    };
    let len = usize::from(u16::from_le_bytes([l0, l1]));
    if rest.len() < len {
        return Err(RecordError::Truncated);
    }
    let (wire, rest) = rest.split_at(len);
    let frame = fleetwire_proto::decode(wire).map_err(RecordError::Frame)?;
    *bytes = rest;
    Ok(LoggedFrame { now_ms, accepted: Accepted { frame, bytes: size, dedup, wire } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwire_proto::{Body, Event, Frame, Severity};

    fn frame(id: u32, seq: u32) -> Frame<'static> {
        Frame::new(
            id,
            seq,
            1_700_000_000_000,
            Body::Event(Event { code: 7, severity: Severity::Warning, text: Some("door") }),
        )
    }

    #[test]
    fn records_read_back_in_order_with_their_arrival() {
        let mut log = ShardLog::default();
        log.record(5, &Accepted::new(frame(1, 1), 40));
        assert_eq!(log.position(), 0, "off until enabled");
        log.set_enabled(true);
        log.record(10, &Accepted::new(frame(1, 2), 40));
        log.record(
            11,
            &Accepted { dedup: Dedup::RecordTime, ..Accepted::new(frame(2, 0), 70_000) },
        );
        assert_eq!(log.position(), 2);
        let chunk = log.take(Vec::new());
        assert_eq!((chunk.first, chunk.count), (0, 2));
        assert_eq!(log.position(), 2);
        let back: Vec<_> = records(&chunk.bytes).map(Result::unwrap).collect();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].now_ms, 10);
        assert_eq!(back[0].accepted.frame, frame(1, 2));
        assert_eq!(back[0].accepted.dedup, Dedup::Sequence);
        assert_eq!((back[1].now_ms, back[1].accepted.bytes), (11, usize::from(u16::MAX)));
        assert_eq!(back[1].accepted.dedup, Dedup::RecordTime);
        log.record(12, &Accepted::new(frame(3, 9), 40));
        let next = log.take(chunk.bytes);
        assert_eq!((next.first, next.count), (2, 1));
    }

    /// A frame that came in the wire format is written down as it came (a
    /// signed one with its tag), and reads back as the same frame.
    #[test]
    fn wire_bytes_are_copied_as_they_came() {
        let key = [7u8; 32];
        let mut buf = [0u8; 128];
        let n = fleetwire_proto::encode_signed(&frame(4, 1), &key, &mut buf).unwrap();
        let f = fleetwire_proto::decode(&buf[..n]).unwrap();
        let mut log = ShardLog::default();
        log.set_enabled(true);
        log.record(3, &Accepted { wire: &buf[..n], ..Accepted::new(f, n) });
        let chunk = log.take(Vec::new());
        assert_eq!(&chunk.bytes[RECORD_HEAD..], &buf[..n]);
        let back = records(&chunk.bytes).next().unwrap().unwrap();
        assert_eq!(back.accepted.frame, f);
        assert_eq!(back.accepted.wire, &buf[..n]);
    }

    #[test]
    fn a_damaged_record_ends_the_read() {
        let mut log = ShardLog::default();
        log.set_enabled(true);
        for s in 1..=3 {
            log.record(u64::from(s), &Accepted::new(frame(1, s), 40));
        }
        let bytes = log.take(Vec::new()).bytes;
        let one = bytes.len() / 3;
        let cut: Vec<_> = records(&bytes[..bytes.len() - 1]).collect();
        assert_eq!(cut.len(), 3);
        assert!(cut[..2].iter().all(Result::is_ok));
        assert_eq!(cut[2].unwrap_err(), RecordError::Truncated);
        let mut flipped = bytes.clone();
        flipped[one + RECORD_HEAD + 3] ^= 0x40;
        let r: Vec<_> = records(&flipped).collect();
        assert_eq!(r.len(), 2, "nothing after the damaged record");
        assert!(matches!(r[1], Err(RecordError::Frame(_))));
        let mut mode = bytes;
        mode[10] = 9;
        assert_eq!(records(&mode).next().unwrap().unwrap_err(), RecordError::BadDedup(9));
        assert!(records(&[]).next().is_none());
    }
}
