//! The cry detector: tells a baby's cry from steady noise (a fan, a white-noise machine), a pure
//! beep and quiet adult speech. Pure: 20 ms frames in (with their time), an alert change out.
//!
//! What a cry is, acoustically, and how each part is tested here:
//! 1. **Voiced at a high pitch with many harmonics.** Per 20 ms hop, the real cepstrum of the
//!    last 2048 samples (42.7 ms, Hann) — the inverse FFT of the log power spectrum. A harmonic
//!    series spaced `f0` apart is a ripple of the log spectrum with period `f0`, which the
//!    cepstrum turns into one peak at quefrency `rate / f0`; the more harmonics, the taller.
//!    Broadband noise has none, a pure sine barely one (it is one line, not a series). The frame
//!    is "cry-voiced" when that peak stands out (`PROMINENCE`), lies at 250–600 Hz (adult
//!    speech sits at 85–255 Hz), and at least `MIN_HARMONICS` of the first eight multiples of
//!    `f0` stand 10 dB above the spectrum's median (checked in the spectrum itself).
//! 2. **Loud enough**: the frame's voice-band level is over `threshold_db` (quiet speech and
//!    far-away sounds fall under it). Quiet frames skip the FFTs (cheap at night).
//! 3. **Rhythmic bursts.** Voiced frames form bursts (pauses ≤ 100 ms bridged); a burst counts
//!    when it lasts 0.3–4 s and is at least half voiced. A voiced stretch longer than 4 s is a
//!    drone (a motor, music), not crying, and clears the count. The alert starts when
//!    `min_bursts` bursts fall within `window_ms`, and ends `reset_ms` after the last burst.
//!
//! FFTs: `realfft` (already in the tree through `rubato`).

use super::alert::Change;
use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use std::collections::VecDeque;
use std::sync::Arc;

pub const N: usize = 2048;
const RATE: f32 = 48_000.0;
pub const F0_MIN_HZ: f32 = 250.0;
pub const F0_MAX_HZ: f32 = 600.0;
/// Cepstral peak over the mean of the searched quefrencies (natural-log units, per the
/// normalization below). Measured on the generated signals of the tests: a cry-like voice
/// 0.5–1.2, white/pink noise 0.03–0.08, a pure sine < 0.1.
pub const PROMINENCE: f32 = 0.25;
pub const MIN_HARMONICS: usize = 3;
const HARMONIC_DB: f32 = 10.0;
/// Dynamic range kept in the log spectrum: deeper than this under the loudest bin is the floor
/// (digital silence between synthetic harmonics would otherwise dominate the cepstrum).
const RANGE: f32 = 1e-6;

const HOP_MS: u64 = 20;
const GAP_MS: u64 = 100;
const MIN_BURST_MS: u64 = 300;
const MAX_BURST_MS: u64 = 4000;
/// Bursts kept for counting (bounded whatever the parameters).
const MAX_BURSTS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CryParams {
    /// A frame's voice-band RMS must be over this (dBFS) to be looked at.
    pub threshold_db: f32,
    pub min_bursts: usize,
    pub window_ms: u64,
    pub reset_ms: u64,
}

/// What one frame looked like (for tests and tuning).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameLook {
    pub analysed: bool,
    pub prominence: f32,
    pub f0_hz: f32,
    pub harmonics: usize,
    pub voiced: bool,
}

#[derive(Debug, Clone, Copy)]
struct Burst {
    start: u64,
    last_voiced: u64,
    voiced_frames: u64,
    peak_db: f32,
}

#[derive(Debug, Clone, Copy)]
struct Episode {
    start: u64,
    last_burst_end: u64,
    peak_db: f32,
}

pub struct CryDetector {
    ring: Vec<f32>,
    hann: Vec<f32>,
    r2c: Arc<dyn RealToComplex<f32>>,
    c2r: Arc<dyn ComplexToReal<f32>>,
    input: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    power: Vec<f32>,
    sorted: Vec<f32>,
    ceps: Vec<f32>,
    scratch_r2c: Vec<Complex<f32>>,
    scratch_c2r: Vec<Complex<f32>>,
    burst: Option<Burst>,
    bursts: VecDeque<(u64, u64, f32)>,
    episode: Option<Episode>,
    pub last: FrameLook,
}

impl Default for CryDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl CryDetector {
    pub fn new() -> Self {
        let mut planner = RealFftPlanner::<f32>::new();
        let r2c = planner.plan_fft_forward(N);
        let c2r = planner.plan_fft_inverse(N);
        let hann = (0..N).map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / N as f32).cos()).collect();
        Self {
            ring: vec![0.0; N],
            hann,
            input: r2c.make_input_vec(),
            spectrum: r2c.make_output_vec(),
            scratch_r2c: r2c.make_scratch_vec(),
            scratch_c2r: c2r.make_scratch_vec(),
            power: vec![0.0; N / 2 + 1],
            sorted: Vec::with_capacity(N / 2 + 1),
            ceps: c2r.make_output_vec(),
            r2c,
            c2r,
            burst: None,
            bursts: VecDeque::with_capacity(MAX_BURSTS),
            episode: None,
            last: FrameLook::default(),
        }
    }

    pub fn active(&self) -> bool {
        self.episode.is_some()
    }

    /// One 20 ms frame (samples scaled to ±1.0) starting at `t_ms`, with its voice-band RMS and
    /// peak in dB.
    pub fn push(&mut self, p: &CryParams, samples: &[f32], t_ms: u64, band_rms_db: f32, band_peak_db: f32) -> Option<Change> {
        let n = samples.len().min(N);
        self.ring.copy_within(n.., 0);
        self.ring[N - n..].copy_from_slice(&samples[samples.len() - n..]);
        self.last = if band_rms_db >= p.threshold_db { self.look() } else { FrameLook::default() };
        self.track(p, t_ms, self.last.voiced, band_peak_db)
    }

    fn look(&mut self) -> FrameLook {
        for ((i, r), w) in self.input.iter_mut().zip(&self.ring).zip(&self.hann) {
            *i = r * w;
        }
        if self.r2c.process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch_r2c).is_err() {
            return FrameLook::default();
        }
        let mut max = 0.0f32;
        for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
            *p = c.norm_sqr();
            max = max.max(*p);
        }
        if max <= 0.0 {
            return FrameLook::default();
        }
        let floor = max * RANGE;
        for (c, p) in self.spectrum.iter_mut().zip(&self.power) {
            *c = Complex::new((p + floor).ln(), 0.0);
        }
        if self.c2r.process_with_scratch(&mut self.spectrum, &mut self.ceps, &mut self.scratch_c2r).is_err() {
            return FrameLook::default();
        }
        // Search the quefrencies of 250–600 Hz; the baseline is the mean over 40 Hz–1.2 kHz.
        let q_lo = (RATE / F0_MAX_HZ) as usize;
        let q_hi = (RATE / F0_MIN_HZ).ceil() as usize;
        let (b_lo, b_hi) = ((RATE / 1200.0) as usize, (RATE / 40.0) as usize);
        let scale = 1.0 / N as f32;
        let baseline = self.ceps[b_lo..=b_hi].iter().sum::<f32>() * scale / (b_hi - b_lo + 1) as f32;
        let (q, peak) = self.ceps[q_lo..=q_hi]
            .iter()
            .enumerate()
            .fold((q_lo, f32::MIN), |best, (i, &c)| if c * scale > best.1 { (q_lo + i, c * scale) } else { best });
        let prominence = peak - baseline;
        let f0 = RATE / q as f32;
        // The harmonics themselves, against the median of 150 Hz–5 kHz.
        let bin_hz = RATE / N as f32;
        let (m_lo, m_hi) = ((150.0 / bin_hz) as usize, (5000.0 / bin_hz) as usize);
        self.sorted.clear();
        self.sorted.extend_from_slice(&self.power[m_lo..=m_hi]);
        let mid = self.sorted.len() / 2;
        let median = *self.sorted.select_nth_unstable_by(mid, f32::total_cmp).1;
        let over = median.max(floor) * 10f32.powf(HARMONIC_DB / 10.0);
        let harmonics = (1..=8)
            .filter(|h| {
                let k = (*h as f32 * f0 / bin_hz).round() as usize;
                k + 1 < self.power.len() && self.power[k - 1..=k + 1].iter().any(|&p| p > over)
            })
            .count();
        let voiced = prominence >= PROMINENCE && harmonics >= MIN_HARMONICS && (F0_MIN_HZ..=F0_MAX_HZ).contains(&f0);
        FrameLook { analysed: true, prominence, f0_hz: f0, harmonics, voiced }
    }

    fn track(&mut self, p: &CryParams, t: u64, voiced: bool, peak_db: f32) -> Option<Change> {
        let end = t + HOP_MS;
        if voiced {
            let b = self.burst.get_or_insert(Burst { start: t, last_voiced: end, voiced_frames: 0, peak_db });
            b.last_voiced = end;
            b.voiced_frames += 1;
            b.peak_db = b.peak_db.max(peak_db);
            if b.last_voiced - b.start > MAX_BURST_MS {
                // A drone: not the rhythm of crying. Forget the bursts so far.
                self.bursts.clear();
                b.start = end - MAX_BURST_MS;
            }
        } else if let Some(b) = self.burst
            && end - b.last_voiced > GAP_MS
        {
            self.burst = None;
            let length = b.last_voiced - b.start;
            let dense = b.voiced_frames * HOP_MS * 2 >= length;
            if (MIN_BURST_MS..=MAX_BURST_MS).contains(&length) && dense {
                if self.bursts.len() == MAX_BURSTS {
                    self.bursts.pop_front();
                }
                self.bursts.push_back((b.start, b.last_voiced, b.peak_db));
                if let Some(e) = self.episode.as_mut() {
                    e.last_burst_end = b.last_voiced;
                    e.peak_db = e.peak_db.max(b.peak_db);
                }
            }
        }
        while self.bursts.front().is_some_and(|&(_, e, _)| e + p.window_ms < t) {
            self.bursts.pop_front();
        }
        match self.episode {
            None if self.bursts.len() >= p.min_bursts.max(1) => {
                let start = self.bursts.front().map(|b| b.0).unwrap_or(t);
                let last = self.bursts.back().map(|b| b.1).unwrap_or(t);
                let peak_db = self.bursts.iter().map(|b| b.2).fold(f32::MIN, f32::max);
                self.episode = Some(Episode { start, last_burst_end: last, peak_db });
                Some(Change::Start { start_ms: start, peak_db })
            }
            Some(e) if self.burst.is_none() && t.saturating_sub(e.last_burst_end) >= p.reset_ms => {
                self.episode = None;
                self.bursts.clear();
                Some(Change::End { start_ms: e.start, end_ms: e.last_burst_end, peak_db: e.peak_db })
            }
            _ => None,
        }
    }
}
