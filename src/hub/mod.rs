//! Fan-out: one encoded stream, many readers.
//!
//! Each stream is a fixed-size broadcast ring of `Arc<EncodedUnit>`: the encoder never waits for
//! a reader and nothing grows. A reader that falls behind the ring loses the oldest units
//! (`Lagged`); it then skips to the next keyframe and asks for one, so a slow viewer costs the
//! others nothing. A new reader also waits for a keyframe (SPS/PPS + IDR) and asks the encoder
//! for one; requests are coalesced and rate-limited by [`KeyframeGate`].

use crate::codec::EncodedUnit;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Units kept for readers: ~1 s of video at 30 fps. Bounded, allocated as units arrive.
const VIDEO_RING: usize = 32;
const AUDIO_RING: usize = 50;

pub struct Stream {
    tx: broadcast::Sender<Arc<EncodedUnit>>,
    keyframe_wanted: AtomicBool,
    /// A viewer just started reading: serve it on the next frame, past the rate limit (joins are
    /// rare; PLI storms are what the gate is for).
    join_wanted: AtomicBool,
    units: AtomicU64,
    keyframes: AtomicU64,
}

impl Stream {
    fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self {
            tx,
            keyframe_wanted: AtomicBool::new(false),
            join_wanted: AtomicBool::new(false),
            units: AtomicU64::new(0),
            keyframes: AtomicU64::new(0),
        }
    }

    /// Called by the encoder thread. Never blocks.
    pub fn publish(&self, unit: EncodedUnit) {
        self.units.fetch_add(1, Ordering::Relaxed);
        if unit.keyframe {
            self.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        // No receivers is fine: the unit is simply dropped.
        let _ = self.tx.send(Arc::new(unit));
    }

    pub fn subscribe(&self) -> Reader {
        self.join_wanted.store(true, Ordering::Relaxed);
        Reader { rx: self.tx.subscribe(), synced: false }
    }

    /// Asks the encoder for an IDR (new viewer, PLI/FIR, a reader that lagged).
    pub fn request_keyframe(&self) {
        self.keyframe_wanted.store(true, Ordering::Relaxed);
    }

    /// Takes a pending PLI/lag request (encoder side; goes through the gate).
    pub fn take_keyframe_request(&self) -> bool {
        self.keyframe_wanted.swap(false, Ordering::Relaxed)
    }

    /// Takes a pending join request (encoder side; served at once).
    pub fn take_join_request(&self) -> bool {
        self.join_wanted.swap(false, Ordering::Relaxed)
    }

    /// Restores a request the gate held back, so it is served on a later frame.
    pub fn defer_keyframe_request(&self) {
        self.keyframe_wanted.store(true, Ordering::Relaxed);
    }

    pub fn units_published(&self) -> u64 {
        self.units.load(Ordering::Relaxed)
    }

    pub fn keyframes_published(&self) -> u64 {
        self.keyframes.load(Ordering::Relaxed)
    }
}

/// One viewer's cursor into a stream.
pub struct Reader {
    rx: broadcast::Receiver<Arc<EncodedUnit>>,
    synced: bool,
}

pub enum Next {
    Unit(Arc<EncodedUnit>),
    /// The reader fell behind and skipped units; a keyframe has been requested.
    Skipped(u64),
    Closed,
}

impl Reader {
    /// The next unit this reader should send: nothing before the first keyframe, and after a gap
    /// nothing until the next keyframe (a decoder cannot use P-frames after a hole anyway).
    pub async fn next(&mut self, stream: &Stream) -> Next {
        loop {
            match self.rx.recv().await {
                Ok(unit) => {
                    if !self.synced {
                        if !unit.keyframe {
                            continue;
                        }
                        self.synced = true;
                    }
                    return Next::Unit(unit);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.synced = false;
                    stream.request_keyframe();
                    return Next::Skipped(n);
                }
                Err(broadcast::error::RecvError::Closed) => return Next::Closed,
            }
        }
    }
}

/// How many viewers want media: the capture and encode threads sleep while it is zero.
#[derive(Default)]
pub struct Demand {
    viewers: AtomicUsize,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Demand {
    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::SeqCst)
    }

    /// Registers a viewer for as long as the guard lives.
    pub fn join(self: &Arc<Self>) -> ViewerGuard {
        self.viewers.fetch_add(1, Ordering::SeqCst);
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
        ViewerGuard(Arc::clone(self))
    }

    /// Blocks (a capture/encode thread) until someone watches or `timeout` passes.
    pub fn wait_for_viewers(&self, timeout: Duration) -> bool {
        let g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.viewers() > 0 {
            return true;
        }
        let _ = self.changed.wait_timeout(g, timeout);
        self.viewers() > 0
    }
}

pub struct ViewerGuard(Arc<Demand>);

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Everything the sessions read from.
pub struct Hub {
    pub video: Stream,
    pub audio: Stream,
    pub demand: Arc<Demand>,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            video: Stream::new(VIDEO_RING),
            audio: Stream::new(AUDIO_RING),
            demand: Arc::new(Demand::default()),
        })
    }
}

/// Coalesces and rate-limits forced IDRs: many PLIs or joins within `min_interval` cost one IDR.
/// A held-back request is kept and served as soon as the interval has passed.
pub struct KeyframeGate {
    min_interval: Duration,
    last: Option<Instant>,
}

impl KeyframeGate {
    pub fn new(min_interval: Duration) -> Self {
        Self { min_interval, last: None }
    }

    /// `Some(true)`: force an IDR now. `Some(false)`: requested but too soon, keep it pending.
    /// `None`: nothing requested.
    pub fn decide(&mut self, requested: bool, now: Instant) -> Option<bool> {
        if !requested {
            return None;
        }
        match self.last {
            Some(t) if now.duration_since(t) < self.min_interval => Some(false),
            _ => {
                self.last = Some(now);
                Some(true)
            }
        }
    }

    /// A periodic or otherwise natural IDR also satisfies pending requests.
    pub fn saw_keyframe(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// Whether the next frame must be an IDR: a viewer joined (served at once) or a PLI/lag
    /// request the rate limit lets through (one it holds back stays pending on `stream`).
    pub fn take_request(&mut self, stream: &Stream, now: Instant) -> bool {
        let joined = stream.take_join_request();
        let force = match self.decide(stream.take_keyframe_request(), now) {
            Some(true) => true,
            Some(false) => {
                stream.defer_keyframe_request();
                joined
            }
            None => joined,
        };
        if joined {
            self.saw_keyframe(now);
        }
        force
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn unit(index: u64, keyframe: bool) -> EncodedUnit {
        EncodedUnit { payloads: vec![Bytes::from_static(b"x")], keyframe, capture_unix_us: index, index }
    }

    #[tokio::test]
    async fn new_reader_starts_at_a_keyframe_and_requests_one() {
        let s = Stream::new(8);
        let mut r = s.subscribe();
        assert!(s.take_join_request(), "joining asks for an IDR");
        assert!(!s.take_keyframe_request(), "…as a join, not through the PLI gate");
        s.publish(unit(1, false));
        s.publish(unit(2, false));
        s.publish(unit(3, true));
        s.publish(unit(4, false));
        let Next::Unit(u) = r.next(&s).await else { panic!() };
        assert_eq!(u.index, 3);
        let Next::Unit(u) = r.next(&s).await else { panic!() };
        assert_eq!(u.index, 4);
    }

    #[tokio::test]
    async fn slow_reader_skips_to_next_keyframe_without_blocking_publisher() {
        let s = Stream::new(4);
        let mut slow = s.subscribe();
        let mut fast = s.subscribe();
        s.take_join_request();
        s.publish(unit(1, true));
        let Next::Unit(u) = fast.next(&s).await else { panic!() };
        assert_eq!(u.index, 1);
        // the publisher goes on regardless of `slow`
        for i in 2..=20 {
            s.publish(unit(i, i == 19));
        }
        assert!(matches!(slow.next(&s).await, Next::Skipped(_)));
        assert!(s.take_keyframe_request(), "a lagging reader asks for an IDR");
        let Next::Unit(u) = slow.next(&s).await else { panic!() };
        assert_eq!(u.index, 19, "resumes at the next keyframe");
    }

    #[test]
    fn gate_coalesces_and_rate_limits() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::new(Duration::from_millis(200));
        assert_eq!(g.decide(false, t0), None);
        assert_eq!(g.decide(true, t0), Some(true));
        assert_eq!(g.decide(true, t0 + Duration::from_millis(50)), Some(false));
        assert_eq!(g.decide(true, t0 + Duration::from_millis(250)), Some(true));
        g.saw_keyframe(t0 + Duration::from_millis(300));
        assert_eq!(g.decide(true, t0 + Duration::from_millis(350)), Some(false));
    }

    #[test]
    fn demand_counts_viewers_while_guards_live() {
        let d = Arc::new(Demand::default());
        assert!(!d.wait_for_viewers(Duration::from_millis(1)));
        let a = d.join();
        let b = d.join();
        assert_eq!(d.viewers(), 2);
        drop(a);
        assert!(d.wait_for_viewers(Duration::from_millis(1)));
        drop(b);
        assert_eq!(d.viewers(), 0);
    }
}
