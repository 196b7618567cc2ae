//! The system calls the standard library does not wrap: `recvmmsg(2)`,
//! `sendmmsg(2)`, `SO_RCVBUFFORCE`, receive times (`SIOCGSTAMPNS`) and a
//! thread's nice value (`setpriority(2)`). The server's `unsafe` code, but
//! for one prefetch hint in `engine/prefetch.rs` and the CRC32 instruction
//! in `ingest/crc.rs`; every block says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

/// The address the kernel wrote into a sockaddr_storage.
fn sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says it holds a sockaddr_in, which
            // sockaddr_storage is large and aligned enough for.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
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
pub(crate) const MAX_BATCH: usize = 1024;

/// Sets an integer socket option at `SOL_SOCKET` level.
fn set_socket_int(fd: std::os::fd::RawFd, option: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: a socket descriptor the caller owns, and a pointer to a
    // c_int of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// SO_RCVBUFFORCE: a receive buffer beyond net.core.rmem_max, allowed
/// with CAP_NET_ADMIN.
pub(crate) fn set_rcvbuf_force(socket: &socket2::Socket, bytes: usize) -> io::Result<()> {
    let v = bytes.min(i32::MAX as usize / 2) as libc::c_int;
    set_socket_int(socket.as_raw_fd(), libc::SO_RCVBUFFORCE, v)
}

/// Sends up to 64 datagrams on a connected socket; returns how many went.
pub(crate) fn sendmmsg(socket: &UdpSocket, datagrams: &[Vec<u8>]) -> io::Result<usize> {
    let n = datagrams.len().min(64);
    let mut iovecs: [libc::iovec; 64] =
        [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 64];
    // SAFETY: mmsghdr is plain old data; all-zero is valid.
    let mut hdrs: [libc::mmsghdr; 64] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovecs[i] =
            libc::iovec { iov_base: datagrams[i].as_ptr() as *mut _, iov_len: datagrams[i].len() };
        hdrs[i].msg_hdr.msg_iov = &mut iovecs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: each header points at an iovec describing a live datagram
    // buffer, which the kernel only reads; the socket is connected, so no
    // address is needed.
    let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), n as _, 0) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// `SIOCGSTAMPNS` (linux/sockios.h; `SIOCGSTAMPNS_OLD`, whose timespec
/// is the 64-bit one on 64-bit targets): the receive time of the last
/// datagram read from a socket. The libc crate does not define it.
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

/// Asks the kernel to note when each datagram the socket receives arrived
/// (`CLOCK_REALTIME`), for [`last_received_ns`]. The first `SIOCGSTAMPNS`
/// turns this on (`SOCK_TIMESTAMP`); from then on, reading a datagram costs
/// the kernel one store of its time into the socket. `SO_TIMESTAMPNS`
/// instead formats a control message for every datagram read (even one
/// without room for it): about 0.1 CPU-µs per datagram when draining a
/// full queue, on a receive path of about 1.1 (BENCHMARKS.md).
pub(crate) fn enable_receive_timestamps(socket: &UdpSocket) -> io::Result<()> {
    match receive_time(socket) {
        // No datagram read yet: expected on a new socket.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// When the kernel received the last datagram read from `socket` (Unix
/// nanoseconds, `CLOCK_REALTIME`); 0 when unknown (none read yet, or
/// [`enable_receive_timestamps`] failed). One system call, which costs
/// about as much as handling a datagram: the receive thread asks only for
/// some batches (`udp::QueueWait`).
pub(crate) fn last_received_ns(socket: &UdpSocket) -> u64 {
    receive_time(socket).unwrap_or(0)
}

fn receive_time(socket: &UdpSocket) -> io::Result<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: SIOCGSTAMPNS writes one timespec into the struct we pass; a
    // socket descriptor the caller owns.
    let r = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSTAMPNS as _, &mut ts) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    match (u64::try_from(ts.tv_sec), u64::try_from(ts.tv_nsec)) {
        (Ok(s), Ok(n)) => Ok(s.saturating_mul(1_000_000_000).saturating_add(n)),
        _ => Ok(0),
    }
}

/// Preallocated buffers and headers for one `recvmmsg` call.
pub(crate) struct Batch {
    slot: usize,
    bufs: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
    /// Headers the last call filled (to reset before the next).
    filled: usize,
}

// The raw pointers in `iovecs` and `hdrs` point into `bufs`, `iovecs`
// and `addrs`, which the Batch owns and never reallocates.
unsafe impl Send for Batch {}

impl Batch {
    pub(crate) fn new(n: usize, slot: usize) -> Self {
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
        // Every header as `recv` resets them.
        Batch { slot, bufs, iovecs, addrs, hdrs, filled: n }
    }

    /// Datagrams one call reads at most.
    pub(crate) fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Reads up to a batch of datagrams. With `block`, waits (up to the
    /// socket's read timeout) for the first one; never waits for more
    /// (MSG_WAITFORONE).
    pub(crate) fn recv(&mut self, socket: &UdpSocket, block: bool) -> io::Result<usize> {
        // The kernel wrote into the headers of the datagrams it returned
        // last time (and of the one it may have failed on) only: the
        // others still hold what was set below.
        for h in self.hdrs.iter_mut().take(self.filled + 1) {
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
        if n < 0 {
            self.filled = 0;
            return Err(io::Error::last_os_error());
        }
        self.filled = n as usize;
        Ok(self.filled)
    }

    /// Datagram `i` of the last call: bytes, truncated, source.
    pub(crate) fn get(&self, i: usize) -> (&[u8], bool, Option<SocketAddr>) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.slot);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let start = i * self.slot;
        let source = sockaddr(&self.addrs[i]);
        let _ = &self.iovecs;
        (&self.bufs[start..start + len], truncated, source)
    }
}

/// Raises this process's soft limit of open files to its hard limit and
/// returns the limit now in force (the services' default of 1024 is easy to
/// exhaust with HTTP connections).
pub(crate) fn raise_nofile_limit() -> u64 {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return 1024;
    }
    if l.rlim_cur < l.rlim_max {
        let raised = libc::rlimit { rlim_cur: l.rlim_max, rlim_max: l.rlim_max };
        // SAFETY: setrlimit reads one rlimit from the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            l.rlim_cur = l.rlim_max;
        }
    }
    l.rlim_cur
}

/// The receive threads' nice value, where the server may raise it (root,
/// `CAP_SYS_NICE`): when the cores are busy (HTTP listings, a co-located
/// sender), the kernel runs a receive thread as soon as datagrams wait,
/// before they overflow the socket buffer. Without the privilege they run
/// at the default priority, and the expensive HTTP work at nice 10 still
/// yields to them. The engine's lock holder runs at it too (see
/// `Engine::held`).
pub(crate) const RECEIVE_NICE: i32 = -10;

/// CPU time the calling thread has used, in nanoseconds
/// (`CLOCK_THREAD_CPUTIME_ID`: exact, up to the call, unlike
/// `/proc/thread-self/schedstat`, which the scheduler brings up to date
/// only at its ticks and switches).
pub(crate) fn thread_cpu_ns() -> io::Result<u64> {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec for the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
}

/// Sets the calling thread's nice value (`setpriority(2)` on its thread
/// id). Below 0 needs `CAP_SYS_NICE` (or an `RLIMIT_NICE` that allows it):
/// without, an error and nothing changes.
pub(crate) fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments; setpriority takes plain integers.
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
