//! A lullaby or white noise on the device's speaker: how loud, for how long, faded in and out,
//! and ducked while a parent talks. Pure: the sound comes from `capture::sounds`, time comes in
//! as an argument, and the speaker thread (`super::speaker`) mixes what this hands out.

use crate::capture::sounds::{Sound, SoundError};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Volume while a parent talks: the voice must be heard over the noise.
pub const DUCKED: f32 = 0.2;
/// Fade in at the start and out after a stop request.
pub const FADE_IN: Duration = Duration::from_secs(2);
pub const FADE_STOP: Duration = Duration::from_secs(2);
/// The sleep timer fades out over its last stretch: a quarter of the timer, at most this.
pub const MAX_TIMER_FADE: Duration = Duration::from_secs(30);
/// How fast the gain may move per frame towards its target (ducking in ~100 ms, no clicks).
const GAIN_STEP_PER_FRAME: f32 = 0.2;

/// What to play (the control protocol's `lullaby start`).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub sound: String,
    /// 0–100 % of the sound's own level.
    pub volume_percent: u32,
    /// Stop (fading out) after this long; `None` plays until stopped.
    pub timer: Option<Duration>,
}

/// What is playing, for `/api/settings`, the API and events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub sound: String,
    pub volume_percent: u32,
    /// Seconds until the timer ends it (`None`: no timer).
    pub remaining_s: Option<u64>,
    pub stopping: bool,
    pub ducked: bool,
}

pub struct Lullaby {
    sound: Sound,
    request: Request,
    started: Instant,
    stop_at: Option<Instant>,
    gain: f32,
    ducked: bool,
    now: Instant,
}

impl Lullaby {
    pub fn new(sound: Sound, request: Request, now: Instant) -> Self {
        Self { sound, request, started: now, stop_at: None, gain: 0.0, ducked: false, now }
    }

    /// Fade out now (a stop request).
    pub fn stop(&mut self, now: Instant) {
        if self.stop_at.is_none() {
            self.stop_at = Some(now);
        }
    }

    pub fn status(&self) -> Status {
        Status {
            sound: self.request.sound.clone(),
            volume_percent: self.request.volume_percent,
            remaining_s: self.request.timer.map(|t| (self.started + t).saturating_duration_since(self.now).as_secs()),
            stopping: self.stop_at.is_some(),
            ducked: self.ducked,
        }
    }

    /// The envelope now (0..1) without ducking; `None` once it has ended.
    fn envelope(&self, now: Instant) -> Option<f32> {
        let since = now.saturating_duration_since(self.started);
        let mut g = (since.as_secs_f32() / FADE_IN.as_secs_f32()).min(1.0);
        if let Some(timer) = self.request.timer {
            let fade = (timer / 4).min(MAX_TIMER_FADE).max(Duration::from_millis(100));
            let left = timer.saturating_sub(since);
            if left.is_zero() {
                return None;
            }
            g = g.min(left.as_secs_f32() / fade.as_secs_f32());
        }
        if let Some(at) = self.stop_at {
            let gone = now.saturating_duration_since(at);
            if gone >= FADE_STOP {
                return None;
            }
            g = g.min(1.0 - gone.as_secs_f32() / FADE_STOP.as_secs_f32());
        }
        Some(g.clamp(0.0, 1.0))
    }

    /// Fills `out` with the next frame, mixed in (added to what is there). Returns false once
    /// it has ended (timer or stop, faded out).
    pub fn mix_into(&mut self, out: &mut [f32], scratch: &mut Vec<f32>, now: Instant, talking: bool) -> Result<bool, SoundError> {
        self.now = now;
        self.ducked = talking;
        let Some(envelope) = self.envelope(now) else { return Ok(false) };
        let target = envelope * self.request.volume_percent.min(100) as f32 / 100.0 * if talking { DUCKED } else { 1.0 };
        scratch.resize(out.len(), 0.0);
        self.sound.fill(scratch)?;
        // Ramp the gain across the frame towards the target, a bounded step per frame.
        let end = self.gain + (target - self.gain).clamp(-GAIN_STEP_PER_FRAME, GAIN_STEP_PER_FRAME);
        let n = out.len().max(1) as f32;
        for (i, (o, s)) in out.iter_mut().zip(scratch.iter()).enumerate() {
            let g = self.gain + (end - self.gain) * (i as f32 + 1.0) / n;
            *o = (*o + s * g).clamp(-1.0, 1.0);
        }
        self.gain = end;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::sounds::Noise;

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
    }

    /// The level of each 20 ms frame over `secs` of playing, `talking` from `talk_from` on.
    fn levels(l: &mut Lullaby, t0: Instant, secs: f32, talk: impl Fn(f32) -> bool) -> Vec<(f32, f32, bool)> {
        let mut out = vec![0.0; 960];
        let mut scratch = vec![];
        let mut v = vec![];
        for k in 0..(secs * 50.0) as u32 {
            let t = k as f32 / 50.0;
            out.iter_mut().for_each(|o| *o = 0.0);
            let playing = l.mix_into(&mut out, &mut scratch, t0 + Duration::from_secs_f32(t), talk(t)).unwrap();
            v.push((t, rms(&out), playing));
        }
        v
    }

    fn lullaby(volume: u32, timer: Option<Duration>, t0: Instant) -> Lullaby {
        let req = Request { sound: "pink".into(), volume_percent: volume, timer };
        Lullaby::new(Sound::Noise(Noise::named("pink").unwrap()), req, t0)
    }

    #[test]
    fn fades_in_plays_at_its_volume_and_the_timer_fades_it_out() {
        let t0 = Instant::now();
        let mut l = lullaby(50, Some(Duration::from_secs(20)), t0);
        let v = levels(&mut l, t0, 21.0, |_| false);
        let at = |s: f32| v.iter().find(|x| x.0 >= s).unwrap();
        assert!(at(0.2).1 < 0.3 * at(5.0).1, "fades in: {:?} vs {:?}", at(0.2), at(5.0));
        let full = at(10.0).1;
        assert!((full / (0.178 * 0.5) - 1.0).abs() < 0.3, "50 % of −15 dBFS: {full}");
        // The timer (20 s) fades over its last 5 s: half way down at 17.5 s, silent and ended after 20 s.
        assert!((at(17.5).1 / full - 0.5).abs() < 0.2, "{} vs {full}", at(17.5).1);
        assert!(!at(20.1).2 && at(20.1).1 == 0.0, "ended: {:?}", at(20.1));
    }

    #[test]
    fn ducks_while_a_parent_talks_and_comes_back() {
        let t0 = Instant::now();
        let mut l = lullaby(100, None, t0);
        let v = levels(&mut l, t0, 9.0, |t| (4.0..6.0).contains(&t));
        let mean = |a: f32, b: f32| {
            let w: Vec<f32> = v.iter().filter(|x| x.0 >= a && x.0 < b).map(|x| x.1).collect();
            w.iter().sum::<f32>() / w.len() as f32
        };
        let (before, during, after) = (mean(3.0, 4.0), mean(4.2, 6.0), mean(6.3, 9.0));
        assert!((during / before - DUCKED).abs() < 0.07, "ducked to {during} from {before}");
        assert!((after / before - 1.0).abs() < 0.2, "back to {after}");
        assert!(v.iter().all(|x| x.2), "no timer: plays on");
    }

    #[test]
    fn a_stop_fades_out_within_two_seconds() {
        let t0 = Instant::now();
        let mut l = lullaby(100, None, t0);
        let mut out = vec![0.0; 960];
        let mut scratch = vec![];
        for k in 0..200 {
            l.mix_into(&mut out, &mut scratch, t0 + Duration::from_millis(20 * k), false).unwrap();
        }
        l.stop(t0 + Duration::from_secs(4));
        assert!(l.status().stopping);
        assert!(l.mix_into(&mut out, &mut scratch, t0 + Duration::from_millis(5000), false).unwrap());
        assert!(!l.mix_into(&mut out, &mut scratch, t0 + Duration::from_millis(6010), false).unwrap());
    }
}
