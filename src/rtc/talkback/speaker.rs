//! The speaker: plays the talker's voice on an ALSA playback device, on its own thread.
//!
//! The device is opened when someone starts talking and closed when they stop, so the sound card
//! is free (and silent) the rest of the time. Every 20 ms the thread takes one frame from the
//! jitter buffer, decodes it (or conceals a lost one), applies the volume with a short fade (no
//! clicks when speech starts, stops or underruns), resamples if the device does not run at
//! 48 kHz and writes it. The thread is paced by the clock as well as by the device, so it also
//! keeps time on PCMs that never block (alsa-lib's `file` plugin on `null`, used by the tests).

use super::jitter::{JitterBuffer, JitterStats, Pop};
use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};
use bytes::Bytes;
use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{Fft, FixedSync, Resampler};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const RATE: u32 = 48_000;
const FRAME: usize = 960;
const TICK: Duration = Duration::from_millis(20);
/// Fade length: 10 ms from silence to full level and back.
const FADE_STEP: f32 = 1.0 / 480.0;
/// Device buffer: enough to ride out the thread's own scheduling jitter, small for latency.
const BUFFER_MS: i64 = 80;
/// Written before the first frame so a late wake-up does not underrun at once.
const PRIME_MS: usize = 20;

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
}

struct Shared {
    jitter: Mutex<JitterBuffer>,
    stop: AtomicBool,
    frames_written: AtomicU64,
    underruns: AtomicU64,
    last_jitter: Mutex<JitterStats>,
    output: Mutex<Option<Output>>,
    problem: Mutex<Option<String>>,
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
                stop: AtomicBool::new(true),
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

    pub fn is_playing(&self) -> bool {
        !self.shared.stop.load(Ordering::Relaxed)
    }

    /// Opens the device and starts playing (silence until packets arrive). Blocking (opens the
    /// PCM): call it off the async runtime. A previous talk's thread is waited for first.
    pub fn start(&self) -> Result<Output, String> {
        self.stop_and_wait();
        lock(&self.shared.jitter).reset();
        self.shared.stop.store(false, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        let shared = Arc::clone(&self.shared);
        let (device, volume) = (self.device.clone(), self.volume);
        let handle = std::thread::Builder::new()
            .name("speaker".into())
            .spawn(move || play(&device, volume, &shared, tx))
            .map_err(|e| format!("cannot start the speaker thread: {e}"))?;
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
                self.shared.stop.store(true, Ordering::SeqCst);
                *lock(&self.shared.problem) = Some(e.clone());
            }
        }
        result
    }

    /// Fades out and closes the device (returns at once; the thread finishes by itself).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    fn stop_and_wait(&self) {
        self.stop();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
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
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sample formats tried in order (a `plughw`/`default` PCM takes the first).
#[derive(Clone, Copy)]
enum SampleFormat {
    S16,
    S32,
}

struct Device {
    pcm: PCM,
    format: SampleFormat,
    channels: usize,
    rate: u32,
}

fn open(name: &str) -> Result<Device, String> {
    let pcm = PCM::new(name, Direction::Playback, false)
        .map_err(|e| format!("cannot open ALSA playback device {name}: {e} (set [speaker] device; `peercam devices` lists them)"))?;
    let (format, channels, rate);
    {
        let hw = HwParams::any(&pcm).map_err(|e| format!("{name}: {e}"))?;
        hw.set_access(Access::RWInterleaved).map_err(|e| format!("{name}: interleaved access refused: {e}"))?;
        format = if hw.test_format(Format::s16()).is_ok() {
            SampleFormat::S16
        } else if hw.test_format(Format::s32()).is_ok() {
            SampleFormat::S32
        } else {
            return Err(format!("{name} takes neither S16_LE nor S32_LE (use its plughw: name)"));
        };
        hw.set_format(match format {
            SampleFormat::S16 => Format::s16(),
            SampleFormat::S32 => Format::s32(),
        })
        .map_err(|e| format!("{name}: {e}"))?;
        let min_ch = hw.get_channels_min().unwrap_or(1).max(1);
        let ch = if hw.test_channels(1).is_ok() { 1 } else if hw.test_channels(2).is_ok() { 2 } else { min_ch };
        hw.set_channels(ch).map_err(|e| format!("{name} refuses {ch} channels: {e}"))?;
        hw.set_rate(RATE, ValueOr::Nearest).map_err(|e| {
            format!(
                "{name} refuses {RATE} Hz and the nearest (it takes {}..{} Hz): {e}",
                hw.get_rate_min().unwrap_or(0),
                hw.get_rate_max().unwrap_or(0)
            )
        })?;
        let r = hw.get_rate().unwrap_or(RATE);
        let _ = hw.set_period_size_near((r / 100) as i64, ValueOr::Nearest);
        let _ = hw.set_buffer_size_near(r as i64 * BUFFER_MS / 1000);
        pcm.hw_params(&hw).map_err(|e| format!("{name}: hardware parameters refused: {e}"))?;
        let cur = pcm.hw_params_current().map_err(|e| format!("{name}: {e}"))?;
        rate = cur.get_rate().unwrap_or(r);
        channels = cur.get_channels().unwrap_or(ch) as usize;
    }
    pcm.prepare().map_err(|e| format!("{name}: cannot prepare: {e}"))?;
    Ok(Device { pcm, format, channels, rate })
}

/// 48 kHz mono → the device rate.
struct ToDeviceRate {
    fft: Option<Fft<f32>>,
    pending: Vec<f32>,
    scratch: Vec<f32>,
}

impl ToDeviceRate {
    fn new(rate: u32) -> Result<Self, String> {
        if rate == RATE {
            return Ok(Self { fft: None, pending: Vec::new(), scratch: Vec::new() });
        }
        let fft = Fft::<f32>::new(RATE as usize, rate as usize, FRAME / 2, 1, FixedSync::Input)
            .map_err(|e| format!("cannot resample {RATE} Hz to {rate} Hz: {e}"))?;
        let scratch = vec![0.0; fft.output_frames_max()];
        Ok(Self { fft: Some(fft), pending: Vec::new(), scratch })
    }

    fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), String> {
        let Some(r) = self.fft.as_mut() else {
            out.extend_from_slice(input);
            return Ok(());
        };
        self.pending.extend_from_slice(input);
        let mut used = 0;
        while self.pending.len() - used >= r.input_frames_next() {
            let need = r.input_frames_next();
            let inp = SequentialSlice::new(&self.pending[used..used + need], 1, need).map_err(|e| e.to_string())?;
            let max = r.output_frames_next();
            let mut outp = SequentialSlice::new_mut(&mut self.scratch[..max], 1, max).map_err(|e| e.to_string())?;
            let (n_in, n_out) = r.process_into_buffer(&inp, &mut outp, None).map_err(|e| e.to_string())?;
            used += n_in;
            out.extend_from_slice(&self.scratch[..n_out]);
        }
        self.pending.drain(..used);
        Ok(())
    }
}

/// Fades towards `target` (0 or 1) and applies the volume, in place.
fn fade_and_gain(samples: &mut [f32], level: &mut f32, target: f32, volume: f32) {
    for s in samples.iter_mut() {
        if *level < target {
            *level = (*level + FADE_STEP).min(target);
        } else if *level > target {
            *level = (*level - FADE_STEP).max(target);
        }
        *s = (*s * *level * volume).clamp(-1.0, 1.0);
    }
}

fn play(name: &str, volume: f32, shared: &Shared, opened: mpsc::Sender<Result<Output, String>>) {
    let setup = open(name).and_then(|d| {
        let decoder = opus::Decoder::new(RATE, opus::Channels::Mono).map_err(|e| format!("cannot create Opus decoder: {e}"))?;
        Ok((ToDeviceRate::new(d.rate)?, decoder, d))
    });
    let (mut resample, mut decoder, dev) = match setup {
        Ok(s) => s,
        Err(e) => {
            log::warn!("talk-back: {e}");
            let _ = opened.send(Err(e));
            return;
        }
    };
    let format_name = match dev.format {
        SampleFormat::S16 => "S16_LE",
        SampleFormat::S32 => "S32_LE",
    };
    let output = Output { device: name.to_string(), rate: dev.rate, channels: dev.channels as u32, format: format_name };
    log::info!("talk-back: speaker {name} open ({} Hz, {} ch, {format_name})", dev.rate, dev.channels);
    let _ = opened.send(Ok(output));

    let io = dev.pcm.io_bytes();
    let mut pcm = vec![0i16; FRAME];
    let mut mono = vec![0f32; FRAME];
    let mut at_rate: Vec<f32> = Vec::with_capacity(FRAME * 2);
    let mut raw: Vec<u8> = Vec::with_capacity(FRAME * 2 * 4);
    let mut level = 0.0f32;
    let mut underruns_logged = 0u64;
    let mut next = Instant::now();
    let mut prime = vec![0f32; dev.rate as usize * PRIME_MS / 1000];
    let mut write = |samples: &[f32], raw: &mut Vec<u8>| -> Result<(), String> {
        raw.clear();
        for &s in samples {
            for _ in 0..dev.channels {
                match dev.format {
                    SampleFormat::S16 => raw.extend_from_slice(&((s * 32767.0) as i16).to_le_bytes()),
                    SampleFormat::S32 => raw.extend_from_slice(&((s as f64 * 2_147_483_647.0) as i32).to_le_bytes()),
                }
            }
        }
        let frame_bytes = raw.len() / samples.len().max(1);
        let mut off = 0;
        while off < raw.len() {
            match io.writei(&raw[off..]) {
                Ok(n) => off += n * frame_bytes,
                Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => {}
                Err(e) if e.errno() == libc::EPIPE || e.errno() == libc::ESTRPIPE => {
                    let n = shared.underruns.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == 1 || n >= underruns_logged * 10 {
                        log::debug!("talk-back: speaker underrun #{n}");
                        underruns_logged = n;
                    }
                    dev.pcm.try_recover(e, true).map_err(|e| format!("cannot recover from underrun: {e}"))?;
                }
                Err(e) => return Err(format!("write failed: {e}")),
            }
        }
        Ok(())
    };
    if let Err(e) = write(&prime, &mut raw) {
        log::warn!("talk-back: speaker {name}: {e}");
        *lock(&shared.problem) = Some(format!("{name}: {e}"));
        return;
    }
    prime.clear();

    loop {
        let stopping = shared.stop.load(Ordering::Relaxed);
        if stopping && level <= 0.0 {
            break;
        }
        let popped = {
            let mut j = lock(&shared.jitter);
            let p = j.pop();
            *lock(&shared.last_jitter) = j.stats();
            p
        };
        let decoded = match popped {
            Pop::Frame(p) => decoder.decode(&p, &mut pcm, false).map_err(|e| e.to_string()),
            // Concealment: libopus extrapolates the last frame (decaying), better than a gap.
            Pop::Lost => decoder.decode(&[], &mut pcm, false).map_err(|e| e.to_string()),
            Pop::Empty => Ok(0),
        };
        let n = match decoded {
            Ok(n) => n.min(FRAME),
            Err(e) => {
                log::debug!("talk-back: undecodable packet: {e}");
                0
            }
        };
        let audible = n > 0;
        for (i, m) in mono.iter_mut().enumerate() {
            *m = if i < n { pcm[i] as f32 / 32768.0 } else { 0.0 };
        }
        let target = if audible && !stopping { 1.0 } else { 0.0 };
        fade_and_gain(&mut mono, &mut level, target, volume);
        at_rate.clear();
        let result = resample.push(&mono, &mut at_rate).and_then(|()| {
            if at_rate.is_empty() { Ok(()) } else { write(&at_rate, &mut raw) }
        });
        if let Err(e) = result {
            log::warn!("talk-back: speaker {name}: {e}");
            *lock(&shared.problem) = Some(format!("{name}: {e}"));
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
    let _ = dev.pcm.drain();
    log::info!("talk-back: speaker {name} closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fades_have_no_steps_and_respect_the_volume() {
        let mut level = 0.0;
        let mut s = vec![1.0f32; 960];
        fade_and_gain(&mut s, &mut level, 1.0, 0.5);
        assert!(s[0] < 0.01, "starts near silence, not with a click");
        assert!((s[959] - 0.5).abs() < 1e-6, "reaches the volume");
        let max_step = s.windows(2).map(|w| (w[1] - w[0]).abs()).fold(0.0, f32::max);
        assert!(max_step <= FADE_STEP * 0.5 + 1e-6);
        let mut t = vec![1.0f32; 960];
        fade_and_gain(&mut t, &mut level, 0.0, 0.5);
        assert!(t[959].abs() < 1e-6, "fades out to silence");
    }

    #[test]
    fn resampler_keeps_the_duration() {
        let mut r = ToDeviceRate::new(44_100).unwrap();
        let mut out = Vec::new();
        for _ in 0..50 {
            r.push(&[0.25f32; FRAME], &mut out).unwrap();
        }
        // One second in → about 44100 out (minus the resampler's start-up delay).
        assert!((43_000..=44_100).contains(&out.len()), "{}", out.len());
    }

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let e = open("peercam_no_such_pcm").err().unwrap();
        assert!(e.contains("peercam_no_such_pcm"), "{e}");
    }
}
