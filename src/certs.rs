//! TLS material: a CA and server certificate (`fleetwire certs init`),
//! device client certificates (`fleetwire certs device`), the development
//! certificate `serve` makes when none is configured, and loading PEM files.
//!
//! A device certificate names its device in a URI subject alternative name
//! `urn:fleetwire:device:<id>` (and in its common name `device-<id>`); the
//! server takes the id from the URI.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Length of the QUIC endpoint secret, bytes.
pub(crate) const QUIC_SECRET_LEN: usize = 32;
/// The QUIC endpoint secret's file in the data dir.
pub(crate) const QUIC_SECRET_FILE: &str = "quic.secret";

/// URI prefix of the device id SAN.
pub(crate) const DEVICE_URI_PREFIX: &str = "urn:fleetwire:device:";

/// Errors making or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rcgen refused to make a certificate.
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The files exist already (and `--force` was not given).
    #[error("{0} exists already; use --force to overwrite")]
    Exists(PathBuf),
    /// The QUIC secret file does not hold a secret.
    #[error(
        "{path}: {len} bytes, not a QUIC secret ({QUIC_SECRET_LEN} bytes); remove it and a new \
         one is made (the connections of before are then not reset)"
    )]
    BadSecret {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.into(), source }
}

/// Writes a file, creating its directory; private keys are created with
/// mode 0600 (never readable by others, not even for a moment).
fn write(path: &Path, text: &str, private: bool) -> Result<(), CertError> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(io(path))?;
    #[cfg(unix)]
    if private {
        // An existing file keeps its mode on open: tighten it first.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    f.write_all(text.as_bytes()).map_err(io(path))
}

/// Validity: from an hour ago (clock skew) for `days`.
fn validity(p: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
}

/// Validity of the CA certificate, days.
pub(crate) const CA_DAYS: i64 = 3650;
/// Validity of server certificates, days.
pub(crate) const SERVER_DAYS: i64 = 397;
/// Validity of device certificates, days.
pub(crate) const DEVICE_DAYS: i64 = 1825;

fn san(s: &str) -> Result<SanType, rcgen::Error> {
    Ok(match s.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(s.try_into()?),
    })
}

/// Files written by [`init`].
#[derive(Debug)]
pub(crate) struct InitFiles {
    /// CA certificate (give it to devices and to `serve` as quic_client_ca).
    pub ca_cert: PathBuf,
    /// CA private key (keep offline; needed to issue device certificates).
    pub ca_key: PathBuf,
    /// Server certificate (quic_cert).
    pub server_cert: PathBuf,
    /// Server private key (quic_key).
    pub server_key: PathBuf,
}

/// Makes a CA and a server certificate for `sans` in `dir`.
pub(crate) fn init(dir: &Path, sans: &[String], force: bool) -> Result<InitFiles, CertError> {
    let files = InitFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    };
    if !force && files.ca_cert.exists() {
        return Err(CertError::Exists(files.ca_cert));
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = DistinguishedName::new();
    // A name of its own: a certificate from another fleetwire CA is then an
    // unknown issuer, not a bad signature by a namesake.
    let tag: u32 = rand::random();
    ca.distinguished_name.push(DnType::CommonName, format!("fleetwire CA {tag:08x}"));
    ca.distinguished_name.push(DnType::OrganizationName, "fleetwire");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, CA_DAYS);
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&files.ca_cert, &ca_cert.pem(), false)?;
    write(&files.ca_key, &ca_key.serialize_pem(), true)?;
    server(dir, sans)?;
    Ok(files)
}

/// The CA of `dir`, re-created from its PEM files (same name and key), so
/// that what it signs chains to the CA certificate devices and server have.
fn load_ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair), CertError> {
    let ca_pem_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(io(&ca_pem_path))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = CertificateParams::from_ca_cert_pem(&ca_pem)?.self_signed(&ca_key)?;
    Ok((issuer, ca_key))
}

/// Issues a new server certificate for `sans` from the CA in `dir`
/// (`server.pem`, `server.key`): renewal without touching the CA.
pub(crate) fn server(dir: &Path, sans: &[String]) -> Result<(PathBuf, PathBuf), CertError> {
    let (issuer, ca_key) = load_ca(dir)?;
    let server_key = KeyPair::generate()?;
    let mut sp = CertificateParams::new(Vec::<String>::new())?;
    sp.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
    sp.distinguished_name
        .push(DnType::CommonName, sans.first().map_or("fleetwire", String::as_str));
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut sp, SERVER_DAYS);
    let server_cert = sp.signed_by(&server_key, &issuer, &ca_key)?;
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    write(&cert_path, &server_cert.pem(), false)?;
    write(&key_path, &server_key.serialize_pem(), true)?;
    Ok((cert_path, key_path))
}

/// Makes a client certificate for device `id`, signed by the CA in `dir`.
/// Returns the certificate and key paths.
pub(crate) fn device(dir: &Path, id: u32) -> Result<(PathBuf, PathBuf), CertError> {
    let (issuer, ca_key) = load_ca(dir)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, format!("device-{id}"));
    p.subject_alt_names = vec![SanType::URI(format!("{DEVICE_URI_PREFIX}{id}").try_into()?)];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut p, DEVICE_DAYS);
    let cert = p.signed_by(&key, &issuer, &ca_key)?;
    let cert_path = dir.join(format!("device-{id}.pem"));
    let key_path = dir.join(format!("device-{id}.key"));
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok((cert_path, key_path))
}

/// The development certificate in `data_dir` (`dev-cert.pem`, `dev-key.pem`),
/// made on first use: self-signed for localhost, 127.0.0.1 and ::1. Clients
/// trust it with `--ca <data_dir>/dev-cert.pem`.
pub(crate) fn dev_certificate(
    data_dir: &Path,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CertError> {
    let cert_path = data_dir.join("dev-cert.pem");
    let key_path = data_dir.join("dev-key.pem");
    if !(cert_path.exists() && key_path.exists()) {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
        p.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.subject_alt_names.push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        p.distinguished_name.push(DnType::CommonName, "fleetwire development certificate");
        validity(&mut p, SERVER_DAYS);
        let cert = p.self_signed(&key)?;
        write(&cert_path, &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        tracing::info!(cert = %cert_path.display(), "made a self-signed development certificate for QUIC; \
            clients trust it with --ca {}", cert_path.display());
    } else {
        tracing::info!(cert = %cert_path.display(), "using the development certificate for QUIC");
    }
    let (mut chain, key) = load_chain_and_key(&cert_path, &key_path)?;
    Ok((chain.remove(0), key))
}

/// The QUIC endpoint's secret, `<data_dir>/quic.secret`: 32 random bytes
/// made on first use (mode 0600 from the start, written to a temporary
/// file, synced and renamed into place, so a crash never leaves half a
/// secret), read as they are afterwards. The keys of stateless resets and
/// of connection-id validation derive from it, so that a restarted server
/// recognises the connection ids it issued before and answers packets of
/// those connections with a stateless reset their peers accept. Servers
/// given the same file reset each other's connections.
pub(crate) fn quic_secret(data_dir: &Path) -> Result<[u8; QUIC_SECRET_LEN], CertError> {
    let path = data_dir.join(QUIC_SECRET_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).map(|m| m.permissions().mode()).unwrap_or(0);
                if mode & 0o077 != 0 {
                    tracing::warn!(file = %path.display(), mode = format!("{:o}", mode & 0o777),
                        "the QUIC secret is readable by others: chmod 600 it");
                }
            }
            return bytes
                .try_into()
                .map_err(|b: Vec<u8>| CertError::BadSecret { path, len: b.len() });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let mut secret = [0u8; QUIC_SECRET_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| io(&path)(std::io::Error::other("no random bytes from the system")))?;
    let tmp = data_dir.join(format!("{QUIC_SECRET_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    write_new_private(&tmp, &secret)?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    if let Ok(d) = std::fs::File::open(data_dir) {
        let _ = d.sync_all();
    }
    tracing::info!(file = %path.display(), "made the QUIC secret (stateless resets after a restart)");
    Ok(secret)
}

/// Creates `path` (which must not exist) with mode 0600, writes `bytes`
/// and syncs it.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io(path))
}

/// Loads a PEM certificate chain and a PEM private key.
pub(crate) fn load_chain_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
    let pem = |path: &Path, reason: String| CertError::Pem { path: path.into(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(cert, "no certificate in file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
    Ok((chain, key))
}

/// Loads trusted CA certificates from a PEM file.
pub(crate) fn load_roots(path: &Path) -> Result<rustls::RootCertStore, CertError> {
    let pem = |reason: String| CertError::Pem { path: path.into(), reason };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).map_err(|e| pem(e.to_string()))? {
        roots.add(c.map_err(|e| pem(e.to_string()))?).map_err(|e| pem(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(pem("no certificate in file".into()));
    }
    Ok(roots)
}

/// The device id a client certificate names (URI SAN
/// `urn:fleetwire:device:<id>`), if any. The server treats a certificate
/// without one as naming device 0, which no frame may claim.
pub(crate) fn device_id_of(cert: &CertificateDer<'_>) -> Option<u32> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let sans = x.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => {
            u.strip_prefix(DEVICE_URI_PREFIX).and_then(|id| id.parse().ok()).filter(|id| *id != 0)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quic_secret_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = quic_secret(&data).unwrap();
        let file = data.join(QUIC_SECRET_FILE);
        assert_eq!(std::fs::read(&file).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!data.join(format!("{QUIC_SECRET_FILE}.tmp")).exists());
        assert_eq!(quic_secret(&data).unwrap(), first, "a second start reads the same secret");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(quic_secret(other.path()).unwrap(), first);
        std::fs::write(&file, b"short").unwrap();
        assert!(matches!(quic_secret(&data), Err(CertError::BadSecret { len: 5, .. })));
    }

    #[test]
    fn init_and_device_certificates_chain_and_name_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let f = init(dir.path(), &["localhost".into(), "127.0.0.1".into()], false).unwrap();
        assert!(matches!(init(dir.path(), &[], false), Err(CertError::Exists(_))));
        let (cert, key) = device(dir.path(), 4242).unwrap();
        let (chain, _) = load_chain_and_key(&cert, &key).unwrap();
        assert_eq!(device_id_of(&chain[0]), Some(4242));
        let roots = load_roots(&f.ca_cert).unwrap();
        // The device certificate verifies against the CA as a client certificate.
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        v.verify_client_cert(&chain[0], &[], now).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Certificates expire; the server certificate can be renewed from the
        // same CA, and the renewed one still verifies against ca.pem.
        let (_, x) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
        let days =
            (x.validity().not_after.timestamp() - x.validity().not_before.timestamp()) / 86_400;
        assert!((DEVICE_DAYS..=DEVICE_DAYS + 1).contains(&days), "{days}");
        let before = std::fs::read(&f.server_cert).unwrap();
        server(dir.path(), &["renewed.example".into()]).unwrap();
        assert_ne!(before, std::fs::read(&f.server_cert).unwrap());
        let (chain, _) = load_chain_and_key(&f.server_cert, &f.server_key).unwrap();
        let roots = std::sync::Arc::new(load_roots(&f.ca_cert).unwrap());
        let sv = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("renewed.example").unwrap();
        use rustls::client::danger::ServerCertVerifier;
        sv.verify_server_cert(&chain[0], &[], &name, &[], now).unwrap();
    }
}
