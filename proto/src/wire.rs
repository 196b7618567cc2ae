//! The payload encoding: postcard, field by field.
//!
//! Encoding goes through serde `Serialize` impls that write each record as a
//! postcard tuple. Decoding reads one field at a time with
//! `postcard::take_from_bytes` and checks each value right after reading it,
//! which is the order PROTOCOL.md prescribes, so the first failing field
//! decides the error.

use serde::Deserialize;
use serde::ser::{Serialize, SerializeTuple, Serializer};

use crate::error::DecodeError;
use crate::frame::{
    Batch, Body, Event, FixType, Hello, Kind, Monitoring, Position, Reading, Record, Sample,
    Severity,
};
use crate::seq::{Seq, SeqItem};
use crate::{
    MAX_BATCH_SAMPLES, MAX_EVENT_TEXT_LEN, MAX_HELLO_TEXT_LEN, MAX_NAME_LEN, MAX_READINGS,
};

// ---------------------------------------------------------------------------
// Range checks shared by the decoder and the encoder.

pub(crate) const LAT_MAX: i32 = 900_000_000;
pub(crate) const LON_MAX: i32 = 1_800_000_000;
pub(crate) const ALT_MAX: i32 = 1_000_000;
pub(crate) const HEADING_MAX: u16 = 3_599;
pub(crate) const BATTERY_MAX: u8 = 100;

fn ensure(ok: bool, e: DecodeError) -> Result<(), DecodeError> {
    if ok { Ok(()) } else { Err(e) }
}

/// Name rules: 1..=32 bytes of `[A-Za-z0-9_.-]`, first byte `[A-Za-z_]`.
pub(crate) fn name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    match b.first() {
        None => false,
        Some(first) if !(first.is_ascii_alphabetic() || *first == b'_') => false,
        Some(_) => {
            b.len() <= MAX_NAME_LEN
                && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        }
    }
}

pub(crate) fn check_position(p: &Position) -> Result<(), DecodeError> {
    ensure((-LAT_MAX..=LAT_MAX).contains(&p.lat_e7), DecodeError::OutOfRange)?;
    ensure((-LON_MAX..=LON_MAX).contains(&p.lon_e7), DecodeError::OutOfRange)?;
    ensure((-ALT_MAX..=ALT_MAX).contains(&p.alt_dm), DecodeError::OutOfRange)?;
    ensure(p.heading_ddeg <= HEADING_MAX, DecodeError::OutOfRange)
}

pub(crate) fn check_monitoring(m: &Monitoring<'_>) -> Result<(), DecodeError> {
    ensure(m.battery_pct.is_none_or(|b| b <= BATTERY_MAX), DecodeError::OutOfRange)?;
    ensure(m.readings.len() <= MAX_READINGS, DecodeError::TooManyItems)?;
    for (i, r) in m.readings.iter().enumerate() {
        ensure(name_ok(r.name), DecodeError::BadName)?;
        ensure(!m.readings.iter().take(i).any(|p| p.name == r.name), DecodeError::BadName)?;
        ensure(r.value.is_finite(), DecodeError::OutOfRange)?;
    }
    Ok(())
}

pub(crate) fn check_event(e: &Event<'_>) -> Result<(), DecodeError> {
    ensure(e.text.is_none_or(|t| t.len() <= MAX_EVENT_TEXT_LEN), DecodeError::OutOfRange)
}

pub(crate) fn check_hello(h: &Hello<'_>) -> Result<(), DecodeError> {
    ensure(h.firmware.len() <= MAX_HELLO_TEXT_LEN, DecodeError::OutOfRange)?;
    ensure(h.model.len() <= MAX_HELLO_TEXT_LEN, DecodeError::OutOfRange)
}

pub(crate) fn check_record(r: &Record<'_>) -> Result<(), DecodeError> {
    match r {
        Record::Position(p) => check_position(p),
        Record::Monitoring(m) => check_monitoring(m),
        Record::Event(e) => check_event(e),
    }
}

pub(crate) fn check_body(body: &Body<'_>) -> Result<(), DecodeError> {
    match body {
        Body::Position(p) => check_position(p),
        Body::Monitoring(m) => check_monitoring(m),
        Body::Event(e) => check_event(e),
        Body::Hello(h) => check_hello(h),
        Body::Batch(b) => {
            ensure(!b.samples.is_empty(), DecodeError::BadBatch)?;
            ensure(b.samples.len() <= MAX_BATCH_SAMPLES, DecodeError::TooManyItems)?;
            b.samples.iter().try_for_each(|s| check_record(&s.record))
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding: serde impls in postcard field order.

impl Serialize for Position {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(8)?;
        t.serialize_element(&self.lat_e7)?;
        t.serialize_element(&self.lon_e7)?;
        t.serialize_element(&self.alt_dm)?;
        t.serialize_element(&self.speed_cm_s)?;
        t.serialize_element(&self.heading_ddeg)?;
        t.serialize_element(&self.hacc_cm)?;
        t.serialize_element(&(self.fix as u8))?;
        t.serialize_element(&self.satellites)?;
        t.end()
    }
}

impl Serialize for Reading<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(self.name)?;
        t.serialize_element(&self.value)?;
        t.end()
    }
}

impl Serialize for Monitoring<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(6)?;
        t.serialize_element(&self.battery_pct)?;
        t.serialize_element(&self.supply_mv)?;
        t.serialize_element(&self.temperature_cdeg)?;
        t.serialize_element(&self.rssi_dbm)?;
        t.serialize_element(&self.uptime_s)?;
        t.serialize_element(&self.readings)?;
        t.end()
    }
}

impl Serialize for Event<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&self.code)?;
        t.serialize_element(&(self.severity as u8))?;
        t.serialize_element(&self.text)?;
        t.end()
    }
}

impl Serialize for Hello<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(self.firmware)?;
        t.serialize_element(self.model)?;
        t.serialize_element(&self.capabilities)?;
        t.end()
    }
}

impl Serialize for Sample<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&self.offset_ms)?;
        t.serialize_element(&(self.record.kind() as u8))?;
        match &self.record {
            Record::Position(p) => t.serialize_element(p)?,
            Record::Monitoring(m) => t.serialize_element(m)?,
            Record::Event(e) => t.serialize_element(e)?,
        }
        t.end()
    }
}

/// The payload of a body (what follows the header).
pub(crate) struct Payload<'b, 'a>(pub &'b Body<'a>);

impl Serialize for Payload<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Body::Position(p) => p.serialize(s),
            Body::Monitoring(m) => m.serialize(s),
            Body::Event(e) => e.serialize(s),
            Body::Hello(h) => h.serialize(s),
            Body::Batch(b) => b.samples.serialize(s),
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding: a cursor that reads one postcard value at a time.

/// Reads postcard values from the front of a byte slice.
pub(crate) struct Cursor<'a> {
    pub(crate) rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { rest: bytes }
    }

    /// Any postcard value (varint integers, raw u8/i8, f64, option of those).
    fn take<T: Deserialize<'a>>(&mut self) -> Result<T, DecodeError> {
        let (v, rest) =
            postcard::take_from_bytes::<T>(self.rest).map_err(|_| DecodeError::MalformedPayload)?;
        self.rest = rest;
        Ok(v)
    }

    /// A string: varint(u32) length, then that many bytes of UTF-8. Read
    /// here rather than by postcard so the length varint has the same
    /// maximum size (5 bytes) on every platform.
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len: u32 = self.take()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::MalformedPayload)?;
        if len > self.rest.len() {
            return Err(DecodeError::MalformedPayload);
        }
        let (s, rest) = self.rest.split_at(len);
        let s = core::str::from_utf8(s).map_err(|_| DecodeError::MalformedPayload)?;
        self.rest = rest;
        Ok(s)
    }

    /// An option tag byte: 0 = absent, 1 = present.
    fn present(&mut self) -> Result<bool, DecodeError> {
        match self.take::<u8>()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::MalformedPayload),
        }
    }

    fn opt<T: Deserialize<'a>>(&mut self) -> Result<Option<T>, DecodeError> {
        if self.present()? { self.take().map(Some) } else { Ok(None) }
    }

    fn position(&mut self) -> Result<Position, DecodeError> {
        let lat_e7: i32 = self.take()?;
        ensure((-LAT_MAX..=LAT_MAX).contains(&lat_e7), DecodeError::OutOfRange)?;
        let lon_e7: i32 = self.take()?;
        ensure((-LON_MAX..=LON_MAX).contains(&lon_e7), DecodeError::OutOfRange)?;
        let alt_dm: i32 = self.take()?;
        ensure((-ALT_MAX..=ALT_MAX).contains(&alt_dm), DecodeError::OutOfRange)?;
        let speed_cm_s: u16 = self.take()?;
        let heading_ddeg: u16 = self.take()?;
        ensure(heading_ddeg <= HEADING_MAX, DecodeError::OutOfRange)?;
        let hacc_cm: u16 = self.take()?;
        let fix = FixType::from_u8(self.take()?).ok_or(DecodeError::OutOfRange)?;
        let satellites: u8 = self.take()?;
        Ok(Position { lat_e7, lon_e7, alt_dm, speed_cm_s, heading_ddeg, hacc_cm, fix, satellites })
    }

    fn monitoring(&mut self) -> Result<Monitoring<'a>, DecodeError> {
        let battery_pct: Option<u8> = self.opt()?;
        ensure(battery_pct.is_none_or(|b| b <= BATTERY_MAX), DecodeError::OutOfRange)?;
        let supply_mv = self.opt()?;
        let temperature_cdeg = self.opt()?;
        let rssi_dbm = self.opt()?;
        let uptime_s = self.opt()?;
        let count: u32 = self.take()?;
        if count as usize > MAX_READINGS {
            return Err(DecodeError::TooManyItems);
        }
        let start = self.rest;
        let mut names: [&str; MAX_READINGS] = [""; MAX_READINGS];
        for i in 0..count as usize {
            let name = self.str()?;
            ensure(name_ok(name), DecodeError::BadName)?;
            ensure(!names.iter().take(i).any(|n| *n == name), DecodeError::BadName)?;
            if let Some(slot) = names.get_mut(i) {
                *slot = name;
            }
            let value: f64 = self.take()?;
            ensure(value.is_finite(), DecodeError::OutOfRange)?;
        }
        let used = start.len() - self.rest.len();
        let readings = Seq::checked_wire(start.get(..used).unwrap_or_default(), count as u16);
        Ok(Monitoring { battery_pct, supply_mv, temperature_cdeg, rssi_dbm, uptime_s, readings })
    }

    fn event(&mut self) -> Result<Event<'a>, DecodeError> {
        let code: u16 = self.take()?;
        let severity = Severity::from_u8(self.take()?).ok_or(DecodeError::OutOfRange)?;
        let text = if self.present()? { Some(self.str()?) } else { None };
        ensure(text.is_none_or(|t| t.len() <= MAX_EVENT_TEXT_LEN), DecodeError::OutOfRange)?;
        Ok(Event { code, severity, text })
    }

    fn hello(&mut self) -> Result<Hello<'a>, DecodeError> {
        let firmware = self.str()?;
        ensure(firmware.len() <= MAX_HELLO_TEXT_LEN, DecodeError::OutOfRange)?;
        let model = self.str()?;
        ensure(model.len() <= MAX_HELLO_TEXT_LEN, DecodeError::OutOfRange)?;
        let capabilities: u32 = self.take()?;
        Ok(Hello { firmware, model, capabilities })
    }

    fn sample(&mut self) -> Result<Sample<'a>, DecodeError> {
        let offset_ms: u32 = self.take()?;
        let kind: u8 = self.take()?;
        let record = match Kind::from_u8(kind) {
            Some(Kind::Position) => Record::Position(self.position()?),
            Some(Kind::Monitoring) => Record::Monitoring(self.monitoring()?),
            Some(Kind::Event) => Record::Event(self.event()?),
            Some(Kind::Hello | Kind::Batch) => return Err(DecodeError::BadBatch),
            None => return Err(DecodeError::UnknownKind),
        };
        Ok(Sample { offset_ms, record })
    }

    fn batch(&mut self) -> Result<Batch<'a>, DecodeError> {
        let count: u32 = self.take()?;
        if count == 0 {
            return Err(DecodeError::BadBatch);
        }
        if count as usize > MAX_BATCH_SAMPLES {
            return Err(DecodeError::TooManyItems);
        }
        let start = self.rest;
        for _ in 0..count {
            self.sample()?;
        }
        let used = start.len() - self.rest.len();
        let samples = Seq::checked_wire(start.get(..used).unwrap_or_default(), count as u16);
        Ok(Batch { samples })
    }

    /// Reads and checks the payload of a frame of `kind`.
    pub(crate) fn body(&mut self, kind: Kind) -> Result<Body<'a>, DecodeError> {
        Ok(match kind {
            Kind::Position => Body::Position(self.position()?),
            Kind::Monitoring => Body::Monitoring(self.monitoring()?),
            Kind::Event => Body::Event(self.event()?),
            Kind::Hello => Body::Hello(self.hello()?),
            Kind::Batch => Body::Batch(self.batch()?),
        })
    }
}

impl<'a> SeqItem<'a> for Reading<'a> {
    fn take(bytes: &'a [u8]) -> Result<(Self, &'a [u8]), DecodeError> {
        let mut c = Cursor::new(bytes);
        let name = c.str()?;
        let value = c.take()?;
        Ok((Reading { name, value }, c.rest))
    }
}

impl<'a> SeqItem<'a> for Sample<'a> {
    fn take(bytes: &'a [u8]) -> Result<(Self, &'a [u8]), DecodeError> {
        let mut c = Cursor::new(bytes);
        let s = c.sample()?;
        Ok((s, c.rest))
    }
}
