//! The event log: every event the room broadcasts on control channels (viewers, talker,
//! settings, camera, chat, and the sound analysis's `sound_level`, `noise`, `cry`), numbered,
//! for the transports that are not a control channel — Server-Sent Events (`http`, `GET
//! /api/events`), MQTT and the webhook (`notify`). The JSON text is the control channel's, made
//! once per event.
//!
//! Bounded on every side: the log keeps the last [`LOG_EVENTS`] events for replay
//! (`Last-Event-ID`); `sound_level` readings get an id but are not kept (a level from before a
//! reconnect is stale, and at four a second they would push the alerts out of the log); the live
//! feed is a broadcast ring of [`LIVE_EVENTS`] (a reader that falls behind skips, it never holds
//! the room up); and at most `max_subscribers` outside readers (SSE clients) at once.

use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

pub const LOG_EVENTS: usize = 256;
pub const LIVE_EVENTS: usize = 256;
pub const MAX_SUBSCRIBERS: usize = 16;
/// Events that are live only (not replayed).
const TRANSIENT: &[&str] = &["sound_level"];

#[derive(Debug)]
pub struct Logged {
    pub id: u64,
    pub name: &'static str,
    /// The JSON object, as on the control channel.
    pub text: Arc<str>,
}

struct Inner {
    next_id: u64,
    ring: VecDeque<Arc<Logged>>,
    /// The highest id that left the ring (a reconnect from before it missed something).
    evicted_upto: u64,
}

pub struct EventLog {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<Logged>>,
    subscribers: AtomicUsize,
    max_subscribers: usize,
}

/// One reader: what it missed (oldest first), then the live feed.
pub struct Subscription {
    pub backlog: Vec<Arc<Logged>>,
    /// Some of what it missed is no longer in the log.
    pub gap: bool,
    pub live: broadcast::Receiver<Arc<Logged>>,
    /// The reader's place under `max_subscribers`, given back when dropped.
    pub place: Place,
}

pub struct Place(#[allow(dead_code)] Option<Guard>);

struct Guard(Arc<EventLog>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many event subscribers ({0} at once)")]
pub struct TooMany(pub usize);

impl EventLog {
    pub fn new(max_subscribers: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner { next_id: 1, ring: VecDeque::with_capacity(LOG_EVENTS), evicted_upto: 0 }),
            live: broadcast::channel(LIVE_EVENTS).0,
            subscribers: AtomicUsize::new(0),
            max_subscribers,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers and records an event; returns its id.
    pub fn publish(&self, name: &'static str, json: &Value) -> u64 {
        let text: Arc<str> = json.to_string().into();
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let logged = Arc::new(Logged { id, name, text });
        if !TRANSIENT.contains(&name) {
            if inner.ring.len() == LOG_EVENTS {
                if let Some(old) = inner.ring.pop_front() {
                    inner.evicted_upto = old.id;
                }
            }
            inner.ring.push_back(logged.clone());
        }
        // Sent under the lock: a subscriber made meanwhile sees each event once, in the backlog
        // or live.
        let _ = self.live.send(logged);
        id
    }

    /// The id the next event will get minus one (what a fresh reader has "seen").
    pub fn last_id(&self) -> u64 {
        self.lock().next_id - 1
    }

    /// An outside reader (counted against `max_subscribers`); `after`: the last id it saw.
    pub fn subscribe(self: &Arc<Self>, after: Option<u64>) -> Result<Subscription, TooMany> {
        let n = self.subscribers.fetch_add(1, Ordering::SeqCst);
        let guard = Guard(Arc::clone(self));
        if n >= self.max_subscribers {
            return Err(TooMany(self.max_subscribers));
        }
        let mut s = self.subscribe_internal(after);
        s.place = Place(Some(guard));
        Ok(s)
    }

    /// A reader inside the device (MQTT, webhook): not counted.
    pub fn subscribe_internal(&self, after: Option<u64>) -> Subscription {
        let inner = self.lock();
        let live = self.live.subscribe();
        let (backlog, gap) = match after {
            Some(after) => {
                // An id from the future (another boot of the device): replay nothing rather
                // than guess.
                let after = after.min(inner.next_id - 1);
                (inner.ring.iter().filter(|e| e.id > after).cloned().collect(), after < inner.evicted_upto)
            }
            None => (Vec::new(), false),
        };
        Subscription { backlog, gap, live, place: Place(None) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replays_what_a_reader_missed_and_only_that() {
        let log = EventLog::new(2);
        let a = log.publish("noise", &json!({"event": "noise"}));
        let _level = log.publish("sound_level", &json!({"event": "sound_level"}));
        let b = log.publish("cry", &json!({"event": "cry"}));
        let s = log.subscribe(Some(a)).unwrap();
        assert_eq!(s.backlog.iter().map(|e| e.id).collect::<Vec<_>>(), vec![b], "sound_level is not replayed");
        assert!(!s.gap);
        let all = log.subscribe(Some(0)).unwrap();
        assert_eq!(all.backlog.len(), 2);
        assert!(matches!(log.subscribe(None), Err(TooMany(2))), "bounded");
        drop(s);
        let mut fresh = log.subscribe(None).unwrap();
        assert!(fresh.backlog.is_empty());
        let c = log.publish("viewer_joined", &json!({}));
        assert_eq!(fresh.live.try_recv().unwrap().id, c);
    }

    #[test]
    fn the_log_is_bounded_and_says_when_a_reader_missed_too_much() {
        let log = EventLog::new(1);
        for _ in 0..LOG_EVENTS + 10 {
            log.publish("noise", &json!({}));
        }
        let s = log.subscribe_internal(Some(5));
        assert_eq!(s.backlog.len(), LOG_EVENTS);
        assert!(s.gap);
        assert!(!log.subscribe_internal(Some(20)).gap);
        assert!(log.subscribe_internal(Some(u64::MAX)).backlog.is_empty(), "an id from another boot");
    }
}
