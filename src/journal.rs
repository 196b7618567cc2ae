//! The journal: every frame the engine applied since the last snapshot,
//! appended to `<data_dir>/state.journal.<n>` and synced twice a
//! `journal_interval` (1 s by default), so that a crash loses at most that
//! much accepted state (half an interval, plus the time a write takes). At start the frames are applied again over the
//! snapshot, in the order each shard applied them, at their arrival times:
//! the engine is deterministic, so the state is what it was at the last
//! sync.
//!
//! Files. A journal file is the 8 bytes `FWJRNL01`, the run's id (u64
//! little-endian, random per start), then segments, one per sync: a u32
//! length, a u32 CRC-32C of the payload, the payload. A payload is the
//! time of the sync (u64 Unix ms), then chunks: a shard index (u32), the
//! number of the chunk's first record within its shard and run (u64), the
//! record count (u32), the byte length (u32) and the records
//! ([`crate::engine::journal`]). A segment cut short or failing its CRC
//! (the crash happened while it was written) ends the file's replay.
//!
//! Compaction. A snapshot first asks the journal to sync and to start a new
//! file (`n + 1`, created at its first sync), copies each shard noting how
//! many records it had logged by then, and records the run, the file
//! number and those positions after its devices. At start the snapshot is
//! restored and the files from that number on are replayed, skipping the
//! records the snapshot already held; once a snapshot is installed the
//! files before its number are deleted. A file from another run than the
//! snapshot's is replayed whole (it began after the snapshot).
//!
//! Why our own file and not an embedded store (redb, fjall): the journal is
//! append-only, read only at start and never queried, so a key-value store
//! would add a write per device and its own compaction for nothing; a
//! `write` and an `fdatasync` twice a second is the whole cost.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, RecordError, ShardTotals};
use crate::store::StoreError;
use crate::telemetry::{Counter, Gauge, Registry};

const MAGIC: &[u8; 8] = b"FWJRNL01";
const PREFIX: &str = "state.journal.";
/// A segment longer than this is damage, not data (a second of 1,200-byte
/// frames at 400,000 a second is 490 MB).
const MAX_SEGMENT: u32 = 1 << 30;

/// What a snapshot records of the journal: where replay starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JournalMark {
    /// The run that took the snapshot.
    pub run: u64,
    /// The first journal file with frames the snapshot may not hold.
    pub file: u64,
    /// Per shard of that run: records logged before the snapshot copied it.
    pub positions: Vec<u64>,
    /// Fleet counters summed from each shard at the moment it was copied
    /// (consistent with the devices and the positions).
    pub totals: ShardTotals,
}

/// The journal's counters.
#[derive(Debug, Clone)]
pub(crate) struct JournalMetrics {
    syncs: Counter,
    failures: Counter,
    records: Counter,
    bytes: Counter,
    unrecorded: Counter,
    sync_seconds: Gauge,
}

impl JournalMetrics {
    /// Registers the journal's series.
    pub(crate) fn new(r: &Registry) -> Self {
        JournalMetrics {
            syncs: r.counter(
                "fleetwire_journal_syncs_total",
                "Journal segments written and synced to the data dir.",
                &[],
            ),
            failures: r.counter(
                "fleetwire_journal_failures_total",
                "Journal writes that failed (their frames survive a crash only if a snapshot \
                 follows).",
                &[],
            ),
            records: r.counter(
                "fleetwire_journal_records_total",
                "Applied frames written to the journal.",
                &[],
            ),
            bytes: r.counter("fleetwire_journal_bytes_total", "Bytes written to the journal.", &[]),
            unrecorded: r.counter(
                "fleetwire_journal_unrecorded_total",
                "Applied frames the journal could not write down (they do not survive a crash).",
                &[],
            ),
            sync_seconds: r.gauge(
                "fleetwire_journal_sync_seconds",
                "Time the last journal write and sync took.",
                &[],
            ),
        }
    }
}

/// The journal being written.
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    run: u64,
    /// The file the next sync appends to.
    number: u64,
    file: Option<File>,
    spares: Vec<Vec<u8>>,
    segment: Vec<u8>,
    unrecorded_seen: u64,
    metrics: JournalMetrics,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

impl Journal {
    /// A journal for a new run in `dir` whose first file is `first`
    /// ([`ReplayReport::next_file`]). Nothing is created before the first
    /// sync.
    pub(crate) fn new(dir: &Path, first: u64, metrics: JournalMetrics) -> Self {
        Journal {
            dir: dir.to_path_buf(),
            run: rand::random(),
            number: first,
            file: None,
            spares: Vec::new(),
            segment: Vec::new(),
            unrecorded_seen: 0,
            metrics,
        }
    }

    /// This run's id.
    pub(crate) fn run(&self) -> u64 {
        self.run
    }

    /// Writes the frames applied since the last sync and syncs them. On a
    /// failure those frames are not in the journal (the next snapshot still
    /// holds their effect); the error says why.
    pub(crate) fn sync(&mut self, engine: &Engine, now_ms: u64) -> Result<(), StoreError> {
        let chunks = engine.take_logs(&mut self.spares);
        let unrecorded = engine.unrecorded();
        self.metrics.unrecorded.add(unrecorded.saturating_sub(self.unrecorded_seen));
        self.unrecorded_seen = unrecorded;
        let records: u64 = chunks.iter().map(|(_, c)| u64::from(c.count)).sum();
        if records == 0 {
            self.spares.extend(chunks.into_iter().map(|(_, c)| c.bytes));
            return Ok(());
        }
        let t = Instant::now();
        // The segment's header and the chunks' headers are built here; the
        // chunks' bytes are written from the shards' logs as they are (no
        // copy of a second of traffic), the CRC running over all of it.
        let seg = &mut self.segment;
        seg.clear();
        let mut payload_len = 8usize;
        let mut heads = Vec::with_capacity(chunks.len());
        for (shard, c) in &chunks {
            if c.count == 0 {
                continue;
            }
            let mut h = [0u8; 20];
            h[..4].copy_from_slice(&(*shard as u32).to_le_bytes());
            h[4..12].copy_from_slice(&c.first.to_le_bytes());
            h[12..16].copy_from_slice(&c.count.to_le_bytes());
            h[16..20].copy_from_slice(&(c.bytes.len() as u32).to_le_bytes());
            payload_len += h.len() + c.bytes.len();
            heads.push((h, c.bytes.as_slice()));
        }
        let mut crc = crc32c::crc32c(&now_ms.to_le_bytes());
        for (h, b) in &heads {
            crc = crc32c::crc32c_append(crc32c::crc32c_append(crc, h), b);
        }
        seg.extend_from_slice(&(payload_len as u32).to_le_bytes());
        seg.extend_from_slice(&crc.to_le_bytes());
        seg.extend_from_slice(&now_ms.to_le_bytes());
        let r = Self::append(&self.dir, self.run, &mut self.number, &mut self.file, seg, &heads);
        drop(heads);
        self.spares.extend(chunks.into_iter().map(|(_, c)| c.bytes));
        let written = (8 + payload_len) as u64;
        self.metrics.sync_seconds.set(t.elapsed().as_secs_f64());
        match &r {
            Ok(()) => {
                self.metrics.syncs.inc();
                self.metrics.records.add(records);
                self.metrics.bytes.add(written);
            }
            Err(_) => {
                self.metrics.failures.inc();
                // Start a fresh file next time: this one may end in a torn
                // segment that would stop its replay.
                self.file = None;
                self.number += 1;
            }
        }
        r
    }

    fn append(
        dir: &Path,
        run: u64,
        number: &mut u64,
        file: &mut Option<File>,
        head: &[u8],
        chunks: &[([u8; 20], &[u8])],
    ) -> Result<(), StoreError> {
        let path = dir.join(format!("{PREFIX}{:010}", *number));
        let err = io_err(&path);
        if file.is_none() {
            std::fs::create_dir_all(dir).map_err(&err)?;
            let mut f = File::create_new(&path).map_err(&err)?;
            f.write_all(MAGIC).map_err(&err)?;
            f.write_all(&run.to_le_bytes()).map_err(&err)?;
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            *file = Some(f);
        }
        let f = file.as_mut().ok_or_else(|| err(std::io::Error::other("no file")))?;
        f.write_all(head).map_err(&err)?;
        for (h, b) in chunks {
            f.write_all(h).map_err(&err)?;
            f.write_all(b).map_err(&err)?;
        }
        f.sync_data().map_err(&err)
    }

    /// Syncs, then moves on to a new file; returns its number (what a
    /// snapshot about to be taken records as [`JournalMark::file`]).
    pub(crate) fn rotate(&mut self, engine: &Engine, now_ms: u64) -> u64 {
        if let Err(e) = self.sync(engine, now_ms) {
            tracing::warn!(error = %e, "journal write failed before a snapshot");
        }
        if self.file.take().is_some() {
            self.number += 1;
        }
        self.number
    }

    /// Deletes the files a snapshot that recorded `mark` made redundant.
    pub(crate) fn compact(&self, mark: &JournalMark) {
        for (n, path) in files(&self.dir) {
            if n < mark.file {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "old journal file not removed");
                }
            }
        }
    }
}

/// The journal files in `dir`, by number.
pub(crate) fn files(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(PREFIX)?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// What replaying the journal did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ReplayReport {
    /// Files read.
    pub files: usize,
    /// Frames applied again.
    pub records: u64,
    /// Frames skipped because the snapshot held them.
    pub skipped: u64,
    /// Files whose end was torn or damaged (the crash happened while they
    /// were written), with what was wrong.
    pub damaged: Vec<(PathBuf, String)>,
    /// The number the new run's first file takes: after every file seen
    /// and not before the snapshot's (a file numbered lower would be taken
    /// for one the snapshot holds).
    pub next_file: u64,
}

/// Why a file could not be replayed to its end.
#[derive(Debug, thiserror::Error)]
enum SegmentError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a journal file")]
    Magic,
    #[error("a segment is cut short")]
    Truncated,
    #[error("a segment fails its checksum")]
    Checksum,
    #[error("a segment's chunk does not parse")]
    Chunk,
    #[error("{0}")]
    Record(RecordError),
}

/// Replays the journal files of `dir` over an engine holding the snapshot
/// that recorded `mark` (or nothing, without a snapshot). Reads one
/// segment at a time.
pub(crate) fn replay(dir: &Path, mark: Option<&JournalMark>, engine: &Engine) -> ReplayReport {
    let mut report = ReplayReport::default();
    let all = files(dir);
    report.next_file = all.last().map_or(0, |(n, _)| n + 1).max(mark.map_or(0, |m| m.file));
    for (n, path) in all {
        if mark.is_some_and(|m| n < m.file) {
            continue;
        }
        report.files += 1;
        if let Err(e) = replay_file(&path, mark, engine, &mut report) {
            report.damaged.push((path, e.to_string()));
        }
    }
    report
}

fn replay_file(
    path: &Path,
    mark: Option<&JournalMark>,
    engine: &Engine,
    report: &mut ReplayReport,
) -> Result<(), SegmentError> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut head = [0u8; 16];
    r.read_exact(&mut head).map_err(|_| SegmentError::Magic)?;
    if &head[..8] != MAGIC {
        return Err(SegmentError::Magic);
    }
    let run = u64::from_le_bytes(head[8..].try_into().map_err(|_| SegmentError::Magic)?);
    let positions = mark.filter(|m| m.run == run).map(|m| m.positions.as_slice());
    let mut payload = Vec::new();
    loop {
        let mut seg = [0u8; 8];
        match read_full(&mut r, &mut seg)? {
            0 => return Ok(()),
            8 => {}
            // A header cut short by the crash.
            _ => return Err(SegmentError::Truncated),
        }
        let len = u32::from_le_bytes([seg[0], seg[1], seg[2], seg[3]]);
        let crc = u32::from_le_bytes([seg[4], seg[5], seg[6], seg[7]]);
        if len > MAX_SEGMENT {
            return Err(SegmentError::Truncated);
        }
        payload.resize(len as usize, 0);
        r.read_exact(&mut payload).map_err(|_| SegmentError::Truncated)?;
        if crc32c::crc32c(&payload) != crc {
            return Err(SegmentError::Checksum);
        }
        apply_segment(&payload, positions, engine, report)?;
    }
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn apply_segment(
    payload: &[u8],
    positions: Option<&[u64]>,
    engine: &Engine,
    report: &mut ReplayReport,
) -> Result<(), SegmentError> {
    let mut rest = payload.get(8..).ok_or(SegmentError::Chunk)?;
    while !rest.is_empty() {
        let (h, body) = rest.split_first_chunk::<20>().ok_or(SegmentError::Chunk)?;
        let shard = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let first = u64::from_le_bytes([h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11]]);
        let len = u32::from_le_bytes([h[16], h[17], h[18], h[19]]) as usize;
        if body.len() < len {
            return Err(SegmentError::Chunk);
        }
        let (records, next) = body.split_at(len);
        rest = next;
        let skip = positions
            .map(|p| p.get(shard).copied().unwrap_or(0).saturating_sub(first))
            .unwrap_or(0);
        let (applied, err) = engine.replay(records, skip);
        report.records += applied;
        let count = u64::from(u32::from_le_bytes([h[12], h[13], h[14], h[15]]));
        report.skipped += skip.min(count);
        if let Some(e) = err {
            return Err(SegmentError::Record(e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use fleetwire_proto::{
        Body, Event, FixType, Frame, Hello, Monitoring, Position, Reading, Seq, Severity,
    };

    use super::*;
    use crate::engine::{Accepted, Dedup, EngineConfig};
    use crate::snapshot;

    const T0: u64 = 1_700_000_000_000;

    /// Step `step` of a mixed traffic: positions, health with readings,
    /// events, Hellos, copies and reordering, frames without timestamps and
    /// devices told apart by record time.
    fn traffic(step: u64, apply: &mut dyn FnMut(u64, &[Accepted<'_>])) {
        let now = T0 + step * 250;
        let readings = [
            Reading { name: "fuel", value: (step % 7) as f64 },
            Reading { name: "rpm", value: (step * 13 % 3000) as f64 },
        ];
        let mut frames = Vec::new();
        for k in 0..8u64 {
            let id = 1 + ((step * 7 + k * 13) % 40) as u32;
            let seq = (step / 3) as u32 + (k % 2) as u32;
            let body = match (step + k) % 6 {
                0 => Body::Monitoring(Monitoring {
                    battery_pct: Some((step % 100) as u8),
                    readings: Seq::from_slice(&readings),
                    ..Monitoring::EMPTY
                }),
                1 => {
                    Body::Event(Event { code: 7, severity: Severity::Warning, text: Some("door") })
                }
                2 if step % 50 == 0 => {
                    Body::Hello(Hello { firmware: "1.2", model: "t", capabilities: 1 })
                }
                _ => Body::Position(Position {
                    lat_e7: 480_000_000 + (step * 300) as i32 + id as i32 * 1000,
                    lon_e7: 110_000_000 + (step * 200) as i32,
                    alt_dm: 0,
                    speed_cm_s: 900,
                    heading_ddeg: 90,
                    hacc_cm: 300,
                    fix: FixType::Fix3d,
                    satellites: 9,
                }),
            };
            let ts = if k % 3 == 0 { 0 } else { now - 100 - k };
            let mut a = Accepted::new(Frame::new(id, seq, ts, body), 40 + k as usize);
            if id > 35 {
                a.dedup = Dedup::RecordTime;
                a.frame.sequence = 0;
            }
            frames.push(a);
        }
        apply(now, &frames);
    }

    fn same_state(a: &Engine, b: &Engine) {
        for id in 1..=40 {
            let norm = |d: &crate::engine::Device| {
                let mut d = d.clone();
                d.exported = false;
                d
            };
            assert_eq!(a.with_device(id, norm), b.with_device(id, norm), "device {id}");
        }
        assert_eq!(a.summary().totals, b.summary().totals);
        assert_eq!(a.summary().devices, b.summary().devices);
    }

    fn journal(dir: &Path) -> Journal {
        let first = files(dir).last().map_or(0, |f| f.0 + 1);
        Journal::new(dir, first, JournalMetrics::new(&Registry::new()))
    }

    #[test]
    fn snapshot_and_journal_give_back_the_state_of_the_last_sync() {
        let dir = tempfile::tempdir().unwrap();
        let live = Engine::new(EngineConfig::default(), 4);
        live.set_journaling(true);
        let reference = Engine::new(EngineConfig::default(), 4);
        let both = |step| {
            traffic(step, &mut |now, b| {
                live.ingest(now, b);
                reference.ingest(now, b);
            })
        };
        let mut j = journal(dir.path());
        for step in 0..200 {
            both(step);
            if step % 50 == 49 {
                j.sync(&live, 0).unwrap();
            }
        }
        // A snapshot with traffic between the copies of two shards.
        let file = j.rotate(&live, 0);
        let step = Cell::new(200);
        let cancel = || {
            both(step.get());
            step.set(step.get() + 1);
            false
        };
        let (_, _, mark) =
            snapshot::write_engine(&live, dir.path(), 0, (j.run(), file), &cancel).unwrap();
        j.compact(&mark);
        for s in step.get()..step.get() + 100 {
            both(s);
        }
        j.sync(&live, 0).unwrap();
        // Applied after the last sync: lost in the crash.
        for s in 400..420 {
            traffic(s, &mut |now, b| {
                live.ingest(now, b);
            });
        }
        drop(j);

        // Another shard count after the restart: devices move between shards.
        let restored = Engine::new(EngineConfig::default(), 8);
        let snap = snapshot::read(dir.path()).unwrap().unwrap();
        assert_eq!(snap.journal.as_ref(), Some(&mark));
        restored.restore(snap.devices, Some(snap.totals));
        let report = replay(dir.path(), snap.journal.as_ref(), &restored);
        assert!(report.damaged.is_empty(), "{report:?}");
        assert_eq!(report.files, 1, "files before the snapshot's were deleted");
        assert!(report.skipped > 0, "frames applied before a shard was copied are skipped");
        assert_eq!(report.records + report.skipped, (100 + step.get() - 200) * 8);
        same_state(&reference, &restored);
    }

    #[test]
    fn without_a_snapshot_every_file_is_replayed_and_a_torn_end_stops_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let live = Engine::new(EngineConfig::default(), 2);
        live.set_journaling(true);
        let reference = Engine::new(EngineConfig::default(), 2);
        let mut j = journal(dir.path());
        for step in 0..60 {
            traffic(step, &mut |now, b| {
                live.ingest(now, b);
                if step < 40 {
                    reference.ingest(now, b);
                }
            });
            if step == 39 || step == 59 {
                j.sync(&live, 0).unwrap();
            }
        }
        drop(j);
        // The crash cut the last segment short.
        let (_, path) = files(dir.path()).pop().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 5).unwrap();

        let restored = Engine::new(EngineConfig::default(), 2);
        let report = replay(dir.path(), None, &restored);
        assert_eq!(report.records, 40 * 8);
        assert_eq!(report.damaged.len(), 1);
        assert!(report.damaged[0].1.contains("cut short"), "{report:?}");
        same_state(&reference, &restored);

        // The next run writes a file of its own after it; both replay.
        let mut j2 = journal(dir.path());
        restored.set_journaling(true);
        for step in 40..50 {
            traffic(step, &mut |now, b| {
                restored.ingest(now, b);
                reference.ingest(now, b);
            });
        }
        j2.sync(&restored, 0).unwrap();
        assert_eq!(files(dir.path()).len(), 2);
        let again = Engine::new(EngineConfig::default(), 2);
        let report = replay(dir.path(), None, &again);
        assert_eq!(report.records, 50 * 8);
        same_state(&reference, &again);
    }

    /// A crash right after a snapshot leaves no journal file; the next run
    /// must still number its files from the snapshot's on, or its frames
    /// would be taken for ones the snapshot holds.
    #[test]
    fn a_run_after_a_compacted_journal_writes_files_the_snapshot_replays() {
        let dir = tempfile::tempdir().unwrap();
        let live = Engine::new(EngineConfig::default(), 2);
        live.set_journaling(true);
        let mut j = journal(dir.path());
        for step in 0..20 {
            traffic(step, &mut |now, b| {
                live.ingest(now, b);
            });
        }
        j.sync(&live, 0).unwrap();
        let at = (j.run(), j.rotate(&live, 0));
        let (_, _, mark) = snapshot::write_engine(&live, dir.path(), 0, at, &|| false).unwrap();
        j.compact(&mark);
        assert!(files(dir.path()).is_empty());
        drop(j);

        // The next run: restore, replay (nothing), then traffic and a sync.
        let next = Engine::new(EngineConfig::default(), 2);
        let snap = snapshot::read(dir.path()).unwrap().unwrap();
        next.restore(snap.devices, Some(snap.totals));
        let report = replay(dir.path(), snap.journal.as_ref(), &next);
        assert_eq!((report.files, report.next_file), (0, mark.file));
        let mut j2 =
            Journal::new(dir.path(), report.next_file, JournalMetrics::new(&Registry::new()));
        next.set_journaling(true);
        for step in 20..30 {
            traffic(step, &mut |now, b| {
                next.ingest(now, b);
            });
        }
        j2.sync(&next, 0).unwrap();
        let again = Engine::new(EngineConfig::default(), 2);
        let snap = snapshot::read(dir.path()).unwrap().unwrap();
        again.restore(snap.devices, Some(snap.totals));
        let report = replay(dir.path(), snap.journal.as_ref(), &again);
        assert_eq!(report.records, 10 * 8);
        same_state(&next, &again);
    }

    #[test]
    fn damage_inside_a_file_is_reported_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let live = Engine::new(EngineConfig::default(), 1);
        live.set_journaling(true);
        let mut j = journal(dir.path());
        traffic(0, &mut |now, b| {
            live.ingest(now, b);
        });
        j.sync(&live, 0).unwrap();
        let (_, path) = files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let fresh = Engine::new(EngineConfig::default(), 1);
        let report = replay(dir.path(), None, &fresh);
        assert_eq!(report.records, 0);
        assert!(report.damaged[0].1.contains("checksum"), "{report:?}");
        std::fs::write(&path, b"FWJRNL0").unwrap();
        let report = replay(dir.path(), None, &fresh);
        assert!(report.damaged[0].1.contains("not a journal"), "{report:?}");
        assert_eq!(fresh.summary().devices, 0);
    }
}
