//! An ALSA microphone as an `AudioSource`: the device, rate and channel count chosen by
//! constraint resolution over what the PCM accepts, samples read in whatever format the
//! hardware takes (S16, S32, S24 in 32 bits, packed S24, float), downmixed to mono, resampled to
//! 48 kHz with `rubato`'s FFT resampler, and cut into the 20 ms frames the Opus encoder takes.
//! Formats, negotiation and the resampler are shared with the speaker (`super`).
//!
//! The stream is started explicitly after `prepare` (a capture stream only starts by itself
//! once the start threshold is reached, and `snd_pcm_set_params` sets that to the whole
//! buffer). Overruns (xruns) and suspends are recovered (`snd_pcm_recover`, then start again).
//! A PCM that fails otherwise is closed; until it opens again (tried every [`RETRY`]) the
//! source delivers silence at the real-time pace, so the audio track stays up.

use super::{downmix, negotiate, to_i16, Channels, Resampler, SampleFormat, Want};
use crate::capture::constraints::{resolve_audio, AudioConstraints, AudioModes, StrConstraint};
use crate::capture::devices;
use crate::capture::{unix_now_us, AudioFrame, AudioSource, CaptureError, AUDIO_FRAME_SAMPLES, AUDIO_RATE};
use alsa::pcm::PCM;
use alsa::Direction;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub const RETRY: Duration = Duration::from_millis(500);
/// The capture buffer. Big enough to ride out a busy CPU (reading promptly keeps the latency
/// low whatever its size); a gap between reads longer than this means it overran (nobody was
/// listening), and the stream is restarted instead of recovered.
const BUFFER: Duration = Duration::from_millis(400);

#[derive(Debug, Clone, PartialEq)]
pub struct MicRequest {
    pub device: Option<StrConstraint>,
    pub constraints: AudioConstraints,
}

struct OpenPcm {
    pcm: PCM,
    format: SampleFormat,
    channels: usize,
    period: usize,
    raw: Vec<u8>,
    mono: Vec<f32>,
    /// `mono` at 48 kHz.
    resampled: Vec<f32>,
    conv: Resampler,
}

/// What `open` chose, for logs and `/api/settings`.
#[derive(Debug, Clone, PartialEq)]
pub struct MicOpened {
    pub pcm: String,
    pub format: SampleFormat,
    pub rate: u32,
    pub channels: u32,
}

pub struct AlsaMic {
    req: MicRequest,
    open: Option<OpenPcm>,
    label: String,
    out: VecDeque<i16>,
    next_retry: Instant,
    last_error: String,
    xruns: u64,
    /// Pacing of the silence delivered while offline.
    silence_start: Instant,
    silence_frames: u64,
    chosen: Option<MicOpened>,
    /// When `next_frame` last ran: after a pause (nobody listening) the stream is restarted
    /// rather than read from an overrun buffer full of old sound.
    last_call: Instant,
    /// The caller paused on purpose since the last read (`AudioSource::pause`).
    paused: bool,
}

impl AlsaMic {
    /// Opens the microphone the request resolves to; on failure it starts offline (silence,
    /// retried) and the error comes back alongside for the caller to log and report.
    pub fn new(req: MicRequest) -> (Self, Result<MicOpened, String>) {
        let mut mic = Self {
            req,
            open: None,
            label: "alsa microphone".into(),
            out: VecDeque::with_capacity(AUDIO_FRAME_SAMPLES * 8),
            next_retry: Instant::now(),
            last_error: String::new(),
            xruns: 0,
            silence_start: Instant::now(),
            silence_frames: 0,
            chosen: None,
            last_call: Instant::now(),
            paused: false,
        };
        let r = mic.try_open();
        (mic, r)
    }

    /// Opens or fails (for `source = "auto"`).
    pub fn open(req: MicRequest) -> Result<(Self, MicOpened), String> {
        let (mic, r) = Self::new(req);
        r.map(|o| (mic, o))
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    pub fn chosen(&self) -> Option<&MicOpened> {
        self.chosen.as_ref()
    }

    /// Overruns recovered so far.
    pub fn xruns(&self) -> u64 {
        self.xruns
    }

    fn try_open(&mut self) -> Result<MicOpened, String> {
        self.next_retry = Instant::now() + RETRY;
        match open_pcm(&self.req) {
            Ok((p, o)) => {
                self.label = format!("alsa {} {:?} {} Hz {} ch", o.pcm, o.format, o.rate, o.channels);
                self.open = Some(p);
                self.out.clear();
                self.last_error.clear();
                self.chosen = Some(o.clone());
                Ok(o)
            }
            Err(e) => {
                if e != self.last_error {
                    log::debug!("microphone: {e}");
                }
                self.last_error = e.clone();
                Err(e)
            }
        }
    }

    fn close(&mut self, why: String) {
        self.open = None;
        self.last_error = why;
        self.next_retry = Instant::now() + RETRY;
        self.silence_start = Instant::now();
        self.silence_frames = 0;
    }

    /// Reads one period into `self.out`. Err: the PCM is gone (already closed).
    fn read_period(&mut self) -> Result<(), String> {
        let o = self.open.as_mut().expect("open");
        let frame_bytes = o.format.bytes() * o.channels;
        o.raw.resize(o.period * frame_bytes, 0);
        let io = o.pcm.io_bytes();
        match io.readi(&mut o.raw) {
            Ok(frames) => {
                o.mono.clear();
                downmix(&o.raw[..frames * frame_bytes], o.format, o.channels, &mut o.mono);
                o.resampled.clear();
                o.conv.push(&o.mono, &mut o.resampled)?;
                self.out.extend(o.resampled.iter().copied().map(to_i16));
                Ok(())
            }
            Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => Ok(()),
            Err(e) if e.errno() == libc::EPIPE || e.errno() == libc::ESTRPIPE => {
                // Overrun (or suspend): recover and start again.
                self.xruns += 1;
                if self.xruns == 1 || self.xruns % 100 == 0 {
                    log::warn!("{}: capture overrun (xrun #{}), recovering", self.label, self.xruns);
                }
                o.pcm.try_recover(e, true).map_err(|e| format!("{}: cannot recover from overrun: {e}", self.label))?;
                if o.pcm.state() != alsa::pcm::State::Running {
                    o.pcm.start().map_err(|e| format!("{}: cannot restart after overrun: {e}", self.label))?;
                }
                Ok(())
            }
            Err(e) => Err(format!("{} failed: {e}", self.label)),
        }
    }
}

impl AudioSource for AlsaMic {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn xruns(&self) -> u64 {
        AlsaMic::xruns(self)
    }

    fn pause(&mut self) {
        self.paused = true;
    }

    fn next_frame(&mut self, frame: &mut AudioFrame) -> Result<(), CaptureError> {
        frame.samples.resize(AUDIO_FRAME_SAMPLES, 0);
        let gap = self.last_call.elapsed();
        let idle = gap > BUFFER;
        self.last_call = Instant::now();
        let paused = std::mem::take(&mut self.paused);
        if idle && let Some(o) = self.open.as_mut() {
            // Nobody read for a while: the buffer overran and holds stale sound. Start afresh.
            // Without a pause asked for, the reader stalled (a busy or stopped process): that is
            // an overrun like one the driver reports, counted and logged as such.
            if !paused {
                self.xruns += 1;
                if self.xruns == 1 || self.xruns % 100 == 0 {
                    log::warn!("{}: capture overrun (xrun #{}): not read for {} ms, restarting", self.label, self.xruns, gap.as_millis());
                }
            }
            self.out.clear();
            let restart = o.pcm.drop().and_then(|_| o.pcm.prepare()).and_then(|_| o.pcm.start());
            if let Err(e) = restart {
                let e = format!("{}: cannot restart: {e}", self.label);
                log::warn!("{e}; delivering silence until it is back");
                self.close(e);
            }
        }
        if self.open.is_none() && Instant::now() >= self.next_retry && self.try_open().is_ok() {
            log::info!("microphone {} is back", self.label);
        }
        let mut reads = 0;
        while self.open.is_some() && self.out.len() < AUDIO_FRAME_SAMPLES {
            if let Err(e) = self.read_period() {
                log::warn!("{e}; delivering silence until it is back");
                self.close(e);
                break;
            }
            reads += 1;
            if reads > 1000 {
                // A PCM that returns no data without blocking would spin here.
                let e = format!("{} delivers no samples", self.label);
                log::warn!("{e}");
                self.close(e);
                break;
            }
        }
        if self.out.len() >= AUDIO_FRAME_SAMPLES {
            for (s, v) in frame.samples.iter_mut().zip(self.out.drain(..AUDIO_FRAME_SAMPLES)) {
                *s = v;
            }
            // The newest sample was captured about now; the frame's first one 20 ms + the
            // queued remainder earlier.
            let queued_us = (self.out.len() as u64 + AUDIO_FRAME_SAMPLES as u64) * 1_000_000 / AUDIO_RATE as u64;
            frame.capture_unix_us = unix_now_us().saturating_sub(queued_us);
            return Ok(());
        }
        // Offline: silence at the real-time pace.
        let period = Duration::from_millis(20);
        let now = Instant::now();
        let mut due = self.silence_start + period * self.silence_frames as u32;
        if due + period * 5 < now {
            self.silence_start = now;
            self.silence_frames = 0;
            due = now;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        self.silence_frames += 1;
        frame.samples.fill(0);
        frame.capture_unix_us = unix_now_us();
        Ok(())
    }
}

/// Finds the PCM to open: the named one if it opens, else the best hardware capture device.
fn open_pcm(req: &MicRequest) -> Result<(OpenPcm, MicOpened), String> {
    let mut candidates: Vec<AudioModes> = Vec::new();
    let mut named_error = None;
    if let Some(want) = req.device.as_ref().and_then(|d| d.wanted()) {
        match devices::probe_pcm(want, Direction::Capture) {
            Ok(caps) if caps.formats.iter().any(|f| f != "U8") => candidates.push(AudioModes {
                names: vec![want.to_string()],
                rate_min: caps.rate_min,
                rate_max: caps.rate_max,
                channels_min: caps.channels_min,
                channels_max: caps.channels_max,
            }),
            Ok(caps) => named_error = Some(format!("ALSA PCM {want} offers no usable sample format ({})", caps.formats.join(", "))),
            Err(e) => named_error = Some(e),
        }
    }
    if candidates.is_empty() || !req.device.as_ref().is_some_and(|d| d.is_required()) {
        for d in devices::list_audio() {
            if d.direction == "capture" && d.error.is_none() && !candidates.iter().any(|c| c.names[0] == d.pcm) {
                candidates.push(d.modes());
            }
        }
    }
    if candidates.is_empty() {
        return Err(named_error.unwrap_or_else(|| "no ALSA capture device found".into()));
    }
    let choice = resolve_audio(&candidates, req.device.as_ref(), &req.constraints).map_err(|e| {
        match (&named_error, e.constraint.as_str()) {
            (Some(ne), "device") => format!("{ne}; capture devices here: {}", e.offers),
            _ => e.to_string(),
        }
    })?;
    let name = candidates[choice.device].names[0].clone();
    open_exact(&name, choice.rate, choice.channels)
}

/// Opens `name` for capture at `rate` Hz with `channels`, in the first sample format it takes.
fn open_exact(name: &str, rate: u32, channels: u32) -> Result<(OpenPcm, MicOpened), String> {
    let pcm = PCM::new(name, Direction::Capture, false).map_err(|e| devices::describe_open_error(name, e))?;
    let want = Want { rate, exact_rate: true, channels: Channels::Exact(channels), buffer: BUFFER };
    let n = negotiate(&pcm, name, &want)?;
    pcm.prepare().map_err(|e| format!("{name}: cannot prepare: {e}"))?;
    // Capture does not start by itself until the start threshold is reached: start it.
    pcm.start().map_err(|e| format!("{name}: cannot start: {e}"))?;
    let conv = Resampler::new(rate, AUDIO_RATE)?;
    let open = OpenPcm {
        pcm,
        format: n.format,
        channels: n.channels as usize,
        period: n.period,
        raw: Vec::new(),
        mono: Vec::with_capacity(n.period),
        resampled: Vec::with_capacity(n.period * 2),
        conv,
    };
    Ok((open, MicOpened { pcm: name.to_string(), format: n.format, rate, channels }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_microphone_starts_offline_and_delivers_paced_silence() {
        let req = MicRequest { device: Some(StrConstraint::exact("hw:97,0")), constraints: AudioConstraints::default() };
        // The silence is paced from when the source was made (a slow first open under load
        // must not count as time the pacing skipped).
        let t0 = Instant::now();
        let (mut mic, r) = AlsaMic::new(req);
        let e = r.unwrap_err();
        assert!(e.contains("hw:97,0"), "{e}");
        assert!(!mic.is_open());
        let mut f = AudioFrame { samples: vec![1; 10], capture_unix_us: 0 };
        for _ in 0..6 {
            mic.next_frame(&mut f).unwrap();
        }
        assert_eq!(f.samples.len(), AUDIO_FRAME_SAMPLES);
        assert!(f.samples.iter().all(|&s| s == 0));
        assert!(t0.elapsed() >= Duration::from_millis(95), "{:?}", t0.elapsed());
    }
}
