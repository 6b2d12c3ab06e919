//! An ALSA microphone as an `AudioSource`: the device, rate and channel count chosen by
//! constraint resolution over what the PCM accepts, samples read in whatever format the
//! hardware takes (S16, S32, S24 in 32 bits, packed S24, float), downmixed to mono, resampled to
//! 48 kHz with `rubato`'s FFT resampler, and cut into the 20 ms frames the Opus encoder takes.
//!
//! The stream is started explicitly after `prepare` (a capture stream only starts by itself
//! once the start threshold is reached, and `snd_pcm_set_params` sets that to the whole
//! buffer). Overruns (xruns) and suspends are recovered (`snd_pcm_recover`, then start again).
//! A PCM that fails otherwise is closed; until it opens again (tried every [`RETRY`]) the
//! source delivers silence at the real-time pace, so the audio track stays up.

use super::constraints::{resolve_audio, AudioConstraints, AudioModes, StrConstraint};
use super::devices;
use super::{unix_now_us, AudioFrame, AudioSource, CaptureError, AUDIO_FRAME_SAMPLES, AUDIO_RATE};
use crate::config::AudioConfig;
use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};
use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{Fft, FixedSync, Resampler};
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

impl MicRequest {
    pub fn from_config(a: &AudioConfig) -> Self {
        Self { device: a.device.clone(), constraints: a.constraints.clone() }
    }
}

/// The sample formats read, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    S16,
    S32,
    /// 24 bits in the low bytes of 32.
    S24,
    /// 24 bits packed in 3 bytes.
    S24Packed,
    F32,
}

impl SampleFormat {
    const ALL: [SampleFormat; 5] =
        [SampleFormat::S16, SampleFormat::S32, SampleFormat::F32, SampleFormat::S24, SampleFormat::S24Packed];

    fn alsa(self) -> Format {
        match self {
            SampleFormat::S16 => Format::S16LE,
            SampleFormat::S32 => Format::S32LE,
            SampleFormat::S24 => Format::S24LE,
            SampleFormat::S24Packed => Format::S243LE,
            SampleFormat::F32 => Format::FloatLE,
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            SampleFormat::S16 => 2,
            SampleFormat::S24Packed => 3,
            _ => 4,
        }
    }

    /// One little-endian sample as a float in -1..1.
    fn decode(self, b: &[u8]) -> f32 {
        match self {
            SampleFormat::S16 => i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0,
            SampleFormat::S32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0,
            SampleFormat::S24 => ((i32::from_le_bytes([b[0], b[1], b[2], 0]) << 8) >> 8) as f32 / 8_388_608.0,
            SampleFormat::S24Packed => ((i32::from_le_bytes([b[0], b[1], b[2], 0]) << 8) >> 8) as f32 / 8_388_608.0,
            SampleFormat::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }
}

/// Interleaved device samples → mono floats (channel average), appended to `out`.
pub fn downmix(raw: &[u8], format: SampleFormat, channels: usize, out: &mut Vec<f32>) {
    let frame_bytes = format.bytes() * channels;
    let scale = 1.0 / channels as f32;
    for frame in raw.chunks_exact(frame_bytes) {
        let sum: f32 = frame.chunks_exact(format.bytes()).map(|s| format.decode(s)).sum();
        out.push(sum * scale);
    }
}

/// Mono at the device rate → 48 kHz mono i16, with a fixed-ratio FFT resampler when needed.
pub struct ToPipelineRate {
    resampler: Option<Fft<f32>>,
    pending_in: Vec<f32>,
    out_scratch: Vec<f32>,
    /// Resampler start-up delay still to drop from the output.
    skip: usize,
}

impl ToPipelineRate {
    pub fn new(rate: u32) -> Result<Self, String> {
        if rate == AUDIO_RATE {
            return Ok(Self { resampler: None, pending_in: Vec::new(), out_scratch: Vec::new(), skip: 0 });
        }
        // 10 ms chunks of input keep the added delay small.
        let chunk = (rate as usize / 100).max(64);
        let r = Fft::<f32>::new(rate as usize, AUDIO_RATE as usize, chunk, 1, FixedSync::Input)
            .map_err(|e| format!("cannot resample {rate} Hz to {AUDIO_RATE} Hz: {e}"))?;
        let skip = r.output_delay();
        let out_scratch = vec![0.0; r.output_frames_max()];
        Ok(Self { resampler: Some(r), pending_in: Vec::with_capacity(chunk * 4), out_scratch, skip })
    }

    /// Consumes `input` (drained) and appends 48 kHz samples to `out`.
    pub fn push(&mut self, input: &mut Vec<f32>, out: &mut VecDeque<i16>) -> Result<(), String> {
        let Some(r) = self.resampler.as_mut() else {
            out.extend(input.drain(..).map(to_i16));
            return Ok(());
        };
        self.pending_in.append(input);
        let mut used = 0;
        loop {
            let need = r.input_frames_next();
            if self.pending_in.len() - used < need {
                break;
            }
            let inp = SequentialSlice::new(&self.pending_in[used..used + need], 1, need).map_err(|e| e.to_string())?;
            let max_out = r.output_frames_next();
            let mut outp =
                SequentialSlice::new_mut(&mut self.out_scratch[..max_out], 1, max_out).map_err(|e| e.to_string())?;
            let (n_in, n_out) = r.process_into_buffer(&inp, &mut outp, None).map_err(|e| e.to_string())?;
            used += n_in;
            let drop = self.skip.min(n_out);
            self.skip -= drop;
            out.extend(self.out_scratch[drop..n_out].iter().copied().map(to_i16));
        }
        self.pending_in.drain(..used);
        Ok(())
    }
}

fn to_i16(x: f32) -> i16 {
    (x * 32767.0).round().clamp(-32768.0, 32767.0) as i16
}

struct OpenPcm {
    pcm: PCM,
    format: SampleFormat,
    channels: usize,
    period: usize,
    raw: Vec<u8>,
    mono: Vec<f32>,
    conv: ToPipelineRate,
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
                o.conv.push(&mut o.mono, &mut self.out)?;
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

    fn next_frame(&mut self, frame: &mut AudioFrame) -> Result<(), CaptureError> {
        frame.samples.resize(AUDIO_FRAME_SAMPLES, 0);
        let idle = self.last_call.elapsed() > BUFFER;
        self.last_call = Instant::now();
        if idle && let Some(o) = self.open.as_mut() {
            // Nobody read for a while: the buffer overran and holds stale sound. Start afresh.
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
    let period;
    let format;
    {
        let hw = HwParams::any(&pcm).map_err(|e| format!("{name}: {e}"))?;
        hw.set_access(Access::RWInterleaved).map_err(|e| format!("{name}: interleaved access refused: {e}"))?;
        format = SampleFormat::ALL
            .into_iter()
            .find(|f| hw.test_format(f.alsa()).is_ok())
            .ok_or_else(|| format!("{name}: none of S16_LE, S32_LE, FLOAT_LE, S24_LE, S24_3LE is accepted"))?;
        hw.set_format(format.alsa()).map_err(|e| format!("{name}: {e}"))?;
        hw.set_channels(channels).map_err(|_| {
            format!(
                "{name} refuses {channels} channels (it takes {}..{})",
                hw.get_channels_min().unwrap_or(0),
                hw.get_channels_max().unwrap_or(0)
            )
        })?;
        hw.set_rate(rate, ValueOr::Nearest).map_err(|e| {
            format!(
                "{name} refuses {rate} Hz (it takes {}..{} Hz): {e}",
                hw.get_rate_min().unwrap_or(0),
                hw.get_rate_max().unwrap_or(0)
            )
        })?;
        // 10 ms periods (wake-ups), a buffer of `BUFFER`.
        let want_period = (rate as i64 / 100).max(32);
        let _ = hw.set_period_size_near(want_period, ValueOr::Nearest);
        let _ = hw.set_buffer_size_near(rate as i64 * BUFFER.as_millis() as i64 / 1000);
        pcm.hw_params(&hw).map_err(|e| format!("{name}: hardware parameters refused: {e}"))?;
        let cur = pcm.hw_params_current().map_err(|e| format!("{name}: {e}"))?;
        period = cur.get_period_size().unwrap_or(want_period) as usize;
        let got_rate = cur.get_rate().unwrap_or(rate);
        if got_rate != rate {
            return Err(format!("{name} runs at {got_rate} Hz instead of {rate} Hz"));
        }
        let sw = pcm.sw_params_current().map_err(|e| format!("{name}: {e}"))?;
        let _ = sw.set_avail_min(period as i64);
        pcm.sw_params(&sw).map_err(|e| format!("{name}: software parameters refused: {e}"))?;
    }
    pcm.prepare().map_err(|e| format!("{name}: cannot prepare: {e}"))?;
    // Capture does not start by itself until the start threshold is reached: start it.
    pcm.start().map_err(|e| format!("{name}: cannot start: {e}"))?;
    let conv = ToPipelineRate::new(rate)?;
    let open = OpenPcm {
        pcm,
        format,
        channels: channels as usize,
        period,
        raw: Vec::new(),
        mono: Vec::with_capacity(period),
        conv,
    };
    Ok((open, MicOpened { pcm: name.to_string(), format, rate, channels }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downmix_averages_channels_in_every_format() {
        let mut out = Vec::new();
        // S16 stereo: (16384, -16384) → 0; (16384, 16384) → 0.5
        let raw: Vec<u8> = [16384i16, -16384, 16384, 16384].iter().flat_map(|s| s.to_le_bytes()).collect();
        downmix(&raw, SampleFormat::S16, 2, &mut out);
        assert_eq!(out, vec![0.0, 0.5]);
        out.clear();
        let raw: Vec<u8> = [1i32 << 30, -(1 << 30)].iter().flat_map(|s| s.to_le_bytes()).collect();
        downmix(&raw, SampleFormat::S32, 1, &mut out);
        assert_eq!(out, vec![0.5, -0.5]);
        out.clear();
        // S24 in 32 bits and packed: -0.5 is 0xC00000.
        downmix(&[0x00, 0x00, 0xC0, 0x00], SampleFormat::S24, 1, &mut out);
        downmix(&[0x00, 0x00, 0xC0], SampleFormat::S24Packed, 1, &mut out);
        downmix(&0.25f32.to_le_bytes(), SampleFormat::F32, 1, &mut out);
        assert_eq!(out, vec![-0.5, -0.5, 0.25]);
    }

    fn tone(rate: u32, hz: f64, secs: f64) -> Vec<f32> {
        (0..(rate as f64 * secs) as usize)
            .map(|i| (0.5 * (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin()) as f32)
            .collect()
    }

    fn rising_crossings(s: &[i16]) -> usize {
        s.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count()
    }

    #[test]
    fn resampling_keeps_frequency_and_level() {
        for rate in [44_100u32, 16_000, 96_000, 48_000] {
            let mut r = ToPipelineRate::new(rate).unwrap();
            let mut out = VecDeque::new();
            // Fed in uneven pieces, as periods arrive.
            let t = tone(rate, 1000.0, 1.0);
            for piece in t.chunks(337) {
                r.push(&mut piece.to_vec(), &mut out).unwrap();
            }
            let out: Vec<i16> = out.into_iter().collect();
            assert!(out.len() > 46_000 && out.len() <= 48_000, "{rate}: {} samples", out.len());
            let mid = &out[4800..43_200]; // 0.8 s
            let c = rising_crossings(mid);
            assert!((799..=801).contains(&c), "{rate} Hz: {c} crossings in 0.8 s");
            let rms = (mid.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / mid.len() as f64).sqrt();
            let want = 0.5 * 32767.0 / 2f64.sqrt();
            assert!((rms / want - 1.0).abs() < 0.02, "{rate} Hz: rms {rms:.0}, want {want:.0}");
        }
    }

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
