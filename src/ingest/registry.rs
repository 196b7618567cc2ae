//! Device identity for protocols that do not speak in fleetwire ids: a
//! Teltonika tracker is known by its 15-digit IMEI, an OsmAnd / Traccar
//! Client phone by the id its app sends. The registry maps such an
//! identifier to a device id: from the `devices_file` (`<identifier> <id>
//! [name]` per line), or, with `auto_register`, the next free id of the
//! range [`AUTO_FIRST`]..=[`AUTO_LAST`], which native devices are told to
//! avoid (PROTOCOL.md). Auto-registrations are kept in
//! `<data_dir>/devices.registry` (written within a second of a change), so
//! an identifier keeps its id across restarts.
//!
//! Bounded: at most `auto_register_limit` auto-registered identifiers (an
//! identifier is cheap to forge on UDP); beyond, a new one is refused as
//! `registry_full`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use super::reason::{Reason, Transport};
use crate::store::{self, StoreError};
use crate::telemetry::{Counter, Gauge, Registry};

/// The first id auto-registration gives out.
pub(crate) const AUTO_FIRST: u32 = 0xF000_0000;
/// The last id auto-registration gives out (`u32::MAX` stays unused).
pub(crate) const AUTO_LAST: u32 = 0xFFFF_FFFE;
/// The file of auto-registrations in the data dir.
pub(crate) const FILE: &str = "devices.registry";
const MAGIC: &str = "FWREG01";
/// Longest identifier (the OsmAnd decoder's limit).
const MAX_IDENTIFIER: usize = 64;

/// The registry's slice of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegistryConfig {
    /// Identifiers with their ids and names, given by the operator.
    pub(crate) devices_file: Option<PathBuf>,
    /// Whether unknown identifiers get an id.
    pub(crate) auto_register: bool,
    /// Most auto-registered identifiers.
    pub(crate) limit: usize,
}

/// Why the devices file (or the registry file) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DevicesFileError {
    /// The file could not be read.
    #[error("cannot read devices file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not `<identifier> <id> [name]`, or repeats one.
    #[error("devices file {path}, line {line}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// What the registry knows of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The identifier (IMEI, phone id).
    pub(crate) identifier: Box<str>,
    /// The name from the devices file.
    pub(crate) name: Option<Box<str>>,
    /// The protocol it registered with (auto-registration), if known.
    pub(crate) protocol: Option<Transport>,
}

#[derive(Debug, Default)]
struct Inner {
    by_identifier: HashMap<Box<str>, u32>,
    entries: HashMap<u32, Entry>,
    /// The next auto id to try.
    next: u32,
    /// Auto-registered entries (the ones in the registry file).
    auto: usize,
}

/// The registry of one server.
#[derive(Debug)]
pub(crate) struct DeviceRegistry {
    cfg: RegistryConfig,
    inner: RwLock<Inner>,
    dirty: AtomicBool,
    registered: Counter,
    size: Gauge,
}

fn transport_of(label: &str) -> Option<Transport> {
    Transport::ALL.into_iter().find(|t| t.as_str() == label)
}

/// Parses the devices file: `<identifier> <id> [name]` per line; `#` lines
/// and blank lines are skipped.
fn parse_devices_file(path: &Path, text: &str, inner: &mut Inner) -> Result<(), DevicesFileError> {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |reason| DevicesFileError::Syntax { path: path.into(), line: i + 1, reason };
        let mut parts = line.splitn(3, char::is_whitespace);
        let identifier = parts.next().unwrap_or_default();
        if identifier.len() > MAX_IDENTIFIER || !identifier.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(syntax("the identifier must be 1 to 64 visible ASCII characters"));
        }
        let id: u32 = parts
            .next()
            .and_then(|s| s.trim().parse().ok())
            .filter(|id| *id != 0 && *id != u32::MAX)
            .ok_or_else(|| syntax("expected a device id 1..=4294967294 after the identifier"))?;
        let name = parts.next().map(str::trim).filter(|n| !n.is_empty());
        if inner.by_identifier.contains_key(identifier) {
            return Err(syntax("this identifier is listed twice"));
        }
        if inner.entries.contains_key(&id) {
            return Err(syntax("this device id is listed twice"));
        }
        inner.by_identifier.insert(identifier.into(), id);
        inner.entries.insert(
            id,
            Entry { identifier: identifier.into(), name: name.map(Into::into), protocol: None },
        );
    }
    Ok(())
}

impl DeviceRegistry {
    /// The registry `cfg` asks for: the devices file, then the
    /// auto-registrations saved in `dir` (a damaged file is moved aside and
    /// logged; those devices register again).
    pub(crate) fn load(
        cfg: &RegistryConfig,
        dir: &Path,
        r: &Registry,
    ) -> Result<DeviceRegistry, DevicesFileError> {
        let mut inner = Inner { next: AUTO_FIRST, ..Inner::default() };
        if let Some(p) = &cfg.devices_file {
            let text = std::fs::read_to_string(p)
                .map_err(|source| DevicesFileError::Io { path: p.clone(), source })?;
            parse_devices_file(p, &text, &mut inner)?;
        }
        match store::read_if_exists(dir, FILE) {
            Ok(Some(bytes)) => match restore(&bytes, &mut inner) {
                Ok(n) => tracing::info!(devices = n, "restored auto-registered devices"),
                Err(reason) => {
                    let e = store::move_aside(dir, FILE, reason);
                    tracing::error!(error = %e, "could not restore the device registry");
                }
            },
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "could not read the device registry"),
        }
        let registered = r.counter(
            "fleetwire_devices_registered_total",
            "Identifiers (IMEIs, phone ids) auto-registered with a new device id.",
            &[],
        );
        let size = r.gauge(
            "fleetwire_registered_devices",
            "Identifiers the device registry knows (devices file and auto-registered).",
            &[],
        );
        size.set(inner.entries.len() as f64);
        Ok(DeviceRegistry {
            cfg: cfg.clone(),
            inner: RwLock::new(inner),
            dirty: AtomicBool::new(false),
            registered,
            size,
        })
    }

    /// The device id of `identifier`, sent over `t`: its registered id, a
    /// plain number below [`AUTO_FIRST`] as is (OsmAnd ids that fit), or a
    /// new id when `auto_register` is on.
    pub(crate) fn resolve(&self, t: Transport, identifier: &str) -> Result<u32, Reason> {
        if let Some(id) = self.inner.read().by_identifier.get(identifier) {
            return Ok(*id);
        }
        if t == Transport::Osmand {
            if let Some(id) =
                identifier.parse::<u32>().ok().filter(|id| (1..AUTO_FIRST).contains(id))
            {
                return Ok(id);
            }
        }
        if !self.cfg.auto_register {
            return Err(Reason::UnknownDevice);
        }
        let mut inner = self.inner.write();
        if let Some(id) = inner.by_identifier.get(identifier) {
            return Ok(*id);
        }
        if inner.auto >= self.cfg.limit {
            return Err(Reason::RegistryFull);
        }
        let id = next_free(&mut inner).ok_or(Reason::RegistryFull)?;
        inner.by_identifier.insert(identifier.into(), id);
        inner
            .entries
            .insert(id, Entry { identifier: identifier.into(), name: None, protocol: Some(t) });
        inner.auto += 1;
        self.size.set(inner.entries.len() as f64);
        drop(inner);
        self.dirty.store(true, Ordering::Relaxed);
        self.registered.inc();
        tracing::info!(identifier, id, transport = t.as_str(), "registered a new device");
        Ok(id)
    }

    /// What the registry knows of device `id`.
    pub(crate) fn entry(&self, id: u32) -> Option<Entry> {
        self.inner.read().entries.get(&id).cloned()
    }

    /// Identifiers known (listed and auto-registered).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.read().entries.len()
    }

    /// Writes the auto-registrations to `dir` if they changed since the
    /// last save. Returns whether it wrote.
    pub(crate) fn save_if_changed(&self, dir: &Path) -> Result<bool, StoreError> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(false);
        }
        let text = {
            let inner = self.inner.read();
            let mut lines: Vec<(u32, &Entry)> = inner
                .entries
                .iter()
                .filter(|(_, e)| e.protocol.is_some())
                .map(|(id, e)| (*id, e))
                .collect();
            lines.sort_unstable_by_key(|(id, _)| *id);
            let mut body = String::new();
            for (id, e) in lines {
                let t = e.protocol.map_or("", Transport::as_str);
                body.push_str(&format!("{id} {t} {}\n", e.identifier));
            }
            format!("{MAGIC} {:08x}\n{body}", crc32c::crc32c(body.as_bytes()))
        };
        if let Err(e) = store::write_bytes(dir, FILE, text.as_bytes()) {
            self.dirty.store(true, Ordering::Relaxed);
            return Err(e);
        }
        Ok(true)
    }
}

/// The next free auto id, wrapping within the range.
fn next_free(inner: &mut Inner) -> Option<u32> {
    let span = u64::from(AUTO_LAST - AUTO_FIRST) + 1;
    for _ in 0..span.min(inner.entries.len() as u64 + 1) {
        let id = inner.next;
        inner.next = if id >= AUTO_LAST { AUTO_FIRST } else { id + 1 };
        if !inner.entries.contains_key(&id) {
            return Some(id);
        }
    }
    None
}

/// Reads the registry file: `FWREG01 <crc32c of the rest, hex>`, then
/// `<id> <transport> <identifier>` per line. Returns the entries restored.
fn restore(bytes: &[u8], inner: &mut Inner) -> Result<usize, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8")?;
    let (head, body) = text.split_once('\n').ok_or("no header")?;
    let crc = head.strip_prefix(MAGIC).map(str::trim).ok_or("not a fleetwire device registry")?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "bad header")?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return Err("checksum mismatch (truncated or damaged)");
    }
    let mut n = 0;
    for line in body.lines() {
        let mut parts = line.splitn(3, ' ');
        let id: u32 = parts.next().and_then(|s| s.parse().ok()).ok_or("bad id")?;
        let t = parts.next().and_then(transport_of).ok_or("bad transport")?;
        let identifier = parts.next().filter(|s| !s.is_empty()).ok_or("no identifier")?;
        // The devices file wins over an old auto-registration.
        if inner.by_identifier.contains_key(identifier) || inner.entries.contains_key(&id) {
            continue;
        }
        inner.by_identifier.insert(identifier.into(), id);
        inner
            .entries
            .insert(id, Entry { identifier: identifier.into(), name: None, protocol: Some(t) });
        inner.auto += 1;
        n += 1;
        if id >= inner.next && id < AUTO_LAST {
            inner.next = id + 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(auto: bool, limit: usize, file: Option<PathBuf>) -> RegistryConfig {
        RegistryConfig { devices_file: file, auto_register: auto, limit }
    }

    #[test]
    fn identifiers_get_stable_ids_across_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::new();
        let reg = DeviceRegistry::load(&cfg(true, 10, None), dir.path(), &r).unwrap();
        let a = reg.resolve(Transport::Teltonika, "352093086403655").unwrap();
        let b = reg.resolve(Transport::Osmand, "my-phone").unwrap();
        assert_eq!((a, b), (AUTO_FIRST, AUTO_FIRST + 1));
        assert_eq!(reg.resolve(Transport::Teltonika, "352093086403655"), Ok(a));
        // A number that fits is an OsmAnd id as it is.
        assert_eq!(reg.resolve(Transport::Osmand, "123456"), Ok(123_456));
        assert!(reg.save_if_changed(dir.path()).unwrap());
        assert!(!reg.save_if_changed(dir.path()).unwrap(), "nothing changed");
        let again = DeviceRegistry::load(&cfg(false, 10, None), dir.path(), &r).unwrap();
        assert_eq!(again.resolve(Transport::Teltonika, "352093086403655"), Ok(a));
        assert_eq!(again.resolve(Transport::Osmand, "my-phone"), Ok(b));
        assert_eq!(
            again.resolve(Transport::Teltonika, "352093086403656"),
            Err(Reason::UnknownDevice)
        );
        let e = again.entry(a).unwrap();
        assert_eq!((&*e.identifier, e.protocol), ("352093086403655", Some(Transport::Teltonika)));
    }

    #[test]
    fn the_devices_file_names_devices_and_refuses_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("devices");
        std::fs::write(&p, "# fleet\n352093086403655 42 Truck 7\nphone-1 43\n").unwrap();
        let r = Registry::new();
        let reg = DeviceRegistry::load(&cfg(false, 0, Some(p.clone())), dir.path(), &r).unwrap();
        assert_eq!(reg.resolve(Transport::Teltonika, "352093086403655"), Ok(42));
        assert_eq!(reg.entry(42).unwrap().name.as_deref(), Some("Truck 7"));
        assert_eq!(reg.resolve(Transport::Osmand, "phone-1"), Ok(43));
        for bad in ["a 1\na 2\n", "a 1\nb 1\n", "a\n", "a 0\n", "a x\n"] {
            std::fs::write(&p, bad).unwrap();
            let e =
                DeviceRegistry::load(&cfg(false, 0, Some(p.clone())), dir.path(), &r).unwrap_err();
            assert!(e.to_string().contains("line"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn auto_registration_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let reg = DeviceRegistry::load(&cfg(true, 3, None), dir.path(), &Registry::new()).unwrap();
        for i in 0..3 {
            reg.resolve(Transport::Teltonika, &format!("35209308640365{i}")).unwrap();
        }
        assert_eq!(reg.resolve(Transport::Teltonika, "352093086403659"), Err(Reason::RegistryFull));
        assert_eq!(reg.len(), 3);
    }

    #[test]
    fn a_damaged_registry_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "FWREG01 00000000\n4026531840 teltonika 1\n")
            .unwrap();
        let reg = DeviceRegistry::load(&cfg(true, 3, None), dir.path(), &Registry::new()).unwrap();
        assert_eq!(reg.len(), 0);
        assert!(!dir.path().join(FILE).exists());
    }
}
