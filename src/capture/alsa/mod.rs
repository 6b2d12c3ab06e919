//! ALSA, both directions: the microphone ([`mic`], audio in) and the speaker ([`speaker`],
//! audio out, for talk-back). What the two share lives here, so they cannot drift apart:
//!
//! - [`SampleFormat`]: the sample formats peercam reads and writes (S16, S32, S24 in 32 bits,
//!   packed S24, float), with one decode and one encode per format;
//! - [`negotiate`]: the hw_params/sw_params dance (interleaved access, the first format of
//!   [`SampleFormat::ALL`] the PCM takes, channels, rate, 10 ms periods, a buffer of the
//!   asked-for length), with errors that name the PCM and what it offers;
//! - [`Resampler`]: mono `f32` from one rate to another with `rubato`'s FFT resampler (the
//!   microphone to 48 kHz, 48 kHz to the speaker), its start-up delay dropped;
//! - [`downmix`] (interleaved device frames → mono) and [`interleave`] (mono → every channel).
//!
//! Why this sits in `capture` (the bottom layer) although the speaker plays rather than
//! captures: it is device I/O with no knowledge of codecs or peers, like the camera and the
//! microphone; the layer above (`codec`) decodes the talker's Opus and `rtc::talkback` decides
//! who talks and orders the packets. See docs/architecture.md.

pub mod mic;
pub mod speaker;

pub use mic::{AlsaMic, MicOpened, MicRequest, RETRY};
pub use speaker::{AlsaSpeaker, SpeakerOpened};

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::ValueOr;
use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{Fft, FixedSync, Resampler as _};
use std::time::Duration;

/// The sample formats read and written, in order of preference.
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
    /// Tried in this order; the first one the PCM accepts is used (a `plughw:`/`default` PCM
    /// takes the first).
    pub const ALL: [SampleFormat; 5] =
        [SampleFormat::S16, SampleFormat::S32, SampleFormat::F32, SampleFormat::S24, SampleFormat::S24Packed];

    pub fn alsa(self) -> Format {
        match self {
            SampleFormat::S16 => Format::S16LE,
            SampleFormat::S32 => Format::S32LE,
            SampleFormat::S24 => Format::S24LE,
            SampleFormat::S24Packed => Format::S243LE,
            SampleFormat::F32 => Format::FloatLE,
        }
    }

    /// The name ALSA uses (`aplay -f`), for logs and `/api/settings`.
    pub fn name(self) -> &'static str {
        match self {
            SampleFormat::S16 => "S16_LE",
            SampleFormat::S32 => "S32_LE",
            SampleFormat::S24 => "S24_LE",
            SampleFormat::S24Packed => "S24_3LE",
            SampleFormat::F32 => "FLOAT_LE",
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
    pub fn decode(self, b: &[u8]) -> f32 {
        match self {
            SampleFormat::S16 => i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0,
            SampleFormat::S32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0,
            SampleFormat::S24 | SampleFormat::S24Packed => {
                ((i32::from_le_bytes([b[0], b[1], b[2], 0]) << 8) >> 8) as f32 / 8_388_608.0
            }
            SampleFormat::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }

    /// One float sample (clamped to -1..1) appended as little-endian bytes.
    pub fn encode(self, x: f32, out: &mut Vec<u8>) {
        let x = x.clamp(-1.0, 1.0);
        match self {
            SampleFormat::S16 => out.extend_from_slice(&((x * 32767.0) as i16).to_le_bytes()),
            SampleFormat::S32 => out.extend_from_slice(&((x as f64 * 2_147_483_647.0) as i32).to_le_bytes()),
            SampleFormat::S24 => out.extend_from_slice(&((x * 8_388_607.0) as i32 & 0x00ff_ffff).to_le_bytes()),
            SampleFormat::S24Packed => out.extend_from_slice(&((x * 8_388_607.0) as i32).to_le_bytes()[..3]),
            SampleFormat::F32 => out.extend_from_slice(&x.to_le_bytes()),
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

/// Mono floats → interleaved device samples (the same sample on every channel), appended to
/// `out`. The mirror of [`downmix`].
pub fn interleave(mono: &[f32], format: SampleFormat, channels: usize, out: &mut Vec<u8>) {
    for &s in mono {
        for _ in 0..channels {
            format.encode(s, out);
        }
    }
}

/// How many channels to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// Exactly this many (the microphone: constraint resolution chose it); refused → error.
    Exact(u32),
    /// The fewest that carry one voice: mono, else stereo, else the device's minimum (the
    /// speaker: the same samples go to every channel).
    Fewest,
}

/// What to ask a PCM for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Want {
    pub rate: u32,
    /// The rate must be met exactly (capture: constraint resolution chose it from what the
    /// PCM offers); otherwise the nearest is taken and the caller resamples.
    pub exact_rate: bool,
    pub channels: Channels,
    /// The ring buffer: long enough to ride out scheduling jitter.
    pub buffer: Duration,
}

/// What a PCM agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub format: SampleFormat,
    pub rate: u32,
    pub channels: u32,
    /// Frames per period (about 10 ms).
    pub period: usize,
}

/// The channel count for `want` given what the PCM accepts (`accepts(n)`) and its minimum.
pub fn choose_channels(want: Channels, min: u32, accepts: impl Fn(u32) -> bool) -> u32 {
    match want {
        Channels::Exact(n) => n,
        Channels::Fewest => [1, 2].into_iter().find(|&n| accepts(n)).unwrap_or(min.max(1)),
    }
}

/// Sets the hardware and software parameters of an open (not yet prepared) PCM: interleaved
/// access, the first format of [`SampleFormat::ALL`] it takes, channels and rate as `want`
/// says, 10 ms periods, a buffer of `want.buffer`, wake-ups once a period is available.
pub fn negotiate(pcm: &PCM, name: &str, want: &Want) -> Result<Negotiated, String> {
    let hw = HwParams::any(pcm).map_err(|e| format!("{name}: {e}"))?;
    hw.set_access(Access::RWInterleaved).map_err(|e| format!("{name}: interleaved access refused: {e}"))?;
    let format = SampleFormat::ALL.into_iter().find(|f| hw.test_format(f.alsa()).is_ok()).ok_or_else(|| {
        let names: Vec<&str> = SampleFormat::ALL.iter().map(|f| f.name()).collect();
        format!("{name}: none of {} is accepted (try its plughw: name)", names.join(", "))
    })?;
    hw.set_format(format.alsa()).map_err(|e| format!("{name}: {e}"))?;
    let ch = choose_channels(want.channels, hw.get_channels_min().unwrap_or(1), |n| hw.test_channels(n).is_ok());
    hw.set_channels(ch).map_err(|_| {
        format!(
            "{name} refuses {ch} channels (it takes {}..{})",
            hw.get_channels_min().unwrap_or(0),
            hw.get_channels_max().unwrap_or(0)
        )
    })?;
    hw.set_rate(want.rate, ValueOr::Nearest).map_err(|e| {
        format!(
            "{name} refuses {} Hz (it takes {}..{} Hz): {e}",
            want.rate,
            hw.get_rate_min().unwrap_or(0),
            hw.get_rate_max().unwrap_or(0)
        )
    })?;
    let rate = hw.get_rate().unwrap_or(want.rate);
    // 10 ms periods (wake-ups), a buffer of `want.buffer`.
    let want_period = (rate as i64 / 100).max(32);
    let _ = hw.set_period_size_near(want_period, ValueOr::Nearest);
    let _ = hw.set_buffer_size_near(rate as i64 * want.buffer.as_millis() as i64 / 1000);
    pcm.hw_params(&hw).map_err(|e| format!("{name}: hardware parameters refused: {e}"))?;
    let cur = pcm.hw_params_current().map_err(|e| format!("{name}: {e}"))?;
    let period = cur.get_period_size().unwrap_or(want_period) as usize;
    let got_rate = cur.get_rate().unwrap_or(rate);
    if want.exact_rate && got_rate != want.rate {
        return Err(format!("{name} runs at {got_rate} Hz instead of {} Hz", want.rate));
    }
    let channels = cur.get_channels().unwrap_or(ch);
    let sw = pcm.sw_params_current().map_err(|e| format!("{name}: {e}"))?;
    let _ = sw.set_avail_min(period as i64);
    pcm.sw_params(&sw).map_err(|e| format!("{name}: software parameters refused: {e}"))?;
    Ok(Negotiated { format, rate: got_rate, channels, period })
}

/// Mono `f32` from one rate to another, with a fixed-ratio FFT resampler when they differ.
/// Fed in pieces of any length; the resampler's start-up delay is dropped from the output.
pub struct Resampler {
    fft: Option<Fft<f32>>,
    pending: Vec<f32>,
    scratch: Vec<f32>,
    /// Start-up delay still to drop from the output.
    skip: usize,
}

impl Resampler {
    pub fn new(from: u32, to: u32) -> Result<Self, String> {
        if from == to {
            return Ok(Self { fft: None, pending: Vec::new(), scratch: Vec::new(), skip: 0 });
        }
        // 10 ms chunks of input keep the added delay small.
        let chunk = (from as usize / 100).max(64);
        let fft = Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Input)
            .map_err(|e| format!("cannot resample {from} Hz to {to} Hz: {e}"))?;
        let skip = fft.output_delay();
        let scratch = vec![0.0; fft.output_frames_max()];
        Ok(Self { fft: Some(fft), pending: Vec::with_capacity(chunk * 4), scratch, skip })
    }

    /// Consumes `input` and appends what can be resampled so far to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), String> {
        let Some(r) = self.fft.as_mut() else {
            out.extend_from_slice(input);
            return Ok(());
        };
        self.pending.extend_from_slice(input);
        let mut used = 0;
        loop {
            let need = r.input_frames_next();
            if self.pending.len() - used < need {
                break;
            }
            let inp = SequentialSlice::new(&self.pending[used..used + need], 1, need).map_err(|e| e.to_string())?;
            let max_out = r.output_frames_next();
            let mut outp =
                SequentialSlice::new_mut(&mut self.scratch[..max_out], 1, max_out).map_err(|e| e.to_string())?;
            let (n_in, n_out) = r.process_into_buffer(&inp, &mut outp, None).map_err(|e| e.to_string())?;
            used += n_in;
            let drop = self.skip.min(n_out);
            self.skip -= drop;
            out.extend_from_slice(&self.scratch[drop..n_out]);
        }
        self.pending.drain(..used);
        Ok(())
    }
}

/// A float sample in -1..1 as `i16` (rounded, clamped).
pub fn to_i16(x: f32) -> i16 {
    (x * 32767.0).round().clamp(-32768.0, 32767.0) as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use alsa::Direction;

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

    #[test]
    fn encode_is_the_inverse_of_decode_in_every_format() {
        for f in SampleFormat::ALL {
            for x in [0.0f32, 0.5, -0.5, 0.123, -0.999, 1.0, -1.0] {
                let mut b = Vec::new();
                f.encode(x, &mut b);
                assert_eq!(b.len(), f.bytes(), "{f:?}");
                let y = f.decode(&b);
                // Two steps of S16's resolution (encode scales by 32767, decode by 32768).
                assert!((x - y).abs() <= 2.0 / 32768.0, "{f:?}: {x} → {y}");
            }
            // Out of range is clamped, not wrapped.
            let mut b = Vec::new();
            f.encode(1.5, &mut b);
            assert!(f.decode(&b) > 0.99, "{f:?}");
            b.clear();
            f.encode(-1.5, &mut b);
            assert!(f.decode(&b) < -0.99, "{f:?}");
        }
        // The byte layouts ALSA expects: S16 0.5 = 0x3fff; packed S24 -0.5 has 3 bytes.
        let mut b = Vec::new();
        SampleFormat::S16.encode(0.5, &mut b);
        assert_eq!(b, 16383i16.to_le_bytes());
        b.clear();
        SampleFormat::S24.encode(-0.5, &mut b);
        assert_eq!(b[3], 0, "S24 in 32 bits leaves the top byte zero");
    }

    #[test]
    fn interleave_mirrors_downmix() {
        let mono = [0.25f32, -0.5, 0.75];
        for f in SampleFormat::ALL {
            for ch in [1usize, 2, 6] {
                let mut raw = Vec::new();
                interleave(&mono, f, ch, &mut raw);
                assert_eq!(raw.len(), mono.len() * ch * f.bytes());
                let mut back = Vec::new();
                downmix(&raw, f, ch, &mut back);
                for (a, b) in mono.iter().zip(&back) {
                    assert!((a - b).abs() < 1e-4, "{f:?} {ch} ch: {a} → {b}");
                }
            }
        }
    }

    #[test]
    fn channel_choice() {
        assert_eq!(choose_channels(Channels::Exact(2), 1, |_| true), 2);
        assert_eq!(choose_channels(Channels::Fewest, 1, |_| true), 1);
        assert_eq!(choose_channels(Channels::Fewest, 2, |n| n >= 2), 2, "stereo-only");
        assert_eq!(choose_channels(Channels::Fewest, 4, |n| n == 4), 4, "only its own count");
        assert_eq!(choose_channels(Channels::Fewest, 0, |_| false), 1);
    }

    fn tone(rate: u32, hz: f64, secs: f64) -> Vec<f32> {
        (0..(rate as f64 * secs) as usize)
            .map(|i| (0.5 * (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin()) as f32)
            .collect()
    }

    fn rising_crossings(s: &[f32]) -> usize {
        s.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count()
    }

    /// Both directions through the one resampler: device rates to 48 kHz (microphone) and
    /// 48 kHz to device rates (speaker).
    #[test]
    fn resampling_keeps_frequency_level_and_duration() {
        let pairs = [(44_100u32, 48_000u32), (16_000, 48_000), (96_000, 48_000), (48_000, 48_000), (48_000, 44_100), (48_000, 16_000)];
        for (from, to) in pairs {
            let mut r = Resampler::new(from, to).unwrap();
            let mut out = Vec::new();
            // Fed in uneven pieces, as periods arrive.
            for piece in tone(from, 1000.0, 1.0).chunks(337) {
                r.push(piece, &mut out).unwrap();
            }
            let to_us = to as usize;
            assert!(out.len() > to_us * 96 / 100 && out.len() <= to_us, "{from}→{to}: {} samples", out.len());
            let mid = &out[to_us / 10..to_us * 9 / 10]; // 0.8 s
            let c = rising_crossings(mid);
            assert!((799..=801).contains(&c), "{from}→{to}: {c} crossings in 0.8 s");
            let rms = (mid.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / mid.len() as f64).sqrt();
            let want = 0.5 / 2f64.sqrt();
            assert!((rms / want - 1.0).abs() < 0.02, "{from}→{to}: rms {rms:.3}, want {want:.3}");
        }
    }

    /// The shared negotiation against real alsa-lib (its `null` PCM, in alsa-lib's default
    /// configuration: takes any format, rate and channel count), both directions.
    #[test]
    fn negotiation_on_real_alsa_lib_in_both_directions() {
        let want = Want { rate: 44_100, exact_rate: true, channels: Channels::Exact(2), buffer: Duration::from_millis(400) };
        let pcm = PCM::new("null", Direction::Capture, false).expect("alsa-lib's null PCM");
        let n = negotiate(&pcm, "null", &want).unwrap();
        assert_eq!(n, Negotiated { format: SampleFormat::S16, rate: 44_100, channels: 2, period: n.period });
        assert!(n.period > 0 && n.period <= 44_100 * 400 / 1000, "period {}", n.period);
        let pcm = PCM::new("null", Direction::Playback, false).unwrap();
        let want = Want { rate: 48_000, exact_rate: false, channels: Channels::Fewest, buffer: Duration::from_millis(80) };
        let n = negotiate(&pcm, "null", &want).unwrap();
        assert_eq!((n.format, n.rate, n.channels), (SampleFormat::S16, 48_000, 1));
    }
}
