//! The checkpoint parser on arbitrary bytes: it never panics, what it accepts is written
//! back and read again unchanged, and the tracker can follow files with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rayshape_sidecar::checkpoint::Checkpoint;
use rayshape_sidecar::tracker::{Settings, Tracker};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Ok(mut ck) = Checkpoint::parse(data) else {
        return;
    };
    let bytes = serde_json::to_vec(&ck).expect("a parsed checkpoint serialises");
    assert_eq!(Checkpoint::parse(&bytes).as_ref(), Ok(&ck));
    // Scans with none of its files there: they are missed, then let go, and their unshipped
    // bytes counted, without panicking on whatever the checkpoint says.
    let settings = Settings {
        scan_interval: Duration::from_millis(100),
        max_open: 16,
    };
    let mut t = Tracker::new(
        std::path::Path::new("/nonexistent/rayshape-fuzz"),
        settings,
        &ck,
    );
    let now = Instant::now();
    for i in 0..4 {
        t.scan(&mut ck, now + Duration::from_millis(100 * i), i == 3);
    }
});
