//! The sending side of plain UDP for the simulator, `send`, `replay` and
//! the benchmark tools: a connected socket that sends batches with
//! `sendmmsg(2)`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::transport::sys;

/// A connected UDP socket that sends batches with `sendmmsg(2)`.
pub(crate) struct BatchSender {
    socket: UdpSocket,
    target: SocketAddr,
}

impl BatchSender {
    /// A socket connected to `target`, with a large send buffer.
    pub(crate) fn connect(target: SocketAddr) -> Result<Self, String> {
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
    pub(crate) fn send(&self, datagrams: &[Vec<u8>]) -> Result<u64, String> {
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

/// Sends `datagrams` in bursts of `n`, each when a line arrives on
/// standard input (until it closes or the datagrams run out), and prints
/// `sent <total>` on standard output once a burst has gone.
pub(crate) fn send_bursts(
    target: SocketAddr,
    datagrams: &[Vec<u8>],
    n: usize,
) -> Result<u64, String> {
    use std::io::{BufRead, Write};
    const BATCH: usize = 64;
    let sender = BatchSender::connect(target)?;
    let mut sent = 0u64;
    let (stdin, mut stdout) = (std::io::stdin(), std::io::stdout());
    let mut lines = stdin.lock().lines();
    for burst in datagrams.chunks(n) {
        match lines.next() {
            Some(Ok(_)) => {}
            _ => break,
        }
        for chunk in burst.chunks(BATCH) {
            sent += sender.send(chunk)?;
        }
        writeln!(stdout, "sent {sent}").and_then(|()| stdout.flush()).map_err(|e| e.to_string())?;
    }
    Ok(sent)
}

/// Sends `datagrams` to `target` `loops` times with `sendmmsg(2)` in
/// batches, at `rate` datagrams per second (0 = as fast as the socket
/// takes them). Returns the number sent.
pub(crate) fn send_all(
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
