//! The speaker thread: plays the talker's voice while someone talks, and a lullaby or white
//! noise (`super::lullaby`) while one is on — mixed, the lullaby ducked under the voice.
//!
//! This is only the driver that ties the layers together: every 20 ms it takes one frame from
//! the jitter buffer (`super::jitter`), decodes it or conceals a lost one
//! (`codec::opus::OpusDecoder`) and hands it to the ALSA playback device
//! (`capture::alsa::AlsaSpeaker`: fade, volume, resampling, sample format, underruns). The
//! device is opened when someone starts talking or a lullaby starts, and closed when neither
//! plays, so the sound card is free (and silent) the rest of the time. The thread is paced by the clock as well as by
//! the device, so it also keeps time on PCMs that never block (alsa-lib's `file` plugin on
//! `null`, used by the tests).

use super::jitter::{JitterBuffer, JitterStats, Pop};
use super::lullaby::{self, Lullaby};
use crate::capture::alsa::speaker::Fader;
use crate::capture::alsa::AlsaSpeaker;
use crate::codec::opus::OpusDecoder;
use bytes::Bytes;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const FRAME: usize = 960;
const TICK: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Output {
    pub device: String,
    pub rate: u32,
    pub channels: u32,
    pub format: &'static str,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct SpeakerStatus {
    pub device: String,
    pub volume_percent: u32,
    pub playing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
    /// Why the speaker could not be opened last time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub frames_written: u64,
    pub underruns: u64,
    pub packets_received: u64,
    pub packets_lost: u64,
    pub packets_late: u64,
    pub jitter_target_ms: u64,
    pub jitter_ms: f64,
    /// The lullaby playing, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lullaby: Option<lullaby::Status>,
}

struct Shared {
    jitter: Mutex<JitterBuffer>,
    /// Someone talks (the voice is played); false: the talk part is idle.
    talking: AtomicBool,
    lullaby: Mutex<Option<Lullaby>>,
    /// Why the last lullaby stopped on its own (a file that failed), for the room to tell.
    lullaby_ended: Mutex<Option<LullabyEnd>>,
    /// The thread runs (device open). Changed only under `life`, so a new talk or lullaby never
    /// hands itself to a thread that has just decided to exit.
    alive: AtomicBool,
    life: Mutex<()>,
    frames_written: AtomicU64,
    underruns: AtomicU64,
    last_jitter: Mutex<JitterStats>,
    output: Mutex<Option<Output>>,
    problem: Mutex<Option<String>>,
}

/// How a lullaby ended without a stop request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LullabyEnd {
    Timer,
    Failed(String),
}

pub struct Speaker {
    device: String,
    volume: f32,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    epoch: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Speaker {
    /// `device` is an ALSA playback PCM name; `volume_percent` scales the talker's voice.
    pub fn new(device: &str, volume_percent: u32) -> Arc<Self> {
        Arc::new(Self {
            device: device.to_string(),
            volume: volume_percent as f32 / 100.0,
            shared: Arc::new(Shared {
                jitter: Mutex::new(JitterBuffer::new()),
                talking: AtomicBool::new(false),
                lullaby: Mutex::new(None),
                lullaby_ended: Mutex::new(None),
                alive: AtomicBool::new(false),
                life: Mutex::new(()),
                frames_written: AtomicU64::new(0),
                underruns: AtomicU64::new(0),
                last_jitter: Mutex::new(JitterStats::default()),
                output: Mutex::new(None),
                problem: Mutex::new(None),
            }),
            thread: Mutex::new(None),
            epoch: Instant::now(),
        })
    }

    /// Someone's voice is being played.
    pub fn is_playing(&self) -> bool {
        self.shared.talking.load(Ordering::Relaxed)
    }

    /// Starts playing a talker's voice (silence until packets arrive), opening the device unless
    /// a lullaby has it open already. Blocking (opens the PCM): call it off the async runtime.
    pub fn start(&self) -> Result<Output, String> {
        let result = self.run(|shared| {
            lock(&shared.jitter).reset();
            shared.talking.store(true, Ordering::SeqCst);
        });
        if result.is_err() {
            self.shared.talking.store(false, Ordering::SeqCst);
        }
        result
    }

    /// Plays `l` (replacing a lullaby that plays), opening the device unless a talker has it.
    /// Blocking, like [`Speaker::start`].
    pub fn play_lullaby(&self, l: Lullaby) -> Result<Output, String> {
        *lock(&self.shared.lullaby_ended) = None;
        let result = self.run(move |shared| *lock(&shared.lullaby) = Some(l));
        if result.is_err() {
            *lock(&self.shared.lullaby) = None;
        }
        result
    }

    /// Fades the lullaby out (the thread closes the device if nobody talks). False if none played.
    pub fn stop_lullaby(&self) -> bool {
        match lock(&self.shared.lullaby).as_mut() {
            Some(l) => {
                l.stop(Instant::now());
                true
            }
            None => false,
        }
    }

    pub fn lullaby(&self) -> Option<lullaby::Status> {
        lock(&self.shared.lullaby).as_ref().map(|l| l.status())
    }

    /// How the last lullaby ended by itself (taken: reported once).
    pub fn take_lullaby_end(&self) -> Option<LullabyEnd> {
        lock(&self.shared.lullaby_ended).take()
    }

    /// Gives the thread something to play (`demand`, under the life lock) and starts it if it
    /// is not running; the device's output format, or why it cannot open.
    fn run(&self, demand: impl FnOnce(&Shared)) -> Result<Output, String> {
        let life = lock(&self.shared.life);
        demand(&self.shared);
        if self.shared.alive.load(Ordering::SeqCst) {
            return lock(&self.shared.output).clone().ok_or_else(|| "the speaker is still opening".to_string());
        }
        // A thread that decided to exit has released the life lock: wait for it to close the device.
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
        self.shared.alive.store(true, Ordering::SeqCst);
        drop(life);
        let (tx, rx) = mpsc::channel();
        let shared = Arc::clone(&self.shared);
        let (device, volume) = (self.device.clone(), self.volume);
        let handle = std::thread::Builder::new()
            .name("speaker".into())
            .spawn(move || play(&device, volume, &shared, tx))
            .map_err(|e| {
                self.shared.alive.store(false, Ordering::SeqCst);
                format!("cannot start the speaker thread: {e}")
            })?;
        *lock(&self.thread) = Some(handle);
        let result = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| Err(format!("ALSA playback device {} did not open within 5 s", self.device)));
        match &result {
            Ok(o) => {
                *lock(&self.shared.output) = Some(o.clone());
                *lock(&self.shared.problem) = None;
            }
            Err(e) => {
                *lock(&self.shared.problem) = Some(e.clone());
            }
        }
        result
    }

    /// The talker stopped: its voice fades out (the device closes unless a lullaby plays;
    /// returns at once, the thread finishes by itself).
    pub fn stop(&self) {
        self.shared.talking.store(false, Ordering::SeqCst);
    }

    /// One RTP packet of the talker's Opus.
    pub fn push(&self, seq: u16, rtp_ts: u32, payload: Bytes) {
        if !self.is_playing() {
            return;
        }
        let now_us = self.epoch.elapsed().as_micros() as i64;
        lock(&self.shared.jitter).push(seq, rtp_ts, payload, now_us);
    }

    pub fn status(&self) -> SpeakerStatus {
        let j = *lock(&self.shared.last_jitter);
        SpeakerStatus {
            device: self.device.clone(),
            volume_percent: (self.volume * 100.0).round() as u32,
            playing: self.is_playing(),
            output: lock(&self.shared.output).clone(),
            problem: lock(&self.shared.problem).clone(),
            frames_written: self.shared.frames_written.load(Ordering::Relaxed),
            underruns: self.shared.underruns.load(Ordering::Relaxed),
            packets_received: j.received,
            packets_lost: j.lost,
            packets_late: j.late,
            jitter_target_ms: j.target_frames as u64 * 20,
            jitter_ms: (j.jitter_us as f64 / 100.0).round() / 10.0,
            lullaby: self.lullaby(),
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.stop();
        *lock(&self.shared.lullaby) = None;
    }
}

fn play(name: &str, volume: f32, shared: &Shared, opened: mpsc::Sender<Result<Output, String>>) {
    let setup = AlsaSpeaker::open(name).and_then(|(dev, o)| Ok((OpusDecoder::new()?, dev, o)));
    let (mut decoder, mut dev, o) = match setup {
        Ok(s) => s,
        Err(e) => {
            log::warn!("talk-back: {e}");
            shared.alive.store(false, Ordering::SeqCst);
            let _ = opened.send(Err(e));
            return;
        }
    };
    let output = Output { device: name.to_string(), rate: o.rate, channels: o.channels, format: o.format.name() };
    log::info!("talk-back: speaker {name} open ({} Hz, {} ch, {})", o.rate, o.channels, o.format.name());
    let _ = opened.send(Ok(output));

    let mut pcm = vec![0i16; FRAME];
    let mut mono = vec![0f32; FRAME];
    let mut scratch = Vec::with_capacity(FRAME);
    let mut fader = Fader::new(volume);
    // Underruns count over every talk; the device counts its own.
    let underruns_before = shared.underruns.load(Ordering::Relaxed);
    let mut next = Instant::now();
    loop {
        let talking = shared.talking.load(Ordering::Relaxed);
        let stopping = !talking;
        if stopping && fader.is_silent() {
            // Exit only under the life lock, so nothing is handed to a thread on its way out.
            let _life = lock(&shared.life);
            if !shared.talking.load(Ordering::SeqCst) && lock(&shared.lullaby).is_none() {
                shared.alive.store(false, Ordering::SeqCst);
                break;
            }
        }
        let popped = if !talking {
            Pop::Empty
        } else {
            let mut j = lock(&shared.jitter);
            let p = j.pop();
            *lock(&shared.last_jitter) = j.stats();
            p
        };
        let decoded = match popped {
            Pop::Frame(p) => decoder.decode(&p, &mut pcm),
            Pop::Lost => decoder.conceal(&mut pcm),
            Pop::Empty => Ok(0),
        };
        let n = match decoded {
            Ok(n) => n.min(FRAME),
            Err(e) => {
                log::debug!("talk-back: {e}");
                0
            }
        };
        for (i, m) in mono.iter_mut().enumerate() {
            *m = if i < n { pcm[i] as f32 / 32768.0 } else { 0.0 };
        }
        fader.apply(&mut mono, n > 0 && !stopping);
        {
            let mut l = lock(&shared.lullaby);
            if let Some(player) = l.as_mut() {
                match player.mix_into(&mut mono, &mut scratch, Instant::now(), talking) {
                    Ok(true) => {}
                    Ok(false) => {
                        if !player.status().stopping {
                            log::info!("lullaby {}: the sleep timer ended it", player.status().sound);
                            *lock(&shared.lullaby_ended) = Some(LullabyEnd::Timer);
                        }
                        *l = None;
                    }
                    Err(e) => {
                        log::warn!("lullaby: {e}");
                        *lock(&shared.lullaby_ended) = Some(LullabyEnd::Failed(e.to_string()));
                        *l = None;
                    }
                }
            }
        }
        let result = dev.write(&mono);
        shared.underruns.store(underruns_before + dev.underruns(), Ordering::Relaxed);
        if let Err(e) = result {
            log::warn!("talk-back: speaker {name}: {e}");
            *lock(&shared.problem) = Some(format!("{name}: {e}"));
            let _life = lock(&shared.life);
            shared.alive.store(false, Ordering::SeqCst);
            shared.talking.store(false, Ordering::SeqCst);
            if lock(&shared.lullaby).take().is_some() {
                *lock(&shared.lullaby_ended) = Some(LullabyEnd::Failed(format!("speaker {name}: {e}")));
            }
            break;
        }
        shared.frames_written.fetch_add(1, Ordering::Relaxed);

        next += TICK;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_millis(100) {
            next = now; // fell far behind (a stall): do not burst to catch up
        }
    }
    // Let what is queued play out, then close.
    dev.drain();
    log::info!("talk-back: speaker {name} closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_fails_start_and_is_reported() {
        let s = Speaker::new("peercam_no_such_pcm", 100);
        let e = s.start().unwrap_err();
        assert!(e.contains("peercam_no_such_pcm"), "{e}");
        assert!(!s.is_playing());
        assert_eq!(s.status().problem, Some(e));
    }
}
