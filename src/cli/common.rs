//! What the client commands (`sim`, `send`, `replay`, `bench`) share:
//! transport and TLS flags, address resolution, and error exits.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

/// Transport of `sim`, `send` and `replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TransportArg {
    /// Plain UDP datagrams.
    Udp,
    /// QUIC (TLS 1.3, ALPN fleetwire/1).
    Quic,
}

/// TLS options of QUIC clients.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TlsArgs {
    /// CA certificate (PEM) to trust: `<data_dir>/dev-cert.pem` for a server
    /// on its development certificate, or `certs/ca.pem`.
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Server name to verify (default: localhost).
    #[arg(long, default_value = "localhost")]
    pub(crate) server_name: String,
}

impl TlsArgs {
    /// The QUIC client configuration these flags ask for.
    pub(crate) fn quic_config(&self) -> Result<quinn::ClientConfig, String> {
        let ca = self
            .ca
            .as_deref()
            .ok_or("--transport quic needs --ca (the server's CA or dev-cert.pem)")?;
        let id = self.cert.as_deref().zip(self.key.as_deref());
        crate::sim::quic::client_config(ca, id)
    }
}

/// Resolves host:port.
pub(crate) fn resolve(target: &str) -> Result<SocketAddr, String> {
    target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {target:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target:?} resolves to no address"))
}

/// Prints `fleetwire: <msg>` on stderr and returns exit code `code`.
pub(crate) fn fail(msg: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("fleetwire: {msg}");
    ExitCode::from(code)
}
