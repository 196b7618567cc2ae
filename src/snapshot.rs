//! Device state across restarts: written to `<data_dir>/state.snapshot`
//! periodically and at shutdown (write to a temporary file, fsync, rename),
//! read back at start.
//!
//! Format: the 8 bytes `FWSNAP01`, a u32 little-endian CRC-32C of the body,
//! then the body: postcard of [`Snapshot`]. A file that is truncated, fails
//! its CRC or does not parse is moved aside (`state.snapshot.corrupt-<unix
//! time>`) and the server starts empty.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{Device, Engine, ShardTotals};

const MAGIC: &[u8; 8] = b"FWSNAP01";
/// Name of the snapshot file in the data dir.
pub const FILE: &str = "state.snapshot";

/// What is saved.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken, Unix ms.
    pub taken_ms: u64,
    /// Fleet counters, so Prometheus counters continue instead of resetting.
    pub totals: ShardTotals,
    /// Every tracked device.
    pub devices: Vec<Device>,
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a snapshot, is truncated or fails its checksum.
    #[error("snapshot {path} is corrupt ({reason}); moved aside to {aside}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
        /// Where it was moved.
        aside: PathBuf,
    },
}

/// Collects the engine's state.
pub fn take(engine: &Engine, now_ms: u64) -> Snapshot {
    let mut devices = Vec::new();
    engine.for_each_shard(|s| devices.extend(s.devices().iter().cloned()));
    Snapshot { taken_ms: now_ms, totals: engine.summary().totals, devices }
}

/// Writes a snapshot atomically into `dir`. Returns the bytes written.
pub fn write(dir: &Path, snap: &Snapshot) -> Result<usize, SnapshotError> {
    let path = dir.join(FILE);
    let io = |source| SnapshotError::Io { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let body = postcard::to_stdvec(snap).map_err(|e| io(std::io::Error::other(e)))?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(MAGIC).map_err(io)?;
    f.write_all(&fleetwire_proto::crc32c(&body).to_le_bytes()).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(body.len() + 12)
}

/// Reads the snapshot in `dir`, if there is one. A corrupt file is moved
/// aside and reported as [`SnapshotError::Corrupt`].
pub fn read(dir: &Path) -> Result<Option<Snapshot>, SnapshotError> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::Io { path, source }),
    };
    let parsed = (|| {
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or("not a fleetwire snapshot")?;
        let (crc, body) = rest.split_first_chunk::<4>().ok_or("truncated header")?;
        if fleetwire_proto::crc32c(body) != u32::from_le_bytes(*crc) {
            return Err("checksum mismatch (truncated or damaged)");
        }
        postcard::from_bytes::<Snapshot>(body).map_err(|_| "body does not parse")
    })();
    match parsed {
        Ok(s) => Ok(Some(s)),
        Err(reason) => {
            let aside = dir.join(format!("{FILE}.corrupt-{}", crate::now_ms() / 1000));
            std::fs::rename(&path, &aside)
                .map_err(|source| SnapshotError::Io { path: path.clone(), source })?;
            Err(SnapshotError::Corrupt { path, reason: reason.into(), aside })
        }
    }
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
            e.ingest(
                1_000 + u64::from(i) * 1000,
                &[Accepted { frame: f, bytes: 40, require_fresh: false }],
            );
        }
        e
    }

    #[test]
    fn round_trip_restores_everything() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine_with_traffic();
        write(dir.path(), &take(&e, 99)).unwrap();
        let snap = read(dir.path()).unwrap().unwrap();
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
                Err(SnapshotError::Corrupt { aside, .. }) => {
                    assert!(aside.exists());
                    assert!(!path.exists());
                    std::fs::remove_file(aside).unwrap();
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(read(dir.path()).unwrap().is_none());
    }
}
