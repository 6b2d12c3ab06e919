//! The encode-once ladder: which encoding each viewer reads, and what each encoder aims for.
//!
//! Two rungs made from the same captured frame: **main** (the configured size, e.g. 1280x720)
//! and **low** (half the width and height, a few hundred kbit/s). Every viewer's session reports
//! its link estimate (from congestion control) several times a second; the ladder answers with
//! the rung that viewer should read, and keeps each rung's encoder target:
//! - main follows the *best*-connected viewer (up to the configured bitrate), so one parent on a
//!   weak link never degrades the picture of another on a good one;
//! - a viewer whose link carries clearly less than main gets the low rung (degrade at once, come
//!   back up only after its link has stayed good for a while — with a growing hold after a
//!   failed attempt, so a borderline link does not flap between sizes);
//! - low follows the slowest viewer on it, and halves its frame rate when even that is too much.
//!
//! Order of degradation for one viewer: bitrate first (main rung down to `switch_bps`), then
//! size (low rung, full frame rate), then frame rate (low rung at half rate). Size before frame
//! rate because a monitor is watched for movement: 360p at 30 fps reads better than 720p at
//! 15 fps at the same few hundred kbit/s.
//!
//! Pure state with time passed in; [`super::Hub`] wraps it for the threads.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rung {
    Main,
    Low,
}

#[derive(Debug, Clone, Copy)]
pub struct LadderConfig {
    /// `false`: one encode; it follows the slowest viewer so every viewer stays fluid.
    pub enabled: bool,
    /// Floor of any rung's target.
    pub min_bps: u32,
    /// The main rung's ceiling (`[video] bitrate_kbps`).
    pub max_bps: u32,
    /// A viewer whose video budget is below this leaves the main rung (and comes back at 1.3x).
    pub switch_bps: u32,
    /// The low rung halves its frame rate below this.
    pub half_fps_below_bps: u32,
}

impl LadderConfig {
    pub fn new(enabled: bool, min_bps: u32, max_bps: u32) -> Self {
        let min_bps = min_bps.min(max_bps);
        Self {
            enabled,
            min_bps,
            max_bps,
            // A camera configured for little bitrate (say 800 kbit/s at 640x480) is not "weak":
            // the switch point is at most SWITCH_SHARE of the configured rate.
            switch_bps: SWITCH_BPS.min((max_bps as f64 * SWITCH_SHARE) as u32).clamp(min_bps, max_bps),
            half_fps_below_bps: HALF_FPS_BELOW_BPS.max(min_bps),
        }
    }
}

/// 720p at 30 fps stays fluid with openh264 down to about here; below it the low rung looks better.
const SWITCH_BPS: u32 = 900_000;
/// …or this share of the configured bitrate, when that is lower.
const SWITCH_SHARE: f64 = 0.6;
/// 360p at 30 fps needs about this; below it half the frame rate keeps each frame readable.
const HALF_FPS_BELOW_BPS: u32 = 250_000;
/// Going back up needs this much more than the switch point (hysteresis)…
const UP_FACTOR: f64 = 1.3;
/// …and a viewer leaves main when its budget is below this share of main's target.
const STAY_SHARE: f64 = 0.8;
/// …and comes back when it carries this share.
const UP_SHARE: f64 = 0.95;
const HOLD_MIN: Duration = Duration::from_secs(4);
const HOLD_MAX: Duration = Duration::from_secs(60);
/// An up-switch followed by a down-switch within this was a failed attempt: hold longer.
const FAILED_UP: Duration = Duration::from_secs(10);
/// Viewers tracked at most (sessions are capped far below this by `max_viewers`).
const MAX_VIEWERS: usize = 256;

/// What a session knows about its viewer's link (for the ladder and `/api/settings`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LinkReport {
    /// What this viewer's video may use, bit/s (link estimate minus audio and overhead).
    pub video_budget_bps: u32,
    /// The whole link estimate, bit/s.
    pub estimate_bps: u32,
    /// Recent loss, 0..1.
    pub loss: f32,
    pub rtt_ms: Option<u32>,
    /// Acknowledged (received) rate from the viewer's feedback, bit/s.
    pub received_bps: u32,
    /// `true` while the viewer sends transport-cc feedback (else REMB/RR or nothing).
    pub transport_cc: bool,
    /// The estimate reflects a limit the link showed (queueing delay or loss), not a ramp
    /// still climbing: only then is "well below main" a reason to leave main.
    pub limited: bool,
    /// NACK retransmissions sent to this viewer, bit/s over the last second.
    pub resent_bps: u32,
    /// NACK retransmissions sent since the start, bytes on the wire…
    pub resent_bytes: u64,
    /// …and refused because the congestion window was full.
    pub resends_dropped: u64,
}

#[derive(Debug, Clone)]
struct ViewerLink {
    report: LinkReport,
    rung: Rung,
    /// Not back to main before this.
    hold_until: Option<Instant>,
    hold: Duration,
    last_up: Option<Instant>,
}

/// What the encoders aim for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Targets {
    pub main_bps: u32,
    pub low_bps: u32,
    /// The low rung encodes every frame (`false`) or every other frame (`true`).
    pub low_half_fps: bool,
}

pub struct Ladder {
    cfg: LadderConfig,
    viewers: BTreeMap<u64, ViewerLink>,
    /// The low rung exists only when frames are encoded here (not for camera H.264).
    low_available: bool,
    low_half_fps: bool,
}

/// One viewer as `/api/settings` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerStatus {
    pub viewer: u64,
    pub rung: Rung,
    #[serde(flatten)]
    pub link: LinkReport,
}

impl Ladder {
    pub fn new(cfg: LadderConfig) -> Self {
        Self { cfg, viewers: BTreeMap::new(), low_available: true, low_half_fps: false }
    }

    pub fn config(&self) -> LadderConfig {
        self.cfg
    }

    /// A live change of `[video] bitrate_kbps`.
    pub fn set_max_bps(&mut self, max_bps: u32) {
        let enabled = self.cfg.enabled;
        self.cfg = LadderConfig::new(enabled, self.cfg.min_bps, max_bps.max(1));
    }

    /// Whether a low rung can be made (raw frames); with camera H.264 every viewer reads main.
    pub fn set_low_available(&mut self, available: bool) {
        self.low_available = available;
    }

    /// A viewer's latest link report; returns the rung it should read now.
    pub fn report(&mut self, viewer: u64, report: LinkReport, now: Instant) -> Rung {
        if !self.viewers.contains_key(&viewer) && self.viewers.len() >= MAX_VIEWERS {
            return Rung::Main;
        }
        let main = self.main_target_with(Some((viewer, report.video_budget_bps)));
        let cfg = self.cfg;
        let ladder = cfg.enabled && self.low_available;
        let link = self.viewers.entry(viewer).or_insert(ViewerLink {
            report,
            rung: Rung::Main,
            hold_until: None,
            hold: HOLD_MIN,
            last_up: None,
        });
        link.report = report;
        let budget = report.video_budget_bps as f64;
        link.rung = match (ladder, link.rung) {
            (false, _) => Rung::Main,
            (true, Rung::Main) => {
                let floor = if report.limited { (cfg.switch_bps as f64).max(STAY_SHARE * main as f64) } else { cfg.switch_bps as f64 };
                if budget < floor {
                    // A switch up that failed quickly: wait longer before the next try.
                    link.hold = match link.last_up {
                        Some(up) if now.duration_since(up) < FAILED_UP => (link.hold * 2).min(HOLD_MAX),
                        _ => HOLD_MIN,
                    };
                    link.hold_until = Some(now + link.hold);
                    Rung::Low
                } else {
                    Rung::Main
                }
            }
            (true, Rung::Low) => {
                let good = budget >= (cfg.switch_bps as f64 * UP_FACTOR).max(UP_SHARE * main as f64);
                if good && link.hold_until.is_none_or(|t| now >= t) {
                    link.last_up = Some(now);
                    Rung::Main
                } else {
                    Rung::Low
                }
            }
        };
        let rung = link.rung;
        self.update_low_fps();
        rung
    }

    pub fn leave(&mut self, viewer: u64) {
        self.viewers.remove(&viewer);
        self.update_low_fps();
    }

    /// The main rung's target if `extra` (viewer, budget) replaced that viewer's report.
    fn main_target_with(&self, extra: Option<(u64, u32)>) -> u32 {
        let budgets = self
            .viewers
            .iter()
            .filter(|(id, v)| v.rung == Rung::Main && Some(**id) != extra.map(|e| e.0))
            .map(|(_, v)| v.report.video_budget_bps)
            .chain(extra.map(|e| e.1));
        let pick = if self.cfg.enabled && self.low_available { budgets.max() } else { budgets.min() };
        pick.unwrap_or(self.cfg.max_bps).clamp(self.cfg.min_bps, self.cfg.max_bps)
    }

    fn low_target(&self) -> u32 {
        self.viewers
            .values()
            .filter(|v| v.rung == Rung::Low)
            .map(|v| v.report.video_budget_bps)
            .min()
            .unwrap_or(self.cfg.switch_bps)
            .clamp(self.cfg.min_bps, self.low_ceiling())
    }

    /// The low rung may use up to the rate at which its viewers would go back up: a link that
    /// carries less stays busy (so its congestion signals keep the estimate honest instead of
    /// letting it drift up on an idle link), and one that carries it has shown it can take main.
    fn low_ceiling(&self) -> u32 {
        ((self.cfg.switch_bps as f64 * UP_FACTOR) as u32).min(self.cfg.max_bps).max(self.cfg.min_bps)
    }

    fn update_low_fps(&mut self) {
        let low = self.low_target() as f64;
        let below = self.cfg.half_fps_below_bps as f64;
        self.low_half_fps = if self.low_half_fps { low < below * UP_FACTOR } else { low < below };
    }

    pub fn targets(&self) -> Targets {
        let main_bps = if self.cfg.enabled && self.low_available {
            self.main_target_with(None)
        } else {
            // One encode for everyone: the slowest viewer sets it (all rungs are main).
            self.viewers
                .values()
                .map(|v| v.report.video_budget_bps)
                .min()
                .unwrap_or(self.cfg.max_bps)
                .clamp(self.cfg.min_bps, self.cfg.max_bps)
        };
        Targets { main_bps, low_bps: self.low_target(), low_half_fps: self.low_half_fps }
    }

    pub fn viewers(&self) -> Vec<ViewerStatus> {
        self.viewers
            .iter()
            .map(|(id, v)| ViewerStatus { viewer: *id, rung: v.rung, link: v.report })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LadderConfig {
        LadderConfig::new(true, 150_000, 2_500_000)
    }

    fn link(kbps: u32) -> LinkReport {
        LinkReport { video_budget_bps: kbps * 1000, estimate_bps: kbps * 1000 + 40_000, limited: true, ..Default::default() }
    }

    #[test]
    fn a_viewer_still_ramping_up_is_not_pushed_down_by_a_faster_one() {
        let t = Instant::now();
        let mut l = Ladder::new(cfg());
        l.report(1, link(5000), t);
        let ramping = LinkReport { limited: false, ..link(1500) };
        assert_eq!(l.report(2, ramping, t), Rung::Main, "no limit seen yet: keep main");
        assert_eq!(l.report(2, link(1500), t), Rung::Low, "a link that showed its limit below main: low");
    }

    #[test]
    fn a_good_viewer_keeps_main_while_a_weak_one_gets_low() {
        let t = Instant::now();
        let mut l = Ladder::new(cfg());
        assert_eq!(l.report(1, link(5000), t), Rung::Main);
        assert_eq!(l.report(2, link(700), t), Rung::Low);
        let tg = l.targets();
        assert_eq!(tg.main_bps, 2_500_000, "main follows the best viewer, capped by the config");
        assert_eq!(tg.low_bps, 700_000, "low follows its own viewer");
        assert!(!tg.low_half_fps);
    }

    #[test]
    fn one_viewer_degrades_bitrate_then_size_then_frame_rate() {
        let t = Instant::now();
        let mut l = Ladder::new(cfg());
        assert_eq!(l.report(1, link(1500), t), Rung::Main);
        assert_eq!(l.targets().main_bps, 1_500_000, "first the bitrate follows the link");
        assert_eq!(l.report(1, link(950), t), Rung::Main);
        assert_eq!(l.report(1, link(600), t), Rung::Low, "then the size");
        assert_eq!(l.targets().low_bps, 600_000);
        assert!(!l.targets().low_half_fps);
        l.report(1, link(200), t);
        assert!(l.targets().low_half_fps, "then the frame rate");
        l.report(1, link(300), t);
        assert!(l.targets().low_half_fps, "hysteresis on the frame rate");
        l.report(1, link(400), t);
        assert!(!l.targets().low_half_fps);
    }

    #[test]
    fn back_up_only_after_a_hold_that_grows_after_failed_attempts() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut l = Ladder::new(cfg());
        l.report(1, link(2000), t);
        assert_eq!(l.report(1, link(500), t), Rung::Low);
        assert_eq!(l.report(1, link(2000), t + s(1)), Rung::Low, "held after going down");
        assert_eq!(l.report(1, link(1000), t + s(5)), Rung::Low, "not good enough (hysteresis)");
        assert_eq!(l.report(1, link(2000), t + s(5)), Rung::Main, "back up after the hold");
        // fails again quickly: the next hold is longer
        assert_eq!(l.report(1, link(500), t + s(7)), Rung::Low);
        assert_eq!(l.report(1, link(2000), t + s(12)), Rung::Low, "hold doubled to 8 s");
        assert_eq!(l.report(1, link(2000), t + s(15)), Rung::Main);
    }

    #[test]
    fn a_viewer_well_below_main_leaves_it() {
        let t = Instant::now();
        let mut l = Ladder::new(cfg());
        l.report(1, link(4000), t);
        // 1500 carries more than the switch point but much less than main's 2500
        assert_eq!(l.report(2, link(1500), t), Rung::Low);
        assert_eq!(l.targets().low_bps, 1_170_000, "low is capped at the way back up");
        l.leave(1);
        // alone now: main would follow it, so it may come back after its hold
        assert_eq!(l.report(2, link(1500), t + Duration::from_secs(5)), Rung::Main);
        assert_eq!(l.targets().main_bps, 1_500_000);
    }

    #[test]
    fn without_ladder_everyone_is_on_main_which_follows_the_slowest() {
        let t = Instant::now();
        let mut l = Ladder::new(LadderConfig::new(false, 150_000, 2_500_000));
        assert_eq!(l.report(1, link(5000), t), Rung::Main);
        assert_eq!(l.report(2, link(600), t), Rung::Main);
        assert_eq!(l.targets().main_bps, 600_000);
        let mut l = Ladder::new(cfg());
        l.set_low_available(false); // camera H.264
        l.report(1, link(5000), t);
        assert_eq!(l.report(2, link(100), t), Rung::Main);
        assert_eq!(l.targets().main_bps, 150_000, "clamped to the floor");
    }

    #[test]
    fn live_bitrate_change_moves_the_ceiling() {
        let t = Instant::now();
        let mut l = Ladder::new(cfg());
        l.report(1, link(5000), t);
        l.set_max_bps(1_200_000);
        assert_eq!(l.targets().main_bps, 1_200_000);
        assert_eq!(Ladder::new(cfg()).targets().main_bps, 2_500_000, "no viewer: the configured rate");
    }

    #[test]
    fn a_camera_configured_for_little_bitrate_keeps_its_size_on_a_good_link() {
        let t = Instant::now();
        // [video] bitrate_kbps = 800: a link that carries it all is not a weak link
        let mut l = Ladder::new(LadderConfig::new(true, 150_000, 800_000));
        assert_eq!(l.report(1, link(760), t), Rung::Main);
        assert_eq!(l.report(1, link(400), t), Rung::Low, "but one that carries half is");
    }

    #[test]
    fn bounded() {
        let t = Instant::now();
        let mut l = Ladder::new(cfg());
        for v in 0..1000 {
            l.report(v, link(1000), t);
        }
        assert_eq!(l.viewers().len(), MAX_VIEWERS);
    }
}
