//! Files in the data dir that must survive a crash: read whole, written to
//! a temporary file, synced and renamed over the old one, so a crash leaves
//! the old file or the new one and never a mix. A file that does not parse
//! is moved aside, not deleted, so an operator can look at it.
//!
//! Writers of the same file must not overlap (they would share the
//! temporary file); [`Store`] serialises them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The write was given up (the server is stopping); the old file stays.
    #[error("writing was cancelled")]
    Cancelled,
    /// The file is not one of ours, is truncated or fails its checksum.
    #[error("{path} is corrupt ({reason}); moved aside to {aside}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
        /// Where it was moved.
        aside: PathBuf,
    },
}

/// The data dir, with one lock that every writer of its state files holds
/// for the whole write.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    writing: Mutex<()>,
}

impl Store {
    /// The state files of `dir`.
    pub(crate) fn new(dir: &Path) -> Self {
        Store { dir: dir.to_path_buf(), writing: Mutex::new(()) }
    }

    /// Runs `f` (which writes state files) with every other writer of this
    /// store kept out.
    pub(crate) fn exclusive<T>(&self, f: impl FnOnce(&Path) -> T) -> T {
        let _g = self.writing.lock();
        f(&self.dir)
    }
}

/// Writes `dir/name` atomically: `write` fills a temporary file (a
/// buffered writer over it, which it returns), which is then synced and
/// renamed over the old file, and the directory synced.
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    write: impl FnOnce(File) -> std::io::Result<File>,
) -> Result<(), StoreError> {
    let path = dir.join(name);
    let io = |source| StoreError::Io { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let file = File::create(&tmp).map_err(io)?;
    let file = match write(file) {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
    };
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `bytes` as `dir/name` atomically.
pub(crate) fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic(dir, name, |mut f| {
        f.write_all(bytes)?;
        Ok(f)
    })
}

/// The bytes of `dir/name`, or `None` when there is no such file.
pub(crate) fn read_if_exists(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io { path, source }),
    }
}

/// Moves the damaged file `dir/name` aside (`<name>.corrupt-<unix time>`)
/// and says so; if it cannot be moved, the I/O error.
pub(crate) fn move_aside(dir: &Path, name: &str, reason: &str) -> StoreError {
    let path = dir.join(name);
    let aside = dir.join(format!("{name}.corrupt-{}", crate::clock::now_ms() / 1000));
    match std::fs::rename(&path, &aside) {
        Ok(()) => StoreError::Corrupt { path, reason: reason.into(), aside },
        Err(source) => StoreError::Io { path, source },
    }
}
