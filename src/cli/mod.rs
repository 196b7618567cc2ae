//! The `fleetwire` command line.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_TOML};
use crate::ingest::UdpAuth;
use crate::server::{Listeners, Signals};
use crate::transport::quic::ClientAuth;

mod bench;
mod common;
mod latency;
mod send;
mod sim;
mod tail;

/// Real-time telemetry ingest for IoT fleets: UDP and QUIC in, Prometheus out.
#[derive(Debug, Parser)]
#[command(name = "fleetwire", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the ingest server (UDP 4480, QUIC 4481, HTTP 9480 by default).
    Serve(Box<ServeArgs>),
    /// Decode one datagram: hex as argument, or raw bytes on stdin.
    Decode(DecodeArgs),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Make TLS certificates for QUIC (a CA, the server, devices).
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Simulate a fleet of devices sending to a server.
    Sim(sim::SimArgs),
    /// Send one datagram from the command line.
    Send(send::SendArgs),
    /// Send the datagrams of a file recorded with `sim --record`.
    Replay(sim::ReplayArgs),
    /// Print records forwarded to NATS JetStream as JSON lines.
    Tail(tail::TailArgs),
    /// Tools of the benchmark suite (bench/run.sh).
    #[command(subcommand, hide = true)]
    Bench(bench::BenchCommand),
}

macro_rules! config_flags {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty ),* $(,)?) => {
        /// One flag per configuration key (see `fleetwire config default`).
        #[derive(Debug, Default, Clone, clap::Args, serde::Serialize)]
        pub(crate) struct ConfigFlags {
            $(
                $(#[doc = $doc])*
                #[arg(long, value_name = "VALUE", allow_negative_numbers = true, help_heading = "Configuration (also FLEETWIRE_<KEY> or the config file)")]
                #[serde(skip_serializing_if = "Option::is_none")]
                pub(crate) $name: Option<$ty>,
            )*
        }
    };
}

config_flags! {
    /// UDP ingest address, or "off".
    udp_listen: String,
    /// QUIC ingest address, or "off".
    quic_listen: String,
    /// HTTP address (/metrics, /api), or "off".
    http_listen: String,
    /// Teltonika (Codec 8 / 8E over UDP) address, or "off".
    teltonika_listen: String,
    /// When Teltonika packets are acknowledged: accepted or published.
    teltonika_ack: String,
    /// OsmAnd / Traccar Client HTTP address, or "off".
    osmand_listen: String,
    /// Unit of the OsmAnd speed parameter: knots, kmh, mps or mph.
    osmand_speed_unit: String,
    /// Token OsmAnd clients must send.
    osmand_token: String,
    /// API tokens file ("<token> <role>" per line).
    http_tokens_file: PathBuf,
    /// /metrics needs a token too (true/false).
    metrics_auth: bool,
    /// Tile URL template for the map.
    map_tiles_url: String,
    /// Most live-stream clients.
    stream_max_clients: usize,
    /// Keep-alive of stream connections (e.g. 15s).
    stream_keepalive: String,
    /// Messages kept for stream resumes.
    stream_replay: usize,
    /// Oldest message kept for resumes (e.g. 1m).
    stream_replay_age: String,
    /// Messages a stream client may fall behind.
    stream_client_queue: usize,
    /// Identifiers with device ids and names ("<identifier> <id> [name]").
    devices_file: PathBuf,
    /// Give unknown identifiers an id (true/false).
    auto_register: bool,
    /// Most auto-registered identifiers.
    auto_register_limit: usize,
    /// Directory for the state snapshot and the development certificate.
    data_dir: PathBuf,
    /// UDP receive threads (SO_REUSEPORT).
    udp_threads: usize,
    /// Requested UDP receive buffer, bytes.
    udp_recv_buffer: usize,
    /// Datagrams per recvmmsg call.
    udp_batch: usize,
    /// Longest pause between UDP reads under sustained load (e.g. 100us; 0s = none).
    udp_linger: String,
    /// Engine shards.
    engine_shards: usize,
    /// Offline after this much silence (e.g. 60s).
    offline_after: String,
    /// Offline after this many of the device's own reporting intervals.
    offline_after_factor: f64,
    /// Longest offline threshold (e.g. 1h).
    offline_after_max: String,
    /// Per-device series removed after this much silence (e.g. 10m).
    series_ttl: String,
    /// Most devices with per-device series.
    max_exported_devices: usize,
    /// Most devices tracked.
    max_devices: usize,
    /// Highest plausible speed, m/s.
    max_speed: f64,
    /// Largest tolerated clock lead of devices (e.g. 5m).
    max_future: String,
    /// Oldest accepted sample (e.g. 7days).
    max_age: String,
    /// Worst accepted horizontal accuracy, m (0 = any).
    max_hacc: f64,
    /// Odometer dead band, m.
    stationary_radius: f64,
    /// Reported speed that means moving, m/s.
    moving_speed: f64,
    /// Stopped after this long without moving (e.g. 30s).
    stop_after: String,
    /// Reading statistics window (e.g. 60s).
    reading_window: String,
    /// Samples kept per reading.
    reading_samples: usize,
    /// Distinct reading names per device.
    max_readings_per_device: usize,
    /// Bytes of reading samples and device info over all devices.
    max_reading_memory: usize,
    /// Snapshot interval (e.g. 1m; 0s = only at shutdown).
    snapshot_interval: String,
    /// Journal sync interval: what a crash may lose (0s = no journal).
    journal_interval: String,
    /// Save and restore device state (true/false).
    snapshot: bool,
    /// QUIC certificate chain (PEM).
    quic_cert: PathBuf,
    /// QUIC private key (PEM).
    quic_key: PathBuf,
    /// CA for device client certificates (PEM).
    quic_client_ca: PathBuf,
    /// Client certificates: none, optional or required.
    client_auth: ClientAuth,
    /// Most concurrent QUIC connections.
    quic_max_connections: usize,
    /// QUIC idle timeout (e.g. 60s).
    quic_idle_timeout: String,
    /// QUIC datagram receive buffer per connection, bytes.
    quic_datagram_buffer: usize,
    /// Require QUIC address validation (Retry) (true/false).
    quic_retry: bool,
    /// UDP frame tags: off, optional or required.
    udp_auth: UdpAuth,
    /// Device keys file.
    keys_file: PathBuf,
    /// Datagrams/s per source address (0 = unlimited).
    rate_limit_source: f64,
    /// Datagrams/s per device (0 = unlimited).
    rate_limit_device: f64,
    /// Burst allowance of the rate limits.
    rate_limit_burst: f64,
    /// Most source addresses tracked by the limiter.
    rate_limit_sources: usize,
}

macro_rules! nats_flags {
    ($( $(#[doc = $doc:literal])* $flag:ident => $key:ident : $ty:ty ),* $(,)?) => {
        /// One flag per `[forward.nats]` key.
        #[derive(Debug, Default, Clone, clap::Args)]
        pub(crate) struct NatsFlags {
            $(
                $(#[doc = $doc])*
                #[arg(long, value_name = "VALUE", allow_negative_numbers = true, help_heading = "Forwarding to NATS JetStream ([forward.nats], FLEETWIRE_FORWARD__NATS__<KEY>)")]
                pub(crate) $flag: Option<$ty>,
            )*
        }

        impl NatsFlags {
            /// The keys set on the command line, as `{"key": value}`.
            fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
                let mut m = serde_json::Map::new();
                $(
                    if let Some(v) = &self.$flag {
                        m.insert(stringify!($key).into(), serde_json::json!(v));
                    }
                )*
                m
            }
        }
    };
}

nats_flags! {
    /// NATS server URL(s), comma-separated (enables forwarding).
    forward_nats_url => url: String,
    /// NATS user.
    forward_nats_user => user: String,
    /// NATS password.
    forward_nats_password => password: String,
    /// NATS token.
    forward_nats_token => token: String,
    /// NATS credentials file.
    forward_nats_creds_file => creds_file: PathBuf,
    /// Subject prefix (subjects are <prefix>.<device>.<kind>).
    forward_nats_subject_prefix => subject_prefix: String,
    /// JetStream stream name.
    forward_nats_stream => stream: String,
    /// Stream retention by age (e.g. 7days).
    forward_nats_max_age => max_age: String,
    /// Stream retention by size, bytes (0 = none).
    forward_nats_max_bytes => max_bytes: i64,
    /// Stream retention by count (0 = none).
    forward_nats_max_messages => max_messages: i64,
    /// Stream storage: file or memory.
    forward_nats_storage => storage: String,
    /// Stream replicas.
    forward_nats_replicas => replicas: usize,
    /// De-duplication window (e.g. 2m).
    forward_nats_duplicate_window => duplicate_window: String,
    /// Records buffered before the oldest are dropped.
    forward_nats_buffer => buffer: usize,
    /// Publishes in flight.
    forward_nats_batch => batch: usize,
}

/// `fleetwire serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "FLEETWIRE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Settings.
    #[command(flatten)]
    pub flags: ConfigFlags,
    /// NATS settings.
    #[command(flatten)]
    pub nats: NatsFlags,
}

impl ServeArgs {
    /// The command-line settings as a configuration layer.
    pub(crate) fn overrides(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.flags).unwrap_or_default();
        let nats = self.nats.to_map();
        if let (false, Some(obj)) = (nats.is_empty(), v.as_object_mut()) {
            obj.insert("forward".into(), serde_json::json!({ "nats": nats }));
        }
        v
    }

    /// Loads the configuration.
    pub(crate) fn load(&self) -> Result<Config, crate::config::ConfigError> {
        Config::load(self.config.as_deref(), &self.overrides())
    }
}

/// `fleetwire decode`.
#[derive(Debug, clap::Args)]
pub(crate) struct DecodeArgs {
    /// The datagram as hex (spaces allowed); raw bytes are read from stdin when absent.
    pub hex: Vec<String>,
    /// Verify the authentication tag with this key (hex).
    #[arg(long)]
    pub key: Option<String>,
}

/// `fleetwire config ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the full, commented default configuration.
    Default,
    /// Print the effective configuration (file, environment and flags applied).
    Show(Box<ServeArgs>),
}

/// `fleetwire certs ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Make a CA and a server certificate.
    Init {
        /// Output directory.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Server names and addresses (repeat the flag).
        #[arg(long = "san", default_values = ["localhost", "127.0.0.1", "::1"])]
        sans: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Renew the server certificate from the CA in --dir (the CA stays).
    Server {
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Server names and addresses (repeat the flag).
        #[arg(long = "san", default_values = ["localhost", "127.0.0.1", "::1"])]
        sans: Vec<String>,
    },
    /// Make a client certificate for a device, signed by the CA in --dir.
    Device {
        /// Device id (1..=4294967295).
        id: u32,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

/// Exit code for unusable configuration.
pub(crate) const EXIT_CONFIG: u8 = 2;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The configuration `fleetwire serve <args>` would run with (flags, the
/// `FLEETWIRE_*` environment and the `--config` file applied): what an
/// embedding program or a test hands to [`run`](crate::server::run).
pub fn serve_config(args: &[&str]) -> Result<Config, String> {
    let argv = ["fleetwire", "serve"].into_iter().chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve(a) => a.load().map_err(|e| e.to_string()),
        _ => Err("not a serve command line".into()),
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => serve(*a),
        Command::Decode(a) => decode(a),
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Show(a)) => match a.load() {
            Ok(c) => {
                print!("{}", toml::to_string(&c).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleetwire: configuration error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Certs(c) => certs(c),
        Command::Sim(a) => {
            init_logging();
            sim::main(a)
        }
        Command::Send(a) => send::main(a),
        Command::Replay(a) => {
            init_logging();
            sim::replay_main(a)
        }
        Command::Bench(c) => bench::main(c),
        Command::Tail(a) => tail::main(a),
    }
}

fn serve(a: ServeArgs) -> ExitCode {
    init_logging();
    let cfg = match a.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleetwire: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetwire: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // The signal handlers first: SIGTERM or SIGHUP while the sockets
        // are bound and the state restored (seconds, with a million
        // devices) must not end the process by their default action.
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fleetwire: cannot install the signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let ran = match Listeners::bind(&cfg) {
            Ok(listeners) => crate::server::serve(cfg, listeners, signals).await,
            Err(e) => Err(e),
        };
        match ran {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fleetwire: {e}");
                if e.is_config() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
            }
        }
    })
}

fn decode(a: DecodeArgs) -> ExitCode {
    let bytes = if a.hex.is_empty() {
        let mut b = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut b) {
            eprintln!("fleetwire: reading stdin: {e}");
            return ExitCode::FAILURE;
        }
        b
    } else {
        let hex: String = a.hex.concat().chars().filter(|c| !c.is_whitespace()).collect();
        match hex::decode(&hex) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("fleetwire: not hex: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    };
    let key = match a.key.as_deref().map(hex::decode).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("fleetwire: --key is not hex: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let refused = |e: fleetwire_proto::DecodeError| {
        let v = serde_json::json!({"refused": e.as_str(), "message": e.to_string(), "length": bytes.len()});
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        ExitCode::FAILURE
    };
    match fleetwire_proto::decode(&bytes) {
        Err(e) => refused(e),
        Ok(f) => {
            if let (Some(k), Some(tag)) = (&key, f.auth) {
                if let Err(e) = tag.verify(k) {
                    return refused(e);
                }
            }
            let mut v = fleetwire_proto::json::frame_to_json(&f);
            v["length"] = bytes.len().into();
            if f.auth.is_some() {
                v["auth_verified"] = key.is_some().into();
            }
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
    }
}

fn certs(c: CertsCommand) -> ExitCode {
    match c {
        CertsCommand::Init { dir, sans, force } => match crate::certs::init(&dir, &sans, force) {
            Ok(f) => {
                println!(
                    "CA certificate:     {}  (give to devices; quic_client_ca)",
                    f.ca_cert.display()
                );
                println!(
                    "CA private key:     {}  (keep secret, offline; signs device certificates)",
                    f.ca_key.display()
                );
                println!("server certificate: {}  (quic_cert)", f.server_cert.display());
                println!("server private key: {}  (quic_key)", f.server_key.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleetwire: {e}");
                ExitCode::FAILURE
            }
        },
        CertsCommand::Server { dir, sans } => match crate::certs::server(&dir, &sans) {
            Ok((c, k)) => {
                println!(
                    "server certificate: {}  (quic_cert; valid {} days)",
                    c.display(),
                    crate::certs::SERVER_DAYS
                );
                println!("server private key: {}  (quic_key)", k.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleetwire: {e}");
                ExitCode::FAILURE
            }
        },
        CertsCommand::Device { id, dir } => {
            if id == 0 {
                eprintln!("fleetwire: device id 0 is reserved");
                return ExitCode::from(EXIT_CONFIG);
            }
            match crate::certs::device(&dir, id) {
                Ok((c, k)) => {
                    println!("device {id} certificate: {}", c.display());
                    println!(
                        "device {id} private key: {}  (install on the device only)",
                        k.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fleetwire: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
