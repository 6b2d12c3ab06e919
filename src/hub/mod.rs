//! Fan-out: one encoded stream, many readers.
//!
//! Each stream is a fixed-size broadcast ring of `Arc<EncodedUnit>`: the encoder never waits for
//! a reader and nothing grows. A reader that falls behind the ring loses the oldest units
//! (`Lagged`); it then skips to the next keyframe and asks for one, so a slow viewer costs the
//! others nothing. A new reader also waits for a keyframe (SPS/PPS + IDR) and asks the encoder
//! for one; requests are coalesced and rate-limited by [`KeyframeGate`].

pub mod ladder;

use crate::codec::EncodedUnit;
use ladder::{Ladder, LadderConfig, LinkReport, Rung, Targets, ViewerStatus};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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
    /// Payload bytes published (what a reader of every unit sends, before RTP overhead).
    bytes: AtomicU64,
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
            bytes: AtomicU64::new(0),
        }
    }

    /// Called by the encoder thread. Never blocks.
    pub fn publish(&self, unit: EncodedUnit) {
        self.units.fetch_add(1, Ordering::Relaxed);
        let bytes: usize = unit.payloads.iter().map(|p| p.len()).sum();
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
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

    /// Viewers reading this stream now: an encoder whose stream nobody reads does not encode.
    pub fn readers(&self) -> usize {
        self.tx.receiver_count()
    }

    pub fn units_published(&self) -> u64 {
        self.units.load(Ordering::Relaxed)
    }

    pub fn bytes_published(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
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
    /// Units published and not yet read by this reader (how far behind live it is).
    pub fn backlog(&self) -> usize {
        self.rx.len()
    }

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

/// How many viewers want media: the capture and encode threads sleep while nobody does.
///
/// Two counts, because a parent listening at night (listen-only) wants the sound but not the
/// picture: `viewers` (anyone who wants media: the microphone runs) and `watchers` (those of
/// them who want video: the camera and the video encoder run). A listen-only viewer holds a
/// [`ViewerGuard`] and no [`WatcherGuard`].
#[derive(Default)]
pub struct Demand {
    viewers: AtomicUsize,
    watchers: AtomicUsize,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Demand {
    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::SeqCst)
    }

    /// Viewers who want video now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::SeqCst)
    }

    /// Registers a viewer for as long as the guard lives.
    pub fn join(self: &Arc<Self>) -> ViewerGuard {
        self.viewers.fetch_add(1, Ordering::SeqCst);
        self.notify();
        ViewerGuard(Arc::clone(self))
    }

    /// Registers a viewer's wish for video for as long as the guard lives.
    pub fn watch(self: &Arc<Self>) -> WatcherGuard {
        self.watchers.fetch_add(1, Ordering::SeqCst);
        self.notify();
        WatcherGuard(Arc::clone(self))
    }

    fn notify(&self) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
    }

    /// Blocks (the audio thread) until someone wants media or `timeout` passes.
    pub fn wait_for_viewers(&self, timeout: Duration) -> bool {
        self.wait(timeout, || self.viewers() > 0)
    }

    /// Blocks (the video capture thread) until someone wants video or `timeout` passes.
    pub fn wait_for_watchers(&self, timeout: Duration) -> bool {
        self.wait(timeout, || self.watchers() > 0)
    }

    fn wait(&self, timeout: Duration, wanted: impl Fn() -> bool) -> bool {
        let g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if wanted() {
            return true;
        }
        let _ = self.changed.wait_timeout(g, timeout);
        wanted()
    }
}

pub struct ViewerGuard(Arc<Demand>);

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct WatcherGuard(Arc<Demand>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Everything the sessions read from.
pub struct Hub {
    /// The main rung (the configured size).
    pub video: Stream,
    /// The low rung (half size) for viewers on weak links; encoded only while someone reads it.
    pub video_low: Stream,
    pub audio: Stream,
    pub demand: Arc<Demand>,
    pub rates: Rates,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Self::with_ladder(LadderConfig::new(true, 150_000, 2_500_000))
    }

    pub fn with_ladder(cfg: LadderConfig) -> Arc<Self> {
        Arc::new(Self {
            video: Stream::new(VIDEO_RING),
            video_low: Stream::new(VIDEO_RING),
            audio: Stream::new(AUDIO_RING),
            demand: Arc::new(Demand::default()),
            rates: Rates::new(cfg),
        })
    }

    pub fn video_rung(&self, rung: Rung) -> &Stream {
        match rung {
            Rung::Main => &self.video,
            Rung::Low => &self.video_low,
        }
    }
}

/// The ladder shared by the sessions (who report their viewers' links) and the encode thread
/// (which reads the targets every frame, lock-free).
pub struct Rates {
    ladder: Mutex<Ladder>,
    main_bps: AtomicU32,
    low_bps: AtomicU32,
    low_half_fps: AtomicBool,
}

impl Rates {
    fn new(cfg: LadderConfig) -> Self {
        let ladder = Ladder::new(cfg);
        let t = ladder.targets();
        Self {
            ladder: Mutex::new(ladder),
            main_bps: AtomicU32::new(t.main_bps),
            low_bps: AtomicU32::new(t.low_bps),
            low_half_fps: AtomicBool::new(t.low_half_fps),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Ladder) -> R) -> R {
        let mut l = self.ladder.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut l);
        let t = l.targets();
        self.main_bps.store(t.main_bps, Ordering::Relaxed);
        self.low_bps.store(t.low_bps, Ordering::Relaxed);
        self.low_half_fps.store(t.low_half_fps, Ordering::Relaxed);
        r
    }

    /// A session's latest estimate of its viewer's link → the rung it should read.
    pub fn report(&self, viewer: u64, report: LinkReport, now: Instant) -> Rung {
        self.with(|l| l.report(viewer, report, now))
    }

    pub fn leave(&self, viewer: u64) {
        self.with(|l| l.leave(viewer));
    }

    pub fn set_max_bps(&self, bps: u32) {
        self.with(|l| l.set_max_bps(bps));
    }

    pub fn set_low_available(&self, available: bool) {
        self.with(|l| l.set_low_available(available));
    }

    pub fn config(&self) -> LadderConfig {
        self.with(|l| l.config())
    }

    /// What the encoders aim for (read by the encode thread every frame).
    pub fn targets(&self) -> Targets {
        Targets {
            main_bps: self.main_bps.load(Ordering::Relaxed),
            low_bps: self.low_bps.load(Ordering::Relaxed),
            low_half_fps: self.low_half_fps.load(Ordering::Relaxed),
        }
    }

    pub fn viewers(&self) -> Vec<ViewerStatus> {
        self.with(|l| l.viewers())
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

    #[test]
    fn a_listener_is_a_viewer_but_not_a_watcher() {
        let d = Arc::new(Demand::default());
        let listener = d.join();
        assert!(d.wait_for_viewers(Duration::from_millis(1)));
        assert!(!d.wait_for_watchers(Duration::from_millis(1)), "listen-only must not start the camera");
        let watching = (d.join(), d.watch());
        assert_eq!((d.viewers(), d.watchers()), (2, 1));
        drop(watching);
        drop(listener);
        assert_eq!((d.viewers(), d.watchers()), (0, 0));
    }
}
