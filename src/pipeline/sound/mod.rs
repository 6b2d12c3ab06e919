//! Sound analysis on the captured microphone, before Opus: a voice-band level meter, a noise
//! alert and a cry alert (issue 14). Pure and sans-I/O: 48 kHz mono frames and their capture
//! time in, [`SoundEvent`]s out; the audio thread (`pipeline::audio_loop`) feeds it inline —
//! it costs a fraction of a percent of a core (measured by `analysis_costs_little_per_second`)
//! — and hands the events on through a bounded channel it never waits on.
//!
//! - `level`: 300–2500 Hz band-pass, RMS and peak per window → `sound_level` every
//!   `level_interval_ms`.
//! - `alert`: the noise alert (window peak over `noise_threshold_db` for `noise_duration_ms`, pauses of one window bridged,
//!   on until `noise_reset_s` under it).
//! - `cry`: cepstral pitch + harmonics + burst rhythm (see its header for why each part).

pub mod alert;
pub mod cry;
pub mod level;

#[cfg(test)]
mod tests;

use alert::{Change, Sustain, SustainParams};
use cry::{CryDetector, CryParams};
use level::{BandPass, Stats};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const RATE: u64 = 48_000;

/// The thresholds, changeable live (`POST /api/sound`, control `set_sound`); defaults and
/// ranges are `[sound]`'s in the config.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SoundParams {
    pub level_interval_ms: u32,
    pub noise_threshold_db: i32,
    pub noise_duration_ms: u32,
    pub noise_reset_s: u32,
    pub cry_threshold_db: i32,
    pub cry_min_bursts: u32,
    pub cry_window_s: u32,
    pub cry_reset_s: u32,
}

impl Default for SoundParams {
    fn default() -> Self {
        Self {
            level_interval_ms: 250,
            noise_threshold_db: -32,
            noise_duration_ms: 2000,
            noise_reset_s: 60,
            cry_threshold_db: -45,
            cry_min_bursts: 3,
            cry_window_s: 10,
            cry_reset_s: 60,
        }
    }
}

/// The accepted range of each key (the config checks the same ranges while parsing).
pub const RANGES: [(&str, i64, i64); 8] = [
    ("level_interval_ms", 100, 5000),
    ("noise_threshold_db", -90, 0),
    ("noise_duration_ms", 250, 60_000),
    ("noise_reset_s", 1, 3600),
    ("cry_threshold_db", -90, 0),
    ("cry_min_bursts", 1, 10),
    ("cry_window_s", 2, 60),
    ("cry_reset_s", 1, 3600),
];

/// Why a live change was refused: names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParamError {
    pub field: String,
    pub message: String,
}

/// A live change: only the keys present change.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SoundChange {
    pub level_interval_ms: Option<i64>,
    pub noise_threshold_db: Option<i64>,
    pub noise_duration_ms: Option<i64>,
    pub noise_reset_s: Option<i64>,
    pub cry_threshold_db: Option<i64>,
    pub cry_min_bursts: Option<i64>,
    pub cry_window_s: Option<i64>,
    pub cry_reset_s: Option<i64>,
}

impl SoundParams {
    /// `p` with `change` applied, or the first key out of range (nothing applied then).
    pub fn with(&self, change: &SoundChange) -> Result<SoundParams, ParamError> {
        let mut p = *self;
        let c = change;
        let fields: [(&str, Option<i64>); 8] = [
            ("level_interval_ms", c.level_interval_ms),
            ("noise_threshold_db", c.noise_threshold_db),
            ("noise_duration_ms", c.noise_duration_ms),
            ("noise_reset_s", c.noise_reset_s),
            ("cry_threshold_db", c.cry_threshold_db),
            ("cry_min_bursts", c.cry_min_bursts),
            ("cry_window_s", c.cry_window_s),
            ("cry_reset_s", c.cry_reset_s),
        ];
        for ((name, value), (_, lo, hi)) in fields.into_iter().zip(RANGES) {
            let Some(v) = value else { continue };
            if !(lo..=hi).contains(&v) {
                return Err(ParamError { field: name.into(), message: format!("{v} is out of range: expected {lo} to {hi}") });
            }
            match name {
                "level_interval_ms" => p.level_interval_ms = v as u32,
                "noise_threshold_db" => p.noise_threshold_db = v as i32,
                "noise_duration_ms" => p.noise_duration_ms = v as u32,
                "noise_reset_s" => p.noise_reset_s = v as u32,
                "cry_threshold_db" => p.cry_threshold_db = v as i32,
                "cry_min_bursts" => p.cry_min_bursts = v as u32,
                "cry_window_s" => p.cry_window_s = v as u32,
                _ => p.cry_reset_s = v as u32,
            }
        }
        Ok(p)
    }

    fn noise(&self) -> SustainParams {
        SustainParams { duration_ms: self.noise_duration_ms as u64, gap_ms: 300, reset_ms: self.noise_reset_s as u64 * 1000 }
    }

    fn cry(&self) -> CryParams {
        CryParams {
            threshold_db: self.cry_threshold_db as f32,
            min_bursts: self.cry_min_bursts as usize,
            window_ms: self.cry_window_s as u64 * 1000,
            reset_ms: self.cry_reset_s as u64 * 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    Noise,
    Cry,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Noise => "noise",
            AlertKind::Cry => "cry",
        }
    }
}

/// What the analysis tells. Times are Unix milliseconds (of the captured sound).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SoundEvent {
    /// Every `level_interval_ms`: the voice-band RMS and peak of that window.
    Level { at_ms: u64, level_db: f32, peak_db: f32 },
    Alert { kind: AlertKind, change: Change },
}

fn round1(x: f32) -> f64 {
    (x as f64 * 10.0).round() / 10.0
}

impl SoundEvent {
    /// The event name on every transport (`sound_level`, `noise`, `cry`).
    pub fn name(&self) -> &'static str {
        match self {
            SoundEvent::Level { .. } => "sound_level",
            SoundEvent::Alert { kind, .. } => kind.as_str(),
        }
    }

    /// The event's own members (the control protocol adds the envelope).
    pub fn fields(&self) -> Value {
        match *self {
            SoundEvent::Level { at_ms, level_db, peak_db } => {
                json!({"level_db": round1(level_db), "peak_db": round1(peak_db), "at": at_ms})
            }
            SoundEvent::Alert { change: Change::Start { start_ms, peak_db }, .. } => {
                json!({"state": "start", "start": start_ms, "peak_db": round1(peak_db)})
            }
            SoundEvent::Alert { change: Change::End { start_ms, end_ms, peak_db }, .. } => {
                json!({"state": "end", "start": start_ms, "end": end_ms, "peak_db": round1(peak_db)})
            }
        }
    }
}

/// What `/api/sound` shows besides the parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SoundState {
    pub level_db: f32,
    pub peak_db: f32,
    pub noise: bool,
    pub cry: bool,
}

/// What the device itself plays on its speaker (the lullaby), which its microphone hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OwnSound {
    #[default]
    None,
    /// White, pink or brown noise: steady, so the cry detector rejects it by itself, but it is
    /// loud — no noise alert while it plays.
    Noise,
    /// A sound file (music can be tonal and rhythmic like a cry): neither alert while it plays.
    File,
}

/// The three analyses over one stream of frames.
pub struct Analyzer {
    params: SoundParams,
    own: OwnSound,
    band: BandPass,
    window: Stats,
    window_start_ms: Option<u64>,
    /// Samples pushed so far, and the count at which the current window closes: windows are
    /// whole frames (240 or 260 ms for 250) but keep the interval on average.
    total_samples: u64,
    next_due: u64,
    noise: Sustain,
    cry: CryDetector,
    scaled: Vec<f32>,
    state: SoundState,
}

impl Analyzer {
    pub fn new(params: SoundParams) -> Self {
        Self {
            params,
            own: OwnSound::None,
            band: BandPass::voice(RATE as f64),
            window: Stats::default(),
            window_start_ms: None,
            total_samples: 0,
            next_due: params.level_interval_ms as u64 * RATE / 1000,
            noise: Sustain::default(),
            cry: CryDetector::new(),
            scaled: Vec::with_capacity(crate::capture::AUDIO_FRAME_SAMPLES),
            state: SoundState { level_db: level::FLOOR_DB, peak_db: level::FLOOR_DB, noise: false, cry: false },
        }
    }

    pub fn params(&self) -> SoundParams {
        self.params
    }

    /// The device's own playback starts or stops (levels are still published meanwhile).
    pub fn set_own_sound(&mut self, own: OwnSound) {
        self.own = own;
    }

    /// New thresholds; an alert in progress keeps running under them.
    pub fn set_params(&mut self, params: SoundParams) {
        self.params = params;
    }

    pub fn state(&self) -> SoundState {
        self.state
    }

    /// The cry detector's view of the last frame (tests, tuning).
    pub fn last_look(&self) -> cry::FrameLook {
        self.cry.last
    }

    /// One frame of 48 kHz mono captured from `t_ms` on; events are appended to `out`.
    pub fn push(&mut self, samples: &[i16], t_ms: u64, out: &mut Vec<SoundEvent>) {
        self.scaled.clear();
        let mut frame = Stats::default();
        for &s in samples {
            let x = s as f32 / 32768.0;
            self.scaled.push(x);
            frame.add(self.band.run(x));
        }
        let cry = self.params.cry();
        // While its own sound file plays, the cry detector hears silence: no alert from it.
        let (rms, peak) = if self.own == OwnSound::File { (level::FLOOR_DB, level::FLOOR_DB) } else { (frame.rms_db(), frame.peak_db()) };
        if let Some(change) = self.cry.push(&cry, &self.scaled, t_ms, rms, peak) {
            out.push(SoundEvent::Alert { kind: AlertKind::Cry, change });
        }
        self.state.cry = self.cry.active();
        let start = *self.window_start_ms.get_or_insert(t_ms);
        self.window.merge(&frame);
        self.total_samples += samples.len() as u64;
        let half_frame = samples.len() as u64 / 2;
        if self.total_samples + half_frame >= self.next_due {
            let interval = self.params.level_interval_ms as u64 * RATE / 1000;
            self.next_due = (self.next_due + interval).max(self.total_samples + half_frame);
            let end = start + self.window.samples * 1000 / RATE;
            let (level_db, peak_db) = (self.window.rms_db(), self.window.peak_db());
            out.push(SoundEvent::Level { at_ms: end, level_db, peak_db });
            let over = peak_db >= self.params.noise_threshold_db as f32 && self.own == OwnSound::None;
            if let Some(change) = self.noise.update(&self.params.noise(), start, end, over, peak_db) {
                out.push(SoundEvent::Alert { kind: AlertKind::Noise, change });
            }
            self.state = SoundState { level_db, peak_db, noise: self.noise.active(), cry: self.state.cry };
            self.window = Stats::default();
            self.window_start_ms = None;
        }
    }
}
