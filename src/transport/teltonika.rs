//! Teltonika trackers over UDP (Codec 8 / 8 Extended, port 5027 by
//! default): a receive thread per socket reading `recvmmsg` batches, each
//! datagram decoded ([`crate::protocols::teltonika`]), its IMEI resolved to a
//! device id by the registry, its records turned into fleetwire frames
//! (sorted by record time, so a packet sent newest-first counts as one sent
//! in order), handed to the pipeline, and only then acknowledged.
//!
//! Mapping of a record: the GPS element becomes a Position (no fix when the
//! tracker has none, never (0, 0)); IO 66 external voltage and 113 battery
//! level become the health fields; 67 battery voltage, 21 GSM signal (0 to
//! 5), 239 ignition, 240 movement, 16 total odometer and every other
//! integer IO element become named readings (`io_<id>` for the others); the
//! record's event IO id, or priority panic, becomes an Event (severity info
//! for low priority, warning for high, critical for panic).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrayvec::{ArrayString, ArrayVec};
use fleetwire_proto::{
    Body, Event, FixType, Frame, MAX_READINGS, Monitoring, Position, Reading, Seq, Severity,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::sys;
use super::udp::{BoundUdp, inode, kernel_drops};
use crate::clock::now_ms;
use crate::ingest::{
    Admitted, Confirm, ConfirmCounts, DeviceRegistry, Pipeline, Reason, Transport,
};
use crate::protocols::teltonika::{self, Priority, Record};
use crate::telemetry::{Counter, Registry};

/// When a tracker's packet is acknowledged (`teltonika_ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TeltonikaAck {
    /// Once the pipeline took its records.
    Accepted,
    /// Once NATS JetStream acknowledged its records (with forwarding on).
    Published,
}

/// The Teltonika transport's slice of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TeltonikaConfig {
    /// Datagrams per `recvmmsg` call.
    pub(crate) batch: usize,
    /// When packets are acknowledged.
    pub(crate) ack: TeltonikaAck,
}

/// The transport's own series.
#[derive(Debug, Clone)]
struct TeltonikaMetrics {
    acks: Counter,
    confirms: ConfirmCounts,
    io_dropped: Counter,
}

/// The receive thread of the Teltonika socket.
pub(crate) struct TeltonikaReceiver {
    thread: JoinHandle<()>,
}

/// What the receive thread needs.
struct Receiver {
    pipeline: Arc<Pipeline>,
    registry: Arc<DeviceRegistry>,
    metrics: TeltonikaMetrics,
    ack: TeltonikaAck,
    /// The socket, for acknowledgements sent once records are published.
    socket: Arc<UdpSocket>,
}

impl TeltonikaReceiver {
    /// Registers the series and starts the receive thread; it runs until
    /// `stop`, then reads what is queued (1 s at most).
    pub(crate) fn start(
        socket: BoundUdp,
        cfg: &TeltonikaConfig,
        pipeline: &Arc<Pipeline>,
        registry: &Arc<DeviceRegistry>,
        r: &Registry,
        stop: &CancellationToken,
    ) -> io::Result<TeltonikaReceiver> {
        let socket_inode = inode(&socket.socket);
        r.counter_fn(
            "fleetwire_teltonika_receive_buffer_drops_total",
            "Datagrams the kernel dropped because the Teltonika socket's receive buffer was full.",
            &[],
            move || socket_inode.map_or(0, |i| kernel_drops(&[i])),
        );
        let metrics = TeltonikaMetrics {
            acks: r.counter(
                "fleetwire_teltonika_acks_total",
                "Acknowledgements sent to Teltonika trackers (one per packet taken).",
                &[],
            ),
            confirms: ConfirmCounts {
                waiting: r.gauge(
                    "fleetwire_teltonika_acks_waiting",
                    "Packets whose ACK waits for NATS JetStream to store their records (teltonika_ack = \"published\").",
                    &[],
                ),
                withheld: r.counter(
                    "fleetwire_teltonika_acks_withheld_total",
                    "Packets never acknowledged because their records were not stored in NATS JetStream (dropped from the full buffer, or the server stopped): the tracker resends them.",
                    &[],
                ),
            },
            io_dropped: r.counter(
                "fleetwire_teltonika_io_dropped_total",
                "IO elements not kept: variable-length values, and elements beyond the 32 readings of a record.",
                &[],
            ),
        };
        let socket = Arc::new(socket.socket);
        let rx = Receiver {
            pipeline: pipeline.clone(),
            registry: registry.clone(),
            metrics,
            ack: cfg.ack,
            socket: socket.clone(),
        };
        let (stop, batch) = (stop.clone(), cfg.batch);
        let thread = std::thread::Builder::new()
            .name("teltonika-rx".into())
            .spawn(move || rx.run(&socket, batch, &stop))?;
        Ok(TeltonikaReceiver { thread })
    }

    /// Waits for the receive thread to end (after the stop signal).
    pub(crate) async fn join(self) {
        let t = self.thread;
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}

/// How long a stopping receive thread keeps reading what is queued.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

impl Receiver {
    fn run(&self, socket: &UdpSocket, batch: usize, stop: &CancellationToken) {
        let mut rx = sys::Batch::new(batch.clamp(1, sys::MAX_BATCH), super::udp::SLOT);
        let mut drain_until = None;
        loop {
            let stopping = stop.is_cancelled();
            if stopping
                && Instant::now()
                    >= *drain_until.get_or_insert_with(|| Instant::now() + DRAIN_LIMIT)
            {
                return;
            }
            match rx.recv(socket, !stopping) {
                Ok(n) if n > 0 => {
                    let now = now_ms();
                    for i in 0..n {
                        let (bytes, truncated, source) = rx.get(i);
                        if let (Some(ack), Some(to)) =
                            (self.handle(now, bytes, truncated, source), source)
                        {
                            if socket.send_to(&ack, to).is_ok() {
                                self.metrics.acks.inc();
                            }
                        }
                    }
                }
                Ok(_) => {
                    if stopping {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    if stopping {
                        return;
                    }
                }
            }
        }
    }

    /// One datagram: its acknowledgement, when its records were taken.
    fn handle(
        &self,
        now: u64,
        bytes: &[u8],
        truncated: bool,
        source: Option<SocketAddr>,
    ) -> Option<[u8; 7]> {
        let t = Transport::Teltonika;
        let refuse = |reason| {
            self.pipeline.refuse(t, now, bytes.len(), source, reason);
            None
        };
        if truncated {
            return refuse(Reason::Teltonika(teltonika::TeltonikaError::BadLength));
        }
        let packet = match teltonika::parse(bytes) {
            Ok(p) => p,
            Err(e) => return refuse(Reason::Teltonika(e)),
        };
        let device = match self.registry.resolve(t, packet.imei()) {
            Ok(id) => id,
            Err(reason) => return refuse(reason),
        };
        let admitted = self.pipeline.admit(t, now, bytes.len(), source, device).ok()?;
        let mut records: ArrayVec<Record<'_>, 255> = packet.records().collect();
        // Oldest first: a packet sent newest-first counts as the same packet
        // sent in order (odometer, last position).
        records.sort_by_key(Record::timestamp_ms);
        let ack = packet.ack(packet.record_count());
        let confirm = match (self.ack, source) {
            (TeltonikaAck::Published, Some(to)) => {
                let (socket, acks) = (self.socket.clone(), self.metrics.acks.clone());
                let send = move || {
                    if socket.send_to(&ack, to).is_ok() {
                        acks.inc();
                    }
                };
                Some(Confirm::new(send, &self.metrics.confirms))
            }
            _ => None,
        };
        for r in &records {
            self.apply(&admitted, device, r, now, confirm.as_ref());
        }
        match confirm {
            // Sent by the last confirmation from NATS JetStream.
            Some(c) => {
                c.arm();
                None
            }
            None => Some(ack),
        }
    }

    /// Turns one record into frames and applies them.
    fn apply(
        &self,
        admitted: &Admitted<'_>,
        device: u32,
        r: &Record<'_>,
        now: u64,
        confirm: Option<&Arc<Confirm>>,
    ) {
        let t_ms = match r.timestamp_ms() {
            0 => now,
            t => t,
        };
        let mut io = IoReadings::default();
        let mut health = Monitoring::EMPTY;
        for e in r.io() {
            let Some(v) = e.value.as_u64() else {
                self.metrics.io_dropped.inc();
                continue;
            };
            match e.id {
                66 => health.supply_mv = Some(u16::try_from(v).unwrap_or(u16::MAX)),
                113 => health.battery_pct = u8::try_from(v).ok().filter(|p| *p <= 100),
                67 => io.push(e.id, v as f64 / 1000.0),
                _ => io.push(e.id, v as f64),
            }
        }
        self.metrics.io_dropped.add(u64::from(io.dropped));
        let readings: ArrayVec<Reading<'_>, MAX_READINGS> =
            io.names.iter().zip(&io.values).map(|(n, v)| Reading { name: n, value: *v }).collect();
        health.readings = Seq::from_slice(&readings);
        let mut frames: ArrayVec<Frame<'_>, 3> = ArrayVec::new();
        frames.push(Frame::new(device, 0, t_ms, Body::Position(position(r))));
        if health != Monitoring::EMPTY {
            frames.push(Frame::new(device, 0, t_ms, Body::Monitoring(health)));
        }
        if r.event_io_id() != 0 || r.priority() == Priority::Panic {
            let severity = match r.priority() {
                Priority::Low => Severity::Info,
                Priority::High => Severity::Warning,
                Priority::Panic => Severity::Critical,
            };
            let e = Event { code: r.event_io_id(), severity, text: None };
            frames.push(Frame::new(device, 0, t_ms, Body::Event(e)));
        }
        admitted.apply_confirmed(&frames, confirm);
    }
}

/// A record's GPS element as a Position: no fix when the tracker has none.
fn position(r: &Record<'_>) -> Position {
    let g = r.gps();
    if !g.has_fix() {
        return Position {
            lat_e7: 0,
            lon_e7: 0,
            alt_dm: 0,
            speed_cm_s: 0,
            heading_ddeg: 0,
            hacc_cm: 0,
            fix: FixType::NoFix,
            satellites: g.satellites,
        };
    }
    Position {
        lat_e7: g.latitude_e7,
        lon_e7: g.longitude_e7,
        alt_dm: i32::from(g.altitude_m) * 10,
        // km/h to cm/s.
        speed_cm_s: (f64::from(g.speed_kmh) * 100.0 / 3.6).round().min(f64::from(u16::MAX)) as u16,
        heading_ddeg: (g.angle_deg % 360) * 10,
        hacc_cm: 0,
        fix: if g.satellites >= 4 { FixType::Fix3d } else { FixType::Fix2d },
        satellites: g.satellites,
    }
}

/// The named readings of a record's IO elements, on the stack.
#[derive(Default)]
struct IoReadings {
    names: ArrayVec<ArrayString<24>, MAX_READINGS>,
    values: ArrayVec<f64, MAX_READINGS>,
    /// Elements beyond the reading limit.
    dropped: u32,
}

impl IoReadings {
    fn push(&mut self, id: u16, value: f64) {
        if self.names.is_full() {
            self.dropped += 1;
            return;
        }
        let mut name = ArrayString::new();
        let known = match id {
            67 => Some("battery_volts"),
            21 => Some("gsm_signal"),
            239 => Some("ignition"),
            240 => Some("movement"),
            16 => Some("total_odometer_meters"),
            _ => None,
        };
        let written = match known {
            Some(k) => name.try_push_str(k).is_ok(),
            None => std::fmt::Write::write_fmt(&mut name, format_args!("io_{id}")).is_ok(),
        };
        if written {
            self.names.push(name);
            self.values.push(value);
        }
    }
}
