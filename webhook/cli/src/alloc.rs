//! The global allocator: mimalloc, entered through its plain `mi_malloc` family for the
//! word-aligned layouts that are nearly all of the server's allocations, with a small
//! cache per serving thread in front of it for blocks of up to [`CACHE_MAX`] bytes.
//!
//! `mimalloc::MiMalloc` calls `mi_malloc_aligned` for every allocation, whose alignment
//! checks cost about 13 instructions per allocation on top of `mi_malloc`; an admission
//! made some 1,450 when that was measured (callgrind: 19 k of 687 k instructions per
//! admission); parsing and deciding the GPU-worker review now make 296.
//!
//! The cache: at a steady 2,000 admissions a second the server idles between them and
//! what it touches arrives cold. mimalloc keeps a page's free blocks in a list threaded
//! through the blocks themselves, so each allocation first reads the block it hands out
//! (for the next one's address): a cache miss the allocation waits for, a few hundred per
//! admission, the largest single cost a profile at that rate showed. The cache keeps
//! freed blocks' addresses in arrays of its own, one per 16-byte size class, so handing
//! one out reads only the array; the block is first written by its new owner, which the
//! processor does not wait for. Every small block is allocated with its class's size,
//! so any freed block of a class serves any request of it.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::ptr;

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
/// serving thread empties its block cache into mimalloc, hands its empty pages back and
/// purges those whose delay has passed (with `--threads` above 1, the worker this task
/// runs on; the others purge as they work, and each keeps at most its cache's bound).
pub async fn return_freed_pages() {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        empty_cache();
        // SAFETY: collects the calling thread's heap; no pointer is passed.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

/// Blocks up to this size (and word alignment) go through the thread's cache.
pub const CACHE_MAX: usize = 512;
/// The cache's size classes: blocks of 16, 32, ... [`CACHE_MAX`] bytes.
const STEP: usize = 16;
const CLASSES: usize = CACHE_MAX / STEP;
/// Freed blocks kept per class: at most 64 × (16 + 32 + ... + 512) bytes, 528 KiB, held
/// by a thread between two hand-backs; far less in practice.
const DEPTH: usize = 64;

/// One thread's freed blocks by size class. Off until [`cache_this_thread`]: a thread
/// that never turns it on never puts a block in it, so it never holds one.
struct Cache {
    on: Cell<bool>,
    len: [Cell<u8>; CLASSES],
    blocks: [[Cell<*mut u8>; DEPTH]; CLASSES],
}

thread_local! {
    // Constant and without a destructor: reaching it is an offset from the thread pointer,
    // and the allocator never runs into a half-built or destroyed thread-local.
    static CACHE: Cache = const {
        Cache {
            on: Cell::new(false),
            len: [const { Cell::new(0) }; CLASSES],
            blocks: [const { [const { Cell::new(ptr::null_mut()) }; DEPTH] }; CLASSES],
        }
    };
}

impl Cache {
    /// A cached block of `class`, or null.
    #[inline]
    fn pop(&self, class: usize) -> *mut u8 {
        let (Some(len), Some(blocks)) = (self.len.get(class), self.blocks.get(class)) else {
            return ptr::null_mut();
        };
        let n = usize::from(len.get());
        match n.checked_sub(1).and_then(|top| blocks.get(top)) {
            Some(slot) => {
                len.set(len.get() - 1);
                slot.get()
            }
            None => ptr::null_mut(),
        }
    }

    /// Keep `block` of `class`; false when the cache is off or the class full.
    #[inline]
    fn push(&self, class: usize, block: *mut u8) -> bool {
        if !self.on.get() {
            return false;
        }
        let (Some(len), Some(blocks)) = (self.len.get(class), self.blocks.get(class)) else {
            return false;
        };
        let n = usize::from(len.get());
        match blocks.get(n) {
            Some(slot) => {
                slot.set(block);
                len.set(len.get() + 1);
                true
            }
            None => false,
        }
    }

    /// Give every cached block back to mimalloc.
    fn empty(&self) {
        for (len, blocks) in self.len.iter().zip(&self.blocks) {
            for slot in blocks.iter().take(usize::from(len.get())) {
                // SAFETY: a cached block is a live mimalloc block no one else holds.
                unsafe { libmimalloc_sys::mi_free(slot.get().cast()) };
            }
            len.set(0);
        }
    }
}

/// Turn the calling thread's block cache on: for the threads that serve admissions.
pub fn cache_this_thread() {
    let _ = CACHE.try_with(|c| c.on.set(true));
}

/// Turn the calling thread's block cache off and empty it: before the thread ends, so
/// that it leaves no block behind.
pub fn stop_caching() {
    let _ = CACHE.try_with(|c| {
        c.on.set(false);
        c.empty();
    });
}

/// Empty the calling thread's block cache into mimalloc, leaving it on.
pub fn empty_cache() {
    let _ = CACHE.try_with(Cache::empty);
}

/// The cache's class for `layout`, when it is one the cache serves.
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    (layout.align() <= WORD && size <= CACHE_MAX && size > 0).then(|| (size - 1) / STEP)
}

/// The size every block of `class` is allocated with.
#[inline]
fn class_size(class: usize) -> usize {
    (class + 1) * STEP
}

/// A block of `class`: from the cache, else from mimalloc at the class's size.
#[inline]
fn alloc_class(class: usize) -> *mut u8 {
    let cached = CACHE.try_with(|c| c.pop(class)).unwrap_or(ptr::null_mut());
    if !cached.is_null() {
        return cached;
    }
    // SAFETY: a non-zero size.
    unsafe { libmimalloc_sys::mi_malloc(class_size(class)).cast() }
}

/// Every mimalloc block is a whole number of machine words from a word-aligned start, so
/// `mi_malloc` memory is aligned to at least this much.
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: small word-aligned layouts get a block of their class's size, from the thread's
// cache or `mi_malloc`, and go back to the cache or `mi_free`; other layouts mimalloc's
// plain functions align well enough go to them; all others to `MiMalloc`, which honours
// any alignment. All come from the same heaps, so `mi_free` frees any of them.
unsafe impl GlobalAlloc for Mi {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(class) = class_of(layout) {
            return alloc_class(class);
        }
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
        if let Some(class) = class_of(layout) {
            let p = alloc_class(class);
            if !p.is_null() {
                // SAFETY: the block has room for its class, at least `layout.size()` bytes.
                unsafe { p.write_bytes(0, layout.size()) };
            }
            return p;
        }
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
        if let Some(class) = class_of(layout)
            && CACHE.try_with(|c| c.push(class, ptr)).unwrap_or(false)
        {
            return;
        }
        // SAFETY: `ptr` came from this allocator, that is from mimalloc.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `GlobalAlloc::realloc` promises `new_size` is valid with this alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (from, to) = (class_of(layout), class_of(new_layout));
        if from.is_some() || to.is_some() {
            // A cached block must have its class's size, which `mi_realloc` does not keep:
            // a block of the new size is allocated and the bytes copied.
            if from == to {
                // Its class's block has room for the new size too.
                return ptr;
            }
            // SAFETY: `new_layout` has a non-zero size; both blocks are valid for the
            // bytes copied, and `ptr` is freed with the layout it was allocated with.
            unsafe {
                let new = self.alloc(new_layout);
                if !new.is_null() {
                    ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                return new;
            }
        }
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

    /// The blocks the cache holds now, over all classes.
    fn cached() -> usize {
        CACHE.with(|c| c.len.iter().map(|l| usize::from(l.get())).sum())
    }

    #[test]
    fn the_cache_hands_back_what_was_freed_with_room_for_its_class() {
        cache_this_thread();
        for size in 1..=CACHE_MAX {
            let layout = Layout::from_size_align(size, 8).unwrap();
            let class = class_of(layout).unwrap();
            // SAFETY: non-zero sizes; every block is freed with its layout.
            unsafe {
                let p = Mi.alloc(layout);
                assert!(!p.is_null() && (p as usize).is_multiple_of(8));
                assert!(libmimalloc_sys::mi_usable_size(p.cast()) >= class_size(class));
                Mi.dealloc(p, layout);
                // Any size of the same class gets the block back.
                let other = Layout::from_size_align(class_size(class), 1).unwrap();
                assert_eq!(Mi.alloc(other), p, "size {size}");
                p.write_bytes(1, class_size(class));
                Mi.dealloc(p, other);
            }
        }
        assert!(cached() > 0);
        // A full class sends the rest to mimalloc; emptying leaves nothing behind.
        let layout = Layout::from_size_align(100, 8).unwrap();
        let blocks: Vec<*mut u8> = (0..DEPTH * 2)
            .map(|_| unsafe { Mi.alloc(layout) })
            .collect();
        for &b in &blocks {
            // SAFETY: allocated just above with `layout`.
            unsafe { Mi.dealloc(b, layout) };
        }
        assert_eq!(
            CACHE.with(|c| c.len[class_of(layout).unwrap()].get()),
            DEPTH as u8
        );
        empty_cache();
        assert_eq!(cached(), 0);
        stop_caching();
        // Off: freed blocks go straight back to mimalloc.
        // SAFETY: as above.
        unsafe { Mi.dealloc(Mi.alloc(layout), layout) };
        assert_eq!(cached(), 0);
    }

    #[test]
    fn reallocation_across_classes_keeps_the_bytes() {
        cache_this_thread();
        let mut size = 1;
        // SAFETY: each block is reallocated and freed with the layout it has.
        unsafe {
            let mut p = Mi.alloc(Layout::from_size_align(size, 8).unwrap());
            *p = 42;
            for next in [3, 16, 17, 200, 512, 513, 5000, 600, 511, 40, 1] {
                p = Mi.realloc(p, Layout::from_size_align(size, 8).unwrap(), next);
                assert!(!p.is_null() && *p == 42, "{size} -> {next}");
                // The whole new size is writable.
                p.add(1).write_bytes(9, next - 1);
                size = next;
            }
            Mi.dealloc(p, Layout::from_size_align(size, 8).unwrap());
        }
        stop_caching();
        assert_eq!(cached(), 0);
    }

    #[test]
    fn alignments_are_kept() {
        cache_this_thread();
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
        stop_caching();
    }
}
