//! A hint asking the CPU to start loading memory that a batch will need,
//! so that the cache misses of a batch's devices overlap instead of
//! queueing one after another (see `Engine::ingest`).
//!
//! The only `unsafe` of the engine (the others are `transport/sys.rs` and
//! the CRC32 instruction in `ingest/crc.rs`): the prefetch intrinsic is
//! marked unsafe because it is an SSE instruction, not because of what it
//! does.
#![allow(unsafe_code)]

/// Asks for every cache line of `*x` to be loaded. A hint only: it reads
/// no value, cannot fault and changes no result.
#[inline]
pub(crate) fn prefetch<T>(x: &T) {
    let p = (x as *const T).cast::<i8>();
    // From the line holding the first byte to the one holding the last.
    let start = p as usize;
    let lines = (start % 64 + std::mem::size_of::<T>()).div_ceil(64);
    let first = p.wrapping_sub(start % 64);
    for k in 0..lines {
        line(first.wrapping_add(k * 64));
    }
}

/// Asks for the cache line holding the first byte of `*x` to be loaded
/// (where a `Mutex` keeps its lock word). A hint, like [`prefetch`].
#[inline]
pub(crate) fn prefetch_head<T>(x: &T) {
    line((x as *const T).cast::<i8>());
}

/// Asks for the cache line holding `p` to be loaded.
#[inline]
fn line(p: *const i8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of the x86-64 baseline, and a prefetch is a
        // hint the CPU may ignore: it dereferences nothing and does not
        // fault, whatever the address (the callers pass lines of a live
        // value anyway).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
