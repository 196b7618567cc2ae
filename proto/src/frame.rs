//! The typed content of a frame. Every value here has passed the range
//! checks of PROTOCOL.md when it came out of [`decode`](crate::decode).

use crate::auth::AuthTag;
use crate::seq::Seq;

/// One decoded (or to-be-encoded) frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame<'a> {
    /// The sending device, never 0.
    pub device_id: u32,
    /// Per-device sequence number; increments by one per frame and wraps
    /// from 4294967295 to 0.
    pub sequence: u32,
    /// Device clock when the frame was sent, milliseconds since the Unix
    /// epoch (UTC); 0 means the device has no clock.
    pub timestamp_ms: u64,
    /// The message.
    pub body: Body<'a>,
    /// The authentication tag, when the frame carries one. Set by
    /// [`decode`](crate::decode); ignored by [`encode`](crate::encode) (use
    /// [`encode_signed`](crate::encode_signed) to add one).
    pub auth: Option<AuthTag<'a>>,
}

impl<'a> Frame<'a> {
    /// A frame without authentication tag.
    pub const fn new(device_id: u32, sequence: u32, timestamp_ms: u64, body: Body<'a>) -> Self {
        Frame { device_id, sequence, timestamp_ms, body, auth: None }
    }

    /// The message kind of the body.
    pub const fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// Number of records (samples) the frame carries: the number of batch
    /// samples for a Batch, 1 otherwise.
    pub fn record_count(&self) -> usize {
        match &self.body {
            Body::Batch(b) => b.samples.len(),
            _ => 1,
        }
    }
}

/// The message kind byte of the header (and of a batch sample).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// A GNSS fix.
    Position = 1,
    /// Battery, supply, temperature, RSSI, uptime and named readings.
    Monitoring = 2,
    /// Something happened: an alarm, a door opened, ...
    Event = 3,
    /// Sent at boot: firmware, model, capabilities.
    Hello = 4,
    /// Several Position / Monitoring / Event samples with time offsets.
    Batch = 5,
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: [Kind; 5] =
        [Kind::Position, Kind::Monitoring, Kind::Event, Kind::Hello, Kind::Batch];

    /// The kind with this wire byte.
    pub const fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Position),
            2 => Some(Kind::Monitoring),
            3 => Some(Kind::Event),
            4 => Some(Kind::Hello),
            5 => Some(Kind::Batch),
            _ => None,
        }
    }

    /// Lower-case name, used as a metric label (`position`, `monitoring`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Position => "position",
            Kind::Monitoring => "monitoring",
            Kind::Event => "event",
            Kind::Hello => "hello",
            Kind::Batch => "batch",
        }
    }
}

/// The message a frame carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Body<'a> {
    /// Kind 1.
    Position(Position),
    /// Kind 2.
    Monitoring(Monitoring<'a>),
    /// Kind 3.
    Event(Event<'a>),
    /// Kind 4.
    Hello(Hello<'a>),
    /// Kind 5.
    Batch(Batch<'a>),
}

impl Body<'_> {
    /// The kind byte for this body.
    pub const fn kind(&self) -> Kind {
        match self {
            Body::Position(_) => Kind::Position,
            Body::Monitoring(_) => Kind::Monitoring,
            Body::Event(_) => Kind::Event,
            Body::Hello(_) => Kind::Hello,
            Body::Batch(_) => Kind::Batch,
        }
    }
}

/// Quality of a GNSS fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FixType {
    /// No fix: the coordinates carry no information.
    NoFix = 0,
    /// Two-dimensional fix (altitude not valid).
    Fix2d = 1,
    /// Three-dimensional fix.
    Fix3d = 2,
    /// Differential (DGNSS / SBAS) fix.
    Differential = 3,
    /// RTK float solution.
    RtkFloat = 4,
    /// RTK fixed solution.
    RtkFixed = 5,
}

impl FixType {
    /// The fix type with this wire value.
    pub const fn from_u8(b: u8) -> Option<FixType> {
        match b {
            0 => Some(FixType::NoFix),
            1 => Some(FixType::Fix2d),
            2 => Some(FixType::Fix3d),
            3 => Some(FixType::Differential),
            4 => Some(FixType::RtkFloat),
            5 => Some(FixType::RtkFixed),
            _ => None,
        }
    }

    /// Lower-case name (`none`, `2d`, `3d`, `dgnss`, `rtk_float`, `rtk_fixed`).
    pub const fn as_str(self) -> &'static str {
        match self {
            FixType::NoFix => "none",
            FixType::Fix2d => "2d",
            FixType::Fix3d => "3d",
            FixType::Differential => "dgnss",
            FixType::RtkFloat => "rtk_float",
            FixType::RtkFixed => "rtk_fixed",
        }
    }

    /// The fix type whose [`as_str`](Self::as_str) is `s`.
    pub fn from_label(s: &str) -> Option<FixType> {
        (0..=5).filter_map(FixType::from_u8).find(|f| f.as_str() == s)
    }
}

/// A GNSS fix (kind 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// Latitude in 1e-7 degrees (WGS 84), -900000000 ..= 900000000.
    pub lat_e7: i32,
    /// Longitude in 1e-7 degrees (WGS 84), -1800000000 ..= 1800000000.
    pub lon_e7: i32,
    /// Altitude above mean sea level in decimeters, -1000000 ..= 1000000.
    pub alt_dm: i32,
    /// Ground speed in centimeters per second.
    pub speed_cm_s: u16,
    /// Course over ground in tenths of a degree, clockwise from true north,
    /// 0 ..= 3599.
    pub heading_ddeg: u16,
    /// Horizontal accuracy (1-sigma) in centimeters; 0 = unknown.
    pub hacc_cm: u16,
    /// Fix quality.
    pub fix: FixType,
    /// Satellites used in the solution.
    pub satellites: u8,
}

impl Position {
    /// Latitude in degrees.
    pub fn lat_deg(&self) -> f64 {
        f64::from(self.lat_e7) * 1e-7
    }
    /// Longitude in degrees.
    pub fn lon_deg(&self) -> f64 {
        f64::from(self.lon_e7) * 1e-7
    }
    /// Altitude in meters.
    pub fn alt_m(&self) -> f64 {
        f64::from(self.alt_dm) * 0.1
    }
    /// Ground speed in meters per second.
    pub fn speed_m_s(&self) -> f64 {
        f64::from(self.speed_cm_s) * 0.01
    }
    /// Heading in degrees.
    pub fn heading_deg(&self) -> f64 {
        f64::from(self.heading_ddeg) * 0.1
    }
    /// Horizontal accuracy in meters (None when unknown).
    pub fn hacc_m(&self) -> Option<f64> {
        (self.hacc_cm != 0).then(|| f64::from(self.hacc_cm) * 0.01)
    }
}

/// A named reading: any quantity the device measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading<'a> {
    /// 1 to 32 bytes of `[A-Za-z0-9_.-]`, not starting with a digit, `.` or
    /// `-`; unique within its record.
    pub name: &'a str,
    /// A finite value (NaN and infinities are refused).
    pub value: f64,
}

/// Device health (kind 2). Every well-known field is optional.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Monitoring<'a> {
    /// State of charge, percent, 0 ..= 100.
    pub battery_pct: Option<u8>,
    /// Supply voltage in millivolts.
    pub supply_mv: Option<u16>,
    /// Temperature in hundredths of a degree Celsius.
    pub temperature_cdeg: Option<i16>,
    /// Received signal strength in dBm.
    pub rssi_dbm: Option<i8>,
    /// Seconds since the device booted.
    pub uptime_s: Option<u32>,
    /// Up to 32 named readings.
    pub readings: Seq<'a, Reading<'a>>,
}

impl Monitoring<'_> {
    /// A Monitoring record with no field set.
    pub const EMPTY: Monitoring<'static> = Monitoring {
        battery_pct: None,
        supply_mv: None,
        temperature_cdeg: None,
        rssi_dbm: None,
        uptime_s: None,
        readings: Seq::EMPTY,
    };
}

/// How serious an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Severity {
    /// Informational.
    Info = 0,
    /// Normal but significant.
    Notice = 1,
    /// Needs attention.
    Warning = 2,
    /// Something failed.
    Error = 3,
    /// Act now.
    Critical = 4,
}

impl Severity {
    /// The severity with this wire value.
    pub const fn from_u8(b: u8) -> Option<Severity> {
        match b {
            0 => Some(Severity::Info),
            1 => Some(Severity::Notice),
            2 => Some(Severity::Warning),
            3 => Some(Severity::Error),
            4 => Some(Severity::Critical),
            _ => None,
        }
    }

    /// Lower-case name, used as a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Notice => "notice",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    /// The severity whose [`as_str`](Self::as_str) is `s`.
    pub fn from_label(s: &str) -> Option<Severity> {
        (0..=4).filter_map(Severity::from_u8).find(|f| f.as_str() == s)
    }
}

/// Something happened on the device (kind 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event<'a> {
    /// Application-defined event code.
    pub code: u16,
    /// How serious it is.
    pub severity: Severity,
    /// Optional UTF-8 text, at most 64 bytes.
    pub text: Option<&'a str>,
}

/// Capability bits a device announces in its [`Hello`].
pub mod capabilities {
    /// Has a GNSS receiver and sends Position.
    pub const GNSS: u32 = 1 << 0;
    /// Sends Monitoring.
    pub const MONITORING: u32 = 1 << 1;
    /// Sends Event.
    pub const EVENTS: u32 = 1 << 2;
    /// Sends Batch (store and forward).
    pub const BATCH: u32 = 1 << 3;
    /// Signs frames with an authentication tag.
    pub const AUTH: u32 = 1 << 4;
    /// Can speak QUIC.
    pub const QUIC: u32 = 1 << 5;
}

/// Sent by a device at boot (kind 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hello<'a> {
    /// Firmware version, UTF-8, at most 32 bytes.
    pub firmware: &'a str,
    /// Hardware model, UTF-8, at most 32 bytes.
    pub model: &'a str,
    /// Bit set of [`capabilities`]; undefined bits are kept, not refused.
    pub capabilities: u32,
}

/// A record that may appear inside a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Record<'a> {
    /// A GNSS fix.
    Position(Position),
    /// Device health.
    Monitoring(Monitoring<'a>),
    /// An event.
    Event(Event<'a>),
}

impl Record<'_> {
    /// The kind byte of this record.
    pub const fn kind(&self) -> Kind {
        match self {
            Record::Position(_) => Kind::Position,
            Record::Monitoring(_) => Kind::Monitoring,
            Record::Event(_) => Kind::Event,
        }
    }
}

/// One sample of a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// How many milliseconds before the frame's timestamp the sample was
    /// taken (its time is `timestamp_ms - offset_ms`).
    pub offset_ms: u32,
    /// The sample.
    pub record: Record<'a>,
}

/// Several samples in one datagram (kind 5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batch<'a> {
    /// 1 to 128 samples.
    pub samples: Seq<'a, Sample<'a>>,
}
