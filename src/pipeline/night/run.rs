//! The night-vision thread: feeds [`NightPolicy`] and carries out its decisions on the GPIO
//! lines, the greyscale flag, the status and the `night` events. It owns the lines: they are
//! requested here at start, driven to the day state and released when the pipeline stops.
//!
//! The capture thread gives it a luma sample at most every [`LUMA_PERIOD`] (only while frames
//! are read: someone watches, motion detection, a snapshot) and reads [`NightShared::grey`]
//! per frame. The thread wakes at least every [`TICK`] to look at the number of watchers.

use super::gpio::{GpioError, OutputLine};
use super::{Input, Mode, NightParams, NightPolicy, Output, State};
use crate::capture::VideoFrame;
use crate::config::{GpioLine, NightConfig};
use crate::hub::Hub;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the capture thread measures the picture's brightness.
pub const LUMA_PERIOD: Duration = Duration::from_millis(250);
/// How often the thread looks at the watchers when nothing else wakes it.
pub const TICK: Duration = Duration::from_millis(200);
/// Messages waiting for the thread (luma samples come at 4 a second; it drains them at once).
const QUEUE: usize = 16;
/// `night` events queued for the room before the newest are dropped.
pub const EVENT_QUEUE: usize = 16;

enum Msg {
    Luma(u8),
    Mode(Mode, Option<tokio::sync::oneshot::Sender<NightStatus>>),
}

/// One line as `/api/settings` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LineStatus {
    pub chip: String,
    pub line: u32,
    pub active_low: bool,
    /// Driven active (night) now; `false` when the line could not be requested.
    pub active: bool,
    /// Whether peercam holds the line.
    pub ok: bool,
}

/// `night` in `/api/settings`, `GET /api/night`, the control reply.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NightStatus {
    pub mode: Mode,
    pub state: State,
    pub greyscale: bool,
    /// The last mean luma measured (0–255), `null` before the first.
    pub luma: Option<u8>,
    /// Whether the light (not the mode) says night.
    pub dark: bool,
    pub ir_led: Option<LineStatus>,
    pub ir_cut: Option<LineStatus>,
    /// Why a line is not driven (missing chip or line, busy line), else `null`.
    pub error: Option<String>,
}

/// A `night` event: the state changed (or the mode did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NightEvent(pub Output);

impl NightEvent {
    pub fn name(&self) -> &'static str {
        "night"
    }

    pub fn fields(&self) -> Value {
        let o = &self.0;
        json!({"state": o.state.as_str(), "reason": o.reason.as_str(), "mode": o.mode.as_str(), "luma": o.luma})
    }
}

/// What the pipeline and the API share with the thread.
pub struct NightShared {
    /// Night with `greyscale`: the capture thread sets every frame's chroma neutral.
    grey: AtomicBool,
    tx: mpsc::SyncSender<Msg>,
    status: Mutex<NightStatus>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The capture thread's part: a luma sample when one is due, greyscale when it is night.
pub struct FrameHook {
    next_sample: Option<Instant>,
}

impl FrameHook {
    pub fn new() -> Self {
        Self { next_sample: None }
    }

    pub fn on_frame(&mut self, night: &NightShared, frame: &mut VideoFrame, now: Instant) {
        if self.next_sample.is_none_or(|t| now >= t) {
            self.next_sample = Some(now + LUMA_PERIOD);
            let (w, h) = (frame.width as usize, frame.height as usize);
            let (y, _, _) = frame.planes();
            if let Some(mean) = super::mean_luma(y, w, h, w) {
                // Full: the night thread is behind; a sample more or less does not matter.
                let _ = night.tx.try_send(Msg::Luma(mean));
            }
        }
        if night.grey.load(Ordering::Relaxed) {
            let (_, u, v) = frame.planes_mut();
            super::neutral_chroma(u, v);
        }
    }
}

impl Default for FrameHook {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a mode change was not made.
#[derive(Debug, thiserror::Error)]
pub enum SetModeError {
    #[error("the night-vision thread is not running")]
    NotRunning,
    #[error("the night-vision thread is busy; try again")]
    Busy,
}

impl NightShared {
    pub fn status(&self) -> NightStatus {
        lock(&self.status).clone()
    }

    /// Changes the mode; answers with the status once the thread has acted on it.
    pub async fn set_mode(&self, mode: Mode) -> Result<NightStatus, SetModeError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.try_send(Msg::Mode(mode, Some(reply))).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => SetModeError::Busy,
            mpsc::TrySendError::Disconnected(_) => SetModeError::NotRunning,
        })?;
        match tokio::time::timeout(Duration::from_secs(2), answer).await {
            Ok(Ok(s)) => Ok(s),
            _ => Err(SetModeError::NotRunning),
        }
    }
}

pub fn params(c: &NightConfig) -> NightParams {
    NightParams {
        dark_below: c.dark_below.get().min(255) as u8,
        bright_above: c.bright_above.get().min(255) as u8,
        switch_after: Duration::from_secs(c.switch_after_s.get() as u64),
        min_hold: Duration::from_secs(c.min_hold_s.get() as u64),
    }
}

struct Lines {
    ir_led: Option<Result<OutputLine, GpioError>>,
    ir_cut: Option<Result<OutputLine, GpioError>>,
}

fn line_status(spec: &Option<GpioLine>, line: &Option<Result<OutputLine, GpioError>>) -> Option<LineStatus> {
    let spec = spec.as_ref()?;
    let (active, ok) = match line {
        Some(Ok(l)) => (l.active(), true),
        _ => (false, false),
    };
    Some(LineStatus { chip: spec.chip.clone(), line: spec.line, active_low: spec.active_low, active, ok })
}

impl Lines {
    fn open(c: &NightConfig) -> Self {
        let open = |role, spec: &Option<GpioLine>| {
            spec.as_ref().map(|s| {
                let r = OutputLine::open(role, s);
                match &r {
                    Ok(_) => log::info!("night vision: {role} on line {} of {} (active {})", s.line, s.chip, if s.active_low { "low" } else { "high" }),
                    // Not fatal: the camera streams on, night mode still turns the picture grey.
                    Err(e) => log::error!("{e}; night vision goes on without it"),
                }
                r
            })
        };
        Lines { ir_led: open("ir_led", &c.ir_led), ir_cut: open("ir_cut", &c.ir_cut) }
    }

    fn errors(&self) -> Vec<String> {
        let mut v = Vec::new();
        for l in [&self.ir_led, &self.ir_cut].into_iter().flatten() {
            if let Err(e) = l {
                v.push(e.to_string());
            }
        }
        v
    }

    /// Night: the filter goes out before the LEDs shine; day: the LEDs go off before the filter
    /// comes back (no moment of IR light through a filter that blocks it, or of a pink picture).
    fn drive(&mut self, night: bool) -> Vec<String> {
        let mut errors = Vec::new();
        let order: [&mut Option<Result<OutputLine, GpioError>>; 2] =
            if night { [&mut self.ir_cut, &mut self.ir_led] } else { [&mut self.ir_led, &mut self.ir_cut] };
        for l in order.into_iter().flatten() {
            if let Ok(line) = l {
                if let Err(e) = line.set(night) {
                    log::error!("{e}");
                    errors.push(e.to_string());
                }
            }
        }
        errors
    }
}

/// Opens the lines and starts the thread. Returns what the pipeline shares, the event stream and
/// the thread.
pub fn start(
    c: &NightConfig,
    hub: Arc<Hub>,
    stop: Arc<AtomicBool>,
) -> Result<(Arc<NightShared>, tokio::sync::mpsc::Receiver<NightEvent>, std::thread::JoinHandle<()>), String> {
    let params = params(c);
    params.validate().map_err(|e| format!("[night] {e}"))?;
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    let status = NightStatus {
        mode: c.mode,
        state: State::Day,
        greyscale: c.greyscale,
        luma: None,
        dark: false,
        ir_led: line_status(&c.ir_led, &None),
        ir_cut: line_status(&c.ir_cut, &None),
        error: None,
    };
    let shared = Arc::new(NightShared { grey: AtomicBool::new(false), tx, status: Mutex::new(status) });
    let thread = std::thread::Builder::new()
        .name("night".into())
        .spawn({
            let (shared, c) = (shared.clone(), c.clone());
            move || night_loop(&c, params, &shared, rx, &hub, &stop, &events_tx)
        })
        .map_err(|e| format!("cannot start thread night: {e}"))?;
    Ok((shared, events_rx, thread))
}

fn night_loop(
    c: &NightConfig,
    params: NightParams,
    shared: &NightShared,
    rx: mpsc::Receiver<Msg>,
    hub: &Hub,
    stop: &AtomicBool,
    events: &tokio::sync::mpsc::Sender<NightEvent>,
) {
    let mut lines = Lines::open(c);
    let mut policy = NightPolicy::new(params, c.mode);
    let mut watchers = usize::MAX;
    let mut drive_errors: Vec<String> = Vec::new();
    let publish = |policy: &NightPolicy, lines: &Lines, drive_errors: &[String]| {
        let mut errors = lines.errors();
        errors.extend(drive_errors.iter().cloned());
        let s = NightStatus {
            mode: policy.mode(),
            state: policy.state(),
            greyscale: c.greyscale,
            luma: policy.luma(),
            dark: policy.dark(),
            ir_led: line_status(&c.ir_led, &lines.ir_led),
            ir_cut: line_status(&c.ir_cut, &lines.ir_cut),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        };
        *lock(&shared.status) = s;
    };
    publish(&policy, &lines, &drive_errors);
    while !stop.load(Ordering::Relaxed) {
        let mut reply = None;
        let now = Instant::now();
        match rx.recv_timeout(TICK) {
            Ok(Msg::Luma(y)) => policy.handle_input(now, Input::Luma(y)),
            Ok(Msg::Mode(m, r)) => {
                policy.handle_input(now, Input::Mode(m));
                reply = r;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let w = hub.demand.watchers();
        if w != watchers {
            watchers = w;
            policy.handle_input(now, Input::Watchers(w));
        }
        let mut changed = false;
        while let Some(out) = policy.poll_output() {
            let night = out.state == State::Night;
            // Driving a line to the level it has is harmless (one ioctl): no need to compare.
            drive_errors = lines.drive(night);
            shared.grey.store(night && c.greyscale, Ordering::Relaxed);
            log::info!(
                "night vision: {} (mode {}, reason {}, luma {})",
                out.state.as_str(),
                out.mode.as_str(),
                out.reason.as_str(),
                out.luma.map_or("-".into(), |l| l.to_string())
            );
            // Full: the room is behind; never wait here.
            let _ = events.try_send(NightEvent(out));
            changed = true;
        }
        if changed || reply.is_some() || policy.luma() != lock(&shared.status).luma {
            publish(&policy, &lines, &drive_errors);
        }
        if let Some(r) = reply {
            let _ = r.send(shared.status());
        }
    }
    // Shutting down: back to day, then the requests are dropped (the kernel releases the
    // lines; the day level is what they keep).
    lines.drive(false);
    shared.grey.store(false, Ordering::Relaxed);
    log::info!("night vision: lines driven to day and released");
}
