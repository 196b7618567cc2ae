//! Recorded datagrams (`sim --record`, `replay`).
//!
//! A recording is the 8 bytes `FWREC001` followed by records, each a u16
//! big-endian length and that many bytes of datagram, exactly as sent
//! (duplicates and corrupted copies included), in send order. It is the
//! QUIC stream framing of PROTOCOL.md section 8 behind a file magic.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

/// File magic.
pub(crate) const MAGIC: &[u8; 8] = b"FWREC001";

/// Appends datagrams to a recording.
pub(crate) struct Writer {
    out: BufWriter<File>,
    /// Datagrams written.
    pub count: u64,
}

impl Writer {
    /// Creates (truncates) `path`.
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(MAGIC)?;
        Ok(Writer { out, count: 0 })
    }

    /// Appends one datagram (at most 65535 bytes).
    pub(crate) fn write(&mut self, datagram: &[u8]) -> io::Result<()> {
        let len = u16::try_from(datagram.len())
            .map_err(|_| io::Error::other("datagram over 65535 bytes"))?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(datagram)?;
        self.count += 1;
        Ok(())
    }

    /// Flushes to the file.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads a whole recording.
pub(crate) fn read_all(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut r = BufReader::new(File::open(path)?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a fleetwire recording (bad magic)",
        ));
    }
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(out),
            Err(e) => return Err(e),
        }
        let mut d = vec![0u8; usize::from(u16::from_be_bytes(len))];
        r.read_exact(&mut d).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("recording truncated inside a datagram: {e}"),
            )
        })?;
        out.push(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.fwrec");
        let mut w = Writer::create(&p).unwrap();
        w.write(b"abc").unwrap();
        w.write(&[]).unwrap();
        w.write(&[7u8; 1500]).unwrap();
        w.flush().unwrap();
        let r = read_all(&p).unwrap();
        assert_eq!(r, vec![b"abc".to_vec(), vec![], vec![7u8; 1500]]);
        std::fs::write(&p, b"FWREC001\x00\x05ab").unwrap();
        assert!(read_all(&p).is_err());
    }
}
