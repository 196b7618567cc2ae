//! The threads that do the HTTP API's expensive work (listings, GeoJSON,
//! `/metrics` renderings) at a lower CPU priority than everything else
//! (nice 10): on a machine with few cores, a burst of expensive requests
//! then takes what the receive path leaves, not a fair share of it (the
//! kernel's scheduler gives a nice-10 thread about a tenth of the weight of
//! a nice-0 one). Their own threads, not tokio's blocking pool: a thread's
//! nice value cannot be lowered back without privileges, and the blocking
//! pool also writes the journal and snapshots, which must not wait.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use parking_lot::Mutex;

/// The nice value of the threads.
pub(crate) const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The pool. Its threads end when it is dropped (after their job).
pub(crate) struct Pool {
    jobs: SyncSender<Job>,
}

/// Why a job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PoolError {
    /// Every thread is busy and the queue is full.
    #[error("every render thread is busy")]
    Busy,
    /// The pool is gone, or the job panicked.
    #[error("the render thread is gone")]
    Gone,
}

impl Pool {
    /// `threads` threads named `<name>-<i>`, with room for `queue` waiting
    /// jobs. A thread that cannot be started leaves the pool smaller (none
    /// at all: every job is `Gone`).
    pub(crate) fn start(name: &str, threads: usize, queue: usize) -> Pool {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned =
                std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || work(&rx));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start an HTTP render thread");
            }
        }
        Pool { jobs }
    }

    /// Runs `f` on a pool thread and waits for its result.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => rx.await.map_err(|_| PoolError::Gone),
            Err(TrySendError::Full(_)) => Err(PoolError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(PoolError::Gone),
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        // One thread waits on the queue at a time; the others on the lock.
        let job = rx.lock().recv();
        match job {
            Ok(job) => {
                // A job that panics loses its answer (its caller sees
                // `Gone`), not the thread.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
            Err(_) => return,
        }
    }
}

/// Sets this thread's nice value to [`NICE`] (always allowed: lowering
/// one's own priority needs no privilege).
fn lower_priority() {
    if let Err(e) = crate::transport::sys::set_thread_nice(NICE) {
        tracing::debug!(error = %e, "could not lower the render thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_threads_of_lower_priority_and_a_panic_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let pool = Pool::start("test-render", 2, 4);
        // The nice value is field 19 of the thread's stat (after the
        // command in parentheses, field 3 on).
        let nice = rt.block_on(pool.run(|| {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            rest.split(' ').nth(16).unwrap().parse::<i32>().unwrap()
        }));
        assert_eq!(nice, Ok(NICE));
        let name = rt.block_on(pool.run(|| std::thread::current().name().map(String::from)));
        assert!(name.unwrap().unwrap().starts_with("test-render-"));
        let r: Result<(), _> = rt.block_on(pool.run(|| panic!("a bug in a render")));
        assert_eq!(r, Err(PoolError::Gone));
        assert_eq!(rt.block_on(pool.run(|| 2 + 2)), Ok(4));
    }
}
