//! Test-only: counts the heap allocations made while a shard lock of an
//! engine is held through [`Engine::for_each_shard`](super::Engine::for_each_shard)
//! or [`Engine::with_device`](super::Engine::with_device), per engine, on
//! whatever thread holds it. Tests use it to prove that readers (HTTP
//! handlers) only copy under a lock and compute after releasing it. The
//! counting allocator is the lib test binary's global allocator; it
//! forwards to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    /// The counter of the engine whose shard lock this thread holds.
    static CURRENT: Cell<*const AtomicU64> = const { Cell::new(std::ptr::null()) };
}

struct Counting;

// SAFETY: forwards every call to the system allocator unchanged. The
// thread-local is a const-initialised pointer (no allocation, no
// destructor), so touching it cannot re-enter the allocator; it points at
// an engine's counter only while a `Held` borrowing that engine is alive.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn count() {
    let _ = CURRENT.try_with(|c| {
        let p = c.get();
        if !p.is_null() {
            // SAFETY: set by `Held::new` from a live reference and reset by
            // its drop, on this thread.
            unsafe { &*p }.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Attributes this thread's allocations to `counter` while alive.
pub(crate) struct Held<'a> {
    previous: *const AtomicU64,
    _counter: &'a AtomicU64,
}

impl<'a> Held<'a> {
    pub(crate) fn new(counter: &'a AtomicU64) -> Self {
        let previous = CURRENT.with(|c| c.replace(counter));
        Held { previous, _counter: counter }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}
