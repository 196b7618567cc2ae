//! Device state across restarts: written to `<data_dir>/state.snapshot`
//! periodically and at shutdown (write to a temporary file, fsync, rename),
//! read back at start.
//!
//! Format: the 8 bytes `FWSNAP02`, a u32 little-endian CRC-32C of the body,
//! then the body: records of a u32 little-endian length and that many bytes
//! of postcard, first the snapshot time and fleet counters, then one per
//! device, then a length of 0xFFFFFFFF, then (since the journal) one more
//! record: the [`JournalMark`], with the fleet counters as each shard had
//! them when it was copied (readers of older versions stop at the end
//! marker; the CRC covers it). The engine is written one shard at
//! a time (a shard's devices are copied under its lock and serialized after
//! it is released), so a snapshot costs little more memory than one shard.
//! A file that is truncated, fails its CRC or does not parse is moved aside
//! (`state.snapshot.corrupt-<unix time>`) and the server starts empty.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::{Device, Engine, ShardTotals};
use crate::journal::JournalMark;
use crate::store::{self, StoreError};

const MAGIC: &[u8; 8] = b"FWSNAP02";
const END: u32 = u32::MAX;
/// Name of the snapshot file in the data dir.
pub(crate) const FILE: &str = "state.snapshot";

/// What is saved.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// When it was taken, Unix ms.
    pub taken_ms: u64,
    /// Fleet counters, so Prometheus counters continue instead of resetting.
    pub(crate) totals: ShardTotals,
    /// Every tracked device.
    pub(crate) devices: Vec<Device>,
    /// Where the journal's replay starts (none in snapshots written before
    /// the journal).
    pub(crate) journal: Option<JournalMark>,
}

impl Snapshot {
    /// Devices in the snapshot.
    pub(crate) fn device_count(&self) -> usize {
        self.devices.len()
    }
}

/// Collects the engine's state (all of it in memory: for tests and tools;
/// the server writes with [`write_engine`]).
pub(crate) fn take(engine: &Engine, now_ms: u64) -> Snapshot {
    let mut devices = Vec::new();
    engine.for_each_shard(|s| devices.extend(s.devices().iter().cloned()));
    Snapshot { taken_ms: now_ms, totals: engine.summary().totals, devices, journal: None }
}

/// A device's extension as snapshots wrote it before the odometer's way
/// (`DeviceExt::way`) was added.
#[derive(serde::Deserialize)]
struct ExtBeforeWay {
    interval_ms: u32,
    recent: Option<Box<crate::engine::device::RecentRecords>>,
}

/// A device's extension, of this version or an earlier one (whose device
/// measures its odometer's way once when its next fix comes).
fn read_ext(bytes: &[u8]) -> Option<crate::engine::device::DeviceExt> {
    if let Ok(ext) = postcard::from_bytes(bytes) {
        return Some(ext);
    }
    let e: ExtBeforeWay = postcard::from_bytes(bytes).ok()?;
    Some(crate::engine::device::DeviceExt {
        interval_ms: e.interval_ms,
        recent: e.recent,
        way: None,
    })
}

/// Writes records and keeps the CRC of everything written.
struct BodyWriter<W: Write> {
    out: W,
    crc: u32,
    bytes: usize,
}

impl<W: Write> BodyWriter<W> {
    fn raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.bytes += b.len();
        self.out.write_all(b)
    }
    fn record<T: Serialize>(&mut self, v: &T, scratch: &mut Vec<u8>) -> std::io::Result<()> {
        scratch.clear();
        let enc = postcard::to_extend(v, std::mem::take(scratch)).map_err(std::io::Error::other)?;
        *scratch = enc;
        self.flush_record(scratch)
    }

    /// A device's record: the device, then its extension (what snapshots of
    /// version 2 did not have) in the same record.
    fn device(&mut self, d: &Device, scratch: &mut Vec<u8>) -> std::io::Result<()> {
        scratch.clear();
        let enc = postcard::to_extend(d, std::mem::take(scratch)).map_err(std::io::Error::other)?;
        let enc = postcard::to_extend(&d.ext, enc).map_err(std::io::Error::other)?;
        *scratch = enc;
        self.flush_record(scratch)
    }

    fn flush_record(&mut self, scratch: &mut Vec<u8>) -> std::io::Result<()> {
        let len = u32::try_from(scratch.len()).map_err(std::io::Error::other)?;
        self.raw(&len.to_le_bytes())?;
        let body = std::mem::take(scratch);
        let r = self.raw(&body);
        *scratch = body;
        r
    }
}

/// Writes a snapshot file from a header and devices produced shard by
/// shard. Returns the bytes written.
fn write_with(
    dir: &Path,
    taken_ms: u64,
    totals: &ShardTotals,
    each_shard: impl FnOnce(&mut dyn FnMut(Vec<Device>) -> std::io::Result<()>) -> std::io::Result<()>,
    trailer: impl FnOnce() -> Option<JournalMark>,
) -> Result<usize, StoreError> {
    use std::io::{Seek, SeekFrom};
    let mut written = 0;
    store::write_atomic(dir, FILE, |file| {
        let mut w = BodyWriter { out: std::io::BufWriter::new(file), crc: 0, bytes: 0 };
        w.out.write_all(MAGIC)?;
        w.out.write_all(&[0u8; 4])?;
        let mut scratch = Vec::new();
        w.record(&(taken_ms, totals), &mut scratch)?;
        each_shard(&mut |devices: Vec<Device>| {
            for d in &devices {
                w.device(d, &mut scratch)?;
            }
            Ok(())
        })?;
        w.raw(&END.to_le_bytes())?;
        if let Some(mark) = trailer() {
            w.record(&mark, &mut scratch)?;
        }
        let (crc, bytes) = (w.crc, w.bytes);
        let mut file = w.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
        file.write_all(&crc.to_le_bytes())?;
        written = bytes + 12;
        Ok(file)
    })?;
    Ok(written)
}

/// Writes a snapshot atomically into `dir`. Returns the bytes written.
#[cfg(test)]
pub(crate) fn write(dir: &Path, snap: &Snapshot) -> Result<usize, StoreError> {
    write_with(
        dir,
        snap.taken_ms,
        &snap.totals,
        |f| f(snap.devices.clone()),
        || snap.journal.clone(),
    )
}

/// Writes the engine's state atomically into `dir`, one shard at a time,
/// recording that the journal of run `run` holds what follows from file
/// `file` on. Returns the bytes written and the number of devices, and the
/// mark recorded. Between two shards it asks `cancel`; when that says yes,
/// the write is given up (the old file stays) and the result is
/// [`StoreError::Cancelled`].
pub(crate) fn write_engine(
    engine: &Engine,
    dir: &Path,
    now_ms: u64,
    (run, file): (u64, u64),
    cancel: &dyn Fn() -> bool,
) -> Result<(usize, usize, JournalMark), StoreError> {
    let header_totals = engine.summary().totals;
    let mut count = 0;
    let mut cancelled = false;
    let mark = std::cell::RefCell::new(JournalMark { run, file, ..Default::default() });
    let r = write_with(
        dir,
        now_ms,
        &header_totals,
        |f| {
            let mut result = Ok(());
            engine.for_each_shard_marked(&mut |devices: Vec<Device>, m| {
                if cancel() {
                    cancelled = true;
                    result = Err(std::io::Error::other("cancelled"));
                    return false;
                }
                count += devices.len();
                let mut mark = mark.borrow_mut();
                mark.totals.add(&m.totals);
                mark.positions.push(m.position);
                result = f(devices);
                result.is_ok()
            });
            result
        },
        || Some(mark.borrow().clone()),
    );
    match r {
        Ok(bytes) => Ok((bytes, count, mark.into_inner())),
        Err(_) if cancelled => Err(StoreError::Cancelled),
        Err(e) => Err(e),
    }
}

/// Reads the snapshot in `dir`, if there is one. A corrupt file is moved
/// aside and reported as [`StoreError::Corrupt`].
pub(crate) fn read(dir: &Path) -> Result<Option<Snapshot>, StoreError> {
    let Some(bytes) = store::read_if_exists(dir, FILE)? else { return Ok(None) };
    match parse(&bytes) {
        Ok(s) => Ok(Some(s)),
        Err(reason) => Err(store::move_aside(dir, FILE, reason)),
    }
}

/// Takes one record off the front of `body`: `None` at the end marker.
fn take_record<'a>(body: &mut &'a [u8]) -> Result<Option<&'a [u8]>, &'static str> {
    let (len, rest) = body.split_first_chunk::<4>().ok_or("truncated record")?;
    let len = u32::from_le_bytes(*len);
    if len == END {
        *body = rest;
        return Ok(None);
    }
    let len = len as usize;
    if len > rest.len() {
        return Err("truncated record");
    }
    let (rec, rest) = rest.split_at(len);
    *body = rest;
    Ok(Some(rec))
}

/// Parses a snapshot file's bytes.
fn parse(bytes: &[u8]) -> Result<Snapshot, &'static str> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a fleetwire snapshot (or an older format)")?;
    let (crc, mut body) = rest.split_first_chunk::<4>().ok_or("truncated header")?;
    if crc32c::crc32c(body) != u32::from_le_bytes(*crc) {
        return Err("checksum mismatch (truncated or damaged)");
    }
    let head = take_record(&mut body)?.ok_or("no header record")?;
    let (taken_ms, totals): (u64, ShardTotals) =
        postcard::from_bytes(head).map_err(|_| "header does not parse")?;
    // Counted first, so the devices' vector is allocated once at its size
    // (doubling would hold up to 1.5 times it while it grows).
    let mut count = 0usize;
    let mut scan = body;
    while take_record(&mut scan)?.is_some() {
        count += 1;
    }
    let mut devices = Vec::with_capacity(count);
    while let Some(rec) = take_record(&mut body)? {
        let (mut d, ext) = postcard::take_from_bytes::<Device>(rec)
            .map_err(|_| "a device record does not parse")?;
        // Snapshots of version 2 have no extension.
        if !ext.is_empty() {
            d.ext = read_ext(ext).ok_or("a device extension does not parse")?;
        }
        devices.push(d);
    }
    // Snapshots written before the journal end at the end marker.
    let journal = match body.is_empty() {
        true => None,
        false => {
            let rec = take_record(&mut body)?.ok_or("an end marker for a journal record")?;
            let mark: JournalMark =
                postcard::from_bytes(rec).map_err(|_| "the journal record does not parse")?;
            Some(mark)
        }
    };
    // The totals as each shard had them when it was copied match its devices.
    let totals = journal.as_ref().map_or(totals, |m| m.totals.clone());
    Ok(Snapshot { taken_ms, totals, devices, journal })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Accepted, EngineConfig};
    use fleetwire_proto::{Body, FixType, Frame, Position};

    fn engine_with_traffic() -> Engine {
        let e = Engine::new(EngineConfig::default(), 4);
        for i in 0..50u32 {
            let p = Position {
                lat_e7: 480_000_000 + i as i32 * 1000,
                lon_e7: 110_000_000,
                alt_dm: 0,
                speed_cm_s: 500,
                heading_ddeg: 0,
                hacc_cm: 100,
                fix: FixType::Fix3d,
                satellites: 7,
            };
            let f = Frame::new(1 + i % 5, i / 5 * 2, 0, Body::Position(p));
            e.ingest(1_000 + u64::from(i) * 1000, &[Accepted::new(f, 40)]);
        }
        e
    }

    #[test]
    fn round_trip_restores_everything() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine_with_traffic();
        let (_, n, _) = write_engine(&e, dir.path(), 99, (1, 0), &|| false).unwrap();
        assert_eq!(n, 5);
        let snap = read(dir.path()).unwrap().unwrap();
        assert_eq!(snap.taken_ms, 99);
        let e2 = Engine::new(EngineConfig::default(), 4);
        e2.restore(snap.devices, Some(snap.totals));
        assert_eq!(e.summary().totals, e2.summary().totals);
        for id in 1..=5 {
            let a = e
                .with_device(id, |d| {
                    let mut d = d.clone();
                    d.exported = false;
                    d
                })
                .unwrap();
            let b = e2.with_device(id, |d| d.clone()).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn corrupt_or_truncated_files_are_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine_with_traffic();
        let n = write(dir.path(), &take(&e, 99)).unwrap();
        let path = dir.path().join(FILE);
        let bytes = std::fs::read(&path).unwrap();
        for damaged in [bytes[..n / 2].to_vec(), b"garbage".to_vec(), {
            let mut b = bytes.clone();
            b[n - 3] ^= 1;
            b
        }] {
            std::fs::write(&path, &damaged).unwrap();
            match read(dir.path()) {
                Err(StoreError::Corrupt { aside, .. }) => {
                    assert!(aside.exists());
                    assert!(!path.exists());
                    std::fs::remove_file(aside).unwrap();
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(read(dir.path()).unwrap().is_none());
    }
    #[test]
    fn a_device_extension_of_an_earlier_version_reads() {
        use crate::engine::device::{DeviceExt, RecentRecords};
        // The extension as snapshots wrote it before the odometer's way:
        // the interval, then the recent records.
        #[derive(serde::Serialize)]
        struct Before {
            interval_ms: u32,
            recent: Option<Box<RecentRecords>>,
        }
        let mut recent = RecentRecords::default();
        assert!(recent.observe(1_700_000_000_000, crate::engine::RecordKind::Position));
        for before in [
            Before { interval_ms: 3_750, recent: None },
            Before { interval_ms: 0, recent: Some(Box::new(recent.clone())) },
        ] {
            let bytes = postcard::to_allocvec(&before).unwrap();
            let ext = read_ext(&bytes).expect("an earlier extension reads");
            assert_eq!(
                ext,
                DeviceExt { interval_ms: before.interval_ms, recent: before.recent, way: None }
            );
        }
        // This version's, with a way, reads back as it was.
        let now = DeviceExt { interval_ms: 1, recent: None, way: Some((1.5e-6, -2.5e-7)) };
        assert_eq!(read_ext(&postcard::to_allocvec(&now).unwrap()), Some(now));
        assert_eq!(read_ext(&[0xff]), None);
    }
}
