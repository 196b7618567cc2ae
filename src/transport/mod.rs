//! Server sockets in, byte slices out: UDP ([`udp`], `recvmmsg` threads)
//! and QUIC ([`quic`], quinn). Transports know nothing about aggregation:
//! they hand [`Datagram`](crate::ingest::Datagram)s to the pipeline. [`sys`]
//! holds the system calls the standard library lacks (the server's only
//! `unsafe` code).

pub(crate) mod osmand;
pub(crate) mod quic;
pub(crate) mod sys;
pub(crate) mod teltonika;
pub(crate) mod udp;
