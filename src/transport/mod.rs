//! Sockets in, byte slices out: UDP (`recvmmsg` threads) and QUIC (quinn).
//! Transports know nothing about aggregation; they hand datagrams to the
//! [`Pipeline`](crate::ingest::Pipeline).

pub mod quic;
pub mod udp;
