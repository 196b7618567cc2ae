//! Device keys for UDP frame authentication: the keys file
//! (`<device id> <hex key>` per line), read at start and on SIGHUP.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

/// Device keys: device id → HMAC key.
pub(crate) type Keys = HashMap<u32, Box<[u8]>>;

/// The shortest key, bytes: shorter HMAC keys are guessable.
pub(crate) const MIN_KEY: usize = 16;
/// The longest key, bytes: HMAC-SHA-256 hashes longer keys down to 32
/// bytes, so more adds nothing (one block, 64 bytes, is the most taken as is).
pub(crate) const MAX_KEY: usize = 64;
/// The largest keys file, bytes (about 1.8 million keys of 64 bytes).
pub(crate) const MAX_FILE: u64 = 256 << 20;
/// The longest line: a device id, a 64-byte key in hex, spaces and a
/// comment fit easily.
const MAX_LINE: usize = 1024;

/// Why a keys file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file could not be read.
    #[error("cannot read keys file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE`].
    #[error("keys file {path} is larger than {} MiB", MAX_FILE >> 20)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line is not `<device id> <hex key>`.
    #[error("keys file {path}, line {line}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A device id has a key on an earlier line already.
    #[error("keys file {path}, line {line}: duplicate device id {id} (its key is on line {first})")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// 1-based line number of the second key.
        line: usize,
        /// The device id.
        id: u32,
        /// 1-based line number of the first.
        first: usize,
    },
    /// A reload found a file with neither a key nor a comment (truncated,
    /// or a copy that failed) while keys are in use.
    #[error(
        "keys file {path} is empty: keeping the previous keys (to remove every key, \
         write a comment line such as \"# empty\" to it)"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// At start, the keys file of a server that checks signatures has
    /// neither a key nor a comment: every signed device would be refused.
    #[error(
        "keys file {path} is empty: every signed device would be refused (to start \
         without keys on purpose, write a comment line such as \"# empty\" to it)"
    )]
    EmptyAtStart {
        /// The file.
        path: PathBuf,
    },
}

/// A keys file's contents.
#[derive(Debug, Default)]
pub(crate) struct KeysFile {
    /// The keys.
    pub(crate) keys: Keys,
    /// Whether it has a comment line (a file of comments only is emptied on
    /// purpose; an empty one may be an accident).
    pub(crate) commented: bool,
}

/// Reads a keys file: one `<device id> <hex key>` per line; blank lines and
/// lines starting with `#` are ignored. Keys are [`MIN_KEY`] to [`MAX_KEY`]
/// bytes, a device id appears once, the file is at most [`MAX_FILE`] bytes.
#[cfg(test)]
pub(crate) fn load_keys(path: &Path) -> Result<Keys, KeysError> {
    read_keys_file(path).map(|f| f.keys)
}

/// Reads a keys file (see [`load_keys`]), saying whether it has comments.
pub(crate) fn read_keys_file(path: &Path) -> Result<KeysFile, KeysError> {
    let io = |source| KeysError::Io { path: path.into(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.len() > MAX_FILE {
        return Err(KeysError::TooLarge { path: path.into() });
    }
    // Bounded whatever the file turns into while it is read.
    let mut reader = std::io::BufReader::new(file.take(MAX_FILE + 1));
    let mut out = KeysFile::default();
    let mut first_line: HashMap<u32, usize> = HashMap::new();
    let mut buf = Vec::new();
    let mut read = 0u64;
    for n in 1.. {
        buf.clear();
        let got =
            (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf).map_err(io)?;
        if got == 0 {
            break;
        }
        read += got as u64;
        if read > MAX_FILE {
            return Err(KeysError::TooLarge { path: path.into() });
        }
        let syntax = |reason| KeysError::Syntax { path: path.into(), line: n, reason };
        if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
            return Err(syntax("line longer than 1024 bytes (a key is 16 to 64 bytes)"));
        }
        let line = std::str::from_utf8(&buf).map_err(|_| syntax("not UTF-8"))?.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            out.commented = true;
            continue;
        }
        let (id, key) = parse_line(line).map_err(syntax)?;
        match out.keys.entry(id) {
            Entry::Occupied(_) => {
                let first = first_line.get(&id).copied().unwrap_or(0);
                return Err(KeysError::Duplicate { path: path.into(), line: n, id, first });
            }
            Entry::Vacant(v) => {
                v.insert(key);
                first_line.insert(id, n);
            }
        }
    }
    Ok(out)
}

/// One `<device id> <hex key>` line.
fn parse_line(line: &str) -> Result<(u32, Box<[u8]>), &'static str> {
    let mut parts = line.split_whitespace();
    let id: u32 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|id| *id != 0)
        .ok_or("expected a device id 1..=4294967295")?;
    let hex_key = parts.next().ok_or("expected the key as hex")?;
    if !(2 * MIN_KEY..=2 * MAX_KEY).contains(&hex_key.len()) {
        return Err("a key is 16 to 64 bytes (32 to 128 hex digits)");
    }
    let key = hex::decode(hex_key).map_err(|_| "expected the key as hex")?;
    if parts.next().is_some() {
        return Err("unexpected text after the key");
    }
    Ok((id, key.into_boxed_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_syntax() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(&p, format!("# comment\n42 {K32}\n\n7 {K32} # trailing\n")).unwrap();
        let e = load_keys(&p).unwrap_err().to_string();
        assert!(e.contains("line 4"), "{e}");
        std::fs::write(&p, format!("# comment\n42 {K32}\n 7   {}\n", "ab".repeat(16))).unwrap();
        let k = load_keys(&p).unwrap();
        assert_eq!(k.get(&42).map(|k| k.to_vec()), Some(hex::decode(K32).unwrap()));
        assert_eq!(k.get(&7).map(|k| k.to_vec()), Some(vec![0xab; 16]));
        assert_eq!(k.len(), 2);
        std::fs::write(&p, format!("0 {K32}\n")).unwrap();
        assert!(load_keys(&p).is_err());
    }

    const K32: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn a_duplicate_device_id_refuses_the_file_naming_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(&p, format!("# keys\n42 {K32}\n7 {K32}\n42 {K32}\n")).unwrap();
        let e = load_keys(&p).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("duplicate") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn keys_are_16_to_64_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        for (bytes, ok) in
            [(1, false), (15, false), (16, true), (32, true), (64, true), (65, false)]
        {
            std::fs::write(&p, format!("42 {}\n", "ab".repeat(bytes))).unwrap();
            let r = load_keys(&p);
            assert_eq!(r.is_ok(), ok, "{bytes} bytes: {:?}", r.err().map(|e| e.to_string()));
            if let Err(e) = r {
                assert!(e.to_string().contains("line 1") && e.to_string().contains("16"), "{e}");
            }
        }
        // A 50 MiB key is refused before the file is read into memory.
        let f = std::fs::File::create(&p).unwrap();
        let mut w = std::io::BufWriter::new(f);
        std::io::Write::write_all(&mut w, b"42 ").unwrap();
        for _ in 0..(50 << 20) / 4096 {
            std::io::Write::write_all(&mut w, &[b'a'; 4096]).unwrap();
        }
        drop(w);
        let e = load_keys(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") || e.contains("MiB"), "{e}");
    }
}
