//! UDP ingest: one dedicated thread per socket reading batches with
//! `recvmmsg(2)` into preallocated buffers (no allocation per datagram), and
//! handing each batch to the [`Pipeline`].

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::ingest::{Datagram, Pipeline, Transport};
use crate::now_ms;

/// Receive buffer per datagram: larger than any valid frame (1200 bytes),
/// so anything the kernel has to cut was too long anyway (`MSG_TRUNC`).
pub const SLOT: usize = 2048;

/// A bound UDP socket and the receive buffer the kernel granted.
#[derive(Debug)]
pub struct BoundUdp {
    /// The socket.
    pub socket: UdpSocket,
    /// SO_RCVBUF as the kernel reports it (Linux doubles the request for
    /// bookkeeping overhead).
    pub granted_buffer: usize,
}

/// Binds a UDP socket with a large receive buffer (and SO_REUSEPORT when
/// several threads share the port). Logs the granted buffer size and warns
/// when the kernel capped it.
pub fn bind(addr: SocketAddr, recv_buffer: usize, reuse_port: bool) -> io::Result<BoundUdp> {
    bind_for("UDP ingest", addr, recv_buffer, reuse_port)
}

/// [`bind`], naming the socket's `purpose` in the logs.
pub fn bind_for(
    purpose: &str,
    addr: SocketAddr,
    recv_buffer: usize,
    reuse_port: bool,
) -> io::Result<BoundUdp> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // [::] takes IPv4 too, whatever the system default.
        let _ = socket.set_only_v6(false);
    }
    // With CAP_NET_ADMIN (root), SO_RCVBUFFORCE may exceed net.core.rmem_max;
    // otherwise SO_RCVBUF, which the kernel caps at it.
    let forced = sys::set_rcvbuf_force(&socket, recv_buffer).is_ok();
    if !forced {
        let _ = socket.set_recv_buffer_size(recv_buffer);
    }
    let granted = socket.recv_buffer_size().unwrap_or(0);
    // Linux reports twice the usable size.
    if granted / 2 < recv_buffer {
        tracing::warn!(
            socket = purpose,
            requested = recv_buffer,
            granted = granted / 2,
            "kernel capped the receive buffer: raise net.core.rmem_max \
             (sysctl -w net.core.rmem_max={recv_buffer}) to absorb bursts without drops"
        );
    } else {
        tracing::info!(
            socket = purpose,
            requested = recv_buffer,
            granted = granted / 2,
            forced,
            "receive buffer"
        );
    }
    socket.bind(&SockAddr::from(addr))?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(BoundUdp { socket: socket.into(), granted_buffer: granted })
}

/// Binds `threads` sockets on `addr` (all on the port the first one got, so
/// port 0 works).
pub fn bind_all(addr: SocketAddr, recv_buffer: usize, threads: usize) -> io::Result<Vec<BoundUdp>> {
    let first = bind(addr, recv_buffer, threads > 1)?;
    let actual = first.socket.local_addr()?;
    let mut all = vec![first];
    for _ in 1..threads {
        all.push(bind(actual, recv_buffer, true)?);
    }
    Ok(all)
}

/// How long a stopping receive thread keeps reading what is queued: under
/// sustained load the socket may never be empty, and shutdown must end.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Starts the receive thread of one socket. It runs until `stop` is set,
/// then reads what is still queued in the socket (for [`DRAIN_LIMIT`] at
/// most) and returns.
pub fn spawn(
    socket: UdpSocket,
    batch: usize,
    pipeline: Arc<Pipeline>,
    stop: Arc<AtomicBool>,
    name: String,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || receive_loop(&socket, batch, &pipeline, &stop))
}

fn receive_loop(socket: &UdpSocket, batch: usize, pipeline: &Pipeline, stop: &AtomicBool) {
    let mut rx = sys::Batch::new(batch.clamp(1, 1024), SLOT);
    let mut errors_logged = 0u32;
    let mut drain_until = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping {
            let until = *drain_until.get_or_insert_with(|| std::time::Instant::now() + DRAIN_LIMIT);
            if std::time::Instant::now() >= until {
                tracing::debug!(
                    "UDP drain stopped after {DRAIN_LIMIT:?}: the socket is still busy"
                );
                return;
            }
        }
        match rx.recv(socket, !stopping) {
            Ok(0) => {
                if stopping {
                    return;
                }
            }
            Ok(n) => {
                let now = now_ms();
                let mut views: arrayvec::ArrayVec<Datagram<'_>, { sys::MAX_BATCH }> =
                    arrayvec::ArrayVec::new();
                for i in 0..n {
                    let (bytes, truncated, source) = rx.get(i);
                    if views
                        .try_push(Datagram { bytes, truncated, source, identity: None })
                        .is_err()
                    {
                        break;
                    }
                }
                pipeline.handle(Transport::Udp, now, &views);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if stopping {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if errors_logged < 10 {
                    tracing::warn!(error = %e, "UDP receive failed");
                    errors_logged += 1;
                }
                if stopping {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Kernel drop counters of UDP sockets, from `/proc/net/udp` and
/// `/proc/net/udp6` (the `drops` column of each socket, by inode).
pub fn kernel_drops(sockets: &[u64]) -> u64 {
    let mut total = 0;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:tm retrnsmt uid timeout inode ref pointer drops
            if let (Some(inode), Some(drops)) = (cols.get(9), cols.last()) {
                if inode.parse::<u64>().is_ok_and(|i| sockets.contains(&i)) {
                    total += drops.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    total
}

/// The inode of a socket (its key in /proc/net/udp).
pub fn inode(socket: &UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// A connected UDP socket that sends batches with `sendmmsg(2)`.
pub struct BatchSender {
    socket: UdpSocket,
    target: SocketAddr,
}

impl BatchSender {
    /// A socket connected to `target`, with a large send buffer.
    pub fn connect(target: SocketAddr) -> Result<Self, String> {
        let bind: SocketAddr = if target.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
            .parse()
            .map_err(|e| format!("{e}"))?;
        let socket = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        let _ = socket2::SockRef::from(&socket).set_send_buffer_size(8 << 20);
        socket.connect(target).map_err(|e| format!("{target}: {e}"))?;
        Ok(BatchSender { socket, target })
    }

    /// Sends every datagram (64 per system call); returns how many went.
    /// A datagram refused with ECONNREFUSED (nothing listening yet) is skipped.
    pub fn send(&self, datagrams: &[Vec<u8>]) -> Result<u64, String> {
        let mut sent = 0u64;
        let mut off = 0;
        while off < datagrams.len() {
            match sys::sendmmsg(&self.socket, &datagrams[off..]) {
                Ok(n) => {
                    off += n;
                    sent += n as u64;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => off += 1,
                Err(e) => return Err(format!("send to {}: {e}", self.target)),
            }
        }
        Ok(sent)
    }
}

/// Sends `datagrams` to `target` `loops` times with `sendmmsg(2)` in
/// batches, at `rate` datagrams per second (0 = as fast as the socket
/// takes them). Returns the number sent.
pub fn send_all(
    target: SocketAddr,
    datagrams: &[Vec<u8>],
    loops: u64,
    rate: f64,
) -> Result<u64, String> {
    const BATCH: usize = 64;
    let sender = BatchSender::connect(target)?;
    let start = std::time::Instant::now();
    let mut sent = 0u64;
    for _ in 0..loops {
        for chunk in datagrams.chunks(BATCH) {
            if rate > 0.0 {
                let due = sent as f64 / rate;
                let ahead = due - start.elapsed().as_secs_f64();
                if ahead > 0.0005 {
                    std::thread::sleep(Duration::from_secs_f64(ahead));
                }
            }
            sent += sender.send(chunk)?;
        }
    }
    Ok(sent)
}

/// What [`count_only`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counted {
    /// Datagrams received.
    pub datagrams: u64,
    /// Bytes received.
    pub bytes: u64,
    /// From the first datagram to the last, seconds.
    pub active_seconds: f64,
}

/// The benchmark's bare receiver: reads with the same `recvmmsg` batches as
/// the server and only counts. Returns after `idle` seconds without a
/// datagram (once one has arrived), after `max_seconds`, or when `stop` is set.
pub fn count_only(
    socket: &UdpSocket,
    batch: usize,
    stop: &AtomicBool,
    idle: f64,
    max_seconds: f64,
) -> Counted {
    let mut rx = sys::Batch::new(batch.clamp(1, 1024), SLOT);
    let mut c = Counted::default();
    let start = std::time::Instant::now();
    let mut first: Option<std::time::Instant> = None;
    let mut last = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) && start.elapsed().as_secs_f64() < max_seconds {
        match rx.recv(socket, true) {
            Ok(n) if n > 0 => {
                let now = std::time::Instant::now();
                first.get_or_insert(now);
                last = now;
                c.datagrams += n as u64;
                for i in 0..n {
                    c.bytes += rx.get(i).0.len() as u64;
                }
            }
            _ => {
                if first.is_some() && last.elapsed().as_secs_f64() >= idle {
                    break;
                }
            }
        }
    }
    c.active_seconds = first.map_or(0.0, |f| (last - f).as_secs_f64());
    c
}

/// The `recvmmsg(2)` / `sendmmsg(2)` wrappers: the only unsafe code of the server.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
    use std::os::fd::AsRawFd;

    /// The address the kernel wrote into a sockaddr_storage.
    fn sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match i32::from(s.ss_family) {
            libc::AF_INET => {
                // SAFETY: ss_family says it holds a sockaddr_in, which
                // sockaddr_storage is large and aligned enough for.
                let a =
                    unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for sockaddr_in6.
                let a =
                    unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// Most datagrams per call.
    pub const MAX_BATCH: usize = 1024;

    /// SO_RCVBUFFORCE: a receive buffer beyond net.core.rmem_max, allowed
    /// with CAP_NET_ADMIN.
    pub fn set_rcvbuf_force(socket: &socket2::Socket, bytes: usize) -> io::Result<()> {
        let v: libc::c_int = bytes.min(i32::MAX as usize / 2) as libc::c_int;
        // SAFETY: a valid socket descriptor and a pointer to a c_int of the
        // size passed.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// Sends up to 64 datagrams on a connected socket; returns how many went.
    pub fn sendmmsg(socket: &UdpSocket, datagrams: &[Vec<u8>]) -> io::Result<usize> {
        let n = datagrams.len().min(64);
        let mut iovecs: [libc::iovec; 64] =
            [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 64];
        // SAFETY: mmsghdr is plain old data; all-zero is valid.
        let mut hdrs: [libc::mmsghdr; 64] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            iovecs[i] = libc::iovec {
                iov_base: datagrams[i].as_ptr() as *mut _,
                iov_len: datagrams[i].len(),
            };
            hdrs[i].msg_hdr.msg_iov = &mut iovecs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: each header points at an iovec describing a live datagram
        // buffer, which the kernel only reads; the socket is connected, so no
        // address is needed.
        let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), n as _, 0) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
    }

    /// Preallocated buffers and headers for one `recvmmsg` call.
    pub struct Batch {
        slot: usize,
        bufs: Vec<u8>,
        iovecs: Vec<libc::iovec>,
        addrs: Vec<libc::sockaddr_storage>,
        hdrs: Vec<libc::mmsghdr>,
    }

    // The raw pointers in `iovecs` and `hdrs` point into `bufs`, `iovecs`
    // and `addrs`, which the Batch owns and never reallocates.
    unsafe impl Send for Batch {}

    impl Batch {
        pub fn new(n: usize, slot: usize) -> Self {
            let n = n.clamp(1, MAX_BATCH);
            let mut bufs = vec![0u8; n * slot];
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; n];
            let mut iovecs: Vec<libc::iovec> = bufs
                .chunks_mut(slot)
                .map(|c| libc::iovec { iov_base: c.as_mut_ptr().cast(), iov_len: c.len() })
                .collect();
            let hdrs = iovecs
                .iter_mut()
                .zip(addrs.iter_mut())
                .map(|(iov, addr)| {
                    // SAFETY: mmsghdr is plain old data; all-zero is valid.
                    let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    h.msg_hdr.msg_iov = iov;
                    h.msg_hdr.msg_iovlen = 1;
                    h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                    h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
                    h
                })
                .collect();
            Batch { slot, bufs, iovecs, addrs, hdrs }
        }

        /// Reads up to a batch of datagrams. With `block`, waits (up to the
        /// socket's read timeout) for the first one; never waits for more
        /// (MSG_WAITFORONE).
        pub fn recv(&mut self, socket: &UdpSocket, block: bool) -> io::Result<usize> {
            for h in &mut self.hdrs {
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
                h.msg_hdr.msg_flags = 0;
                h.msg_len = 0;
            }
            let flags = if block { libc::MSG_WAITFORONE } else { libc::MSG_DONTWAIT };
            // SAFETY: every header points at a live iovec and sockaddr_storage
            // owned by self, each iovec at a live `slot`-byte region of
            // self.bufs; the kernel writes at most that much into each.
            let n = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    self.hdrs.len() as _,
                    flags as _,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
        }

        /// Datagram `i` of the last call: bytes, truncated, source.
        pub fn get(&self, i: usize) -> (&[u8], bool, Option<SocketAddr>) {
            let h = &self.hdrs[i];
            let len = (h.msg_len as usize).min(self.slot);
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let start = i * self.slot;
            let source = sockaddr(&self.addrs[i]);
            let _ = &self.iovecs;
            (&self.bufs[start..start + len], truncated, source)
        }
    }
}
