//! Teltonika Codec 8 and Codec 8 Extended (`0x8E`) over UDP: a checked,
//! zero-copy view of one datagram, the 7-byte acknowledgment, and an encoder.
//!
//! # The datagram
//!
//! Every integer is big-endian. There is no CRC on UDP.
//!
//! ```text
//! offset  size  field
//!      0     2  length: number of bytes after this field
//!      2     2  packet id (echoed by the ACK)
//!      4     1  packet type, always 0x01
//!      5     1  AVL packet id (echoed by the ACK; same on a resend)
//!      6     2  IMEI length, always 15
//!      8    15  IMEI, ASCII digits
//!     23     1  codec: 0x08 (Codec 8) or 0x8E (Codec 8 Extended)
//!     24     1  record count
//!     25     …  records
//!    end-1   1  record count again
//! ```
//!
//! `length` counts the bytes after itself. Each record is a u64 timestamp in
//! milliseconds since the Unix epoch, a u8 priority (0 low, 1 high, 2 panic),
//! a 15-byte GPS element (i32 longitude and i32 latitude in degrees × 10⁷,
//! longitude first; i16 altitude in meters; u16 angle in degrees; u8
//! satellites; u16 speed in km/h), then the IO element: the event IO id, the
//! total IO count N, and groups of 1-, 2-, 4- and 8-byte values, each group a
//! count followed by `(id, value)` pairs. Codec 8 uses 1-byte ids and counts;
//! Codec 8 Extended uses 2-byte ids and counts and adds a fifth group of
//! variable-length values (`id`, u16 length, bytes). N must equal the number
//! of elements in the groups, the variable-length ones included
//! (N = N1 + N2 + N4 + N8 + NX).
//!
//! # Parse, don't validate
//!
//! [`parse`] checks the whole datagram before it returns: the length field
//! against the datagram's size, the `0x01` byte, the IMEI (exactly 15 ASCII
//! digits), the codec, both record counts, and every record down to the last
//! byte of its last IO element. What it returns, a [`Packet`], is a view over
//! the caller's buffer whose iterators ([`Packet::records`],
//! [`Record::io`]) cannot fail afterwards. Nothing allocates, for accepted
//! or refused datagrams, and no input panics: this module denies indexing,
//! unchecked arithmetic, `unwrap` and `expect` (see the lints below).
//!
//! Value ranges are *not* grounds for refusal: a coordinate outside ±180°/±90°
//! or a record without a fix is data, and [`Gps::has_fix`] says whether to use
//! the position. Refusing such a datagram would withhold its ACK and make the
//! tracker resend it forever.
//!
//! # Acknowledgment
//!
//! [`ack`] (or [`Packet::ack`]) builds the answer: `00 05`, the packet id
//! echoed, `01`, the AVL packet id, and the number of records accepted from
//! the start of the packet. Send it only once the records are taken; the
//! tracker resends an unacknowledged packet with the same AVL packet id.
//! (Traccar answers with packet id `0000`; the vendor documents the echo.)

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use core::iter::FusedIterator;

/// Number of digits of an IMEI, and the only IMEI length field accepted.
pub(crate) const IMEI_LEN: usize = 15;

/// The byte after the packet id ("packet type", "not usable" in the vendor's
/// table); the only value accepted and the one the ACK carries.
pub(crate) const PACKET_TYPE: u8 = 0x01;

/// Length of an acknowledgment datagram.
pub(crate) const ACK_LEN: usize = 7;

/// Bytes before the first record: length, packet id, packet type, AVL packet
/// id, IMEI length, IMEI, codec, record count.
#[cfg(test)]
pub(crate) const HEADER_LEN: usize = 2 + 2 + 1 + 1 + 2 + IMEI_LEN + 1 + 1;

/// The shortest datagram [`parse`] can accept: one Codec 8 record with no IO
/// element (24 bytes of timestamp, priority and GPS, event id, N and four
/// empty group counts), then the closing record count.
#[cfg(test)]
pub(crate) const MIN_DATAGRAM_LEN: usize = HEADER_LEN + 24 + 2 + 4 + 1;

/// The longest datagram the length field can describe (`u16::MAX` bytes
/// after the 2-byte length field).
#[cfg(test)]
pub(crate) const MAX_DATAGRAM_LEN: usize = 2 + u16::MAX as usize;

/// Why a datagram is refused by [`parse`].
///
/// Checks run in byte order and the first failing one wins; [`ALL`](Self::ALL)
/// lists the variants roughly in that order ([`Truncated`](Self::Truncated)
/// can come from any field after the length). [`as_str`](Self::as_str) is the
/// stable metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum TeltonikaError {
    /// The datagram is shorter than its 2-byte length field, or the length
    /// field does not equal the number of bytes after it: the datagram was
    /// cut (by the sender or a small receive buffer) or holds extra bytes.
    #[error("length field does not match the datagram size")]
    BadLength,
    /// The length field matches, but a field the datagram itself declares
    /// runs past its end: the header, the IMEI, a record, an IO group, a
    /// variable-length value, or the closing record count.
    #[error("datagram ends inside a field it declares")]
    Truncated,
    /// The byte after the packet id is not `0x01`.
    #[error("packet type byte is not 0x01")]
    BadPacketType,
    /// The IMEI length field is not 15, or the IMEI holds a byte that is not
    /// an ASCII digit.
    #[error("IMEI is not 15 ASCII digits")]
    BadImei,
    /// The codec id is neither `0x08` (Codec 8) nor `0x8E` (Codec 8
    /// Extended); Codec 16 (`0x10`) and the command codecs are refused too.
    #[error("unknown codec")]
    UnknownCodec,
    /// The record count is 0: the packet carries nothing to acknowledge.
    #[error("packet declares no records")]
    NoRecords,
    /// A record's priority byte is not 0 (low), 1 (high) or 2 (panic).
    #[error("bad record priority")]
    BadPriority,
    /// A record's total IO count N differs from the number of elements its
    /// groups hold (N1 + N2 + N4 + N8, plus NX in Codec 8 Extended).
    #[error("total IO count does not match the IO groups")]
    BadIoCount,
    /// Bytes remain after the closing record count: the records are shorter
    /// than the length field says.
    #[error("bytes after the closing record count")]
    TrailingBytes,
    /// The closing record count differs from the opening one.
    #[error("record counts differ")]
    CountMismatch,
}

impl TeltonikaError {
    /// Every variant, in check order.
    pub(crate) const ALL: [TeltonikaError; 10] = [
        TeltonikaError::BadLength,
        TeltonikaError::Truncated,
        TeltonikaError::BadPacketType,
        TeltonikaError::BadImei,
        TeltonikaError::UnknownCodec,
        TeltonikaError::NoRecords,
        TeltonikaError::BadPriority,
        TeltonikaError::BadIoCount,
        TeltonikaError::TrailingBytes,
        TeltonikaError::CountMismatch,
    ];

    /// The stable snake_case label of this reason (a Prometheus label value).
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            TeltonikaError::BadLength => "bad_length",
            TeltonikaError::Truncated => "truncated",
            TeltonikaError::BadPacketType => "bad_packet_type",
            TeltonikaError::BadImei => "bad_imei",
            TeltonikaError::UnknownCodec => "unknown_codec",
            TeltonikaError::NoRecords => "no_records",
            TeltonikaError::BadPriority => "bad_priority",
            TeltonikaError::BadIoCount => "bad_io_count",
            TeltonikaError::TrailingBytes => "trailing_bytes",
            TeltonikaError::CountMismatch => "count_mismatch",
        }
    }

    /// The variant whose label is `label`, if any.
    #[cfg(test)]
    pub(crate) fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == label)
    }
}

/// The AVL codecs this module speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Codec {
    /// Codec 8 (`0x08`): 1-byte IO ids and counts, four fixed-width groups.
    Codec8,
    /// Codec 8 Extended (`0x8E`): 2-byte IO ids and counts, and a fifth group
    /// of variable-length values.
    Codec8Extended,
}

impl Codec {
    /// The codec id byte.
    pub(crate) const fn id(self) -> u8 {
        match self {
            Codec::Codec8 => 0x08,
            Codec::Codec8Extended => 0x8E,
        }
    }

    /// The codec with id byte `id`, if it is one of the two.
    pub(crate) const fn from_id(id: u8) -> Option<Self> {
        match id {
            0x08 => Some(Codec::Codec8),
            0x8E => Some(Codec::Codec8Extended),
            _ => None,
        }
    }

    /// Whether IO ids, the event id and the counts are 2 bytes (8E) or 1.
    const fn wide(self) -> bool {
        matches!(self, Codec::Codec8Extended)
    }
}

/// A record's priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Priority {
    /// 0: a periodic record.
    Low,
    /// 1: a record the device marks as important.
    High,
    /// 2: a panic (SOS) record.
    Panic,
}

impl Priority {
    /// The priority byte.
    pub(crate) const fn as_u8(self) -> u8 {
        match self {
            Priority::Low => 0,
            Priority::High => 1,
            Priority::Panic => 2,
        }
    }

    /// The priority with byte `b`; `None` for anything but 0, 1 and 2.
    pub(crate) const fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Priority::Low),
            1 => Some(Priority::High),
            2 => Some(Priority::Panic),
            _ => None,
        }
    }
}

/// The GPS element of a record, exactly as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Gps {
    /// Longitude in degrees × 10⁷ (WGS 84), negative west. Not range-checked.
    pub longitude_e7: i32,
    /// Latitude in degrees × 10⁷ (WGS 84), negative south. Not range-checked.
    pub latitude_e7: i32,
    /// Altitude above sea level in meters (signed: below sea level is negative).
    pub altitude_m: i16,
    /// Heading in degrees clockwise from north (0..=359 from real devices).
    pub angle_deg: u16,
    /// Satellites in use; 0 when the record has no fix.
    pub satellites: u8,
    /// Ground speed in km/h; 0 when the record has no fix.
    pub speed_kmh: u16,
}

impl Gps {
    /// Longitude in degrees.
    #[cfg(test)]
    pub(crate) fn longitude_deg(&self) -> f64 {
        f64::from(self.longitude_e7) * 1e-7
    }

    /// Latitude in degrees.
    #[cfg(test)]
    pub(crate) fn latitude_deg(&self) -> f64 {
        f64::from(self.latitude_e7) * 1e-7
    }

    /// Whether the position is a fix worth using: at least one satellite,
    /// coordinates within ±180° / ±90°, and not exactly (0, 0).
    ///
    /// Without a fix Teltonika devices send 0 satellites and repeat the last
    /// coordinates (or zeros, as in the vendor's examples); such a record is
    /// "no fix", never a position at (0, 0).
    pub(crate) fn has_fix(&self) -> bool {
        self.satellites > 0
            && self.longitude_e7.unsigned_abs() <= 1_800_000_000
            && self.latitude_e7.unsigned_abs() <= 900_000_000
            && (self.longitude_e7, self.latitude_e7) != (0, 0)
    }
}

/// The value of one IO element.
///
/// The variant is the group the element was sent in, so the width is known
/// (for example, to sign-extend a temperature with [`as_i64`](Self::as_i64)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum IoValue<'a> {
    /// From the 1-byte group.
    U8(u8),
    /// From the 2-byte group.
    U16(u16),
    /// From the 4-byte group.
    U32(u32),
    /// From the 8-byte group.
    U64(u64),
    /// From the variable-length group (Codec 8 Extended only), borrowed from
    /// the datagram.
    Bytes(&'a [u8]),
}

impl<'a> IoValue<'a> {
    /// The value as an unsigned integer; `None` for [`IoValue::Bytes`].
    pub(crate) const fn as_u64(&self) -> Option<u64> {
        match *self {
            IoValue::U8(v) => Some(v as u64),
            IoValue::U16(v) => Some(v as u64),
            IoValue::U32(v) => Some(v as u64),
            IoValue::U64(v) => Some(v),
            IoValue::Bytes(_) => None,
        }
    }

    /// The value read as a two's-complement integer of its width (so a
    /// 2-byte `0xFFFF` is -1); `None` for [`IoValue::Bytes`].
    #[cfg(test)]
    pub(crate) const fn as_i64(&self) -> Option<i64> {
        match *self {
            IoValue::U8(v) => Some(v as i8 as i64),
            IoValue::U16(v) => Some(v as i16 as i64),
            IoValue::U32(v) => Some(v as i32 as i64),
            IoValue::U64(v) => Some(v as i64),
            IoValue::Bytes(_) => None,
        }
    }

    /// The variable-length bytes; `None` for the fixed-width variants.
    #[cfg(test)]
    pub(crate) const fn as_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            IoValue::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The group this value belongs to.
    const fn group(&self) -> Group {
        match self {
            IoValue::U8(_) => Group::One,
            IoValue::U16(_) => Group::Two,
            IoValue::U32(_) => Group::Four,
            IoValue::U64(_) => Group::Eight,
            IoValue::Bytes(_) => Group::Var,
        }
    }
}

/// One IO element of a record: a property id and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct IoElement<'a> {
    /// The AVL property id (`u8` on the wire in Codec 8, `u16` in 8E).
    pub id: u16,
    /// The value.
    pub value: IoValue<'a>,
}

/// A validated Teltonika UDP datagram, borrowed from the caller's buffer.
///
/// Obtained only from [`parse`], so every accessor and iterator is
/// infallible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packet<'a> {
    packet_id: u16,
    avl_packet_id: u8,
    imei: &'a str,
    imei_u64: u64,
    codec: Codec,
    count: u8,
    records: &'a [u8],
}

impl<'a> Packet<'a> {
    /// The UDP channel packet id, echoed by the ACK.
    #[cfg(test)]
    pub(crate) const fn packet_id(&self) -> u16 {
        self.packet_id
    }

    /// The AVL packet id, echoed by the ACK; a resend carries the same one.
    #[cfg(test)]
    pub(crate) const fn avl_packet_id(&self) -> u8 {
        self.avl_packet_id
    }

    /// The IMEI: exactly 15 ASCII digits.
    pub(crate) const fn imei(&self) -> &'a str {
        self.imei
    }

    /// The IMEI as a number (15 digits always fit: at most 999 999 999 999 999).
    #[cfg(test)]
    pub(crate) const fn imei_u64(&self) -> u64 {
        self.imei_u64
    }

    /// The codec of the records.
    #[cfg(test)]
    pub(crate) const fn codec(&self) -> Codec {
        self.codec
    }

    /// The number of records (1..=255), equal to both counts in the datagram.
    pub(crate) const fn record_count(&self) -> u8 {
        self.count
    }

    /// The records, in the order sent (which may be newest-first).
    pub(crate) fn records(&self) -> Records<'a> {
        Records { reader: Reader { rest: self.records }, codec: self.codec, left: self.count }
    }

    /// The acknowledgment of this packet for `accepted` records taken from
    /// the start of the packet (see [`ack`]).
    pub(crate) const fn ack(&self, accepted: u8) -> [u8; ACK_LEN] {
        ack(self.packet_id, self.avl_packet_id, accepted)
    }
}

/// One record of a [`Packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    timestamp_ms: u64,
    priority: Priority,
    gps: Gps,
    event_io_id: u16,
    io_count: u16,
    codec: Codec,
    io: &'a [u8],
}

impl<'a> Record<'a> {
    /// When the record was taken, in milliseconds since the Unix epoch (UTC).
    pub(crate) const fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The record's priority.
    pub(crate) const fn priority(&self) -> Priority {
        self.priority
    }

    /// The GPS element.
    pub(crate) const fn gps(&self) -> Gps {
        self.gps
    }

    /// The id of the IO element whose change generated the record; 0 when
    /// the record is periodic rather than an event.
    pub(crate) const fn event_io_id(&self) -> u16 {
        self.event_io_id
    }

    /// The number of IO elements (the total count N, checked against the
    /// groups).
    #[cfg(test)]
    pub(crate) const fn io_count(&self) -> u16 {
        self.io_count
    }

    /// The IO elements in the order sent: the 1-, 2-, 4- and 8-byte groups,
    /// then the variable-length group (8E).
    pub(crate) fn io(&self) -> IoElements<'a> {
        IoElements::new(self.codec, self.io)
    }
}

/// Iterator over the records of a [`Packet`]; yields exactly
/// [`Packet::record_count`] records.
#[derive(Debug, Clone)]
pub(crate) struct Records<'a> {
    reader: Reader<'a>,
    codec: Codec,
    left: u8,
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        self.left = self.left.checked_sub(1)?;
        // `parse` walked these exact bytes with this exact function, so this
        // cannot fail; if it ever did, the iterator ends instead of panicking.
        match read_record(self.codec, &mut self.reader) {
            Ok(record) => Some(record),
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

impl FusedIterator for Records<'_> {}

/// Iterator over the IO elements of a [`Record`]; yields exactly
/// [`Record::io_count`] elements.
#[derive(Debug, Clone)]
pub(crate) struct IoElements<'a> {
    reader: Reader<'a>,
    codec: Codec,
    group: Group,
    left_in_group: u16,
}

impl<'a> IoElements<'a> {
    fn new(codec: Codec, io: &'a [u8]) -> Self {
        IoElements { reader: Reader { rest: io }, codec, group: Group::Start, left_in_group: 0 }
    }

    /// The next element, `Ok(None)` after the last group, or why the groups
    /// do not fit in the bytes. Used by `parse` to validate and by `next`.
    fn next_checked(&mut self) -> Result<Option<IoElement<'a>>, TeltonikaError> {
        loop {
            if let Some(left) = self.left_in_group.checked_sub(1) {
                self.left_in_group = left;
                let id = self.reader.uint(self.codec.wide())?;
                let value = match self.group {
                    Group::One => IoValue::U8(self.reader.u8()?),
                    Group::Two => IoValue::U16(self.reader.u16()?),
                    Group::Four => IoValue::U32(self.reader.u32()?),
                    Group::Eight => IoValue::U64(self.reader.u64()?),
                    Group::Var => {
                        let len = self.reader.u16()?;
                        IoValue::Bytes(self.reader.take(usize::from(len))?)
                    }
                    // A count is only read on entering a value group.
                    Group::Start | Group::End => return Ok(None),
                };
                return Ok(Some(IoElement { id, value }));
            }
            self.group = self.group.after(self.codec);
            if self.group == Group::End {
                return Ok(None);
            }
            self.left_in_group = self.reader.uint(self.codec.wide())?;
        }
    }
}

impl<'a> Iterator for IoElements<'a> {
    type Item = IoElement<'a>;

    fn next(&mut self) -> Option<IoElement<'a>> {
        match self.next_checked() {
            Ok(element) => element,
            // Unreachable for a record from `parse` (validated by the same
            // walk); end rather than panic.
            Err(_) => {
                self.group = Group::End;
                self.left_in_group = 0;
                None
            }
        }
    }
}

impl FusedIterator for IoElements<'_> {}

/// The IO groups in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Start,
    One,
    Two,
    Four,
    Eight,
    Var,
    End,
}

impl Group {
    const fn after(self, codec: Codec) -> Group {
        match self {
            Group::Start => Group::One,
            Group::One => Group::Two,
            Group::Two => Group::Four,
            Group::Four => Group::Eight,
            Group::Eight if codec.wide() => Group::Var,
            Group::Eight | Group::Var | Group::End => Group::End,
        }
    }
}

/// A cursor over bytes whose every read is bounds-checked.
#[derive(Debug, Clone, Copy)]
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TeltonikaError> {
        let (head, tail) = self.rest.split_at_checked(n).ok_or(TeltonikaError::Truncated)?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TeltonikaError> {
        let (head, tail) = self.rest.split_first_chunk::<N>().ok_or(TeltonikaError::Truncated)?;
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, TeltonikaError> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Result<u16, TeltonikaError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, TeltonikaError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, TeltonikaError> {
        self.array().map(u64::from_be_bytes)
    }

    fn i16(&mut self) -> Result<i16, TeltonikaError> {
        self.array().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, TeltonikaError> {
        self.array().map(i32::from_be_bytes)
    }

    /// An IO id or count: 2 bytes when `wide` (Codec 8 Extended), else 1.
    fn uint(&mut self, wide: bool) -> Result<u16, TeltonikaError> {
        if wide { self.u16() } else { self.u8().map(u16::from) }
    }
}

/// The bytes of `start` that `rest` (a suffix of `start`) no longer holds.
fn consumed<'a>(start: &'a [u8], rest: &[u8]) -> &'a [u8] {
    start.split_at_checked(start.len().saturating_sub(rest.len())).map_or(&[], |(head, _)| head)
}

/// Reads one record of `codec`, checking everything about it.
fn read_record<'a>(codec: Codec, r: &mut Reader<'a>) -> Result<Record<'a>, TeltonikaError> {
    let timestamp_ms = r.u64()?;
    let priority = Priority::from_u8(r.u8()?).ok_or(TeltonikaError::BadPriority)?;
    let gps = Gps {
        longitude_e7: r.i32()?,
        latitude_e7: r.i32()?,
        altitude_m: r.i16()?,
        angle_deg: r.u16()?,
        satellites: r.u8()?,
        speed_kmh: r.u16()?,
    };
    let event_io_id = r.uint(codec.wide())?;
    let io_count = r.uint(codec.wide())?;
    let io_start = r.rest;
    let mut elements = IoElements::new(codec, io_start);
    // At most 5 × 65 535 elements: no overflow in u32.
    let mut counted: u32 = 0;
    while elements.next_checked()?.is_some() {
        counted = counted.saturating_add(1);
    }
    if counted != u32::from(io_count) {
        return Err(TeltonikaError::BadIoCount);
    }
    let io = consumed(io_start, elements.reader.rest);
    r.rest = elements.reader.rest;
    Ok(Record { timestamp_ms, priority, gps, event_io_id, io_count, codec, io })
}

/// Checks a 15-byte IMEI field and returns it as text and as a number.
fn read_imei(bytes: &[u8]) -> Result<(&str, u64), TeltonikaError> {
    let mut n: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return Err(TeltonikaError::BadImei);
        }
        // 15 digits < 10^15 < u64::MAX; checked anyway.
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b.wrapping_sub(b'0'))))
            .ok_or(TeltonikaError::BadImei)?;
    }
    let text = core::str::from_utf8(bytes).map_err(|_| TeltonikaError::BadImei)?;
    Ok((text, n))
}

/// Checks one Teltonika UDP datagram completely and returns a view of it.
///
/// `datagram` is exactly the bytes one receive call returned. The checks run
/// in the order of [`TeltonikaError::ALL`], and the first one that fails is
/// returned; nothing is allocated either way.
///
/// # Errors
///
/// The [`TeltonikaError`] of the first check that fails.
///
/// # Examples
///
/// ```ignore
/// use crate::protocols::teltonika::{parse, Codec};
///
/// let hex = "003DCAFE0105000F33353230393330383634303336353508010000016B4F815B30\
///            010000000000000000000000000000000103021503010101425DBC000001";
/// let bytes: Vec<u8> = (0..hex.len()).step_by(2)
///     .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
/// let packet = parse(&bytes).unwrap();
/// assert_eq!(packet.imei(), "352093086403655");
/// assert_eq!(packet.codec(), Codec::Codec8);
/// let record = packet.records().next().unwrap();
/// assert_eq!(record.timestamp_ms(), 1_560_407_006_000);
/// assert_eq!(packet.ack(1), [0x00, 0x05, 0xCA, 0xFE, 0x01, 0x05, 0x01]);
/// ```
pub(crate) fn parse(datagram: &[u8]) -> Result<Packet<'_>, TeltonikaError> {
    let mut r = Reader { rest: datagram };
    let declared = r.u16().map_err(|_| TeltonikaError::BadLength)?;
    if usize::from(declared) != r.rest.len() {
        return Err(TeltonikaError::BadLength);
    }
    let packet_id = r.u16()?;
    if r.u8()? != PACKET_TYPE {
        return Err(TeltonikaError::BadPacketType);
    }
    let avl_packet_id = r.u8()?;
    if usize::from(r.u16()?) != IMEI_LEN {
        return Err(TeltonikaError::BadImei);
    }
    let (imei, imei_u64) = read_imei(r.take(IMEI_LEN)?)?;
    let codec = Codec::from_id(r.u8()?).ok_or(TeltonikaError::UnknownCodec)?;
    let count = r.u8()?;
    if count == 0 {
        return Err(TeltonikaError::NoRecords);
    }
    let start = r.rest;
    for _ in 0..count {
        read_record(codec, &mut r)?;
    }
    let records = consumed(start, r.rest);
    let closing = r.u8()?;
    if !r.rest.is_empty() {
        return Err(TeltonikaError::TrailingBytes);
    }
    if closing != count {
        return Err(TeltonikaError::CountMismatch);
    }
    Ok(Packet { packet_id, avl_packet_id, imei, imei_u64, codec, count, records })
}

/// The 7-byte acknowledgment of a datagram: `00 05`, `packet_id`, `01`,
/// `avl_packet_id`, and `accepted`, the number of records taken from the
/// start of the packet (0 asks the tracker to resend all of them).
pub(crate) const fn ack(packet_id: u16, avl_packet_id: u8, accepted: u8) -> [u8; ACK_LEN] {
    let [p0, p1] = packet_id.to_be_bytes();
    [0x00, 0x05, p0, p1, PACKET_TYPE, avl_packet_id, accepted]
}

/// Why [`encode`] could not write a datagram. The encoder refuses to write
/// anything [`parse`] would refuse, and what fits no field of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum EncodeError {
    /// The output buffer is too small for the datagram.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The datagram would exceed [`MAX_DATAGRAM_LEN`] bytes.
    #[error("datagram would exceed the length field")]
    TooLong,
    /// The IMEI is not 15 ASCII digits.
    #[error("IMEI is not 15 ASCII digits")]
    BadImei,
    /// No records: [`parse`] refuses an empty packet.
    #[error("no records")]
    NoRecords,
    /// More than 255 records.
    #[error("more than 255 records")]
    TooManyRecords,
    /// More IO elements in a record (or in one group) than the codec's
    /// counts hold: 255 in Codec 8, 65 535 in 8E.
    #[error("too many IO elements for the codec")]
    TooManyIo,
    /// An IO id or the event IO id exceeds 255 in Codec 8.
    #[error("IO id too large for Codec 8")]
    IdTooWide,
    /// A variable-length value in Codec 8, which has no such group.
    #[error("variable-length IO value in Codec 8")]
    BytesInCodec8,
    /// A variable-length value longer than 65 535 bytes.
    #[error("variable-length IO value too long")]
    BytesTooLong,
}

/// A packet to [`encode`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncodePacket<'a> {
    /// UDP channel packet id.
    pub packet_id: u16,
    /// AVL packet id.
    pub avl_packet_id: u8,
    /// The IMEI: must be 15 ASCII digits.
    pub imei: &'a str,
    /// Codec of the records.
    pub codec: Codec,
    /// 1..=255 records.
    pub records: &'a [EncodeRecord<'a>],
}

/// A record to [`encode`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncodeRecord<'a> {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Priority.
    pub priority: Priority,
    /// GPS element.
    pub gps: Gps,
    /// Event IO id (0: periodic record).
    pub event_io_id: u16,
    /// IO elements, in any order: the encoder writes them group by group
    /// (1-, 2-, 4-, 8-byte, variable), keeping their order within a group,
    /// which is the order [`Record::io`] yields them back.
    pub io: &'a [IoElement<'a>],
}

/// A cursor writing into a caller buffer, every write bounds-checked.
struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos.checked_add(bytes.len()).ok_or(EncodeError::TooLong)?;
        let dst = self.buf.get_mut(self.pos..end).ok_or(EncodeError::BufferTooSmall)?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    /// An IO id or count at the codec's width.
    fn uint(&mut self, codec: Codec, v: u16, too_big: EncodeError) -> Result<(), EncodeError> {
        if codec.wide() {
            self.put(&v.to_be_bytes())
        } else {
            let b = u8::try_from(v).map_err(|_| too_big)?;
            self.put(&[b])
        }
    }
}

/// Writes `packet` as one UDP datagram into `out` and returns its length.
///
/// The result is what a tracker sends, and `parse` accepts it and yields the
/// same values back (IO elements grouped by width, see [`EncodeRecord::io`]).
/// Used by tests and by a simulator; it never allocates.
///
/// # Errors
///
/// [`EncodeError`] when `out` is too small or `packet` holds something the
/// wire format or [`parse`] does not allow; `out` may then be partly written.
pub(crate) fn encode(packet: &EncodePacket<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    let codec = packet.codec;
    let imei = packet.imei.as_bytes();
    if imei.len() != IMEI_LEN || !imei.iter().all(u8::is_ascii_digit) {
        return Err(EncodeError::BadImei);
    }
    if packet.records.is_empty() {
        return Err(EncodeError::NoRecords);
    }
    let count = u8::try_from(packet.records.len()).map_err(|_| EncodeError::TooManyRecords)?;

    let mut w = Writer { buf: out, pos: 0 };
    w.put(&[0, 0])?; // length, patched below
    w.put(&packet.packet_id.to_be_bytes())?;
    w.put(&[PACKET_TYPE, packet.avl_packet_id])?;
    w.put(&[0, 15])?; // IMEI length: IMEI_LEN
    w.put(imei)?;
    w.put(&[codec.id(), count])?;
    for record in packet.records {
        if !codec.wide() && record.io.iter().any(|e| e.value.group() == Group::Var) {
            return Err(EncodeError::BytesInCodec8);
        }
        w.put(&record.timestamp_ms.to_be_bytes())?;
        w.put(&[record.priority.as_u8()])?;
        let g = &record.gps;
        w.put(&g.longitude_e7.to_be_bytes())?;
        w.put(&g.latitude_e7.to_be_bytes())?;
        w.put(&g.altitude_m.to_be_bytes())?;
        w.put(&g.angle_deg.to_be_bytes())?;
        w.put(&[g.satellites])?;
        w.put(&g.speed_kmh.to_be_bytes())?;
        w.uint(codec, record.event_io_id, EncodeError::IdTooWide)?;
        let total = u16::try_from(record.io.len()).map_err(|_| EncodeError::TooManyIo)?;
        w.uint(codec, total, EncodeError::TooManyIo)?;
        let mut group = Group::Start;
        loop {
            group = group.after(codec);
            if group == Group::End {
                break;
            }
            let in_group = record.io.iter().filter(|e| e.value.group() == group);
            let n = u16::try_from(in_group.clone().count()).map_err(|_| EncodeError::TooManyIo)?;
            w.uint(codec, n, EncodeError::TooManyIo)?;
            for e in in_group {
                w.uint(codec, e.id, EncodeError::IdTooWide)?;
                match e.value {
                    IoValue::U8(v) => w.put(&[v])?,
                    IoValue::U16(v) => w.put(&v.to_be_bytes())?,
                    IoValue::U32(v) => w.put(&v.to_be_bytes())?,
                    IoValue::U64(v) => w.put(&v.to_be_bytes())?,
                    IoValue::Bytes(b) => {
                        let len = u16::try_from(b.len()).map_err(|_| EncodeError::BytesTooLong)?;
                        w.put(&len.to_be_bytes())?;
                        w.put(b)?;
                    }
                }
            }
        }
    }
    w.put(&[count])?;
    let len = w.pos;
    let body = u16::try_from(len.saturating_sub(2)).map_err(|_| EncodeError::TooLong)?;
    w.buf.get_mut(..2).ok_or(EncodeError::BufferTooSmall)?.copy_from_slice(&body.to_be_bytes());
    Ok(len)
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]
mod tests;
