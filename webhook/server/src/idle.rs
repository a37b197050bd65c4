//! When a connection last had a request in flight, so idle connections can be closed.
//!
//! Idle means no request: bytes moving say nothing, since HTTP/2 keep-alive PINGs (the
//! server's own, every 30 s) move bytes on a connection nobody uses, and a client could
//! hold a connection slot for ever that way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A connection's requests: how many are in flight, and when the last one ended.
#[derive(Clone)]
pub struct Activity(Arc<Inner>);

struct Inner {
    start: Instant,
    /// Milliseconds from `start` to the end of the last request (or 0).
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub fn new() -> Activity {
        Activity(Arc::new(Inner {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }))
    }

    /// A request began; it ends when the guard is dropped (also when hyper drops the
    /// request's handler because the client went away).
    pub fn begin(&self) -> Request {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        Request(self.clone())
    }

    /// How long the connection has had no request in flight.
    pub fn idle_for(&self) -> Duration {
        if self.in_flight() > 0 {
            return Duration::ZERO;
        }
        self.quiet_for()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::Relaxed)
    }

    /// How long since a request last ended (or the connection began), requests in flight
    /// or not: a request whose body trickles in does not make its connection look used.
    pub fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed));
        self.0.start.elapsed().saturating_sub(last)
    }
}

/// A request in flight on a connection.
pub struct Request(Activity);

impl Drop for Request {
    fn drop(&mut self) {
        let a = &self.0.0;
        a.last_ms
            .store(a.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_with_no_request_in_flight() {
        let a = Activity::new();
        std::thread::sleep(Duration::from_millis(20));
        assert!(a.idle_for() >= Duration::from_millis(20));
        let r1 = a.begin();
        let r2 = a.begin();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(a.idle_for(), Duration::ZERO);
        drop(r1);
        assert_eq!(a.idle_for(), Duration::ZERO, "one still in flight");
        drop(r2);
        assert!(a.idle_for() < Duration::from_millis(15));
    }
}
