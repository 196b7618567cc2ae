//! The server's own counters (per transport and reason), registered once on
//! a per-server Prometheus recorder so the hot path only touches cached
//! handles. Per-device and engine series are rendered from engine state at
//! scrape time instead (see [`super::render`]).

use std::sync::Arc;

use metrics::{Counter, Gauge, Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::ingest::{Reason, Transport};

/// Plain totals of one transport, readable (the Prometheus handles are
/// write-only), for `/api/summary`.
#[derive(Debug, Default)]
pub struct TransportTotals {
    /// Received.
    pub received: std::sync::atomic::AtomicU64,
    /// Accepted.
    pub accepted: std::sync::atomic::AtomicU64,
    /// Refused.
    pub rejected: std::sync::atomic::AtomicU64,
}

/// Cached counter handles for one transport.
#[derive(Clone)]
pub struct TransportCounters {
    /// Datagrams (or stream records) received.
    pub received: Counter,
    /// Accepted into the engine.
    pub accepted: Counter,
    /// Bytes received.
    pub bytes: Counter,
    /// Refused, indexed by [`Reason::index`].
    pub rejected: Arc<[Counter]>,
    /// The same totals, readable.
    pub totals: Arc<TransportTotals>,
}

/// Every metric the server records through the `metrics` crate.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    /// UDP counters.
    pub udp: TransportCounters,
    /// QUIC counters.
    pub quic: TransportCounters,
    /// Kernel receive-buffer drops of the UDP sockets.
    pub udp_drops: Counter,
    /// Kernel receive-buffer drops of the QUIC socket.
    pub quic_drops: Counter,
    /// Granted SO_RCVBUF of the UDP sockets, bytes.
    pub udp_buffer: Gauge,
    /// Open QUIC connections.
    pub quic_connections: Gauge,
    /// QUIC handshakes that failed, by reason.
    pub quic_handshake_failures: Arc<[(String, Counter)]>,
    /// DATAGRAM frames quinn dropped because the receive buffer was full.
    pub quic_datagrams_dropped: Counter,
    /// Frames received on QUIC streams.
    pub quic_stream_frames: Counter,
    /// QUIC connections refused because quic_max_connections was reached.
    pub quic_connections_refused: Counter,
    /// Snapshots written.
    pub snapshots: Counter,
    /// Snapshot writes that failed.
    pub snapshot_failures: Counter,
    /// Key file reloads, by result.
    pub key_reloads_ok: Counter,
    /// Key file reloads that failed.
    pub key_reloads_failed: Counter,
    /// Devices with a key.
    pub keys_loaded: Gauge,
    /// Sources tracked by the rate limiter.
    pub rate_limiter_sources: Gauge,
    /// NATS forwarding.
    pub forward: crate::forward::ForwardMetrics,
}

/// QUIC handshake failure reasons, pre-registered so they show as 0.
pub const HANDSHAKE_FAILURES: [&str; 6] =
    ["unknown_ca", "no_certificate", "bad_certificate", "alpn", "timeout", "other"];

fn counter(r: &PrometheusRecorder, name: &'static str, labels: Vec<Label>) -> Counter {
    static META: Metadata<'static> =
        Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
    r.register_counter(&Key::from_parts(name, labels), &META)
}

fn gauge(r: &PrometheusRecorder, name: &'static str, labels: Vec<Label>) -> Gauge {
    static META: Metadata<'static> =
        Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
    r.register_gauge(&Key::from_parts(name, labels), &META)
}

fn describe_counter(
    r: &PrometheusRecorder,
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
) {
    r.describe_counter(name.into(), unit, SharedString::const_str(help));
}

fn describe_gauge(
    r: &PrometheusRecorder,
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
) {
    r.describe_gauge(name.into(), unit, SharedString::const_str(help));
}

impl Metrics {
    /// Registers every metric (all counters start at 0, so rates work from
    /// the first scrape).
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        describe_counter(
            r,
            "fleetwire_datagrams_received_total",
            None,
            "Datagrams (and QUIC stream records) received, before any check.",
        );
        describe_counter(
            r,
            "fleetwire_datagrams_accepted_total",
            None,
            "Datagrams that passed every check and reached the engine.",
        );
        describe_counter(
            r,
            "fleetwire_datagrams_rejected_total",
            None,
            "Datagrams refused, by reason (a wire-protocol check or a server policy).",
        );
        describe_counter(
            r,
            "fleetwire_received_bytes_total",
            Some(Unit::Bytes),
            "Bytes of datagrams received.",
        );
        describe_counter(
            r,
            "fleetwire_udp_receive_buffer_drops_total",
            None,
            "Datagrams the kernel dropped because a UDP socket's receive buffer was full.",
        );
        describe_gauge(
            r,
            "fleetwire_udp_receive_buffer_bytes",
            Some(Unit::Bytes),
            "Receive buffer size the kernel granted each UDP socket.",
        );
        describe_counter(
            r,
            "fleetwire_quic_receive_buffer_drops_total",
            None,
            "UDP datagrams carrying QUIC that the kernel dropped because the QUIC socket's receive buffer was full.",
        );
        describe_gauge(r, "fleetwire_quic_connections", None, "Open QUIC connections.");
        describe_counter(
            r,
            "fleetwire_quic_handshake_failures_total",
            None,
            "QUIC handshakes that failed, by reason.",
        );
        describe_counter(
            r,
            "fleetwire_quic_datagrams_dropped_total",
            None,
            "QUIC DATAGRAM frames dropped because a connection's receive buffer was full.",
        );
        describe_counter(
            r,
            "fleetwire_quic_stream_frames_total",
            None,
            "Frames received on QUIC unidirectional streams.",
        );
        describe_counter(
            r,
            "fleetwire_quic_connections_refused_total",
            None,
            "QUIC connections refused because quic_max_connections was reached.",
        );
        describe_counter(
            r,
            "fleetwire_snapshots_total",
            None,
            "Device-state snapshots written to the data dir.",
        );
        describe_counter(
            r,
            "fleetwire_snapshot_failures_total",
            None,
            "Device-state snapshot writes that failed.",
        );
        describe_counter(
            r,
            "fleetwire_key_reloads_total",
            None,
            "Reloads of the device keys file, by result.",
        );
        describe_gauge(r, "fleetwire_device_keys", None, "Devices with an authentication key.");
        describe_gauge(
            r,
            "fleetwire_rate_limiter_sources",
            None,
            "Source addresses tracked by the rate limiter.",
        );

        describe_counter(
            r,
            "fleetwire_forward_published_total",
            None,
            "Records handed to NATS JetStream (retries included).",
        );
        describe_counter(
            r,
            "fleetwire_forward_acknowledged_total",
            None,
            "Records JetStream acknowledged (stored in the stream).",
        );
        describe_counter(
            r,
            "fleetwire_forward_failed_total",
            None,
            "Publishes that failed or were not acknowledged in time (the record is retried).",
        );
        describe_counter(
            r,
            "fleetwire_forward_dropped_total",
            None,
            "Records dropped because the forwarding buffer was full (oldest first).",
        );
        describe_gauge(
            r,
            "fleetwire_forward_buffered",
            None,
            "Records waiting to be published to NATS.",
        );
        describe_gauge(
            r,
            "fleetwire_forward_connected",
            None,
            "1 while the NATS publisher is connected and its stream is ready.",
        );
        let per_transport = |t: Transport| {
            let l = || vec![Label::new("transport", t.as_str())];
            TransportCounters {
                received: counter(r, "fleetwire_datagrams_received_total", l()),
                accepted: counter(r, "fleetwire_datagrams_accepted_total", l()),
                bytes: counter(r, "fleetwire_received_bytes_total", l()),
                rejected: Reason::ALL
                    .iter()
                    .filter(|reason| reason.applies_to(t))
                    .map(|reason| {
                        let mut l = l();
                        l.push(Label::new("reason", reason.as_str()));
                        counter(r, "fleetwire_datagrams_rejected_total", l)
                    })
                    .collect::<Vec<_>>()
                    .into(),
                totals: Arc::default(),
            }
        };
        let udp = per_transport(Transport::Udp);
        let quic = per_transport(Transport::Quic);
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());
        Metrics {
            udp_drops: counter(r, "fleetwire_udp_receive_buffer_drops_total", vec![]),
            quic_drops: counter(r, "fleetwire_quic_receive_buffer_drops_total", vec![]),
            udp_buffer: gauge(r, "fleetwire_udp_receive_buffer_bytes", vec![]),
            quic_connections: gauge(r, "fleetwire_quic_connections", vec![]),
            quic_handshake_failures: HANDSHAKE_FAILURES
                .iter()
                .map(|reason| {
                    let l = vec![Label::new("reason", *reason)];
                    (reason.to_string(), counter(r, "fleetwire_quic_handshake_failures_total", l))
                })
                .collect::<Vec<_>>()
                .into(),
            quic_datagrams_dropped: counter(r, "fleetwire_quic_datagrams_dropped_total", vec![]),
            quic_stream_frames: counter(r, "fleetwire_quic_stream_frames_total", vec![]),
            quic_connections_refused: counter(
                r,
                "fleetwire_quic_connections_refused_total",
                vec![],
            ),
            snapshots: counter(r, "fleetwire_snapshots_total", vec![]),
            snapshot_failures: counter(r, "fleetwire_snapshot_failures_total", vec![]),
            key_reloads_ok: counter(
                r,
                "fleetwire_key_reloads_total",
                vec![Label::new("result", "ok")],
            ),
            key_reloads_failed: counter(
                r,
                "fleetwire_key_reloads_total",
                vec![Label::new("result", "failed")],
            ),
            keys_loaded: gauge(r, "fleetwire_device_keys", vec![]),
            rate_limiter_sources: gauge(r, "fleetwire_rate_limiter_sources", vec![]),
            forward: crate::forward::ForwardMetrics {
                published: counter(r, "fleetwire_forward_published_total", vec![]),
                acknowledged: counter(r, "fleetwire_forward_acknowledged_total", vec![]),
                failed: counter(r, "fleetwire_forward_failed_total", vec![]),
                dropped: counter(r, "fleetwire_forward_dropped_total", vec![]),
                buffered: gauge(r, "fleetwire_forward_buffered", vec![]),
                connected: gauge(r, "fleetwire_forward_connected", vec![]),
            },
            udp,
            quic,
            recorder,
            handle,
            process,
        }
    }

    /// The counters of a transport.
    pub fn transport(&self, t: Transport) -> &TransportCounters {
        match t {
            Transport::Udp => &self.udp,
            Transport::Quic => &self.quic,
        }
    }

    /// Counts a failed QUIC handshake.
    pub fn handshake_failed(&self, reason: &str) {
        let c = self.quic_handshake_failures.iter().find(|(r, _)| r == reason);
        let c = c.or_else(|| self.quic_handshake_failures.iter().find(|(r, _)| r == "other"));
        if let Some((_, c)) = c {
            c.increment(1);
        }
    }

    /// The recorder's part of /metrics (process metrics refreshed first).
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
