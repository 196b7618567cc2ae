//! Tokens on the HTTP API: `http_tokens_file` holds `<token> <role>` per
//! line (`read` or `admin`; `#` comments), reloaded on SIGHUP. When set,
//! `/api/*` (the stream included) and the map page need `Authorization:
//! Bearer <token>` or `access_token=<token>` in the query (a browser's
//! `EventSource` cannot set headers), and `/metrics` too with
//! `metrics_auth = true`; `/healthz`, `/` and the map's static files stay
//! open. Every current endpoint needs the `read` role (`admin` includes it).
//! Tokens are compared in constant time; a refusal is a `401` with a JSON
//! body, counted by reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;
use serde_json::json;

use crate::telemetry::{Counter, Registry};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Read everything.
    Read,
    /// Read, and what comes to need more.
    Admin,
}

/// Why a tokens file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("cannot read http_tokens_file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not `<token> <role>`, or the file has no token.
    #[error("http_tokens_file {path}, line {line}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0: the whole file).
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Tokens with their roles.
type TokenList = Vec<(Box<[u8]>, Role)>;

/// The tokens of one server, and what they cost when wrong.
pub(crate) struct Tokens {
    path: PathBuf,
    tokens: RwLock<Arc<TokenList>>,
    /// Whether `/metrics` needs a token too.
    pub(crate) metrics_auth: bool,
    missing: Counter,
    invalid: Counter,
    reloads_ok: Counter,
    reloads_failed: Counter,
}

/// Reads a tokens file.
fn load(path: &Path) -> Result<TokenList, TokensError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| TokensError::Io { path: path.into(), source })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |reason| TokensError::Syntax { path: path.into(), line: i + 1, reason };
        let mut parts = line.split_whitespace();
        let token = parts.next().unwrap_or_default();
        if !(16..=256).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(syntax("a token is 16 to 256 visible ASCII characters"));
        }
        let role = match parts.next() {
            Some("read") => Role::Read,
            Some("admin") => Role::Admin,
            _ => return Err(syntax("expected the role after the token: read or admin")),
        };
        if parts.next().is_some() {
            return Err(syntax("unexpected text after the role"));
        }
        if out.iter().any(|(t, _): &(Box<[u8]>, Role)| **t == *token.as_bytes()) {
            return Err(syntax("this token is listed twice"));
        }
        out.push((token.as_bytes().into(), role));
    }
    if out.is_empty() {
        return Err(TokensError::Syntax { path: path.into(), line: 0, reason: "no token" });
    }
    Ok(out)
}

/// Compares in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// The tokens of `path`, registering their series with `r`.
    pub(crate) fn load(
        path: &Path,
        metrics_auth: bool,
        r: &Registry,
    ) -> Result<Arc<Tokens>, TokensError> {
        let tokens = load(path)?;
        let failure = |reason| {
            r.counter(
                "fleetwire_http_auth_failures_total",
                "HTTP requests refused for their token, by reason (missing, invalid).",
                &[("reason", reason)],
            )
        };
        let reload = |result| {
            r.counter(
                "fleetwire_http_token_reloads_total",
                "Reloads of http_tokens_file, by result.",
                &[("result", result)],
            )
        };
        Ok(Arc::new(Tokens {
            path: path.to_path_buf(),
            tokens: RwLock::new(Arc::new(tokens)),
            metrics_auth,
            missing: failure("missing"),
            invalid: failure("invalid"),
            reloads_ok: reload("ok"),
            reloads_failed: reload("failed"),
        }))
    }

    /// Re-reads the file; on error the old tokens stay. Returns how many.
    pub(crate) fn reload(&self) -> Result<usize, TokensError> {
        match load(&self.path) {
            Ok(t) => {
                let n = t.len();
                *self.tokens.write() = Arc::new(t);
                self.reloads_ok.inc();
                Ok(n)
            }
            Err(e) => {
                self.reloads_failed.inc();
                Err(e)
            }
        }
    }

    /// The role of a presented token.
    fn role(&self, presented: &[u8]) -> Option<Role> {
        let tokens = self.tokens.read().clone();
        // Every token is compared, so the time says nothing about which.
        let mut found = None;
        for (t, role) in tokens.iter() {
            if constant_time_eq(t, presented) {
                found = Some(*role);
            }
        }
        found
    }

    /// Checks a request: `Ok` with the token's role, or the `401`.
    pub(crate) fn check(&self, req: &Request) -> Result<Role, Box<Response>> {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|v| v.trim().to_string());
        let query = req.uri().query().unwrap_or("");
        let param = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned());
        let Some(presented) = bearer.or(param) else {
            self.missing.inc();
            return Err(Box::new(unauthorized(
                "missing_token",
                "send Authorization: Bearer <token> or access_token=<token>",
            )));
        };
        self.role(presented.as_bytes()).ok_or_else(|| {
            self.invalid.inc();
            Box::new(unauthorized("invalid_token", "this token is not in http_tokens_file"))
        })
    }
}

fn unauthorized(error: &str, message: &str) -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, Json(json!({"error": error, "message": message})))
        .into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

/// The middleware: protected paths need a token (when there are tokens).
pub(crate) async fn require(
    State(tokens): State<Option<Arc<Tokens>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(t) = tokens else { return next.run(req).await };
    let path = req.uri().path();
    let protected = path.starts_with("/api/")
        || path == "/map"
        || path == "/map/"
        || (path == "/metrics" && t.metrics_auth);
    if protected {
        if let Err(r) = t.check(&req) {
            return *r;
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokens_file_is_checked_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(&p, "# ops\nreadtoken-0123456789 read\nadmintoken-0123456789 admin\n")
            .unwrap();
        let t = Tokens::load(&p, false, &Registry::new()).unwrap();
        assert_eq!(t.role(b"readtoken-0123456789"), Some(Role::Read));
        assert_eq!(t.role(b"admintoken-0123456789"), Some(Role::Admin));
        assert_eq!(t.role(b"readtoken-012345678"), None);
        for bad in [
            "short read\n",
            "readtoken-0123456789 write\n",
            "readtoken-0123456789\n",
            "",
            "a-token-0123456789 read\na-token-0123456789 read\n",
        ] {
            std::fs::write(&p, bad).unwrap();
            assert!(Tokens::load(&p, false, &Registry::new()).is_err(), "{bad:?}");
        }
        // A bad reload keeps the old tokens.
        assert!(t.reload().is_err());
        assert_eq!(t.role(b"readtoken-0123456789"), Some(Role::Read));
    }
}
