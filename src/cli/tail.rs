//! `fleetwire tail`: the reference consumer of forwarded records.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

/// `fleetwire tail`.
#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, default_value = "nats://127.0.0.1:4222", env = "FLEETWIRE_TAIL_SERVER")]
    pub server: String,
    /// Subject to follow: `fleetwire.>` (everything), `fleetwire.42.>` (one
    /// device), `fleetwire.*.position` (one kind).
    #[arg(long, default_value = "fleetwire.>")]
    pub subject: String,
    /// Read the stream's history from its start (JetStream ordered
    /// consumer) instead of following live messages only.
    #[arg(long)]
    pub all: bool,
    /// Stream to read with --all.
    #[arg(long, default_value = "FLEETWIRE")]
    pub stream: String,
    /// Exit after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after this many seconds without a record.
    #[arg(long)]
    pub idle: Option<f64>,
    /// NATS user.
    #[arg(long)]
    pub user: Option<String>,
    /// NATS password.
    #[arg(long)]
    pub password: Option<String>,
    /// NATS token.
    #[arg(long)]
    pub token: Option<String>,
    /// NATS credentials file.
    #[arg(long)]
    pub creds: Option<PathBuf>,
}

/// One message as a JSON line: subject, receive time, transport and the
/// decoded record (or why it does not decode).
pub(super) fn message_json(
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Value {
    let header = |k: &str| headers.and_then(|h| h.get(k)).map(|v| v.as_str().to_string());
    let mut v = json!({
        "subject": subject,
        "received_ms": header("Fleetwire-Received-Ms").and_then(|s| s.parse::<u64>().ok()),
        "transport": header("Fleetwire-Transport"),
    });
    match fleetwire_proto::decode(payload) {
        Ok(f) => v["record"] = fleetwire_proto::json::frame_to_json(&f),
        Err(e) => v["refused"] = e.as_str().into(),
    }
    v
}

/// Runs `tail`.
pub(super) fn main(a: TailArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleetwire tail: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetwire tail: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(a: TailArgs) -> Result<(), String> {
    let mut opts = async_nats::ConnectOptions::new().name("fleetwire-tail");
    if let (Some(u), Some(p)) = (&a.user, &a.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &a.token {
        opts = opts.token(t.clone());
    }
    if let Some(c) = &a.creds {
        opts = opts.credentials_file(c).await.map_err(|e| format!("--creds: {e}"))?;
    }
    let urls: Vec<async_nats::ServerAddr> = a
        .server
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--server: {e}"))?;
    let client =
        opts.connect(urls).await.map_err(|e| format!("connecting to {}: {e}", a.server))?;
    let idle = a.idle.map(Duration::from_secs_f64);
    let mut seen = 0u64;
    let done = |seen: u64| a.count.is_some_and(|c| seen >= c);
    if done(0) {
        return Ok(());
    }
    macro_rules! next_or_idle {
        ($fut:expr) => {
            match idle {
                Some(d) => match tokio::time::timeout(d, $fut).await {
                    Ok(x) => x,
                    Err(_) => return Ok(()),
                },
                None => $fut.await,
            }
        };
    }
    if a.all {
        let js = async_nats::jetstream::new(client);
        let stream =
            js.get_stream(&a.stream).await.map_err(|e| format!("stream {}: {e}", a.stream))?;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: a.subject.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("consumer: {e}"))?;
        let mut messages = consumer.messages().await.map_err(|e| format!("consumer: {e}"))?;
        while let Some(m) = next_or_idle!(messages.next()) {
            let m = m.map_err(|e| format!("reading the stream: {e}"))?;
            println!("{}", message_json(m.subject.as_str(), m.headers.as_ref(), &m.payload));
            seen += 1;
            if done(seen) {
                break;
            }
        }
    } else {
        let mut sub =
            client.subscribe(a.subject.clone()).await.map_err(|e| format!("subscribe: {e}"))?;
        while let Some(m) = next_or_idle!(sub.next()) {
            println!("{}", message_json(m.subject.as_str(), m.headers.as_ref(), &m.payload));
            seen += 1;
            if done(seen) {
                break;
            }
        }
    }
    Ok(())
}
