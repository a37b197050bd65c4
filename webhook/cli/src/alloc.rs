//! The global allocator: mimalloc, entered through its plain `mi_malloc` family for the
//! word-aligned layouts that are nearly all of the server's allocations.
//!
//! `mimalloc::MiMalloc` calls `mi_malloc_aligned` for every allocation, whose alignment
//! checks cost about 13 instructions per allocation on top of `mi_malloc`; an admission
//! makes some 1,450 (callgrind: 19 k of 687 k instructions per admission).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// mimalloc, with `mi_malloc` for layouts aligned to 8 bytes or less.
pub struct Mi;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v2 and v3 alike; v3 is built).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long a freed page stays resident before mimalloc returns it to the system.
///
/// At once (0), which an earlier measurement chose for idle memory, cost two or three page
/// faults per admission at saturation: a page emptied by one admission was returned and
/// faulted back in by the next, 15% of the CPU per admission, less at 2,000 per second
/// (BENCHMARKS.md). A tenth of a second keeps the pages a steady load reuses.
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Set mimalloc's purge delay to [`PURGE_DELAY_MS`].
pub fn set_purge_delay() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options, which it reads atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// Return what a burst of admissions freed once it is over. mimalloc purges a delayed page
/// only when it next allocates or frees, which an idle server does not: without this,
/// the pages of the last burst stayed resident (1 MiB more idle). Twice a second, the
/// serving thread hands its empty pages back and purges those whose delay has passed
/// (with `--threads` above 1, the worker this task runs on; the others purge as they work).
pub async fn return_freed_pages() {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: collects the calling thread's heap; no pointer is passed.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

/// Every mimalloc block is a whole number of machine words from a word-aligned start, so
/// `mi_malloc` memory is aligned to at least this much.
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: layouts mimalloc's plain functions align well enough go to them; all others to
// `MiMalloc`, which honours any alignment. Both allocate from the same heaps, so `mi_free`
// (which `MiMalloc::dealloc` calls) frees either.
unsafe impl GlobalAlloc for Mi {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: `layout` has a non-zero size, as `GlobalAlloc::alloc` requires.
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: passed on as received.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: as in `alloc`.
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: passed on as received.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from mimalloc.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: `ptr` came from mimalloc; the new block keeps word alignment.
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: passed on as received.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_is_the_option_set() {
        // mimalloc v3's default purge delay is 1,000 ms: reading it proves the index names it.
        // SAFETY: reads and sets mimalloc options.
        unsafe {
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            }
            set_purge_delay();
            assert_eq!(
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                PURGE_DELAY_MS
            );
        }
    }

    #[test]
    fn alignments_are_kept() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 3, 8, 24, 40, 100, 5000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; every block is freed with its layout.
                unsafe {
                    let p = Mi.alloc(layout);
                    assert!(
                        !p.is_null() && (p as usize).is_multiple_of(align),
                        "{layout:?}"
                    );
                    p.write_bytes(7, size);
                    let q = Mi.realloc(p, layout, size * 3);
                    assert!(
                        !q.is_null() && (q as usize).is_multiple_of(align),
                        "{layout:?}"
                    );
                    assert!((0..size).all(|i| *q.add(i) == 7));
                    Mi.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = Mi.alloc_zeroed(layout);
                    assert!(!z.is_null() && (z as usize).is_multiple_of(align));
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    Mi.dealloc(z, layout);
                }
            }
        }
    }
}
