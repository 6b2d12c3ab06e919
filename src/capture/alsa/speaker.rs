//! An ALSA playback PCM for the talker's voice: the mirror of [`super::mic`]. Takes mono
//! 48 kHz `f32` in 20 ms pieces, fades and applies the volume ([`Fader`]: no clicks when speech
//! starts, stops or underruns), resamples to the rate the device runs at, writes the same
//! samples to every channel in the format it takes, and recovers from underruns.
//!
//! Opened per talk (the caller opens it when someone starts talking and drops it when they
//! stop), so the sound card is free the rest of the time.

use super::{interleave, negotiate, Channels, Resampler, SampleFormat, Want};
use crate::capture::AUDIO_RATE;
use alsa::pcm::PCM;
use alsa::Direction;
use std::time::Duration;

/// Device buffer: enough to ride out the writer's own scheduling jitter, small for latency.
const BUFFER: Duration = Duration::from_millis(80);
/// Written before the first frame so a late wake-up does not underrun at once.
const PRIME: Duration = Duration::from_millis(20);
/// Fade length: 10 ms from silence to full level and back (per 48 kHz sample).
pub const FADE_STEP: f32 = 1.0 / 480.0;

/// What `open` got, for logs and `/api/settings`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeakerOpened {
    pub device: String,
    pub rate: u32,
    pub channels: u32,
    pub format: SampleFormat,
}

/// A fade towards silence or full level, and the volume, applied in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fader {
    level: f32,
    volume: f32,
}

impl Fader {
    pub fn new(volume: f32) -> Self {
        Self { level: 0.0, volume }
    }

    /// Silent (faded all the way out).
    pub fn is_silent(&self) -> bool {
        self.level <= 0.0
    }

    /// Fades towards full level (`on`) or silence and applies the volume, in place.
    pub fn apply(&mut self, samples: &mut [f32], on: bool) {
        let target = if on { 1.0 } else { 0.0 };
        for s in samples.iter_mut() {
            if self.level < target {
                self.level = (self.level + FADE_STEP).min(target);
            } else if self.level > target {
                self.level = (self.level - FADE_STEP).max(target);
            }
            *s = (*s * self.level * self.volume).clamp(-1.0, 1.0);
        }
    }
}

pub struct AlsaSpeaker {
    pcm: PCM,
    name: String,
    format: SampleFormat,
    channels: usize,
    conv: Resampler,
    at_rate: Vec<f32>,
    raw: Vec<u8>,
    underruns: u64,
    underruns_logged: u64,
}

impl AlsaSpeaker {
    /// Opens the playback PCM `name` (mono if it takes it, 48 kHz or the nearest rate it
    /// takes) and primes it with 20 ms of silence.
    pub fn open(name: &str) -> Result<(Self, SpeakerOpened), String> {
        let pcm = PCM::new(name, Direction::Playback, false).map_err(|e| {
            format!("cannot open ALSA playback device {name}: {e} (set [speaker] device; `peercam devices` lists them)")
        })?;
        let want = Want { rate: AUDIO_RATE, exact_rate: false, channels: Channels::Fewest, buffer: BUFFER };
        let n = negotiate(&pcm, name, &want)?;
        pcm.prepare().map_err(|e| format!("{name}: cannot prepare: {e}"))?;
        let mut s = Self {
            pcm,
            name: name.to_string(),
            format: n.format,
            channels: n.channels as usize,
            conv: Resampler::new(AUDIO_RATE, n.rate)?,
            at_rate: Vec::with_capacity(2048),
            raw: Vec::with_capacity(2048 * 8),
            underruns: 0,
            underruns_logged: 0,
        };
        let prime = vec![0f32; (n.rate as u128 * PRIME.as_millis() / 1000) as usize];
        s.write_at_rate(&prime).map_err(|e| format!("{name}: {e}"))?;
        let opened = SpeakerOpened { device: name.to_string(), rate: n.rate, channels: n.channels, format: n.format };
        Ok((s, opened))
    }

    /// Underruns recovered so far.
    pub fn underruns(&self) -> u64 {
        self.underruns
    }

    /// Mono 48 kHz samples in -1..1: resampled to the device rate and written (blocking while
    /// the device buffer is full).
    pub fn write(&mut self, mono: &[f32]) -> Result<(), String> {
        let mut at_rate = std::mem::take(&mut self.at_rate);
        at_rate.clear();
        let r = self.conv.push(mono, &mut at_rate).and_then(|()| self.write_at_rate(&at_rate));
        self.at_rate = at_rate;
        r
    }

    fn write_at_rate(&mut self, samples: &[f32]) -> Result<(), String> {
        if samples.is_empty() {
            return Ok(());
        }
        self.raw.clear();
        interleave(samples, self.format, self.channels, &mut self.raw);
        let frame_bytes = self.format.bytes() * self.channels;
        let io = self.pcm.io_bytes();
        let mut off = 0;
        while off < self.raw.len() {
            match io.writei(&self.raw[off..]) {
                Ok(n) => off += n * frame_bytes,
                Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => {}
                Err(e) if e.errno() == libc::EPIPE || e.errno() == libc::ESTRPIPE => {
                    self.underruns += 1;
                    let n = self.underruns;
                    if n == 1 || n >= self.underruns_logged * 10 {
                        log::debug!("speaker {}: underrun #{n}", self.name);
                        self.underruns_logged = n;
                    }
                    self.pcm.try_recover(e, true).map_err(|e| format!("cannot recover from underrun: {e}"))?;
                }
                Err(e) => return Err(format!("write failed: {e}")),
            }
        }
        Ok(())
    }

    /// Lets what is queued play out (then drop it to close the device).
    pub fn drain(&self) {
        let _ = self.pcm.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fades_have_no_steps_and_respect_the_volume() {
        let mut f = Fader::new(0.5);
        let mut s = vec![1.0f32; 960];
        f.apply(&mut s, true);
        assert!(s[0] < 0.01, "starts near silence, not with a click");
        assert!((s[959] - 0.5).abs() < 1e-6, "reaches the volume");
        let max_step = s.windows(2).map(|w| (w[1] - w[0]).abs()).fold(0.0, f32::max);
        assert!(max_step <= FADE_STEP * 0.5 + 1e-6);
        let mut t = vec![1.0f32; 960];
        f.apply(&mut t, false);
        assert!(t[959].abs() < 1e-6, "fades out to silence");
        assert!(f.is_silent());
    }

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let e = AlsaSpeaker::open("peercam_no_such_pcm").err().unwrap();
        assert!(e.contains("peercam_no_such_pcm"), "{e}");
    }

    /// alsa-lib's `null` PCM (default configuration): opens mono 48 kHz S16, takes a second of
    /// writes.
    #[test]
    fn plays_into_real_alsa_lib() {
        let (mut s, o) = AlsaSpeaker::open("null").unwrap();
        assert_eq!((o.rate, o.channels, o.format), (48_000, 1, SampleFormat::S16));
        for _ in 0..5 {
            s.write(&[0.25f32; 960]).unwrap();
        }
        s.drain();
    }
}
