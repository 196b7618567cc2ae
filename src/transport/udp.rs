//! UDP ingest: one dedicated thread per socket reading batches with
//! `recvmmsg(2)` into preallocated buffers (no allocation per datagram), and
//! handing each batch to the [`Pipeline`].

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio_util::sync::CancellationToken;

use super::sys;
use crate::clock::now_ns;
use crate::ingest::{Datagram, Pipeline, Transport};
use crate::telemetry::Registry;

/// Receive buffer per datagram: larger than any valid frame (1200 bytes),
/// so anything the kernel has to cut was too long anyway (`MSG_TRUNC`).
pub(crate) const SLOT: usize = 2048;

/// The UDP transport's slice of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UdpConfig {
    /// Receive threads, each with its own SO_REUSEPORT socket.
    pub(crate) threads: usize,
    /// SO_RCVBUF requested per socket, bytes.
    pub(crate) recv_buffer: usize,
    /// Datagrams per `recvmmsg` call.
    pub(crate) batch: usize,
    /// Longest pause between reads under sustained load (see [`Linger`]).
    pub(crate) linger: Duration,
}

/// A bound UDP socket and the receive buffer the kernel granted.
#[derive(Debug)]
pub(crate) struct BoundUdp {
    pub(crate) socket: UdpSocket,
    /// SO_RCVBUF as the kernel reports it (Linux doubles the request for
    /// bookkeeping overhead).
    pub(crate) granted_buffer: usize,
    /// Whether the kernel notes receive times for it
    /// ([`sys::enable_receive_timestamps`]).
    pub(crate) stamped: bool,
}

impl BoundUdp {
    /// The bound address.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Binds a UDP socket with a large receive buffer (and SO_REUSEPORT when
/// several threads share the port), naming its `purpose` in the logs. Logs
/// the granted buffer size and warns when the kernel capped it.
pub(crate) fn bind_for(
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
    Ok(BoundUdp { socket: socket.into(), granted_buffer: granted, stamped: false })
}

/// Binds `threads` sockets on `addr` (all on the port the first one got, so
/// port 0 works), each asking for kernel receive times (for
/// `fleetwire_ingest_delay_seconds`).
pub(crate) fn bind_all(
    addr: SocketAddr,
    recv_buffer: usize,
    threads: usize,
) -> io::Result<Vec<BoundUdp>> {
    let first = bind_for("UDP ingest", addr, recv_buffer, threads > 1)?;
    let actual = first.socket.local_addr()?;
    let mut all = vec![first];
    for _ in 1..threads {
        all.push(bind_for("UDP ingest", actual, recv_buffer, true)?);
    }
    for b in &mut all {
        match sys::enable_receive_timestamps(&b.socket) {
            Ok(()) => b.stamped = true,
            Err(e) => tracing::warn!(
                error = %e,
                "no kernel receive timestamps: fleetwire_ingest_delay_seconds stays empty"
            ),
        }
    }
    Ok(all)
}

/// How long a stopping receive thread keeps reading what is queued: under
/// sustained load the socket may never be empty, and shutdown must end.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// The receive threads of the UDP ingest sockets.
pub(crate) struct UdpReceivers {
    threads: Vec<JoinHandle<()>>,
}

impl UdpReceivers {
    /// Registers the UDP series and starts one receive thread per socket.
    /// They run until `stop` is cancelled, then read what is still queued
    /// in their socket (for [`DRAIN_LIMIT`] at most) and end.
    pub(crate) fn start(
        sockets: Vec<BoundUdp>,
        cfg: &UdpConfig,
        pipeline: &Arc<Pipeline>,
        registry: &Registry,
        stop: &CancellationToken,
    ) -> io::Result<UdpReceivers> {
        if let Some(b) = sockets.first() {
            registry
                .gauge(
                    "fleetwire_udp_receive_buffer_bytes",
                    "Receive buffer size the kernel granted each UDP socket.",
                    &[],
                )
                .set((b.granted_buffer / 2) as f64);
        }
        let inodes: Vec<u64> = sockets.iter().filter_map(|b| inode(&b.socket)).collect();
        registry.counter_fn(
            "fleetwire_udp_receive_buffer_drops_total",
            "Datagrams the kernel dropped because a UDP socket's receive buffer was full.",
            &[],
            move || kernel_drops(&inodes),
        );
        let mut threads = Vec::new();
        for (i, b) in sockets.into_iter().enumerate() {
            let (pipeline, stop, cfg) = (pipeline.clone(), stop.clone(), cfg.clone());
            let h = std::thread::Builder::new()
                .name(format!("udp-rx-{i}"))
                .spawn(move || receive_loop(&b.socket, b.stamped, &cfg, &pipeline, &stop))?;
            threads.push(h);
        }
        Ok(UdpReceivers { threads })
    }

    /// Waits for every receive thread to end (after the stop signal).
    pub(crate) async fn join(self) {
        for h in self.threads {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// How often, at most, the receive thread asks the kernel when a batch
/// arrived while the socket's queue is not backed up (1 ms).
const ASK_EVERY_NS: u64 = 1_000_000;

/// How long datagrams waited in the socket's queue, from the kernel's
/// receive time of a batch's last datagram (`SIOCGSTAMPNS`, one system call)
/// to the moment `recvmmsg` returned it.
///
/// Asking costs a system call per batch; a receiver that keeps up reads a
/// datagram or a few per call, so asking for every batch cost about as much
/// as the engine (BENCHMARKS.md). The kernel is asked:
/// - for every full batch: the queue is backed up, which is when the wait
///   grows, and the call is shared by a full batch;
/// - for the first batch after a full one: the backlog is gone, and the wait
///   it measured no longer holds;
/// - otherwise (the read emptied the queue) once per [`ASK_EVERY_NS`].
///
/// A batch not asked about is given the wait last measured: its receive
/// time is its read time less that wait. Every datagram is still counted in
/// `fleetwire_ingest_delay_seconds`, with that estimate of its queue wait and
/// its own time from read to applied.
#[derive(Debug, Default)]
struct QueueWait {
    /// Read time of the last batch the kernel told about (Unix ns).
    asked_ns: u64,
    /// The wait it measured; `None` before any answer.
    wait_ns: Option<u64>,
    /// The previous batch was full.
    after_full: bool,
}

impl QueueWait {
    /// Whether to ask the kernel about a batch read at `read_ns`.
    fn should_ask(&mut self, read_ns: u64, full: bool) -> bool {
        let ask = full
            || self.after_full
            || self.wait_ns.is_none()
            || read_ns.saturating_sub(self.asked_ns) >= ASK_EVERY_NS;
        self.after_full = full;
        ask
    }

    /// The kernel's answer for a batch read at `read_ns`: its last
    /// datagram's receive time (0: unknown, the wait last measured stays).
    fn asked(&mut self, read_ns: u64, received_ns: u64) {
        if received_ns != 0 {
            self.asked_ns = read_ns;
            self.wait_ns = Some(read_ns.saturating_sub(received_ns));
        }
    }

    /// The receive time a batch read at `read_ns` is given (0: unknown).
    fn received_ns(&self, read_ns: u64) -> u64 {
        self.wait_ns.map_or(0, |w| read_ns.saturating_sub(w))
    }
}

/// Reads put off under sustained load, so that each read takes many
/// datagrams.
///
/// A receiver that keeps up reads a datagram or two per `recvmmsg` call, and
/// each call, and each wake-up from waiting for the next datagram, costs
/// about as much as handling several datagrams (BENCHMARKS.md). After a
/// short read (fewer datagrams than a batch holds: the read emptied the
/// queue) the thread estimates the arrival rate from the datagrams read and
/// the time since the previous read, and pauses as long as half a batch
/// takes to arrive, when that is at most the configured linger: the next
/// read then takes at least about half a batch (the pause begins after the
/// batch was handled, and the timer may add its slack). Slower streams are
/// read as they come (a pause that finds little or nothing stops the
/// pausing: the rate it measures is low). After a full read it never
/// pauses (the queue is backed up). A pause adds at most the linger (and
/// the timer's slack) to a datagram's ingest delay, which
/// `fleetwire_ingest_delay_seconds` shows.
#[derive(Debug)]
struct Linger {
    /// The longest pause, ns (0: never).
    max_ns: u64,
    /// When the previous read returned (Unix ns).
    last_read_ns: u64,
    /// The thread paused after the previous read, and has not read since:
    /// the next read does not wait (see [`Linger::paused_since`]).
    paused: bool,
}

impl Linger {
    fn new(max: Duration) -> Self {
        Linger {
            max_ns: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX),
            last_read_ns: 0,
            paused: false,
        }
    }

    /// When the previous read returned, if the thread paused after it: that
    /// read emptied the queue, so the datagrams the next read returns came
    /// after. The read after a pause does not wait (`MSG_DONTWAIT`), so
    /// that they all came during the pause and the handling before it: if
    /// it finds nothing, [`found_nothing`](Self::found_nothing) ends this
    /// and the thread waits as usual.
    fn paused_since(&self) -> Option<u64> {
        self.paused.then_some(self.last_read_ns)
    }

    /// The thread took the pause [`pause_ns`](Self::pause_ns) asked for.
    fn slept(&mut self) {
        self.paused = true;
    }

    /// A read found no datagram (or failed): what comes next may come
    /// after any wait.
    fn found_nothing(&mut self) {
        self.paused = false;
    }

    /// How long to pause (ns, 0: not at all) after a read that returned at
    /// `read_ns` with `n` datagrams of at most `capacity`.
    fn pause_ns(&mut self, read_ns: u64, n: usize, capacity: usize) -> u64 {
        let since = read_ns.saturating_sub(self.last_read_ns);
        self.last_read_ns = read_ns;
        self.paused = false;
        if self.max_ns == 0 || n == 0 || n >= capacity {
            return 0;
        }
        // Half a batch at the rate of `n` datagrams in `since`.
        let half = (capacity / 2).max(1) as u64;
        let fill = since.saturating_mul(half) / n as u64;
        if fill <= self.max_ns { fill } else { 0 }
    }
}

/// The receive time given to datagram `i` of `n` read after a pause: the
/// queue was empty at `from` (the read before the pause) and the last of
/// them arrived at `last`, so they are spread evenly over that interval
/// (a steady stream, which is when the thread pauses) rather than all given
/// `last`, which would count one that came at the start of the pause as up
/// to the whole pause fresher than it is.
fn spread(from: u64, last: u64, i: usize, n: usize) -> u64 {
    if last <= from || n == 0 {
        return last;
    }
    let step = (last - from) as u128 * (i as u128 + 1) / n as u128;
    from + u64::try_from(step).unwrap_or(last - from)
}

fn receive_loop(
    socket: &UdpSocket,
    stamped: bool,
    cfg: &UdpConfig,
    pipeline: &Pipeline,
    stop: &CancellationToken,
) {
    if let Err(e) = sys::set_thread_nice(sys::RECEIVE_NICE) {
        tracing::debug!(error = %e, "UDP receive thread keeps the default priority");
    }
    let mut rx = sys::Batch::new(cfg.batch.clamp(1, sys::MAX_BATCH), SLOT);
    let mut wait = QueueWait::default();
    let mut linger = Linger::new(cfg.linger);
    let mut errors_logged = 0u32;
    let mut drain_until = None;
    loop {
        let stopping = stop.is_cancelled();
        if stopping {
            let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN_LIMIT);
            if Instant::now() >= until {
                tracing::debug!(
                    "UDP drain stopped after {DRAIN_LIMIT:?}: the socket is still busy"
                );
                return;
            }
        }
        // The read after a pause does not wait (see Linger::paused_since).
        let wait_for_one = !stopping && linger.paused_since().is_none();
        match rx.recv(socket, wait_for_one) {
            Ok(0) => {
                linger.found_nothing();
                if stopping {
                    return;
                }
            }
            Ok(n) => {
                let read_ns = now_ns();
                let now = read_ns / 1_000_000;
                let mut views: arrayvec::ArrayVec<Datagram<'_>, { sys::MAX_BATCH }> =
                    arrayvec::ArrayVec::new();
                // When the batch's datagrams arrived (see QueueWait): the
                // kernel is asked for a full batch, after a full batch, and
                // otherwise at most once per ASK_EVERY_NS.
                let received_ns = if stamped {
                    if wait.should_ask(read_ns, n == rx.capacity()) {
                        wait.asked(read_ns, sys::last_received_ns(socket));
                    }
                    wait.received_ns(read_ns)
                } else {
                    0
                };
                let from = linger.paused_since();
                for i in 0..n {
                    let (bytes, truncated, source) = rx.get(i);
                    let received_ns = match from {
                        Some(from) if received_ns != 0 => spread(from, received_ns, i, n),
                        _ => received_ns,
                    };
                    if views
                        .try_push(Datagram {
                            bytes,
                            truncated,
                            source,
                            identity: None,
                            received_ns,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
                pipeline.handle(Transport::Udp, now, &views);
                let pause = linger.pause_ns(read_ns, n, rx.capacity());
                if pause > 0 && !stopping {
                    std::thread::sleep(Duration::from_nanos(pause));
                    linger.slept();
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                linger.found_nothing();
                if stopping {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => linger.found_nothing(),
            Err(e) => {
                linger.found_nothing();
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
pub(crate) fn kernel_drops(sockets: &[u64]) -> u64 {
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
pub(crate) fn inode(socket: &UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's receive time of a batch is that of its last datagram:
    /// after it was sent, before it was read, and not that of an earlier one.
    #[test]
    fn a_batch_is_stamped_with_its_last_datagrams_arrival() {
        let rx = bind_all("127.0.0.1:0".parse().unwrap(), 1 << 20, 1).unwrap().remove(0);
        assert!(rx.stamped);
        assert_eq!(sys::last_received_ns(&rx.socket), 0, "nothing read yet");
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let mut batch = sys::Batch::new(8, SLOT);
        let unix_ns = || crate::clock::now_ns();
        tx.send(b"first").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let before_last = unix_ns();
        tx.send(b"last").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let mut got = 0;
        while got < 2 {
            got += batch.recv(&rx.socket, true).unwrap();
        }
        let after = unix_ns();
        let stamp = sys::last_received_ns(&rx.socket);
        assert!(
            (before_last..=after).contains(&stamp),
            "{before_last} <= {stamp} <= {after} (the first was sent 20 ms earlier)"
        );
        // A socket that did not ask has no receive times.
        let plain = bind_for("test", "127.0.0.1:0".parse().unwrap(), 1 << 20, false).unwrap();
        assert!(!plain.stamped);
    }

    /// The kernel is asked about the first batch, every full batch and the
    /// one after it, and otherwise once per ASK_EVERY_NS; a batch not asked
    /// about is given the wait last measured.
    #[test]
    fn the_kernel_is_asked_when_the_queue_backs_up_and_once_per_interval_otherwise() {
        const MS: u64 = 1_000_000;
        let t0 = 1_800_000_000 * 1_000 * MS;
        let mut w = QueueWait::default();
        assert_eq!(w.received_ns(t0), 0, "unknown before any answer");
        assert!(w.should_ask(t0, false), "the first batch");
        w.asked(t0, t0 - 30_000);
        assert_eq!(w.received_ns(t0), t0 - 30_000);
        // Partial batches within the interval: not asked, given the wait.
        assert!(!w.should_ask(t0 + MS / 2, false));
        assert_eq!(w.received_ns(t0 + MS / 2), t0 + MS / 2 - 30_000);
        assert!(!w.should_ask(t0 + MS - 1, false));
        assert!(w.should_ask(t0 + MS, false), "an interval later");
        w.asked(t0 + MS, t0 + MS - 10_000);
        // A full batch is asked about at once, and so is the one after it.
        assert!(w.should_ask(t0 + MS + 1, true));
        w.asked(t0 + MS + 1, t0 - 40 * MS);
        assert_eq!(w.received_ns(t0 + MS + 1), t0 - 40 * MS, "a backlog of 41 ms");
        assert!(w.should_ask(t0 + MS + 2, false), "the batch after a full one");
        w.asked(t0 + MS + 2, t0 + MS - 5_000);
        assert!(!w.should_ask(t0 + MS + 3, false), "the backlog is gone");
        assert_eq!(w.received_ns(t0 + MS + 3), t0 + MS + 3 - 5_002);
        // An answer of 0 (unknown) keeps the wait last measured, and asks
        // again next time.
        let t1 = t0 + 10 * MS;
        assert!(w.should_ask(t1, false));
        w.asked(t1, 0);
        assert_eq!(w.received_ns(t1), t1 - 5_002);
        assert!(w.should_ask(t1 + 1, false));
    }
    /// A short read of a fast stream pauses for half a batch's worth of it;
    /// a slow stream, a full read, a wake-up after waiting or a linger of 0
    /// do not.
    #[test]
    fn reads_pause_only_for_streams_fast_enough_to_fill_half_a_batch() {
        const US: u64 = 1_000;
        let t0 = 1_800_000_000_000_000_000;
        let mut l = Linger::new(Duration::from_micros(100));
        assert_eq!(l.pause_ns(t0, 1, 32), 0, "after a wait for the first datagram");
        // 2 datagrams in 5 µs: 16 take 40 µs.
        assert_eq!(l.pause_ns(t0 + 5 * US, 2, 32), 40 * US);
        // The pause found 20 in 44 µs: 16 take 35.2 µs.
        assert_eq!(l.pause_ns(t0 + 49 * US, 20, 32), 35_200);
        // A full read: the queue is backed up, read again at once.
        assert_eq!(l.pause_ns(t0 + 90 * US, 32, 32), 0);
        // 1 datagram in 10 µs: 16 would take 160 µs, more than the linger.
        assert_eq!(l.pause_ns(t0 + 100 * US, 1, 32), 0);
        // Exactly the linger is still taken.
        assert_eq!(l.pause_ns(t0 + 125 * US, 4, 32), 100 * US);
        assert_eq!(l.pause_ns(t0 + 126 * US, 0, 32), 0, "nothing read");
        let mut off = Linger::new(Duration::ZERO);
        assert_eq!(off.pause_ns(t0, 1, 32), 0);
        assert_eq!(off.pause_ns(t0 + US, 8, 32), 0, "a linger of 0 never pauses");
        // With batches of one, every read is full: no pause.
        let mut one = Linger::new(Duration::from_micros(100));
        assert_eq!(one.pause_ns(t0, 1, 1), 0);
        assert_eq!(one.pause_ns(t0 + 3 * US, 1, 1), 0);
    }
    /// The datagrams read after a pause are spread evenly from the read
    /// before it to the last one's arrival; without a pause they all keep
    /// the batch's time.
    #[test]
    fn datagrams_read_after_a_pause_are_spread_over_it() {
        const US: u64 = 1_000;
        let t0 = 1_800_000_000_000_000_000;
        assert_eq!(spread(t0, t0 + 100 * US, 0, 4), t0 + 25 * US);
        assert_eq!(spread(t0, t0 + 100 * US, 1, 4), t0 + 50 * US);
        assert_eq!(spread(t0, t0 + 100 * US, 3, 4), t0 + 100 * US, "the last keeps its own");
        assert_eq!(spread(t0, t0 - US, 0, 4), t0 - US, "a last arrival before `from`");
        let mut l = Linger::new(Duration::from_micros(100));
        assert_eq!(l.pause_ns(t0, 1, 32), 0);
        assert_eq!(l.paused_since(), None, "no pause after a wake-up");
        assert_ne!(l.pause_ns(t0 + 5 * US, 2, 32), 0);
        assert_eq!(l.paused_since(), None, "not before the pause is taken");
        l.slept();
        assert_eq!(l.paused_since(), Some(t0 + 5 * US));
        assert_eq!(l.pause_ns(t0 + 60 * US, 32, 32), 0);
        assert_eq!(l.paused_since(), None, "none after a full read");
        // A pause that found nothing: what comes next may come after any
        // wait, and is not spread back over it.
        assert_ne!(l.pause_ns(t0 + 70 * US, 8, 32), 0);
        l.slept();
        l.found_nothing();
        assert_eq!(l.paused_since(), None, "the stream stopped during the pause");
    }
}
