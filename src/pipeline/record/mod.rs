//! Recording: clips around events (pre-roll + event + post-roll) or continuous segments, as
//! fragmented MP4 files (H.264 + Opus) in one folder, with retention by size and age. See
//! [README.md](README.md).
//!
//! Two parts, so a slow disk never holds the media up:
//! - the **reader** (a tokio task) is a reader of the hub like any viewer (it holds the viewer
//!   and watcher guards while armed, so the pipeline encodes; it joins at a keyframe and a lag
//!   skips to the next one). It keeps the pre-roll in a [`PreRoll`] ring bounded in bytes and
//!   seconds, follows the triggers, and builds fragments in memory ([`ClipMux`]);
//! - the **writer** (a thread) appends each fragment with one `write` and `fdatasync`, deletes
//!   old recordings before it writes over a limit, and reports a full or read-only folder once
//!   as a `record_error` event. Between them a bounded channel: when the disk is slower than
//!   the fragments come, fragments are dropped (counted), the reader never waits.

pub mod fmp4;

use crate::codec::EncodedUnit;
use crate::config::{RecordConfig, RecordMode, RecordTrigger};
use crate::hub::{Hub, Next, Reader, ViewerGuard, WatcherGuard};
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// The pre-roll ring never holds more than this, whatever `pre_roll_s` says (30 s at 3 Mbit/s).
pub const PRE_ROLL_MAX_BYTES: usize = 12 << 20;
/// Fragments waiting for the disk; more are dropped.
const WRITE_QUEUE: usize = 8;
/// Triggers and events waiting to be handled; more are dropped (a trigger storm changes nothing).
const TRIGGER_QUEUE: usize = 32;
const EVENT_QUEUE: usize = 16;
/// After a disk error, the next clip is tried this much later.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Free space kept on the file system: 5 % of it, at most this.
const RESERVE_MAX: u64 = 64 << 20;
/// A clip longer than this without a single fragment written is a bug elsewhere; a fragment is
/// also cut when it grows past this many bytes (bounded memory with a huge `fragment_ms`).
const FRAGMENT_MAX_BYTES: usize = 8 << 20;

/// What the recorder was configured with.
#[derive(Debug, Clone)]
pub struct RecordSettings {
    pub mode: RecordMode,
    pub pre_roll: Duration,
    pub post_roll: Duration,
    pub max_clip: Duration,
    pub triggers: Vec<RecordTrigger>,
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_age: Option<Duration>,
    pub fragment: Duration,
    /// The configured picture size, used if the SPS cannot be read.
    pub size_hint: (u16, u16),
}

impl RecordSettings {
    pub fn from_config(c: &RecordConfig, dir: PathBuf, size_hint: (u32, u32)) -> Self {
        Self {
            mode: c.mode,
            pre_roll: Duration::from_secs(c.pre_roll_s.get() as u64),
            post_roll: Duration::from_secs(c.post_roll_s.get() as u64),
            max_clip: Duration::from_secs(c.max_clip_s.get() as u64),
            triggers: c.triggers.clone(),
            dir,
            max_bytes: c.max_bytes.0,
            max_age: (c.max_age_days.get() > 0).then(|| Duration::from_secs(c.max_age_days.get() as u64 * 86_400)),
            fragment: Duration::from_millis(c.fragment_ms.get() as u64),
            size_hint: (size_hint.0.min(u16::MAX as u32) as u16, size_hint.1.min(u16::MAX as u32) as u16),
        }
    }
}

/// An event's start or end, from the layer that sees the events (`service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    pub kind: RecordTrigger,
    pub active: bool,
}

impl Trigger {
    /// The recorder's reading of an event from the event log (`name`, its JSON): `motion`,
    /// `noise`, `cry` with `state` `start`/`end`. Anything else is not a trigger.
    pub fn from_event(name: &str, event: &Value) -> Option<Trigger> {
        let kind = match name {
            "motion" => RecordTrigger::Motion,
            "noise" => RecordTrigger::Noise,
            "cry" => RecordTrigger::Cry,
            _ => return None,
        };
        match event.get("state").and_then(Value::as_str)? {
            "start" => Some(Trigger { kind, active: true }),
            "end" => Some(Trigger { kind, active: false }),
            _ => None,
        }
    }
}

/// What the recorder tells the room (events stream, control channel, MQTT, webhook).
#[derive(Debug, Clone, PartialEq)]
pub enum RecordEvent {
    /// A clip was saved (or cut short by an error after some fragments).
    Saved { name: String, trigger: &'static str, start_ms: u64, duration_ms: u64, bytes: u64 },
    /// The folder cannot take recordings (full, read-only, missing…). Said once until a write
    /// succeeds again.
    Error { message: String, dir: String },
}

impl RecordEvent {
    pub fn name(&self) -> &'static str {
        match self {
            RecordEvent::Saved { .. } => "recording",
            RecordEvent::Error { .. } => "record_error",
        }
    }

    pub fn fields(&self) -> Value {
        match self {
            RecordEvent::Saved { name, trigger, start_ms, duration_ms, bytes } => {
                json!({"state": "saved", "name": name, "trigger": trigger, "start": start_ms, "duration_ms": duration_ms, "bytes": bytes})
            }
            RecordEvent::Error { message, dir } => json!({"message": message, "dir": dir}),
        }
    }
}

/// Counters for `GET /api/recordings`.
#[derive(Default)]
pub struct RecordStats {
    pub clips_saved: AtomicU64,
    pub fragments_written: AtomicU64,
    /// Fragments dropped because the disk was slower than the stream.
    pub fragments_dropped: AtomicU64,
    pub errors: AtomicU64,
    /// Units the reader lost to lag (skipped to the next keyframe).
    pub units_skipped: AtomicU64,
    pub recording: AtomicBool,
}

/// The running recorder.
pub struct Recorder {
    pub settings: RecordSettings,
    pub stats: Arc<RecordStats>,
    triggers: mpsc::Sender<Trigger>,
    events: Mutex<Option<mpsc::Receiver<RecordEvent>>>,
    /// The file being written (the API does not delete it).
    current: Arc<Mutex<Option<String>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// `true`: finish the clip, flush and close the file (service shutdown).
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(t) = self.task.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

impl Recorder {
    /// Starts the reader task (on the current tokio runtime) and the writer thread. Off: `None`.
    pub fn start(settings: RecordSettings, hub: Arc<Hub>) -> std::io::Result<Option<Arc<Recorder>>> {
        if settings.mode == RecordMode::Off {
            return Ok(None);
        }
        let stats = Arc::new(RecordStats::default());
        let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
        let (trigger_tx, trigger_rx) = mpsc::channel(TRIGGER_QUEUE);
        let (write_tx, write_rx) = std_mpsc::sync_channel(WRITE_QUEUE);
        let broken = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let writer = DiskWriter::new(settings.clone(), stats.clone(), event_tx, broken.clone(), current.clone());
        // Before the service says it is ready: a torn clip must never be listed or served.
        writer.repair();
        let writer = std::thread::Builder::new().name("record-writer".into()).spawn(move || writer.run(write_rx))?;
        let reader = ClipReader::new(settings.clone(), hub, stats.clone(), write_tx, broken);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(reader.run(trigger_rx, stop_rx));
        log::info!(
            "recording: {:?} into {} (pre-roll {} s, post-roll {} s, max {} s, ≤ {} bytes)",
            settings.mode,
            settings.dir.display(),
            settings.pre_roll.as_secs(),
            settings.post_roll.as_secs(),
            settings.max_clip.as_secs(),
            settings.max_bytes
        );
        Ok(Some(Arc::new(Recorder {
            settings,
            stats,
            triggers: trigger_tx,
            events: Mutex::new(Some(event_rx)),
            current,
            task: Mutex::new(Some(task)),
            writer: Mutex::new(Some(writer)),
            stop,
        })))
    }

    /// Service shutdown: the clip being recorded ends here — its last partial fragment is
    /// written and the file closed with its length — and the writer thread is waited for, at
    /// most `within` (a stuck disk must not keep the service from exiting; what was written
    /// before stays readable, and the next start trims a torn end).
    pub async fn stop(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task
            && tokio::time::timeout_at(deadline, t).await.is_err()
        {
            log::warn!("recording: the clip did not finish within {} ms of shutdown", within.as_millis());
            return;
        }
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = writer {
            let joined = tokio::task::spawn_blocking(move || w.join());
            if tokio::time::timeout_at(deadline, joined).await.is_err() {
                log::warn!("recording: the disk writer did not finish within {} ms of shutdown", within.as_millis());
            }
        }
    }

    /// An event start or end; never waits (a full queue drops it).
    pub fn trigger(&self, t: Trigger) {
        if self.settings.triggers.contains(&t.kind) {
            let _ = self.triggers.try_send(t);
        }
    }

    /// The recorder's events, taken once by whoever spreads them.
    pub fn take_events(&self) -> Option<mpsc::Receiver<RecordEvent>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Name of the file being written now.
    pub fn current(&self) -> Option<String> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The recordings, newest first (blocking file-system reads).
    pub fn list(&self) -> Vec<ClipInfo> {
        let current = self.current();
        let mut clips: Vec<ClipInfo> = recordings(&self.settings.dir)
            .into_iter()
            .map(|(name, bytes, _)| {
                let path = self.settings.dir.join(&name);
                let recording = current.as_deref() == Some(name.as_str());
                let (start_ms, trigger) = parse_name(&name).unwrap_or((0, "unknown"));
                ClipInfo { duration_ms: probe_duration_ms(&path).unwrap_or(0), name, start_ms, bytes, trigger, recording }
            })
            .collect();
        clips.sort_by(|a, b| b.name.cmp(&a.name));
        clips
    }

    /// The path of a recording by name, if the name is one the recorder makes and it exists.
    pub fn path_of(&self, name: &str) -> Option<PathBuf> {
        if !valid_name(name) {
            return None;
        }
        let p = self.settings.dir.join(name);
        p.is_file().then_some(p)
    }

    /// Deletes a recording. The one being written cannot be deleted (it would come back as a
    /// file without a header).
    pub fn delete(&self, name: &str) -> Result<(), DeleteError> {
        let path = self.path_of(name).ok_or(DeleteError::NotFound)?;
        if self.current().as_deref() == Some(name) {
            return Err(DeleteError::Recording);
        }
        fs::remove_file(&path).map_err(DeleteError::Io)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("no such recording")]
    NotFound,
    #[error("this recording is being written")]
    Recording,
    #[error("could not delete: {0}")]
    Io(std::io::Error),
}

/// One entry of `GET /api/recordings`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClipInfo {
    pub name: String,
    /// Unix ms of its first frame.
    #[serde(rename = "start")]
    pub start_ms: u64,
    pub duration_ms: u64,
    pub bytes: u64,
    pub trigger: &'static str,
    /// Being written now.
    pub recording: bool,
}

// ---- names --------------------------------------------------------------------------------------

const TRIGGER_NAMES: [&str; 4] = ["motion", "noise", "cry", "continuous"];

/// `20261202T121530123Z-motion.mp4`: the UTC start to the millisecond (sorts by time) and the trigger.
fn clip_name(start_ms: u64, trigger: &str) -> String {
    let (y, mo, d, h, mi, s) = civil(start_ms / 1000);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}{:03}Z-{trigger}.mp4", start_ms % 1000)
}

/// Only names the recorder makes: no path separators, no dots but the extension.
pub fn valid_name(name: &str) -> bool {
    parse_name(name).is_some()
}

fn parse_name(name: &str) -> Option<(u64, &'static str)> {
    let stem = name.strip_suffix(".mp4")?;
    let (stamp, trigger) = stem.split_once('-')?;
    let trigger = TRIGGER_NAMES.into_iter().find(|t| *t == trigger)?;
    let b = stamp.as_bytes();
    if b.len() != 19 || b[8] != b'T' || b[18] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = stamp.get(r)?;
        s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
    };
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, s, ms) = (digits(9..11)?, digits(11..13)?, digits(13..15)?, digits(15..18)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + mi * 60 + s;
    Some((secs * 1000 + ms, trigger))
}

/// Unix seconds → (year, month, day, hour, minute, second), UTC (H. Hinnant's civil_from_days).
fn civil(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The recordings in `dir`: (name, bytes, modified), oldest name first.
fn recordings(dir: &Path) -> Vec<(String, u64, SystemTime)> {
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<_> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let meta = e.metadata().ok()?;
            (valid_name(&name) && meta.is_file()).then(|| (name, meta.len(), meta.modified().unwrap_or(UNIX_EPOCH)))
        })
        .collect();
    v.sort();
    v
}

/// A recording's length: the header's when it was closed cleanly, else the end of the last
/// whole fragment's video run (a file cut by a power loss).
pub fn probe_duration_ms(path: &Path) -> Option<u64> {
    let f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut at = 0u64;
    let mut end_90k = 0u64;
    while at + 8 <= len {
        let mut h = [0u8; 8];
        f.read_exact_at(&mut h, at).ok()?;
        let (kind, size) = fmp4::box_at(&h, 0)?;
        if at + size as u64 > len {
            break;
        }
        if &kind == b"moov" || &kind == b"moof" {
            let mut b = vec![0u8; size.min(1 << 20)];
            f.read_exact_at(&mut b, at).ok()?;
            if &kind == b"moov" {
                // mvhd is the first child: 8 (moov) + 8 (header) + 4 (version/flags) + 8 (times) + 4 (scale).
                let d = u32::from_be_bytes(b.get(32..36)?.try_into().ok()?) as u64;
                if d > 0 {
                    return Some(d);
                }
            } else if let Some(end) = video_run_end(&b) {
                end_90k = end_90k.max(end);
            }
        }
        at += size as u64;
    }
    Some(end_90k / 90)
}

/// A `moof`'s video track: tfdt + the sum of its trun durations.
fn video_run_end(moof: &[u8]) -> Option<u64> {
    let mut at = 8;
    while let Some((kind, size)) = fmp4::box_at(moof, at) {
        if &kind == b"traf" {
            let traf = moof.get(at + 8..at + size)?;
            let (mut track, mut base, mut total) = (0u32, 0u64, 0u64);
            let mut i = 0;
            while let Some((k, s)) = fmp4::box_at(traf, i) {
                let b = traf.get(i..i + s)?;
                match &k {
                    b"tfhd" => track = u32::from_be_bytes(b.get(12..16)?.try_into().ok()?),
                    b"tfdt" => base = u64::from_be_bytes(b.get(12..20)?.try_into().ok()?),
                    b"trun" => {
                        let n = u32::from_be_bytes(b.get(12..16)?.try_into().ok()?) as usize;
                        for k in 0..n {
                            let o = 20 + k * 12;
                            total += u32::from_be_bytes(b.get(o..o + 4)?.try_into().ok()?) as u64;
                        }
                    }
                    _ => {}
                }
                i += s;
            }
            if track == fmp4::VIDEO_TRACK {
                return Some(base + total);
            }
        }
        at += size;
    }
    None
}

// ---- pre-roll -----------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Video,
    Audio,
}

/// The last `pre_roll` of encoded units (video and audio in arrival order), always starting at a
/// video keyframe, bounded by time and [`PRE_ROLL_MAX_BYTES`]. Whole GOPs leave from the front:
/// the oldest GOP goes once the next one alone still covers `pre_roll`, so the ring covers at
/// least `pre_roll` (when the keyframe interval allows) and at most `pre_roll` + one GOP.
pub struct PreRoll {
    units: VecDeque<(Kind, Arc<EncodedUnit>)>,
    bytes: usize,
    keep_us: u64,
    max_bytes: usize,
}

fn unit_bytes(u: &EncodedUnit) -> usize {
    u.payloads.iter().map(Bytes::len).sum()
}

impl PreRoll {
    pub fn new(keep: Duration, max_bytes: usize) -> Self {
        Self { units: VecDeque::new(), bytes: 0, keep_us: keep.as_micros() as u64, max_bytes }
    }

    /// Adds a unit. `false`: the ring had to drop its only GOP for bytes (ask for a keyframe).
    fn push(&mut self, kind: Kind, u: Arc<EncodedUnit>) -> bool {
        if self.units.is_empty() && !(kind == Kind::Video && u.keyframe) {
            return true; // nothing is playable before the first keyframe
        }
        let now = u.capture_unix_us;
        self.bytes += unit_bytes(&u);
        self.units.push_back((kind, u));
        // Time: drop the oldest GOP while the second one starts early enough on its own.
        while let Some(second) = self.second_keyframe() {
            let t = self.units[second].1.capture_unix_us;
            if now.saturating_sub(t) < self.keep_us {
                break;
            }
            self.drop_front(second);
        }
        // Bytes: drop whole GOPs from the front; the last one too if it alone is too big.
        let mut ok = true;
        while self.bytes > self.max_bytes {
            match self.second_keyframe() {
                Some(second) => self.drop_front(second),
                None => {
                    self.clear();
                    ok = false;
                }
            }
        }
        ok
    }

    fn second_keyframe(&self) -> Option<usize> {
        self.units.iter().enumerate().skip(1).find(|(_, (k, u))| *k == Kind::Video && u.keyframe).map(|(i, _)| i)
    }

    fn drop_front(&mut self, n: usize) {
        for (_, u) in self.units.drain(..n) {
            self.bytes -= unit_bytes(&u);
        }
    }

    fn clear(&mut self) {
        self.units.clear();
        self.bytes = 0;
    }

    fn take(&mut self) -> VecDeque<(Kind, Arc<EncodedUnit>)> {
        self.bytes = 0;
        std::mem::take(&mut self.units)
    }

    /// Capture time of the first unit (a keyframe) and bytes held.
    pub fn span(&self) -> Option<(u64, usize)> {
        self.units.front().map(|(_, u)| (u.capture_unix_us, self.bytes))
    }
}

// ---- muxing one clip ----------------------------------------------------------------------------

/// One clip being built: units in, fragments (bytes) out. Pure: no I/O.
pub struct ClipMux {
    pub name: String,
    pub trigger: &'static str,
    start_us: u64,
    tracks: fmp4::Tracks,
    sequence: u32,
    fragment_us: u64,
    video: Run,
    audio: Run,
    last_us: u64,
}

/// One track's samples of the fragment being built; the newest sample waits for the next one
/// (its duration is the gap between them).
struct Run {
    run: fmp4::Run,
    pending: Option<(u64, Vec<u8>, bool)>,
    last_duration: u32,
    default_duration: u32,
    scale: u64,
}

impl Run {
    fn new(track_id: u32, scale: u32, default_duration: u32) -> Self {
        Self {
            run: fmp4::Run { track_id, ..Default::default() },
            pending: None,
            last_duration: default_duration,
            default_duration,
            scale: scale as u64,
        }
    }

    /// `at`: time since the clip's start in µs.
    fn push(&mut self, at_us: u64, sample: Vec<u8>, sync: bool) {
        let t = at_us * self.scale / 1_000_000;
        if let Some((pt, data, psync)) = self.pending.take() {
            let d = t.saturating_sub(pt).clamp(1, u32::MAX as u64) as u32;
            self.add(pt, data, psync, d);
        }
        self.pending = Some((t, sample, sync));
    }

    fn add(&mut self, t: u64, data: Vec<u8>, sync: bool, duration: u32) {
        if self.run.samples.is_empty() {
            self.run.base_time = t;
        }
        self.run.samples.push(fmp4::Sample { duration, size: data.len() as u32, sync });
        self.run.data.extend_from_slice(&data);
        self.last_duration = duration;
    }

    /// The pending sample too, with the previous duration (end of the clip).
    fn flush_pending(&mut self) {
        if let Some((t, data, sync)) = self.pending.take() {
            let d = if self.last_duration > 0 { self.last_duration } else { self.default_duration };
            self.add(t, data, sync, d);
        }
    }

    fn take(&mut self) -> fmp4::Run {
        let id = self.run.track_id;
        std::mem::replace(&mut self.run, fmp4::Run { track_id: id, ..Default::default() })
    }
}

impl ClipMux {
    /// A clip that starts with `keyframe` (its SPS/PPS describe the file).
    pub fn new(keyframe: &EncodedUnit, trigger: &'static str, fragment: Duration, size_hint: (u16, u16)) -> Option<(ClipMux, Vec<u8>, fmp4::DurationOffsets)> {
        let nals = fmp4::depacketize(&keyframe.payloads);
        let sps = nals.iter().find(|n| n[0] & 0x1f == 7)?.clone();
        let pps = nals.iter().find(|n| n[0] & 0x1f == 8)?.clone();
        let (width, height) = fmp4::sps_dimensions(&sps).unwrap_or(size_hint);
        let tracks = fmp4::Tracks { width, height, sps, pps, audio_channels: Some(1) };
        let (init, offsets) = fmp4::init_segment(&tracks);
        let start_us = keyframe.capture_unix_us;
        let mut mux = ClipMux {
            name: clip_name(start_us / 1000, trigger),
            trigger,
            start_us,
            tracks,
            sequence: 0,
            fragment_us: fragment.as_micros() as u64,
            video: Run::new(fmp4::VIDEO_TRACK, fmp4::VIDEO_TIMESCALE, 3000),
            audio: Run::new(fmp4::AUDIO_TRACK, fmp4::AUDIO_TIMESCALE, 960),
            last_us: start_us,
        };
        mux.push_video_nals(keyframe.capture_unix_us, &nals, true);
        Some((mux, init, offsets))
    }

    pub fn start_ms(&self) -> u64 {
        self.start_us / 1000
    }

    /// How long the clip is so far.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.last_us.saturating_sub(self.start_us))
    }

    /// Whether a keyframe carries parameter sets other than the file's (a new size: a new file).
    pub fn same_parameters(&self, keyframe: &EncodedUnit) -> bool {
        let nals = fmp4::depacketize(&keyframe.payloads);
        let sps = nals.iter().find(|n| n[0] & 0x1f == 7);
        let pps = nals.iter().find(|n| n[0] & 0x1f == 8);
        sps.is_none_or(|s| *s == self.tracks.sps) && pps.is_none_or(|p| *p == self.tracks.pps)
    }

    /// A video unit; returns a fragment when one is complete.
    pub fn push_video(&mut self, u: &EncodedUnit) -> Option<Vec<u8>> {
        if u.capture_unix_us < self.start_us {
            return None;
        }
        let nals = fmp4::depacketize(&u.payloads);
        // A fragment ends before a new sample once it spans `fragment_ms` (or grew too big).
        let due = match self.video.pending {
            Some((t, _, _)) => {
                let spanned_us = t.saturating_sub(self.video.run.base_time) * 1_000_000 / fmp4::VIDEO_TIMESCALE as u64;
                (spanned_us >= self.fragment_us && !self.video.run.samples.is_empty())
                    || self.video.run.data.len() + self.audio.run.data.len() > FRAGMENT_MAX_BYTES
            }
            None => false,
        };
        let out = if due { self.cut(false) } else { None };
        self.push_video_nals(u.capture_unix_us, &nals, u.keyframe);
        out
    }

    fn push_video_nals(&mut self, at_us: u64, nals: &[Vec<u8>], keyframe: bool) {
        // Parameter sets live in avcC; access unit delimiters and SEI are not needed.
        let keep: Vec<&[u8]> = nals.iter().filter(|n| matches!(n[0] & 0x1f, 1..=5)).map(Vec::as_slice).collect();
        if keep.is_empty() {
            return;
        }
        let mut sample = Vec::with_capacity(keep.iter().map(|n| n.len() + 4).sum());
        fmp4::length_prefixed(&keep, &mut sample);
        self.video.push(at_us - self.start_us, sample, keyframe);
        self.last_us = self.last_us.max(at_us);
    }

    /// An Opus packet (one per unit).
    pub fn push_audio(&mut self, u: &EncodedUnit) {
        if u.capture_unix_us < self.start_us {
            return;
        }
        let data: Vec<u8> = u.payloads.iter().flat_map(|p| p.iter().copied()).collect();
        if !data.is_empty() {
            self.audio.push(u.capture_unix_us - self.start_us, data, true);
        }
    }

    /// The samples so far as one fragment. `last`: the pending samples too (end of the clip).
    fn cut(&mut self, last: bool) -> Option<Vec<u8>> {
        // Otherwise each track's newest sample waits for its duration in the next fragment.
        if last {
            self.video.flush_pending();
            self.audio.flush_pending();
        }
        let runs = [self.video.take(), self.audio.take()];
        if runs.iter().all(|r| r.samples.is_empty()) {
            return None;
        }
        self.sequence += 1;
        Some(fmp4::fragment(self.sequence, &runs))
    }

    /// The last fragment; the clip's length in ms.
    pub fn finish(mut self) -> (Option<Vec<u8>>, u64) {
        let f = self.cut(true);
        (f, self.duration().as_millis() as u64)
    }
}

// ---- the reader ---------------------------------------------------------------------------------

enum ToWriter {
    Open { name: String, init: Vec<u8>, offsets: fmp4::DurationOffsets, trigger: &'static str, start_ms: u64 },
    Fragment(Vec<u8>),
    Close { duration_ms: u64 },
}

struct ClipReader {
    s: RecordSettings,
    hub: Arc<Hub>,
    stats: Arc<RecordStats>,
    to_writer: std_mpsc::SyncSender<ToWriter>,
    /// Set by the writer when a write failed: the clip ends, a new one is tried later.
    broken: Arc<AtomicBool>,
    ring: PreRoll,
    clip: Option<ClipMux>,
    /// A clip is wanted but waits for a keyframe.
    waiting: Option<&'static str>,
    active: HashSet<RecordTrigger>,
    /// Events mode: when the post-roll of the last ended trigger is over.
    stop_at: Option<Instant>,
    retry_at: Option<Instant>,
    /// The clip reached `max_clip`: the next keyframe starts the next one.
    rotate: bool,
    /// The writer's queue was full while this file was written: its fragments stop (a file
    /// with a hole would play badly); the next clip starts anew.
    dropped: bool,
}

impl ClipReader {
    fn new(s: RecordSettings, hub: Arc<Hub>, stats: Arc<RecordStats>, to_writer: std_mpsc::SyncSender<ToWriter>, broken: Arc<AtomicBool>) -> Self {
        let ring = PreRoll::new(s.pre_roll, PRE_ROLL_MAX_BYTES);
        Self { s, hub, stats, to_writer, broken, ring, clip: None, waiting: None, active: HashSet::new(), stop_at: None, retry_at: None, rotate: false, dropped: false }
    }

    fn continuous(&self) -> bool {
        self.s.mode == RecordMode::Continuous
    }

    /// Whether the encoder must run: always for continuous and for a pre-roll; otherwise while a
    /// clip is wanted.
    fn wants_media(&self) -> bool {
        self.continuous() || !self.s.pre_roll.is_zero() || self.clip.is_some() || self.waiting.is_some() || !self.active.is_empty()
    }

    async fn run(mut self, mut triggers: mpsc::Receiver<Trigger>, mut stop: tokio::sync::watch::Receiver<bool>) {
        // Held only while media is wanted: the guards make the pipeline capture and encode.
        let mut guards: Option<(ViewerGuard, WatcherGuard)> = None;
        let mut video: Option<Reader> = None;
        let mut audio: Option<Reader> = None;
        let hub = self.hub.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        if self.continuous() {
            self.waiting = Some("continuous");
        }
        loop {
            if self.wants_media() && guards.is_none() {
                guards = Some((hub.demand.join(), hub.demand.watch()));
                video = Some(hub.video.subscribe());
                audio = Some(hub.audio.subscribe());
            } else if !self.wants_media() && guards.is_some() {
                (guards, video, audio) = (None, None, None);
                self.ring.clear();
            }
            tokio::select! {
                t = triggers.recv() => match t {
                    Some(t) => self.on_trigger(t),
                    None => break,
                },
                _ = stop.changed() => break,
                n = async { video.as_mut().expect("guarded").next(&hub.video).await }, if video.is_some() => match n {
                    Next::Unit(u) => self.on_unit(Kind::Video, u),
                    Next::Skipped(n) => self.on_video_lag(n),
                    Next::Closed => break,
                },
                n = async { audio.as_mut().expect("guarded").next(&hub.audio).await }, if audio.is_some() => match n {
                    Next::Unit(u) => self.on_unit(Kind::Audio, u),
                    Next::Skipped(n) => {
                        self.stats.units_skipped.fetch_add(n, Ordering::Relaxed);
                    }
                    Next::Closed => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        if let Some(clip) = self.clip.take() {
            self.finish(clip);
        }
    }

    /// Lost video units: this file cannot go on without a hole; the next keyframe starts the
    /// next one.
    fn on_video_lag(&mut self, n: u64) {
        self.stats.units_skipped.fetch_add(n, Ordering::Relaxed);
        self.ring.clear();
        if let Some(clip) = self.clip.take() {
            log::warn!("recording: fell {n} video units behind; {} ends here", clip.name);
            if self.still_wanted() {
                self.waiting = Some(clip.trigger);
            }
            self.finish(clip);
        }
    }

    fn on_trigger(&mut self, t: Trigger) {
        if self.continuous() {
            return;
        }
        if t.active {
            self.active.insert(t.kind);
            self.stop_at = None;
            if self.clip.is_none() && self.waiting.is_none() {
                // The pre-roll starts at a keyframe: the clip starts now, from it. Without one
                // (no pre-roll, or just armed) it starts at the next keyframe, asked for now.
                if self.ring.span().is_some() && self.retry_at.is_none_or(|r| Instant::now() >= r) {
                    self.start_clip(t.kind.as_str(), None);
                } else {
                    self.waiting = Some(t.kind.as_str());
                    self.hub.video.request_keyframe();
                }
            }
        } else {
            self.active.remove(&t.kind);
            if self.active.is_empty() {
                self.stop_at = Some(Instant::now() + self.s.post_roll);
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if self.broken.swap(false, Ordering::Relaxed) {
            if let Some(clip) = self.clip.take() {
                // The writer already gave up on this file; nothing more is sent for it.
                self.stats.recording.store(false, Ordering::Relaxed);
                if self.still_wanted() {
                    self.waiting = Some(clip.trigger);
                }
            }
            self.retry_at = Some(now + RETRY_AFTER);
        }
        if self.dropped {
            // The file ends at its last queued fragment (the rest would follow a hole).
            if let Some(clip) = self.clip.take() {
                if self.still_wanted() {
                    self.waiting = Some(clip.trigger);
                }
                self.finish(clip);
                self.retry_at = Some(now + Duration::from_secs(1));
            }
            self.dropped = false;
        }
        if self.stop_at.is_some_and(|t| now >= t) {
            self.stop_at = None;
            self.waiting = None;
            if let Some(clip) = self.clip.take() {
                self.finish(clip);
            }
        }
        if let Some(clip) = &self.clip
            && clip.duration() >= self.s.max_clip
            && !self.rotate
        {
            self.rotate = true;
            self.hub.video.request_keyframe();
        }
    }

    fn on_unit(&mut self, kind: Kind, u: Arc<EncodedUnit>) {
        let keyframe = kind == Kind::Video && u.keyframe;
        if keyframe {
            if let Some(clip) = &self.clip
                && (self.rotate || !clip.same_parameters(&u))
            {
                let clip = self.clip.take().expect("checked");
                self.rotate = false;
                let wanted = self.still_wanted();
                let trigger = clip.trigger;
                self.finish(clip);
                if wanted {
                    self.waiting = Some(trigger);
                }
            }
            if self.clip.is_none() && self.waiting.is_some() && self.retry_at.is_none_or(|t| Instant::now() >= t) {
                self.retry_at = None;
                let trigger = self.waiting.take().expect("checked");
                self.start_clip(trigger, Some(&u));
                return;
            }
        }
        match (&mut self.clip, kind) {
            (Some(clip), Kind::Video) => {
                if let Some(f) = clip.push_video(&u) {
                    self.send_fragment(f);
                }
            }
            (Some(clip), Kind::Audio) => clip.push_audio(&u),
            (None, _) if !self.s.pre_roll.is_zero() => {
                if !self.ring.push(kind, u) {
                    self.hub.video.request_keyframe();
                }
            }
            (None, _) => {}
        }
    }

    /// Whether a clip should go on (or a new one start) after this one ends.
    fn still_wanted(&self) -> bool {
        self.continuous() || !self.active.is_empty() || self.stop_at.is_some()
    }

    /// A clip from the pre-roll (which starts at a keyframe), `keyframe` (just arrived) last.
    fn start_clip(&mut self, trigger: &'static str, keyframe: Option<&Arc<EncodedUnit>>) {
        if let Some(k) = keyframe {
            self.ring.push(Kind::Video, k.clone());
        }
        let mut units = self.ring.take();
        let Some((_, first)) = units.pop_front() else { return };
        let Some((mut clip, init, offsets)) = ClipMux::new(&first, trigger, self.s.fragment, self.s.size_hint) else {
            log::warn!("recording: a keyframe without SPS/PPS; waiting for the next");
            self.waiting = Some(trigger);
            return;
        };
        self.dropped = false;
        let open = ToWriter::Open { name: clip.name.clone(), init, offsets, trigger, start_ms: clip.start_ms() };
        if self.to_writer.try_send(open).is_err() {
            self.stats.fragments_dropped.fetch_add(1, Ordering::Relaxed);
            self.waiting = Some(trigger);
            return;
        }
        self.stats.recording.store(true, Ordering::Relaxed);
        for (kind, u) in units {
            let f = match kind {
                Kind::Video => clip.push_video(&u),
                Kind::Audio => {
                    clip.push_audio(&u);
                    None
                }
            };
                if let Some(f) = f {
                self.send(f);
            }
        }
        self.clip = Some(clip);
    }

    fn send_fragment(&mut self, f: Vec<u8>) {
        self.send(f);
    }

    fn send(&mut self, f: Vec<u8>) {
        if self.dropped {
            self.stats.fragments_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.to_writer.try_send(ToWriter::Fragment(f)).is_err() {
            self.stats.fragments_dropped.fetch_add(1, Ordering::Relaxed);
            log::warn!("recording: the disk is slower than the stream; this clip stops here, the next starts at a keyframe");
            self.dropped = true;
        }
    }

    fn finish(&mut self, clip: ClipMux) {
        self.stats.recording.store(false, Ordering::Relaxed);
        let (last, duration_ms) = clip.finish();
        if let Some(f) = last {
            self.send(f);
        }
        // If the queue is full the close is lost: the writer closes the file at the next open
        // anyway, with no duration in the header (readers then sum the fragments).
        let _ = self.to_writer.try_send(ToWriter::Close { duration_ms });
    }
}

// ---- the writer ---------------------------------------------------------------------------------

struct OpenFile {
    name: String,
    file: File,
    /// Bytes of whole boxes written (a failed write is cut back to this).
    good: u64,
    offsets: fmp4::DurationOffsets,
    trigger: &'static str,
    start_ms: u64,
}

struct DiskWriter {
    s: RecordSettings,
    stats: Arc<RecordStats>,
    events: mpsc::Sender<RecordEvent>,
    broken: Arc<AtomicBool>,
    current: Arc<Mutex<Option<String>>>,
    file: Option<OpenFile>,
    /// A `record_error` was reported and no write has succeeded since.
    failing: bool,
    last_sweep: Option<Instant>,
    /// Bytes in the folder as of the last listing plus what was written since.
    total: u64,
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("not enough free space in {path} ({free} bytes free, {reserve} kept free) and no older recording to delete")]
    Full { path: String, free: u64, reserve: u64 },
}

impl DiskWriter {
    fn new(s: RecordSettings, stats: Arc<RecordStats>, events: mpsc::Sender<RecordEvent>, broken: Arc<AtomicBool>, current: Arc<Mutex<Option<String>>>) -> Self {
        Self { s, stats, events, broken, current, file: None, failing: false, last_sweep: None, total: 0 }
    }

    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WriteError {
        let path = path.display().to_string();
        move |source| WriteError::Io { what, path, source }
    }

    fn run(mut self, rx: std_mpsc::Receiver<ToWriter>) {
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(ToWriter::Open { name, init, offsets, trigger, start_ms }) => {
                    self.close(None);
                    let r = self.open(&name, &init, offsets, trigger, start_ms);
                    self.result(r);
                }
                Ok(ToWriter::Fragment(f)) => {
                    if self.file.is_some() {
                        let r = self.append(&f);
                        self.result(r);
                    }
                }
                Ok(ToWriter::Close { duration_ms }) => self.close(Some(duration_ms)),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    if self.last_sweep.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        let _ = self.sweep(0, true);
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.close(None);
    }

    /// Files a crash left behind: cut back to their last whole fragment; one without any is deleted.
    fn repair(&self) {
        for (name, len, _) in recordings(&self.s.dir) {
            let path = self.s.dir.join(&name);
            let Ok(f) = OpenOptions::new().read(true).write(true).open(&path) else { continue };
            let good = fmp4::complete_prefix(len, |at, buf| f.read_exact_at(buf, at).is_ok());
            let has_fragment = probe_duration_ms(&path).is_some_and(|d| d > 0);
            if !has_fragment {
                log::info!("recording: {name} has no whole fragment; deleted");
                let _ = fs::remove_file(&path);
            } else if good < len {
                log::info!("recording: {name} ended inside a fragment (power loss?); cut to its last whole one ({good} of {len} bytes)");
                let _ = f.set_len(good).and_then(|_| f.sync_data());
            }
        }
    }

    fn result(&mut self, r: Result<(), WriteError>) {
        match r {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    log::info!("recording: writing to {} again", self.s.dir.display());
                }
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                if let Some(f) = self.file.take() {
                    // Keep what was whole: cut the failed write off; an empty clip goes.
                    let path = self.s.dir.join(&f.name);
                    if f.file.set_len(f.good).is_err() || probe_duration_ms(&path).unwrap_or(0) == 0 {
                        let _ = fs::remove_file(&path);
                    }
                }
                self.set_current(None);
                self.broken.store(true, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    log::warn!("recording: {e}; recordings stop until it can write again");
                    let _ = self.events.try_send(RecordEvent::Error { message: e.to_string(), dir: self.s.dir.display().to_string() });
                } else {
                    log::debug!("recording: still failing: {e}");
                }
            }
        }
    }

    fn set_current(&self, name: Option<String>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = name;
    }

    fn open(&mut self, name: &str, init: &[u8], offsets: fmp4::DurationOffsets, trigger: &'static str, start_ms: u64) -> Result<(), WriteError> {
        let dir = self.s.dir.clone();
        fs::create_dir_all(&dir).map_err(Self::io("cannot create", &dir))?;
        self.sweep(init.len() as u64, true)?;
        let path = dir.join(name);
        let mut file = OpenOptions::new().write(true).read(true).create_new(true).open(&path).map_err(Self::io("cannot create", &path))?;
        self.set_current(Some(name.to_string()));
        let r = file.write_all(init).and_then(|_| file.sync_data()).map_err(Self::io("cannot write", &path));
        // The new name must survive a power cut too.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        self.file = Some(OpenFile { name: name.to_string(), file, good: 0, offsets, trigger, start_ms });
        r?;
        if let Some(f) = self.file.as_mut() {
            f.good = init.len() as u64;
        }
        self.total += init.len() as u64;
        Ok(())
    }

    /// One fragment: room made first, then one write and fdatasync.
    fn append(&mut self, fragment: &[u8]) -> Result<(), WriteError> {
        // The folder is listed only when a limit is near: per fragment, a sum and one statvfs.
        let incoming = fragment.len() as u64;
        let (free, reserve) = free_space(&self.s.dir);
        if self.total + incoming > self.s.max_bytes || free < reserve + incoming {
            self.sweep(incoming, false)?;
        }
        let f = self.file.as_mut().expect("checked by the caller");
        let path = self.s.dir.join(&f.name);
        f.file.write_all(fragment).and_then(|_| f.file.sync_data()).map_err(Self::io("cannot write", &path))?;
        f.good += incoming;
        self.total += incoming;
        self.stats.fragments_written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Ends the file: the durations go into its header (a reader need not scan the fragments).
    fn close(&mut self, duration_ms: Option<u64>) {
        let Some(f) = self.file.take() else { return };
        self.set_current(None);
        // Closed without the muxer's length (shutdown, a new clip pushing in): the fragments
        // written say how long it is.
        let duration_ms = duration_ms.or_else(|| probe_duration_ms(&self.s.dir.join(&f.name))).unwrap_or(0).min(u32::MAX as u64);
        if duration_ms > 0 {
            let d = (duration_ms as u32).to_be_bytes();
            let _ = f.file.write_all_at(&d, f.offsets.mvhd as u64).and_then(|_| f.file.write_all_at(&d, f.offsets.mehd as u64)).and_then(|_| f.file.sync_data());
        }
        self.stats.clips_saved.fetch_add(1, Ordering::Relaxed);
        let _ = self.events.try_send(RecordEvent::Saved { name: f.name.clone(), trigger: f.trigger, start_ms: f.start_ms, duration_ms, bytes: f.good });
        log::info!("recording: saved {} ({} ms, {} bytes)", f.name, duration_ms, f.good);
    }

    /// Retention: recordings older than `max_age` go; then the oldest go while the folder plus
    /// `incoming` would pass `max_bytes` or the file system's free space would fall under its
    /// reserve. The file being written is never deleted.
    /// `by_age`: also the age rule (at each new file and once a minute; not per fragment).
    fn sweep(&mut self, incoming: u64, by_age: bool) -> Result<(), WriteError> {
        let now = SystemTime::now();
        let current = self.file.as_ref().map(|f| f.name.clone());
        let mut files = recordings(&self.s.dir);
        if by_age {
            self.last_sweep = Some(Instant::now());
            if let Some(max_age) = self.s.max_age {
                files.retain(|(name, _, modified)| {
                    let old = now.duration_since(*modified).unwrap_or_default() > max_age && current.as_deref() != Some(name.as_str());
                    if old {
                        log::info!("recording: {name} is older than max_age_days; deleted");
                        let _ = fs::remove_file(self.s.dir.join(name));
                    }
                    !old
                });
            }
        }
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let mut candidates = files.into_iter().filter(|(n, _, _)| current.as_deref() != Some(n.as_str()));
        loop {
            let (free, reserve) = free_space(&self.s.dir);
            let over_size = total + incoming > self.s.max_bytes;
            let low_space = free < reserve + incoming;
            if !over_size && !low_space {
                self.total = total;
                return Ok(());
            }
            match candidates.next() {
                Some((name, bytes, _)) => {
                    log::info!("recording: deleted {name} ({bytes} bytes) to stay under {}", if over_size { "max_bytes" } else { "the free-space reserve" });
                    if fs::remove_file(self.s.dir.join(&name)).is_ok() {
                        total -= bytes;
                    }
                }
                None if low_space => return Err(WriteError::Full { path: self.s.dir.display().to_string(), free, reserve }),
                // Only the current file is left and it alone passes max_bytes: end it here.
                None => return Err(WriteError::Full { path: self.s.dir.display().to_string(), free, reserve }),
            }
        }
    }
}

/// (free bytes for us, bytes to keep free) of the file system holding `dir`.
fn free_space(dir: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return (u64::MAX, 0) };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed struct statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return (u64::MAX, 0); // unknown: the write itself will say
    }
    let frsize = st.f_frsize as u64;
    let size = st.f_blocks as u64 * frsize;
    (st.f_bavail as u64 * frsize, (size / 20).min(RESERVE_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(kind_video: bool, keyframe: bool, at_ms: u64, bytes: usize) -> Arc<EncodedUnit> {
        let payload = if kind_video {
            let mut p = vec![if keyframe { 0x65 } else { 0x41 }];
            p.resize(bytes.max(1), 7);
            p
        } else {
            vec![0xfc; bytes.max(1)]
        };
        Arc::new(EncodedUnit { payloads: vec![Bytes::from(payload)], keyframe, capture_unix_us: at_ms * 1000, index: at_ms })
    }

    #[test]
    fn names_round_trip_and_nothing_else_passes() {
        let n = clip_name(1_764_677_730_123, "motion");
        assert_eq!(n, "20251202T121530123Z-motion.mp4");
        assert_eq!(parse_name(&n), Some((1_764_677_730_123, "motion")));
        assert_eq!(parse_name("19700101T000000000Z-continuous.mp4"), Some((0, "continuous")));
        for bad in ["../20251202T121530123Z-motion.mp4", "20251202T121530123Z-motion.mp4/", "20251202T121530123Z-x.mp4",
                    "20251302T121530123Z-motion.mp4", "2025120xT121530123Z-motion.mp4", ".mp4", "", "a/b.mp4",
                    "20251202T121530123Z-motion.mp4.part", "%2e%2e", "20251202T12153012Z-motion.mp4"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn pre_roll_starts_at_a_keyframe_and_covers_the_time() {
        let mut r = PreRoll::new(Duration::from_secs(3), 1 << 20);
        assert!(r.push(Kind::Audio, unit(false, false, 0, 10)));
        assert!(r.push(Kind::Video, unit(true, false, 0, 10)));
        assert!(r.span().is_none(), "nothing before the first keyframe");
        // Keyframes every 2 s, 10 fps, audio every 20 ms… coarser here: 100 ms.
        for ms in (0..10_000).step_by(100) {
            r.push(Kind::Video, unit(true, ms % 2000 == 0, ms, 100));
            r.push(Kind::Audio, unit(false, false, ms + 50, 10));
        }
        let (start, _) = r.span().unwrap();
        // Newest is 9.95 s; it keeps ≥ 3 s, starting at a keyframe: 6 s (not 8: only 1.95 s).
        assert_eq!(start, 6_000_000);
        assert!(r.units.front().unwrap().1.keyframe);
    }

    #[test]
    fn pre_roll_is_bounded_in_bytes() {
        let mut r = PreRoll::new(Duration::from_secs(30), 5_000);
        let mut refused = false;
        for ms in (0..10_000).step_by(100) {
            refused |= !r.push(Kind::Video, unit(true, ms % 1000 == 0, ms, 400));
            assert!(r.bytes <= 5_000, "{} bytes at {ms}", r.bytes);
        }
        assert!(!refused, "whole GOPs (4000 bytes) fit");
        assert!(r.units.front().unwrap().1.keyframe);
        // A GOP bigger than the bound empties the ring and says so (a keyframe is asked for).
        let mut r = PreRoll::new(Duration::from_secs(30), 1_000);
        r.push(Kind::Video, unit(true, true, 0, 400));
        r.push(Kind::Video, unit(true, false, 100, 400));
        assert!(!r.push(Kind::Video, unit(true, false, 200, 400)));
        assert_eq!((r.units.len(), r.bytes), (0, 0));
    }

    fn keyframe_with_parameter_sets(at_ms: u64) -> Arc<EncodedUnit> {
        use crate::capture::testsrc::TestPattern;
        use crate::capture::VideoFrame;
        use crate::codec::h264::{H264Encoder, H264Params};
        let mut enc = H264Encoder::new(H264Params { width: 320, height: 240, fps: 30, bitrate_bps: 300_000, keyframe_interval_frames: 60 }).unwrap();
        let mut f = VideoFrame::new(320, 240);
        TestPattern::new(320, 240, 30).render(&mut f, 0, 0);
        let mut u = enc.encode(&f, true).unwrap().expect("a frame");
        u.capture_unix_us = at_ms * 1000;
        Arc::new(u)
    }

    #[test]
    fn a_clip_cuts_fragments_by_time_with_matching_durations() {
        let (mut clip, init, _) = ClipMux::new(&keyframe_with_parameter_sets(1000), "motion", Duration::from_millis(500), (0, 0)).unwrap();
        assert_eq!(init.len(), fmp4::box_at(&init, 0).unwrap().1 + fmp4::box_at(&init, fmp4::box_at(&init, 0).unwrap().1).unwrap().1);
        let mut fragments = vec![];
        for i in 1..60u64 {
            let ms = 1000 + i * 33;
            clip.push_audio(&unit(false, false, ms - 10, 20));
            if let Some(f) = clip.push_video(&unit(true, false, ms, 50)) {
                fragments.push(f);
            }
        }
        let (last, duration_ms) = clip.finish();
        fragments.extend(last);
        assert_eq!(duration_ms, 59 * 33);
        assert!(fragments.len() >= 3, "{} fragments of ~0.5 s in ~2 s", fragments.len());
        // The video runs tile time: each fragment's tfdt is the previous one's end.
        let mut end = 0;
        for (i, f) in fragments.iter().enumerate() {
            let moof_len = fmp4::box_at(f, 0).unwrap().1;
            let e = video_run_end(&f[..moof_len]).unwrap();
            let traf_start = {
                // tfdt of the video traf is at a fixed place: moof(8) mfhd(16) traf(8) tfhd(16) tfdt header(12)
                u64::from_be_bytes(f[8 + 16 + 8 + 16 + 12..8 + 16 + 8 + 16 + 20].try_into().unwrap())
            };
            assert_eq!(traf_start, end, "fragment {i} starts where the last ended");
            end = e;
        }
        assert_eq!(end, (59 * 33 + 33) * 90, "the last sample keeps the previous duration");
    }

    /// A clip torn by a power cut is cut back before `start` returns (before the service says it
    /// is ready): the API must never list or serve the torn end. CI once saw the repair lose the
    /// race with the first request when it ran on the writer thread.
    #[tokio::test]
    async fn a_torn_clip_is_repaired_before_start_returns() {
        let dir = std::env::temp_dir().join(format!("peercam-record-repair-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let tracks = fmp4::Tracks { width: 64, height: 64, sps: vec![0x67, 0x42, 0xc0, 0x1f, 1, 2], pps: vec![0x68, 1], audio_channels: None };
        let (mut data, _) = fmp4::init_segment(&tracks);
        let mut whole = 0;
        for seq in 1..=3u32 {
            let run = fmp4::Run {
                track_id: 1,
                base_time: (seq as u64 - 1) * 90_000,
                samples: vec![fmp4::Sample { duration: 90_000, size: 500, sync: true }],
                data: vec![0; 500],
            };
            data.extend(fmp4::fragment(seq, &[run]));
            if seq == 2 {
                whole = data.len();
            }
        }
        let name = clip_name(1_764_677_730_123, "motion");
        fs::write(dir.join(&name), &data[..data.len() - 100]).unwrap();
        let mut cfg = RecordConfig::default();
        cfg.mode = RecordMode::Events;
        let settings = RecordSettings::from_config(&cfg, dir.clone(), (64, 64));
        let rec = Recorder::start(settings, Hub::new()).unwrap().unwrap();
        assert_eq!(fs::metadata(dir.join(&name)).unwrap().len(), whole as u64, "cut to the end of fragment 2");
        assert_eq!(probe_duration_ms(&dir.join(&name)), Some(2000));
        drop(rec);
        let _ = fs::remove_dir_all(&dir);
    }
}
