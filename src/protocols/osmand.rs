//! The OsmAnd / Traccar Client HTTP protocol: one request's query string,
//! body and Content-Type in, one typed [`OsmandReport`] or an
//! [`OsmandError`] naming the parameter out. Sans-IO: the HTTP server, the
//! status codes and the device registry are the caller's.
//!
//! # Forms
//!
//! * **Query** (`GET`, or `POST` with an empty body), as OsmAnd and the older
//!   Traccar Client send it: `/?id=123456&lat=60.0&lon=30.0&timestamp=1377177267`.
//! * **Form**: a `POST` with an `application/x-www-form-urlencoded` body;
//!   the query string's parameters are read first, then the body's.
//! * **JSON**: the body of Traccar Client 9+ (`application/json`):
//!   `{"location": {"timestamp", "coords": {"latitude", "longitude",
//!   "accuracy", "speed", "heading", "altitude"}, "is_moving", "odometer",
//!   "battery": {"level", "is_charging"}, "extras": {...}}, "device_id"}`.
//!   Its speed is in m/s whatever [`SpeedUnit`] says, a negative speed,
//!   heading, accuracy or battery level means unknown, `level` is 0..=1, and
//!   numeric or boolean `extras` become readings. The query string of a JSON
//!   request carries no data (its parameters other than `token` are counted
//!   in [`OsmandReport::ignored`]).
//!
//! A body of only whitespace counts as no body. Without a Content-Type, or
//! with any other one, a body whose first non-blank byte is `{` is JSON and
//! anything else is a form.
//!
//! # Parameters (query and form)
//!
//! | key | meaning |
//! |---|---|
//! | `id`, `deviceid` | device id (required; 1..=64 bytes of visible ASCII) |
//! | `timestamp` | seconds (below 2³¹−1) or milliseconds since the epoch, or ISO-8601 ([`parse_timestamp`]); absent: the caller uses the receive time |
//! | `lat`, `lon` or `location=lat,lon` | degrees, −90..=90 and −180..=180; one without the other is an error |
//! | `speed` | in the caller's [`SpeedUnit`] (knots by default); negative: unknown |
//! | `bearing` or `heading` | degrees 0..=360 (360 is 0); negative: unknown |
//! | `altitude` | meters, −100 000..=100 000 |
//! | `accuracy` | meters; negative: unknown |
//! | `hdop` | ≥ 0 |
//! | `batt` | percent 0..=100; negative: unknown |
//! | `charge`, `valid` | `true`/`false`/`1`/`0` (any case) |
//! | `token` | skipped: the caller authenticates with [`find_token`] |
//! | anything else | a finite number, or `true`/`false` (1/0), under a valid name ([`name_ok`]): a [`Reading`]; otherwise ignored and counted |
//!
//! Keys are case-sensitive. A known parameter given twice (or `id` with
//! `deviceid`, `bearing` with `heading`, `location` with `lat`/`lon`) is an
//! error; a repeated reading name keeps the last value. Parameters are
//! checked in the order sent and the first error wins; a missing id is
//! reported after all of them, a missing coordinate last.
//!
//! # Bounds
//!
//! The query string and the body are each at most [`MAX_INPUT_LEN`] bytes;
//! at most [`MAX_READINGS`] readings are kept (the rest are counted in
//! [`OsmandReport::dropped_readings`]). The report holds no heap memory; the
//! decoder allocates only where percent-decoding or JSON escapes need an
//! owned string, and serde_json bounds JSON nesting (128 levels).

use core::fmt;
use core::marker::PhantomData;
use std::borrow::Cow;
use std::str::FromStr;

use arrayvec::{ArrayString, ArrayVec};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The longest query string, and the longest body, accepted (64 KiB each).
pub(crate) const MAX_INPUT_LEN: usize = 64 * 1024;
/// The most named readings one report keeps.
pub(crate) const MAX_READINGS: usize = 32;
/// The longest reading name, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 32;
/// The longest device id, in bytes.
pub(crate) const MAX_ID_LEN: usize = 64;
/// The latest timestamp accepted: 9999-12-31T23:59:59.999Z, in ms.
pub(crate) const MAX_TIMESTAMP_MS: u64 = 253_402_300_799_999;
/// An integer timestamp below this is seconds, else milliseconds (Traccar's
/// rule: `i32::MAX`, i.e. seconds up to 2038-01-19).
pub(crate) const SECONDS_BELOW: u64 = 2_147_483_647;
/// The largest altitude magnitude accepted, in meters.
pub(crate) const MAX_ALTITUDE_M: f64 = 100_000.0;

/// Why a request gives no report. [`as_str`](Self::as_str) is the stable
/// metric label, [`param`](Self::param) the parameter to name in the `400`
/// body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum OsmandError {
    /// The query string or the body is longer than [`MAX_INPUT_LEN`].
    #[error("request larger than 64 KiB")]
    TooLarge,
    /// The body was taken as JSON but is not a JSON object of the Traccar
    /// Client shape: a syntax error, invalid UTF-8, a duplicate field, a
    /// number out of f64 range, nesting deeper than 128, or `location`,
    /// `coords`, `battery` or `extras` not an object (a batch array too).
    #[error("malformed JSON body")]
    BadJson,
    /// No `id`, `deviceid` (query, form) or `device_id` (JSON), or JSON
    /// `device_id` is null.
    #[error("missing device id")]
    MissingId,
    /// The device id is empty, longer than [`MAX_ID_LEN`], holds a byte
    /// outside visible ASCII (`!`..=`~`), or (JSON) is neither a string nor
    /// a non-negative integer.
    #[error("bad device id in `{param}`")]
    BadId {
        /// `id`, `deviceid` or `device_id`.
        param: &'static str,
    },
    /// A known parameter's value does not parse: not a finite number, not a
    /// timestamp form, not `true`/`false`/`1`/`0`, `location` not two
    /// comma-separated numbers, or (JSON) a value of the wrong type.
    #[error("bad value for `{param}`")]
    BadValue {
        /// The parameter, e.g. `lat`, `timestamp`, `location.coords.speed`.
        param: &'static str,
    },
    /// A known parameter parses but lies outside its range (latitude beyond
    /// ±90, longitude beyond ±180, heading above 360, battery above 100, a
    /// timestamp before 1970 or after 9999, ...).
    #[error("value out of range for `{param}`")]
    OutOfRange {
        /// The parameter.
        param: &'static str,
    },
    /// One coordinate without the other: `param` is the one missing.
    #[error("missing parameter `{param}`")]
    MissingParam {
        /// `lat`, `lon`, `location.coords.latitude` or
        /// `location.coords.longitude`.
        param: &'static str,
    },
    /// A known parameter given twice, or with its alias.
    #[error("duplicate parameter `{param}`")]
    Duplicate {
        /// The second occurrence's key.
        param: &'static str,
    },
}

impl OsmandError {
    /// Every label [`as_str`](Self::as_str) can return, in declaration order.
    pub(crate) const LABELS: [&'static str; 8] = [
        "too_large",
        "bad_json",
        "missing_id",
        "bad_id",
        "bad_value",
        "out_of_range",
        "missing_param",
        "duplicate_param",
    ];

    /// The stable snake_case label of this reason (a Prometheus label value).
    pub(crate) const fn as_str(&self) -> &'static str {
        match self {
            OsmandError::TooLarge => "too_large",
            OsmandError::BadJson => "bad_json",
            OsmandError::MissingId => "missing_id",
            OsmandError::BadId { .. } => "bad_id",
            OsmandError::BadValue { .. } => "bad_value",
            OsmandError::OutOfRange { .. } => "out_of_range",
            OsmandError::MissingParam { .. } => "missing_param",
            OsmandError::Duplicate { .. } => "duplicate_param",
        }
    }

    /// The parameter the error is about, when there is one.
    pub(crate) const fn param(&self) -> Option<&'static str> {
        match self {
            OsmandError::TooLarge | OsmandError::BadJson | OsmandError::MissingId => None,
            OsmandError::BadId { param }
            | OsmandError::BadValue { param }
            | OsmandError::OutOfRange { param }
            | OsmandError::MissingParam { param }
            | OsmandError::Duplicate { param } => Some(param),
        }
    }
}

/// The unit of the `speed` parameter of the query and form encodings
/// (`osmand_speed_unit`). JSON speeds are always m/s.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SpeedUnit {
    /// Knots, the OsmAnd protocol's unit (Traccar's default).
    #[default]
    Knots,
    /// Kilometers per hour.
    Kmh,
    /// Meters per second.
    Mps,
    /// Miles per hour.
    Mph,
}

impl SpeedUnit {
    /// Every unit.
    pub const ALL: [SpeedUnit; 4] =
        [SpeedUnit::Knots, SpeedUnit::Kmh, SpeedUnit::Mps, SpeedUnit::Mph];

    /// The configuration spelling: `knots`, `kmh`, `mps` or `mph`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SpeedUnit::Knots => "knots",
            SpeedUnit::Kmh => "kmh",
            SpeedUnit::Mps => "mps",
            SpeedUnit::Mph => "mph",
        }
    }

    /// `speed` in this unit, converted to meters per second (exact factors:
    /// 1 kn = 1852/3600 m/s, 1 mph = 0.44704 m/s).
    pub fn to_mps(self, speed: f64) -> f64 {
        match self {
            SpeedUnit::Knots => speed * 1852.0 / 3600.0,
            SpeedUnit::Kmh => speed / 3.6,
            SpeedUnit::Mps => speed,
            SpeedUnit::Mph => speed * 0.44704,
        }
    }
}

/// A speed unit name that is none of `knots`, `kmh`, `mps`, `mph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown speed unit (expected knots, kmh, mps or mph)")]
pub struct UnknownSpeedUnit;

impl FromStr for SpeedUnit {
    type Err = UnknownSpeedUnit;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpeedUnit::ALL.into_iter().find(|u| u.as_str() == s).ok_or(UnknownSpeedUnit)
    }
}

/// How the request carried its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Encoding {
    /// Query string only (GET, or POST without a body).
    Query,
    /// Query string, then a form-urlencoded body.
    Form,
    /// A Traccar Client JSON body.
    Json,
}

/// A position fix of a report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OsmandPosition {
    /// Latitude in degrees, −90..=90.
    pub latitude_deg: f64,
    /// Longitude in degrees, −180..=180.
    pub longitude_deg: f64,
    /// Altitude in meters.
    pub altitude_m: Option<f64>,
    /// Ground speed in m/s (converted from the request's unit), ≥ 0.
    pub speed_mps: Option<f64>,
    /// Course over ground in degrees, 0 ≤ heading < 360.
    pub heading_deg: Option<f64>,
    /// Horizontal accuracy in meters, ≥ 0.
    pub accuracy_m: Option<f64>,
    /// Horizontal dilution of precision, ≥ 0.
    pub hdop: Option<f64>,
    /// The `valid` parameter (default `true`): `false` is a position the
    /// device itself marks as not a fix.
    pub valid: bool,
}

/// A named numeric value from a parameter (or a JSON `extras` entry) the
/// decoder does not know.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reading {
    /// The parameter name; valid by [`name_ok`].
    pub name: ArrayString<MAX_NAME_LEN>,
    /// Its value: finite; `true`/`false` are 1 and 0.
    pub value: f64,
}

/// What one OsmAnd / Traccar Client request reports.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OsmandReport {
    /// The device id as sent (`id`, `deviceid` or `device_id`).
    pub device_id: ArrayString<MAX_ID_LEN>,
    /// When the fix was taken, in ms since the epoch; `None`: not sent (use
    /// the receive time).
    pub timestamp_ms: Option<u64>,
    /// The fix, when both coordinates were sent. Speed, heading, altitude,
    /// accuracy and hdop sent without coordinates are checked, then dropped
    /// (and counted in [`ignored`](Self::ignored)).
    pub position: Option<OsmandPosition>,
    /// State of charge in percent, 0..=100 (`batt`, JSON `battery.level` × 100).
    pub battery_pct: Option<f64>,
    /// Whether the device is charging (`charge`, JSON `battery.is_charging`).
    pub charging: Option<bool>,
    /// JSON `location.is_moving`.
    pub moving: Option<bool>,
    /// JSON `location.odometer`, meters, ≥ 0.
    pub odometer_m: Option<f64>,
    /// Other numeric parameters, in the order first sent, at most [`MAX_READINGS`].
    pub readings: ArrayVec<Reading, MAX_READINGS>,
    /// Parameters neither known nor usable as a reading: a value neither
    /// numeric nor boolean, a name [`name_ok`] refuses, an empty key, and
    /// position fields sent without coordinates.
    pub ignored: u32,
    /// Readings beyond [`MAX_READINGS`], dropped.
    pub dropped_readings: u32,
    /// How the request carried its data.
    pub encoding: Encoding,
}

/// The rule for reading names, the same as fleetwire's own wire format: 1 to
/// [`MAX_NAME_LEN`] bytes of `[A-Za-z0-9_.-]`, the first one `[A-Za-z_]`.
pub(crate) fn name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    match b.first() {
        Some(first) if first.is_ascii_alphabetic() || *first == b'_' => {
            b.len() <= MAX_NAME_LEN
                && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        }
        _ => false,
    }
}

/// Decodes one request.
///
/// `query` is the URI's query string (without `?`; a leading `?` is
/// skipped), `body` the request body, `content_type` the Content-Type header
/// if any, and `unit` the unit of the `speed` parameter (query and form).
///
/// # Errors
///
/// [`OsmandError`]: the first bad parameter in the order sent, then a
/// missing id, then a missing coordinate.
///
/// # Examples
///
/// ```ignore
/// use crate::protocols::osmand::{decode, SpeedUnit};
///
/// let r = decode("id=123456&timestamp=1377177267&location=60.0,30.0", b"", None, SpeedUnit::Knots)
///     .unwrap();
/// assert_eq!(r.device_id.as_str(), "123456");
/// assert_eq!(r.timestamp_ms, Some(1_377_177_267_000));
/// let p = r.position.unwrap();
/// assert_eq!((p.latitude_deg, p.longitude_deg), (60.0, 30.0));
/// ```
pub(crate) fn decode(
    query: &str,
    body: &[u8],
    content_type: Option<&str>,
    unit: SpeedUnit,
) -> Result<OsmandReport, OsmandError> {
    if query.len() > MAX_INPUT_LEN || body.len() > MAX_INPUT_LEN {
        return Err(OsmandError::TooLarge);
    }
    let query = query.strip_prefix('?').unwrap_or(query);
    match classify(body, content_type) {
        Encoding::Json => {
            let mut report = decode_json(body)?;
            let stray = form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != "token");
            report.ignored = report.ignored.saturating_add(saturating_u32(stray.count()));
            Ok(report)
        }
        Encoding::Query => decode_pairs(query.as_bytes(), &[], unit, Encoding::Query),
        Encoding::Form => decode_pairs(query.as_bytes(), body, unit, Encoding::Form),
    }
}

/// The `token` parameter of a request, for the caller's authentication: the
/// first `token=` in the query string, then in a form body. `None` when
/// there is none (a Bearer header is the caller's to read).
pub(crate) fn find_token<'a>(
    query: &'a str,
    body: &'a [u8],
    content_type: Option<&str>,
) -> Option<Cow<'a, str>> {
    if query.len() > MAX_INPUT_LEN || body.len() > MAX_INPUT_LEN {
        return None;
    }
    let query = query.strip_prefix('?').unwrap_or(query);
    let body: &[u8] = match classify(body, content_type) {
        Encoding::Form => body,
        Encoding::Query | Encoding::Json => &[],
    };
    form_urlencoded::parse(query.as_bytes())
        .chain(form_urlencoded::parse(body))
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Which encoding a request uses (see the module docs).
fn classify(body: &[u8], content_type: Option<&str>) -> Encoding {
    let Some(&first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Encoding::Query;
    };
    let media = content_type.map(|ct| ct.split(';').next().unwrap_or("").trim());
    match media {
        Some(m) if m.eq_ignore_ascii_case("application/json") || ends_with_ci(m, "+json") => {
            Encoding::Json
        }
        Some(m) if m.eq_ignore_ascii_case("application/x-www-form-urlencoded") => Encoding::Form,
        _ if first == b'{' => Encoding::Json,
        _ => Encoding::Form,
    }
}

fn ends_with_ci(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.get(s.len() - suffix.len()..).is_some_and(|t| t.eq_ignore_ascii_case(suffix))
}

// ---- values --------------------------------------------------------------

/// Why [`parse_timestamp`] refused a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub(crate) enum TimestampError {
    /// Neither digits nor an ISO-8601 form, or a date or time that does not
    /// exist (month 13, February 30, hour 24, second 60, ...).
    #[error("not a timestamp")]
    Malformed,
    /// A valid form, but before 1970 or after [`MAX_TIMESTAMP_MS`].
    #[error("timestamp out of range")]
    OutOfRange,
}

/// Parses an OsmAnd timestamp into milliseconds since the Unix epoch.
///
/// Accepted forms:
/// * an integer: seconds when below [`SECONDS_BELOW`], else milliseconds;
/// * `YYYY-MM-DD`, then `T`, `t` or a space (a form body's `+`), then
///   `hh:mm`, optionally `:ss` and a fraction (`.` or `,`, 1 to 9 digits,
///   truncated to ms), then `Z`/`z`, `±hh:mm`, `±hhmm`, `±hh`, or nothing
///   (taken as UTC; Traccar takes the server's local time for the space form).
///
/// # Errors
///
/// [`TimestampError`].
pub(crate) fn parse_timestamp(s: &str) -> Result<u64, TimestampError> {
    let b = s.as_bytes();
    if !b.is_empty() && b.iter().all(u8::is_ascii_digit) {
        // All digits: only overflow can fail the parse.
        let n: u64 = s.parse().map_err(|_| TimestampError::OutOfRange)?;
        return integer_timestamp(n);
    }
    parse_iso(b)
}

/// An integer timestamp: seconds below [`SECONDS_BELOW`], else milliseconds.
fn integer_timestamp(n: u64) -> Result<u64, TimestampError> {
    let ms = if n < SECONDS_BELOW { n.saturating_mul(1000) } else { n };
    if ms > MAX_TIMESTAMP_MS { Err(TimestampError::OutOfRange) } else { Ok(ms) }
}

/// A cursor over ASCII bytes with checked reads.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl Cursor<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, tail) = self.rest.split_first()?;
        self.rest = tail;
        Some(b)
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn expect(&mut self, want: u8) -> Result<(), TimestampError> {
        if self.next() == Some(want) { Ok(()) } else { Err(TimestampError::Malformed) }
    }

    /// Exactly `n` (≤ 9) decimal digits as a number.
    fn digits(&mut self, n: usize) -> Result<i64, TimestampError> {
        let mut v: i64 = 0;
        for _ in 0..n {
            match self.next() {
                Some(d @ b'0'..=b'9') => v = v * 10 + i64::from(d - b'0'),
                _ => return Err(TimestampError::Malformed),
            }
        }
        Ok(v)
    }
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days from 1970-01-01 to `y-m-d` (proleptic Gregorian), for 0 ≤ y ≤ 9999.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_iso(b: &[u8]) -> Result<u64, TimestampError> {
    use TimestampError::Malformed;
    let mut c = Cursor { rest: b };
    let year = c.digits(4)?;
    c.expect(b'-')?;
    let month = c.digits(2)?;
    c.expect(b'-')?;
    let day = c.digits(2)?;
    if !matches!(c.next(), Some(b'T' | b't' | b' ')) {
        return Err(Malformed);
    }
    let hour = c.digits(2)?;
    c.expect(b':')?;
    let minute = c.digits(2)?;
    let (mut second, mut millis) = (0, 0);
    if c.peek() == Some(b':') {
        c.next();
        second = c.digits(2)?;
        if matches!(c.peek(), Some(b'.' | b',')) {
            c.next();
            let mut n = 0;
            while let Some(d @ b'0'..=b'9') = c.peek() {
                c.next();
                if n < 3 {
                    millis = millis * 10 + i64::from(d - b'0');
                }
                n += 1;
                if n > 9 {
                    return Err(Malformed);
                }
            }
            if n == 0 {
                return Err(Malformed);
            }
            for _ in n..3 {
                millis *= 10;
            }
        }
    }
    let offset_s = match c.next() {
        None | Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let h = c.digits(2)?;
            if c.peek() == Some(b':') {
                c.next();
            }
            let m = if c.peek().is_some() { c.digits(2)? } else { 0 };
            if h > 23 || m > 59 {
                return Err(Malformed);
            }
            let s = h * 3600 + m * 60;
            if sign == b'-' { -s } else { s }
        }
        Some(_) => return Err(Malformed),
    };
    if c.peek().is_some() {
        return Err(Malformed);
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(Malformed);
    }
    // |every term| < 10^15: no overflow in i64.
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let ms = secs * 1000 + millis;
    match u64::try_from(ms) {
        Ok(ms) if ms <= MAX_TIMESTAMP_MS => Ok(ms),
        _ => Err(TimestampError::OutOfRange),
    }
}

fn number(param: &'static str, v: &str) -> Result<f64, OsmandError> {
    match v.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(OsmandError::BadValue { param }),
    }
}

fn boolean(param: &'static str, v: &str) -> Result<bool, OsmandError> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("true") || v == "1" {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") || v == "0" {
        Ok(false)
    } else {
        Err(OsmandError::BadValue { param })
    }
}

fn in_range(param: &'static str, x: f64, lo: f64, hi: f64) -> Result<f64, OsmandError> {
    if (lo..=hi).contains(&x) { Ok(x) } else { Err(OsmandError::OutOfRange { param }) }
}

fn device_id(param: &'static str, s: &str) -> Result<ArrayString<MAX_ID_LEN>, OsmandError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(OsmandError::BadId { param });
    }
    ArrayString::from(s).map_err(|_| OsmandError::BadId { param })
}

fn timestamp(param: &'static str, s: &str) -> Result<u64, OsmandError> {
    parse_timestamp(s.trim()).map_err(|e| match e {
        TimestampError::Malformed => OsmandError::BadValue { param },
        TimestampError::OutOfRange => OsmandError::OutOfRange { param },
    })
}

/// Heading: negative is unknown, 360 is 0, above 360 is out of range.
fn heading(param: &'static str, x: f64) -> Result<Option<f64>, OsmandError> {
    if x < 0.0 {
        Ok(None)
    } else if x > 360.0 {
        Err(OsmandError::OutOfRange { param })
    } else {
        Ok(Some(if x == 360.0 { 0.0 } else { x }))
    }
}

/// A negative value means unknown.
fn known(x: f64) -> Option<f64> {
    (x >= 0.0).then_some(x)
}

fn set<T>(slot: &mut Option<T>, value: T, param: &'static str) -> Result<(), OsmandError> {
    if slot.is_some() {
        return Err(OsmandError::Duplicate { param });
    }
    *slot = Some(value);
    Ok(())
}

/// The readings of a report being built, with their overflow counters.
#[derive(Debug, Default)]
struct Readings {
    list: ArrayVec<Reading, MAX_READINGS>,
    ignored: u32,
    dropped: u32,
}

impl Readings {
    /// Offers `name = value`: kept, replacing an earlier value of the same
    /// name; or ignored (bad name, no usable value); or dropped (full).
    fn offer(&mut self, name: &str, value: Option<f64>) {
        let (Some(value), true) = (value, name_ok(name)) else {
            self.ignored = self.ignored.saturating_add(1);
            return;
        };
        if let Some(r) = self.list.iter_mut().find(|r| r.name.as_str() == name) {
            r.value = value;
            return;
        }
        match ArrayString::from(name) {
            Ok(name) if !self.list.is_full() => self.list.push(Reading { name, value }),
            _ => self.dropped = self.dropped.saturating_add(1),
        }
    }
}

/// A query/form value as a reading: a finite number or a boolean.
fn reading_value(v: &str) -> Option<f64> {
    let v = v.trim();
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() => Some(x),
        _ if v.eq_ignore_ascii_case("true") => Some(1.0),
        _ if v.eq_ignore_ascii_case("false") => Some(0.0),
        _ => None,
    }
}

// ---- query and form ------------------------------------------------------

/// The parameters seen so far; an outer `Some` means "given" (for duplicate
/// detection), an inner `None` "given as unknown".
#[derive(Default)]
struct Params {
    id: Option<ArrayString<MAX_ID_LEN>>,
    timestamp_ms: Option<u64>,
    lat: Option<f64>,
    lon: Option<f64>,
    speed_mps: Option<Option<f64>>,
    heading_deg: Option<Option<f64>>,
    altitude_m: Option<f64>,
    accuracy_m: Option<Option<f64>>,
    hdop: Option<f64>,
    battery_pct: Option<Option<f64>>,
    charging: Option<bool>,
    valid: Option<bool>,
    readings: Readings,
}

impl Params {
    fn apply(&mut self, key: &str, v: &str, unit: SpeedUnit) -> Result<(), OsmandError> {
        match key {
            "id" | "deviceid" => {
                let param = if key == "id" { "id" } else { "deviceid" };
                set(&mut self.id, device_id(param, v)?, param)
            }
            "timestamp" => set(&mut self.timestamp_ms, timestamp("timestamp", v)?, "timestamp"),
            "lat" => {
                let x = in_range("lat", number("lat", v)?, -90.0, 90.0)?;
                set(&mut self.lat, x, "lat")
            }
            "lon" => {
                let x = in_range("lon", number("lon", v)?, -180.0, 180.0)?;
                set(&mut self.lon, x, "lon")
            }
            "location" => {
                const P: &str = "location";
                let (a, b) = v.split_once(',').ok_or(OsmandError::BadValue { param: P })?;
                let lat = in_range(P, number(P, a)?, -90.0, 90.0)?;
                let lon = in_range(P, number(P, b)?, -180.0, 180.0)?;
                if self.lat.is_some() || self.lon.is_some() {
                    return Err(OsmandError::Duplicate { param: P });
                }
                self.lat = Some(lat);
                self.lon = Some(lon);
                Ok(())
            }
            "speed" => {
                let x = number("speed", v)?;
                set(&mut self.speed_mps, known(x).map(|x| unit.to_mps(x)), "speed")
            }
            "bearing" | "heading" => {
                let param = if key == "bearing" { "bearing" } else { "heading" };
                set(&mut self.heading_deg, heading(param, number(param, v)?)?, param)
            }
            "altitude" => {
                let x = number("altitude", v)?;
                let x = in_range("altitude", x, -MAX_ALTITUDE_M, MAX_ALTITUDE_M)?;
                set(&mut self.altitude_m, x, "altitude")
            }
            "accuracy" => set(&mut self.accuracy_m, known(number("accuracy", v)?), "accuracy"),
            "hdop" => {
                let x = in_range("hdop", number("hdop", v)?, 0.0, f64::MAX)?;
                set(&mut self.hdop, x, "hdop")
            }
            "batt" => {
                let x = number("batt", v)?;
                let x = if x < 0.0 { None } else { Some(in_range("batt", x, 0.0, 100.0)?) };
                set(&mut self.battery_pct, x, "batt")
            }
            "charge" => set(&mut self.charging, boolean("charge", v)?, "charge"),
            "valid" => set(&mut self.valid, boolean("valid", v)?, "valid"),
            "token" => Ok(()),
            _ => {
                self.readings.offer(key, reading_value(v));
                Ok(())
            }
        }
    }

    fn finish(self, encoding: Encoding) -> Result<OsmandReport, OsmandError> {
        let device_id = self.id.ok_or(OsmandError::MissingId)?;
        let mut ignored = self.readings.ignored;
        let position = match (self.lat, self.lon) {
            (Some(latitude_deg), Some(longitude_deg)) => Some(OsmandPosition {
                latitude_deg,
                longitude_deg,
                altitude_m: self.altitude_m,
                speed_mps: self.speed_mps.flatten(),
                heading_deg: self.heading_deg.flatten(),
                accuracy_m: self.accuracy_m.flatten(),
                hdop: self.hdop,
                valid: self.valid.unwrap_or(true),
            }),
            (Some(_), None) => return Err(OsmandError::MissingParam { param: "lon" }),
            (None, Some(_)) => return Err(OsmandError::MissingParam { param: "lat" }),
            (None, None) => {
                let orphans = [
                    self.altitude_m.is_some(),
                    self.speed_mps.is_some(),
                    self.heading_deg.is_some(),
                    self.accuracy_m.is_some(),
                    self.hdop.is_some(),
                    self.valid.is_some(),
                ];
                let n = orphans.iter().filter(|&&given| given).count();
                ignored = ignored.saturating_add(saturating_u32(n));
                None
            }
        };
        Ok(OsmandReport {
            device_id,
            timestamp_ms: self.timestamp_ms,
            position,
            battery_pct: self.battery_pct.flatten(),
            charging: self.charging,
            moving: None,
            odometer_m: None,
            readings: self.readings.list,
            ignored,
            dropped_readings: self.readings.dropped,
            encoding,
        })
    }
}

fn decode_pairs(
    query: &[u8],
    body: &[u8],
    unit: SpeedUnit,
    encoding: Encoding,
) -> Result<OsmandReport, OsmandError> {
    let mut p = Params::default();
    for (key, value) in form_urlencoded::parse(query).chain(form_urlencoded::parse(body)) {
        p.apply(&key, &value, unit)?;
    }
    p.finish(encoding)
}

// ---- JSON ----------------------------------------------------------------

/// Any JSON value, with scalars kept (strings borrowed when unescaped) and
/// objects and arrays skipped, so the decoder, not serde, judges the type and
/// names the parameter.
#[derive(Debug)]
enum Scalar<'a> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(Cow<'a, str>),
    Other,
}

impl Scalar<'_> {
    fn as_f64(&self) -> Option<f64> {
        match *self {
            Scalar::U64(n) => Some(n as f64),
            Scalar::I64(n) => Some(n as f64),
            Scalar::F64(x) => Some(x),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar<'a>, E> {
                Ok(Scalar::U64(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar<'a>, E> {
                Ok(Scalar::I64(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar<'a>, E> {
                Ok(Scalar::F64(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar<'a>, D::Error> {
                Scalar::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'a>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'a>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A JSON object key, borrowed when unescaped.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// `T` read from a JSON object only (serde's derived structs would also take
/// an array, positionally).
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// `extras`: numeric and boolean entries become readings as they stream by.
struct Extras(Readings);

impl<'de> Deserialize<'de> for Extras {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Extras;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Extras, A::Error> {
                let mut readings = Readings::default();
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, Scalar<'de>>()? {
                    let value = match v {
                        Scalar::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
                        other => other.as_f64().filter(|x| x.is_finite()),
                    };
                    readings.offer(&k, value);
                }
                Ok(Extras(readings))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct JsonDoc<'a> {
    #[serde(borrow, default)]
    location: Option<Obj<JsonLocation<'a>>>,
    #[serde(borrow, default)]
    device_id: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct JsonLocation<'a> {
    #[serde(borrow, default)]
    timestamp: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    coords: Option<Obj<JsonCoords<'a>>>,
    #[serde(borrow, default)]
    is_moving: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    odometer: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    battery: Option<Obj<JsonBattery<'a>>>,
    #[serde(default)]
    extras: Option<Extras>,
}

#[derive(Deserialize)]
struct JsonCoords<'a> {
    #[serde(borrow, default)]
    latitude: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    longitude: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    accuracy: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    speed: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    heading: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    altitude: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct JsonBattery<'a> {
    #[serde(borrow, default)]
    level: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    is_charging: Option<Scalar<'a>>,
}

/// A JSON number (or numeric string), `None` when absent or null.
fn json_number(param: &'static str, v: Option<&Scalar<'_>>) -> Result<Option<f64>, OsmandError> {
    match v {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(s)) => number(param, s).map(Some),
        Some(s) => {
            s.as_f64().filter(|x| x.is_finite()).map(Some).ok_or(OsmandError::BadValue { param })
        }
    }
}

fn json_bool(param: &'static str, v: Option<&Scalar<'_>>) -> Result<Option<bool>, OsmandError> {
    match v {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(OsmandError::BadValue { param }),
    }
}

fn decode_json(body: &[u8]) -> Result<OsmandReport, OsmandError> {
    let Obj(doc): Obj<JsonDoc<'_>> =
        serde_json::from_slice(body).map_err(|_| OsmandError::BadJson)?;
    const ID: &str = "device_id";
    let device_id = match &doc.device_id {
        None | Some(Scalar::Null) => return Err(OsmandError::MissingId),
        Some(Scalar::Str(s)) => device_id(ID, s)?,
        Some(Scalar::U64(n)) => {
            let mut id = ArrayString::new();
            fmt::write(&mut id, format_args!("{n}"))
                .map_err(|_| OsmandError::BadId { param: ID })?;
            id
        }
        Some(_) => return Err(OsmandError::BadId { param: ID }),
    };
    let mut report = OsmandReport {
        device_id,
        timestamp_ms: None,
        position: None,
        battery_pct: None,
        charging: None,
        moving: None,
        odometer_m: None,
        readings: ArrayVec::new(),
        ignored: 0,
        dropped_readings: 0,
        encoding: Encoding::Json,
    };
    let Some(Obj(loc)) = doc.location else {
        return Ok(report);
    };
    const TS: &str = "location.timestamp";
    report.timestamp_ms = match &loc.timestamp {
        None | Some(Scalar::Null) => None,
        Some(Scalar::Str(s)) => Some(timestamp(TS, s)?),
        Some(Scalar::U64(n)) => {
            Some(integer_timestamp(*n).map_err(|_| OsmandError::OutOfRange { param: TS })?)
        }
        Some(_) => return Err(OsmandError::BadValue { param: TS }),
    };
    if let Some(Obj(c)) = &loc.coords {
        const LAT: &str = "location.coords.latitude";
        const LON: &str = "location.coords.longitude";
        const HEADING: &str = "location.coords.heading";
        const ALT: &str = "location.coords.altitude";
        let lat = json_number(LAT, c.latitude.as_ref())?;
        let lon = json_number(LON, c.longitude.as_ref())?;
        let accuracy_m = json_number("location.coords.accuracy", c.accuracy.as_ref())?;
        let speed = json_number("location.coords.speed", c.speed.as_ref())?;
        let heading_deg = match json_number(HEADING, c.heading.as_ref())? {
            Some(h) => heading(HEADING, h)?,
            None => None,
        };
        let altitude_m = match json_number(ALT, c.altitude.as_ref())? {
            Some(a) => Some(in_range(ALT, a, -MAX_ALTITUDE_M, MAX_ALTITUDE_M)?),
            None => None,
        };
        report.position = match (lat, lon) {
            (Some(lat), Some(lon)) => Some(OsmandPosition {
                latitude_deg: in_range(LAT, lat, -90.0, 90.0)?,
                longitude_deg: in_range(LON, lon, -180.0, 180.0)?,
                altitude_m,
                speed_mps: speed.and_then(known),
                heading_deg,
                accuracy_m: accuracy_m.and_then(known),
                hdop: None,
                valid: true,
            }),
            (Some(_), None) => return Err(OsmandError::MissingParam { param: LON }),
            (None, Some(_)) => return Err(OsmandError::MissingParam { param: LAT }),
            (None, None) => None,
        };
    }
    report.moving = json_bool("location.is_moving", loc.is_moving.as_ref())?;
    const ODO: &str = "location.odometer";
    report.odometer_m = match json_number(ODO, loc.odometer.as_ref())? {
        Some(x) => Some(in_range(ODO, x, 0.0, f64::MAX)?),
        None => None,
    };
    if let Some(Obj(b)) = &loc.battery {
        const LEVEL: &str = "location.battery.level";
        report.battery_pct = match json_number(LEVEL, b.level.as_ref())? {
            Some(l) if l < 0.0 => None,
            Some(l) => Some(in_range(LEVEL, l, 0.0, 1.0)? * 100.0),
            None => None,
        };
        report.charging = json_bool("location.battery.is_charging", b.is_charging.as_ref())?;
    }
    if let Some(Extras(r)) = loc.extras {
        report.readings = r.list;
        report.ignored = r.ignored;
        report.dropped_readings = r.dropped;
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
