//! Night vision: when the infrared LEDs shine (and the IR-cut filter moves out), and what that
//! does to the picture (greyscale). See [README.md](README.md).
//!
//! [`NightPolicy`] is pure and sans-I/O (the str0m shape): inputs go in with the time they
//! happened ([`NightPolicy::handle_input`]), decisions come out ([`NightPolicy::poll_output`]);
//! no clock, thread or device here. [`run`] is the small thread that feeds it (luma samples
//! from the capture thread, the number of video watchers, mode changes) and drives the GPIO
//! lines ([`gpio`]).

pub mod gpio;
pub mod run;

use serde::Serialize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the user asked for (`[night] mode`): `off`, `on`, `auto`, `watching` (as `auto`, but
/// night only while at least one viewer watches video: nobody gets IR light shone on them all
/// night for nothing).
pub use crate::config::NightMode as Mode;

fn follows_light(mode: Mode) -> bool {
    matches!(mode, Mode::Auto | Mode::Watching)
}

/// `"off"` etc. → the mode.
pub fn parse_mode(s: &str) -> Option<Mode> {
    match s {
        "off" => Some(Mode::Off),
        "on" => Some(Mode::On),
        "auto" => Some(Mode::Auto),
        "watching" => Some(Mode::Watching),
        _ => None,
    }
}

/// What the lines and the picture are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Day,
    Night,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Day => "day",
            State::Night => "night",
        }
    }
}

/// Why the state is what it is (the `reason` of a `night` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The mode was changed (config at start, page, control channel, API).
    Mode,
    /// The picture stayed dark long enough.
    Dark,
    /// The picture stayed bright long enough.
    Bright,
    /// `watching`: a viewer started watching while it is dark.
    Watched,
    /// `watching`: the last viewer stopped watching.
    Unwatched,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Mode => "mode",
            Reason::Dark => "dark",
            Reason::Bright => "bright",
            Reason::Watched => "watched",
            Reason::Unwatched => "unwatched",
        }
    }
}

/// The thresholds of `auto` / `watching` (`[night]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NightParams {
    /// Mean luma (0–255; video black is 16) under which the picture counts as dark.
    pub dark_below: u8,
    /// Mean luma over which it counts as bright. The gap to `dark_below` is the hysteresis.
    pub bright_above: u8,
    /// The picture must stay dark (bright) this long, without a break, before the switch.
    pub switch_after: Duration,
    /// At least this long between two switches made by the light: a dusk that hovers around a
    /// threshold (or IR light that brightens the picture it is judged on) switches at most once
    /// per hold.
    pub min_hold: Duration,
}

impl Default for NightParams {
    fn default() -> Self {
        Self { dark_below: 40, bright_above: 100, switch_after: Duration::from_secs(5), min_hold: Duration::from_secs(60) }
    }
}

impl NightParams {
    pub fn validate(&self) -> Result<(), String> {
        if self.bright_above < self.dark_below.saturating_add(10) {
            return Err(format!(
                "bright_above ({}) must be at least dark_below ({}) + 10: the gap between them keeps dusk from flapping",
                self.bright_above, self.dark_below
            ));
        }
        Ok(())
    }
}

/// Samples further apart than this do not prove that the picture stayed dark (bright) in
/// between (the camera was idle): the dwell starts again.
pub const SAMPLE_GAP: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The mean luma of a frame (see [`mean_luma`]).
    Luma(u8),
    /// How many viewers watch video now (listen-only viewers do not count).
    Watchers(usize),
    /// The user changed the mode.
    Mode(Mode),
}

/// A decision: the state now, and why. Emitted when the state changes, and on every mode
/// change (so every page shows the new mode, even when the state stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    pub state: State,
    pub reason: Reason,
    pub mode: Mode,
    /// The last luma sample (`None` before the first).
    pub luma: Option<u8>,
}

/// Outputs kept before the oldest is dropped (the driver polls after every input).
const MAX_OUTPUTS: usize = 8;

/// The night-vision policy. Time is passed in; nothing here sleeps or reads a device.
#[derive(Debug)]
pub struct NightPolicy {
    params: NightParams,
    mode: Mode,
    watchers: usize,
    state: State,
    /// What the light says (with hysteresis, dwell and hold): true = dark.
    dark: bool,
    /// When `dark` last changed (`None`: never — no hold at start).
    dark_since: Option<Instant>,
    /// The opposite of `dark` has been seen without a break since then.
    pending: Option<Instant>,
    last_sample: Option<Instant>,
    luma: Option<u8>,
    out: VecDeque<Output>,
}

impl NightPolicy {
    /// Starts in the day state; in `on` mode the first poll says night (reason `mode`).
    pub fn new(params: NightParams, mode: Mode) -> Self {
        let mut p = Self {
            params,
            mode: Mode::Off,
            watchers: 0,
            state: State::Day,
            dark: false,
            dark_since: None,
            pending: None,
            last_sample: None,
            luma: None,
            out: VecDeque::new(),
        };
        if mode != Mode::Off {
            p.mode = mode;
            p.update(Reason::Mode);
        }
        p
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the light (not the mode) says night.
    pub fn dark(&self) -> bool {
        self.dark
    }

    pub fn luma(&self) -> Option<u8> {
        self.luma
    }

    pub fn params(&self) -> NightParams {
        self.params
    }

    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Luma(y) => {
                self.luma = Some(y);
                let contiguous = self.last_sample.is_some_and(|t| now.saturating_duration_since(t) <= SAMPLE_GAP);
                self.last_sample = Some(now);
                let opposite = if self.dark { y > self.params.bright_above } else { y < self.params.dark_below };
                if !opposite {
                    self.pending = None;
                    return;
                }
                let since = match self.pending {
                    Some(t) if contiguous => t,
                    _ => *self.pending.insert(now),
                };
                let dwelt = now.saturating_duration_since(since) >= self.params.switch_after;
                let held = self.dark_since.is_none_or(|t| now.saturating_duration_since(t) >= self.params.min_hold);
                if dwelt && held {
                    self.dark = !self.dark;
                    self.dark_since = Some(now);
                    self.pending = None;
                    self.update(if self.dark { Reason::Dark } else { Reason::Bright });
                }
            }
            Input::Watchers(n) => {
                let before = self.watchers;
                self.watchers = n;
                if (before == 0) != (n == 0) {
                    self.update(if n == 0 { Reason::Unwatched } else { Reason::Watched });
                }
            }
            Input::Mode(mode) => {
                if follows_light(mode) && self.mode == Mode::On {
                    // The picture was judged under the device's own IR light: keep the night
                    // and let the hold protect it from that light's brightness.
                    if !self.dark {
                        self.dark = true;
                        self.dark_since = Some(now);
                    }
                    self.pending = None;
                }
                self.mode = mode;
                let before = self.state;
                self.update(Reason::Mode);
                if self.state == before {
                    // Announce the mode even when the state stays.
                    self.push(Reason::Mode);
                }
            }
        }
    }

    /// The next decision, oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn wanted(&self) -> State {
        let night = match self.mode {
            Mode::Off => false,
            Mode::On => true,
            Mode::Auto => self.dark,
            Mode::Watching => self.dark && self.watchers > 0,
        };
        if night { State::Night } else { State::Day }
    }

    fn update(&mut self, reason: Reason) {
        let wanted = self.wanted();
        if wanted != self.state {
            self.state = wanted;
            self.push(reason);
        }
    }

    fn push(&mut self, reason: Reason) {
        if self.out.len() >= MAX_OUTPUTS {
            self.out.pop_front();
        }
        self.out.push_back(Output { state: self.state, reason, mode: self.mode, luma: self.luma });
    }
}

/// The mean of a luma plane, from every 4th pixel of every 4th row (a 720p frame: 57 600
/// samples, tens of µs; the decision needs a level, not detail).
pub fn mean_luma(y: &[u8], width: usize, height: usize, stride: usize) -> Option<u8> {
    if width == 0 || height == 0 || stride < width || y.len() < stride * (height - 1) + width {
        return None;
    }
    let (mut sum, mut n) = (0u64, 0u64);
    for row in y.chunks(stride).take(height).step_by(4) {
        for &p in row[..width].iter().step_by(4) {
            sum += p as u64;
            n += 1;
        }
    }
    Some((sum / n.max(1)) as u8)
}

/// Greyscale in place: both chroma planes of an I420 frame set to neutral (128) before the
/// encoder sees it. A memset of half the luma plane's size (720p: 460 KB) — far cheaper than
/// any encode, and flat chroma costs the encoder almost no bits.
pub fn neutral_chroma(u: &mut [u8], v: &mut [u8]) {
    u.fill(128);
    v.fill(128);
}

#[cfg(test)]
mod tests;
