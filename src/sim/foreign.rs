//! Simulated devices of other protocols: the simulator's frames translated
//! into what a Teltonika tracker (Codec 8 over UDP) or an OsmAnd / Traccar
//! Client phone (HTTP query) would send for the same records.
//!
//! Each simulated device gets an identifier the server's registry maps to a
//! device id: a 15-digit IMEI `35` + its id (Teltonika) or the text
//! `sim-<id>` (OsmAnd). Faults injected by the simulator carry over: a lost
//! frame is not sent, a duplicate is sent twice (the same bytes, as a
//! tracker resends), a corrupted one is sent as the bytes it became. What a
//! fleetwire frame has and these protocols lack (sequence numbers, so loss
//! and reordering counts) is not translated.

use std::net::SocketAddr;

use fleetwire_proto::{Body, Frame, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Sink, UdpSink};
use crate::protocols::teltonika::{
    self, Codec, EncodePacket, EncodeRecord, Gps, IoElement, IoValue, Priority,
};

/// The IMEI of simulated device `id`.
pub(crate) fn imei(id: u32) -> String {
    format!("35{id:013}")
}

/// The OsmAnd id of simulated device `id`.
pub(crate) fn osmand_id(id: u32) -> String {
    format!("sim-{id}")
}

/// Teltonika Codec 8 over UDP: one packet of one record per frame.
pub(crate) struct TeltonikaSink {
    udp: UdpSink,
    packet_id: u16,
    buf: Vec<u8>,
}

impl TeltonikaSink {
    /// A sink sending to the Teltonika port `target`, `batch` datagrams per
    /// system call.
    pub(crate) fn new(target: SocketAddr, batch: usize) -> std::io::Result<Self> {
        Ok(TeltonikaSink {
            udp: UdpSink::batched(target, batch)?,
            packet_id: 0,
            buf: vec![0; 2048],
        })
    }
}

/// The Teltonika datagram for a frame (Position: the GPS element, with
/// battery and supply as IO 113 and 66 when a Monitoring frame carries
/// them; an Event: its code as event IO id), or `None` for a Hello.
fn teltonika_packet(f: &Frame<'_>, packet_id: u16, out: &mut [u8]) -> Option<usize> {
    let mut gps = Gps::default();
    let mut io: arrayvec::ArrayVec<IoElement<'_>, 4> = arrayvec::ArrayVec::new();
    let (mut event, mut priority) = (0u16, Priority::Low);
    match &f.body {
        Body::Position(p) => {
            gps = Gps {
                longitude_e7: p.lon_e7,
                latitude_e7: p.lat_e7,
                altitude_m: i16::try_from(p.alt_dm / 10).unwrap_or(0),
                angle_deg: p.heading_ddeg / 10,
                satellites: p.satellites,
                speed_kmh: (f64::from(p.speed_cm_s) * 0.036).round() as u16,
            };
        }
        Body::Monitoring(m) => {
            if let Some(b) = m.battery_pct {
                io.push(IoElement { id: 113, value: IoValue::U8(b) });
            }
            if let Some(v) = m.supply_mv {
                io.push(IoElement { id: 66, value: IoValue::U16(v) });
            }
        }
        Body::Event(e) => {
            event = e.code;
            if e.severity as u8 >= 4 {
                priority = Priority::Panic;
            }
        }
        Body::Hello(_) | Body::Batch(_) => return None,
    }
    let record =
        EncodeRecord { timestamp_ms: f.timestamp_ms, priority, gps, event_io_id: event, io: &io };
    let id = imei(f.device_id);
    let packet = EncodePacket {
        packet_id,
        avl_packet_id: (f.sequence & 0xff) as u8,
        imei: &id,
        codec: Codec::Codec8,
        records: std::slice::from_ref(&record),
    };
    teltonika::encode(&packet, out).ok()
}

impl Sink for TeltonikaSink {
    async fn send(&mut self, device: u32, bytes: &[u8]) -> std::io::Result<()> {
        let Ok(f) = decode(bytes) else {
            // A corrupted frame: sent as the bytes it became.
            return self.udp.send(device, bytes).await;
        };
        self.packet_id = self.packet_id.wrapping_add(1);
        match teltonika_packet(&f, self.packet_id, &mut self.buf) {
            Some(n) => {
                let d = self.buf[..n].to_vec();
                self.udp.send(device, &d).await
            }
            None => Ok(()),
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.udp.flush().await
    }
}

/// OsmAnd over HTTP: one `GET` per Position or Monitoring frame, on one
/// keep-alive connection.
pub(crate) struct OsmandSink {
    target: SocketAddr,
    conn: Option<tokio::net::TcpStream>,
    /// Requests the server refused (anything but 200).
    pub(crate) refused: u64,
}

impl OsmandSink {
    /// A sink sending to the OsmAnd port `target`.
    pub(crate) fn new(target: SocketAddr) -> Self {
        OsmandSink { target, conn: None, refused: 0 }
    }

    /// One request and its status; reconnects once if the connection died.
    async fn get(&mut self, path_and_query: &str) -> std::io::Result<u16> {
        for attempt in 0..2 {
            if self.conn.is_none() {
                self.conn = Some(tokio::net::TcpStream::connect(self.target).await?);
            }
            let Some(c) = self.conn.as_mut() else { continue };
            let req = format!("GET {path_and_query} HTTP/1.1\r\nHost: fleetwire\r\n\r\n");
            match (c.write_all(req.as_bytes()).await, read_status(c).await) {
                (Ok(()), Ok(status)) => return Ok(status),
                (_, Err(e)) | (Err(e), _) => {
                    self.conn = None;
                    if attempt == 1 {
                        return Err(e);
                    }
                }
            }
        }
        Err(std::io::Error::other("no connection"))
    }
}

/// Reads one HTTP/1.1 response (status line, headers, a Content-Length
/// body) and returns its status.
async fn read_status(c: &mut tokio::net::TcpStream) -> std::io::Result<u16> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte).await? == 0 || head.len() > 16 << 10 {
            return Err(std::io::Error::other("connection closed in a response"));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let len: usize = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len.min(1 << 20)];
    c.read_exact(&mut body).await?;
    Ok(status)
}

/// The OsmAnd query for a frame, or `None` for what OsmAnd cannot say.
fn osmand_query(f: &Frame<'_>) -> Option<String> {
    let id = osmand_id(f.device_id);
    let ts = f.timestamp_ms;
    match &f.body {
        Body::Position(p) => Some(format!(
            "/?id={id}&timestamp={ts}&lat={}&lon={}&altitude={}&speed={}&bearing={}&accuracy={}",
            f64::from(p.lat_e7) / 1e7,
            f64::from(p.lon_e7) / 1e7,
            f64::from(p.alt_dm) / 10.0,
            // m/s to knots, the protocol's unit.
            f64::from(p.speed_cm_s) / 100.0 / 0.514_444,
            f64::from(p.heading_ddeg) / 10.0,
            f64::from(p.hacc_cm) / 100.0,
        )),
        Body::Monitoring(m) => m.battery_pct.map(|b| format!("/?id={id}&timestamp={ts}&batt={b}")),
        _ => None,
    }
}

impl Sink for OsmandSink {
    async fn send(&mut self, _device: u32, bytes: &[u8]) -> std::io::Result<()> {
        let Ok(f) = decode(bytes) else {
            // A corrupted frame: a request with a broken id, as a broken
            // client would send.
            self.refused += u64::from(self.get("/?lat=1").await? != 200);
            return Ok(());
        };
        if let Some(q) = osmand_query(&f) {
            if self.get(&q).await? != 200 {
                self.refused += 1;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
