//! The built-in test tone: a 440 Hz beep of 200 ms at the start of every wall-clock second,
//! silence between (so a listener hears it is live, and a test can find the period).

use super::{unix_now_us, AudioFrame, AudioSource, CaptureError, AUDIO_FRAME_SAMPLES, AUDIO_RATE};
use std::time::{Duration, Instant};

pub const TONE_HZ: f64 = 440.0;
pub const BEEP_MS: u64 = 200;
const AMPLITUDE: f64 = 0.3 * i16::MAX as f64;

pub struct Tone {
    start: Instant,
    frames: u64,
    silent: bool,
}

impl Tone {
    pub fn new() -> Self {
        Self { start: Instant::now(), frames: 0, silent: false }
    }

    /// Silence with the same pacing (`audio.source = "none"`).
    pub fn silence() -> Self {
        Self { silent: true, ..Self::new() }
    }

    /// Fills `samples` with the tone as heard at wall-clock time `unix_us` (no pacing).
    pub fn render(samples: &mut [i16], unix_us: u64) {
        // u128: microseconds since 1970 times 48000 overflows u64.
        let first = (unix_us as u128 * AUDIO_RATE as u128 / 1_000_000) as u64;
        for (i, s) in samples.iter_mut().enumerate() {
            let n = first + i as u64;
            let ms_in_second = (n % AUDIO_RATE as u64) * 1000 / AUDIO_RATE as u64;
            *s = if ms_in_second < BEEP_MS {
                let t = n as f64 / AUDIO_RATE as f64;
                (AMPLITUDE * (2.0 * std::f64::consts::PI * TONE_HZ * t).sin()) as i16
            } else {
                0
            };
        }
    }
}

impl Default for Tone {
    fn default() -> Self {
        Self::new()
    }
}

impl AudioSource for Tone {
    fn name(&self) -> String {
        if self.silent { "none".into() } else { "tone".into() }
    }

    fn next_frame(&mut self, frame: &mut AudioFrame) -> Result<(), CaptureError> {
        let period = Duration::from_millis(20);
        let now = Instant::now();
        let mut due = self.start + period * self.frames as u32;
        if due + period * 5 < now {
            self.start = now;
            self.frames = 0;
            due = now;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        self.frames += 1;
        frame.samples.resize(AUDIO_FRAME_SAMPLES, 0);
        frame.capture_unix_us = unix_now_us();
        if self.silent {
            frame.samples.fill(0);
        } else {
            Self::render(&mut frame.samples, frame.capture_unix_us);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beeps_at_the_start_of_each_second_only() {
        let mut s = vec![0i16; AUDIO_FRAME_SAMPLES];
        Tone::render(&mut s, 5_000_000); // second boundary: beep
        let peak = s.iter().map(|x| x.unsigned_abs()).max().unwrap();
        assert!(peak > 9000, "{peak}");
        Tone::render(&mut s, 5_500_000); // middle of the second: silence
        assert!(s.iter().all(|&x| x == 0));
        // Real wall-clock times (where a u64 product would overflow) behave the same.
        Tone::render(&mut s, 1_764_000_000_000_000);
        assert!(s.iter().any(|&x| x.unsigned_abs() > 9000), "beep at the start of a real second");
        Tone::render(&mut s, 1_764_000_000_500_000);
        assert!(s.iter().all(|&x| x == 0), "silence in the middle of a real second");
    }

    #[test]
    fn frequency_is_440_hz() {
        let mut s = vec![0i16; 9600]; // 200 ms
        Tone::render(&mut s, 0);
        let crossings = s.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        assert!((87..=89).contains(&crossings), "{crossings} rising zero crossings in 200 ms");
    }
}
