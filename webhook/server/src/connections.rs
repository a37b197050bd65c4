//! The open connections, so that a full server makes room for a new one instead of
//! refusing it.
//!
//! The admission port is open to every pod (sidecars bootstrap on it), so a fixed number
//! of slots taken before `accept` let any pod hold them all with sockets that never send
//! a request, and with `failurePolicy: Fail` every Ray pod's admission then timed out. So
//! the server always accepts, and when it is full it closes the connection that has gone
//! longest without finishing a request, preferring one with no request in flight. The
//! API server's connections finish requests all the time; sockets held open do not, nor
//! do requests whose bodies trickle in. A closed connection's client that wants to go on
//! reconnects, and its new connection in turn makes room.

use crate::idle::Activity;
use prometheus::IntGauge;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The open connections, at most `max` of them besides those being closed to make room.
pub struct Table {
    max: usize,
    open: Mutex<Open>,
    /// Connections told to close to make room that have not ended yet.
    closing: AtomicUsize,
    /// Set to the connections open, those closing included.
    gauge: IntGauge,
}

#[derive(Default)]
struct Open {
    next: u64,
    by_id: HashMap<u64, Entry>,
}

struct Entry {
    activity: Activity,
    close: Arc<Notify>,
}

/// What became of a new connection.
pub enum Admitted {
    /// There was room.
    Room(Slot),
    /// Another connection was told to close to make room.
    MadeRoom(Slot),
    /// Full, and too many connections already closing to make room: close this one.
    Full,
}

impl Table {
    pub fn new(max: usize, gauge: IntGauge) -> Arc<Table> {
        Arc::new(Table {
            max: max.max(1),
            open: Mutex::new(Open::default()),
            closing: AtomicUsize::new(0),
            gauge,
        })
    }

    /// Take a slot for a connection just accepted, closing another to make room if needed.
    ///
    /// Connections being closed to make room still hold memory until they end (at most
    /// their grace period), so at most a quarter of `max` may be closing at once; past that
    /// the new connection is the one turned away.
    pub fn admit(self: &Arc<Table>) -> Admitted {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut made_room = false;
        if open.by_id.len() >= self.max {
            if self.closing.load(Ordering::Relaxed) >= self.max.div_ceil(4) {
                return Admitted::Full;
            }
            // No request in flight first, then the longest since a request last ended.
            let victim = open
                .by_id
                .iter()
                .max_by_key(|(_, e)| (e.activity.in_flight() == 0, e.activity.quiet_for()))
                .map(|(&id, _)| id);
            if let Some(entry) = victim.and_then(|id| open.by_id.remove(&id)) {
                self.closing.fetch_add(1, Ordering::Relaxed);
                entry.close.notify_one();
                made_room = true;
            }
        }
        let id = open.next;
        open.next += 1;
        let slot = Slot {
            table: self.clone(),
            id,
            activity: Activity::new(),
            close: Arc::new(Notify::new()),
        };
        open.by_id.insert(
            id,
            Entry {
                activity: slot.activity.clone(),
                close: slot.close.clone(),
            },
        );
        self.gauge
            .set((open.by_id.len() + self.closing.load(Ordering::Relaxed)) as i64);
        if made_room {
            Admitted::MadeRoom(slot)
        } else {
            Admitted::Room(slot)
        }
    }

    /// Connections open, those being closed to make room included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .len()
            + self.closing.load(Ordering::Relaxed)
    }
}

/// A connection's place in the table, given up when dropped.
pub struct Slot {
    table: Arc<Table>,
    id: u64,
    /// The connection's requests.
    pub activity: Activity,
    close: Arc<Notify>,
}

impl Slot {
    /// Resolves once the connection is told to close to make room for another.
    pub async fn told_to_close(&self) {
        self.close.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.by_id.remove(&self.id).is_none() {
            // It had been told to close to make room, and is now gone.
            self.table.closing.fetch_sub(1, Ordering::Relaxed);
        }
        self.table
            .gauge
            .set((open.by_id.len() + self.table.closing.load(Ordering::Relaxed)) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slot(a: Admitted) -> Slot {
        match a {
            Admitted::Room(s) | Admitted::MadeRoom(s) => s,
            Admitted::Full => panic!("full"),
        }
    }

    fn told(s: &Slot) -> bool {
        let f = s.told_to_close();
        tokio::pin!(f);
        let waker = std::task::Waker::noop();
        f.as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }

    use std::future::Future;

    #[test]
    fn a_full_table_closes_the_connection_quiet_longest() {
        let t = Table::new(3, IntGauge::new("g", "g").unwrap());
        let old = slot(t.admit());
        std::thread::sleep(Duration::from_millis(20));
        let busy_old = slot(t.admit());
        let _request = busy_old.activity.begin();
        std::thread::sleep(Duration::from_millis(20));
        let young = slot(t.admit());
        let new = t.admit();
        assert!(matches!(new, Admitted::MadeRoom(_)));
        // The oldest idle one goes, not the older one with a request in flight.
        assert!(told(&old));
        assert!(!told(&busy_old) && !told(&young));
        assert_eq!(t.len(), 4, "three open and one closing until it ends");
        assert_eq!(t.gauge.get(), 4);
        drop(old);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_request_that_ended_recently_keeps_a_connection() {
        let t = Table::new(2, IntGauge::new("g", "g").unwrap());
        let active = slot(t.admit());
        let idle = slot(t.admit());
        std::thread::sleep(Duration::from_millis(20));
        drop(active.activity.begin());
        let _new = slot(t.admit());
        assert!(told(&idle) && !told(&active));
    }

    #[test]
    fn with_every_connection_busy_the_one_quiet_longest_goes() {
        let t = Table::new(2, IntGauge::new("g", "g").unwrap());
        let a = slot(t.admit());
        let _ra = a.activity.begin();
        std::thread::sleep(Duration::from_millis(20));
        let b = slot(t.admit());
        let _rb = b.activity.begin();
        let _new = slot(t.admit());
        assert!(told(&a) && !told(&b));
    }

    #[test]
    fn at_most_a_quarter_closing_at_once() {
        let t = Table::new(4, IntGauge::new("g", "g").unwrap());
        let mut kept: Vec<Slot> = (0..4).map(|_| slot(t.admit())).collect();
        kept.push(slot(t.admit()));
        // One of four is closing: the next is turned away until it ends.
        assert!(matches!(t.admit(), Admitted::Full));
        let gone = kept.iter().position(told).expect("one told to close");
        kept.remove(gone);
        assert!(matches!(t.admit(), Admitted::MadeRoom(_)));
    }
}
