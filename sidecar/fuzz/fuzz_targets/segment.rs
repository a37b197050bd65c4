//! The segment reader (`logs get`) on arbitrary bytes: it never panics, and every chunk it
//! accepts has a place under the output directory, never outside it.
//!
//! The first byte chooses how the rest is read: even, as a `.tar.zst` as stored; odd, as a
//! tar, compressed here first, so that the fuzzer spends its time in the tar reader and the
//! entry checks rather than in zstd's frame format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rayshape_sidecar::segment::{self, Reassembly};
use std::cell::RefCell;

thread_local! {
    /// One compression context for every run: making one each time would be most of the work.
    static COMPRESSOR: RefCell<zstd::bulk::Compressor<'static>> =
        RefCell::new(zstd::bulk::Compressor::new(1).expect("a zstd context"));
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 1 {
        COMPRESSOR.with(|c| {
            c.borrow_mut()
                .compress(rest)
                .expect("compressing in memory")
        })
    } else {
        rest.to_vec()
    };
    let Ok(chunks) = segment::read(&bytes) else {
        return;
    };
    let mut places = Reassembly::default();
    let Ok(placed) = places.place("fuzz", "session_1", &chunks, None) else {
        return;
    };
    for (chunk, place) in chunks.iter().zip(placed) {
        let place = place.expect("no filter: every chunk is placed");
        assert!(
            place
                .rel
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
            "{:?} could leave the output directory",
            place.rel
        );
        assert!(place.rel.starts_with("session_1/"));
        assert_eq!(place.end - place.start, chunk.data.len() as u64);
    }
});
