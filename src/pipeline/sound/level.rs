//! The voice-band level meter: a 4th-order Butterworth band-pass (300–2500 Hz, the band of the
//! Home Assistant baby-monitor recipe: it leaves out mains hum, rumble, a fan's low roar and the
//! hiss above speech) and, per window, the RMS and the sample peak of what passes, in dB relative
//! to full scale. Pure: samples in, numbers out.
//!
//! Why our own biquads and not a crate: four RBJ-cookbook sections are twenty lines with no
//! allocation, and the one filter crate that fits (`biquad`) would be a new dependency for the
//! same arithmetic.

/// One second-order section (RBJ audio-EQ cookbook), transposed direct form II.
#[derive(Debug, Clone, Copy)]
pub struct Biquad {
    b0: f32,
    b1: f32,
    b2: f32,
    a1: f32,
    a2: f32,
    z1: f32,
    z2: f32,
}

impl Biquad {
    fn from_rbj(b: [f64; 3], a: [f64; 3]) -> Self {
        let n = |x: f64| (x / a[0]) as f32;
        Self { b0: n(b[0]), b1: n(b[1]), b2: n(b[2]), a1: n(a[1]), a2: n(a[2]), z1: 0.0, z2: 0.0 }
    }

    pub fn highpass(rate: f64, freq: f64, q: f64) -> Self {
        let w = 2.0 * std::f64::consts::PI * freq / rate;
        let (cos, alpha) = (w.cos(), w.sin() / (2.0 * q));
        Self::from_rbj([(1.0 + cos) / 2.0, -(1.0 + cos), (1.0 + cos) / 2.0], [1.0 + alpha, -2.0 * cos, 1.0 - alpha])
    }

    pub fn lowpass(rate: f64, freq: f64, q: f64) -> Self {
        let w = 2.0 * std::f64::consts::PI * freq / rate;
        let (cos, alpha) = (w.cos(), w.sin() / (2.0 * q));
        Self::from_rbj([(1.0 - cos) / 2.0, 1.0 - cos, (1.0 - cos) / 2.0], [1.0 + alpha, -2.0 * cos, 1.0 - alpha])
    }

    #[inline]
    pub fn run(&mut self, x: f32) -> f32 {
        let y = self.b0 * x + self.z1;
        self.z1 = self.b1 * x - self.a1 * y + self.z2;
        self.z2 = self.b2 * x - self.a2 * y;
        // Both at once: flushing one alone leaves the other circling just above the threshold.
        if self.z1.abs() < TINY && self.z2.abs() < TINY {
            (self.z1, self.z2) = (0.0, 0.0);
        }
        y
    }

    #[cfg(test)]
    fn state(&self) -> [f32; 2] {
        [self.z1, self.z2]
    }
}

/// In silence the state decays towards zero through the subnormal floats, which x86 computes
/// about a hundred times slower: the test tone (a beep a second, silence between) cost 3.7 % of
/// a core in the audio thread instead of 0.1 %. Anything this small (−400 dB) is zero for a
/// level meter.
const TINY: f32 = 1e-20;

/// The Q of the two sections of a 4th-order Butterworth filter (flat pass band).
const BUTTERWORTH4_Q: [f64; 2] = [0.541_196_1, 1.306_563];

pub const BAND_LOW_HZ: f64 = 300.0;
pub const BAND_HIGH_HZ: f64 = 2500.0;

/// 300–2500 Hz: 4th-order high-pass then 4th-order low-pass.
#[derive(Debug, Clone)]
pub struct BandPass {
    stages: [Biquad; 4],
}

impl BandPass {
    pub fn voice(rate: f64) -> Self {
        Self {
            stages: [
                Biquad::highpass(rate, BAND_LOW_HZ, BUTTERWORTH4_Q[0]),
                Biquad::highpass(rate, BAND_LOW_HZ, BUTTERWORTH4_Q[1]),
                Biquad::lowpass(rate, BAND_HIGH_HZ, BUTTERWORTH4_Q[0]),
                Biquad::lowpass(rate, BAND_HIGH_HZ, BUTTERWORTH4_Q[1]),
            ],
        }
    }

    #[inline]
    pub fn run(&mut self, x: f32) -> f32 {
        self.stages.iter_mut().fold(x, |v, s| s.run(v))
    }
}

/// Floor of every level: digital silence reads this rather than minus infinity.
pub const FLOOR_DB: f32 = -120.0;

/// `x` (1.0 = full scale) in dB.
pub fn db(x: f32) -> f32 {
    if x > 0.0 { (20.0 * x.log10()).max(FLOOR_DB) } else { FLOOR_DB }
}

/// Sum of squares and peak of a stretch of band-passed samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub sum_sq: f64,
    pub peak: f32,
    pub samples: u64,
}

impl Stats {
    pub fn add(&mut self, y: f32) {
        self.sum_sq += (y as f64) * (y as f64);
        self.peak = self.peak.max(y.abs());
        self.samples += 1;
    }

    pub fn merge(&mut self, o: &Stats) {
        self.sum_sq += o.sum_sq;
        self.peak = self.peak.max(o.peak);
        self.samples += o.samples;
    }

    /// RMS relative to full scale (a full-scale square wave reads 0 dB, a full-scale sine −3 dB).
    pub fn rms_db(&self) -> f32 {
        if self.samples == 0 {
            return FLOOR_DB;
        }
        db((self.sum_sq / self.samples as f64).sqrt() as f32)
    }

    /// The largest sample (a full-scale sine reads 0 dB).
    pub fn peak_db(&self) -> f32 {
        db(self.peak)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine_level(freq: f64, amplitude: f64) -> (f32, f32) {
        let mut f = BandPass::voice(48_000.0);
        let mut st = Stats::default();
        for n in 0..48_000 {
            let y = f.run((amplitude * (2.0 * std::f64::consts::PI * freq * n as f64 / 48_000.0).sin()) as f32);
            if n >= 4_800 {
                st.add(y); // past the filter's settling
            }
        }
        (st.rms_db(), st.peak_db())
    }

    #[test]
    fn level_reads_a_known_rms_in_the_band_and_rejects_outside() {
        // A 1 kHz sine of amplitude 0.1: RMS 0.0707 = −23.01 dBFS, peak −20 dB.
        let (rms, peak) = sine_level(1000.0, 0.1);
        assert!((rms - -23.01).abs() < 0.2, "rms {rms}");
        assert!((peak - -20.0).abs() < 0.2, "peak {peak}");
        // In the band's middle a sine of any level reads its own RMS (linear meter).
        let (rms, _) = sine_level(600.0, 0.5);
        assert!((rms - -9.03).abs() < 0.3, "rms {rms}");
        // Mains hum and rumble (100 Hz) and hiss (8 kHz) are far down.
        assert!(sine_level(100.0, 0.5).0 < -9.03 - 30.0);
        assert!(sine_level(8000.0, 0.5).0 < -9.03 - 30.0);
        // Butterworth: −3 dB at the corners.
        assert!((sine_level(300.0, 0.5).0 - (-9.03 - 3.0)).abs() < 0.6);
    }

    #[test]
    fn silence_after_a_sound_leaves_no_subnormal_state() {
        let mut f = BandPass::voice(48_000.0);
        for i in 0..4800 {
            f.run((i as f32 * 0.1).sin() * 0.5);
        }
        for _ in 0..96_000 {
            f.run(0.0);
            for s in &f.stages {
                for z in s.state() {
                    assert!(z == 0.0 || z.is_normal(), "subnormal filter state {z:e}");
                }
            }
        }
        let states: Vec<[f32; 2]> = f.stages.iter().map(|s| s.state()).collect();
        assert!(states.iter().all(|z| *z == [0.0, 0.0]), "two seconds of silence end at zero: {states:?}");
    }

    #[test]
    fn silence_reads_the_floor() {
        assert_eq!(Stats::default().rms_db(), FLOOR_DB);
        let mut s = Stats::default();
        s.add(0.0);
        assert_eq!(s.rms_db(), FLOOR_DB);
        assert_eq!(s.peak_db(), FLOOR_DB);
    }
}
