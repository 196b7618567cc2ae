//! The server clock: the only clock read of the ingest path. The engine
//! never reads it; it gets the result as an argument.

/// Unix time in milliseconds (0 if the system clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Unix time in nanoseconds, on the clock the kernel stamps received
/// datagrams with (`CLOCK_REALTIME`; 0 if before 1970).
pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
