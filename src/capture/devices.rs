//! What cameras and sound devices this machine has: `peercam devices [--json]` and
//! `GET /api/devices`. Also the probing the V4L2 and ALSA sources use to choose a device.
//!
//! Cameras: every `/dev/video*` node that is a (single-planar) video capture device, with its
//! stable name from `/dev/v4l/by-id` or `/dev/v4l/by-path` when udev made one, every pixel
//! format × frame size × frame interval, and its controls. Sound: every ALSA card's capture
//! and playback PCM (`hw:C,D`) with formats, rates and channels, and the PCM names alsa-lib's
//! configuration defines (`default`, `plughw:…`, test PCMs).

use super::constraints::{
    AudioModes, FormatModes, Fraction, IntervalRange, SizeModes, SizeRange, VideoDeviceModes,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use v4l::video::Capture;

#[derive(Debug, Clone, Serialize)]
pub struct DeviceList {
    pub video: Vec<VideoDevice>,
    pub audio: Vec<AudioDevice>,
    /// PCM names from alsa-lib's configuration (hints), for `audio.device`.
    pub audio_pcm_names: Vec<PcmName>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VideoDevice {
    /// Stable name: the `/dev/v4l/by-id` link name, else the `by-path` one, else the node.
    pub id: String,
    /// The device node, e.g. `/dev/video0`.
    pub path: String,
    /// Every `/dev/v4l/by-*` link that points at the node.
    pub links: Vec<String>,
    pub card: String,
    pub driver: String,
    pub bus: String,
    pub formats: Vec<FormatModes>,
    pub controls: Vec<ControlInfo>,
}

impl VideoDevice {
    /// The names a `device` constraint may use for this camera.
    pub fn names(&self) -> Vec<String> {
        let mut n = vec![self.id.clone(), self.path.clone()];
        for l in &self.links {
            n.push(l.clone());
            if let Some(base) = Path::new(l).file_name() {
                n.push(base.to_string_lossy().into_owned());
            }
        }
        n.push(self.card.clone());
        if self.driver == super::libcamera::DRIVER {
            n.push(self.driver.clone());
        }
        n.dedup();
        n
    }

    pub fn modes(&self) -> VideoDeviceModes {
        VideoDeviceModes { names: self.names(), formats: self.formats.clone() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlInfo {
    /// The config key: the name lower-cased, non-alphanumerics as `_` (as v4l2-ctl prints it).
    pub key: String,
    pub name: String,
    pub id: u32,
    #[serde(rename = "type")]
    pub typ: String,
    pub min: i64,
    pub max: i64,
    pub step: u64,
    pub default: i64,
    pub current: Option<i64>,
    /// Menu items: value → name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub menu: BTreeMap<i64, String>,
    pub read_only: bool,
    pub inactive: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AudioDevice {
    /// The PCM name to put in `audio.device`, e.g. `hw:0,1`.
    pub pcm: String,
    /// `capture` or `playback`.
    pub direction: &'static str,
    pub card: String,
    pub card_id: String,
    pub device_name: String,
    /// Sample formats the hardware takes, e.g. `S16_LE`.
    pub formats: Vec<String>,
    pub rate_min: u32,
    pub rate_max: u32,
    pub channels_min: u32,
    pub channels_max: u32,
    /// Why the PCM could not be probed (busy, …), if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AudioDevice {
    pub fn names(&self) -> Vec<String> {
        vec![
            self.pcm.clone(),
            format!("plug{}", self.pcm),
            self.card.clone(),
            self.card_id.clone(),
            self.device_name.clone(),
        ]
    }

    pub fn modes(&self) -> AudioModes {
        AudioModes {
            names: self.names(),
            rate_min: self.rate_min,
            rate_max: self.rate_max,
            channels_min: self.channels_min,
            channels_max: self.channels_max,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PcmName {
    pub name: String,
    pub description: String,
    /// `capture`, `playback` or `both`.
    pub direction: &'static str,
}

/// Everything, for the CLI and the API.
pub fn list() -> DeviceList {
    DeviceList { video: list_video(), audio: list_audio(), audio_pcm_names: list_pcm_names() }
}

/// `/dev/videoN` nodes in numeric order.
fn video_nodes() -> Vec<PathBuf> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("video")?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| p).collect()
}

/// `/dev/v4l/by-id/*` and `/dev/v4l/by-path/*` links by the node they resolve to.
fn v4l_links() -> BTreeMap<PathBuf, Vec<PathBuf>> {
    let mut map: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for dir in ["/dev/v4l/by-id", "/dev/v4l/by-path"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Ok(target) = std::fs::canonicalize(e.path()) {
                map.entry(target).or_default().push(e.path());
            }
        }
    }
    map
}

/// Every V4L2 video capture device. Nodes that are not capture devices (metadata nodes,
/// encoders, outputs) are left out; nodes that cannot be opened are logged at debug level.
///
/// Under libcamera's V4L2 layer every capture node of a camera's media device opens the same
/// libcamera camera: it is listed once (its first node), and libcamera cameras come first (the
/// camera module the appliance is built around, before a USB webcam that happens to be there).
pub fn list_video() -> Vec<VideoDevice> {
    let links = v4l_links();
    let mut out: Vec<VideoDevice> = Vec::new();
    for node in video_nodes() {
        match probe_video(&node, &links) {
            Ok(Some(d)) => {
                let dup = d.driver == super::libcamera::DRIVER
                    && out.iter().any(|o| o.driver == d.driver && o.bus == d.bus);
                if !dup {
                    out.push(d);
                }
            }
            Ok(None) => {}
            Err(e) => log::debug!("{}: {e}", node.display()),
        }
    }
    out.sort_by_key(|d| d.driver != super::libcamera::DRIVER);
    out
}

/// Probes one node: `Ok(None)` if it is not a video capture device.
pub fn probe_video(node: &Path, links: &BTreeMap<PathBuf, Vec<PathBuf>>) -> Result<Option<VideoDevice>, String> {
    let dev = v4l::Device::with_path(node).map_err(|e| format!("cannot open: {e}"))?;
    let caps = dev.query_caps().map_err(|e| format!("not a V4L2 device: {e}"))?;
    if !caps.capabilities.contains(v4l::capability::Flags::VIDEO_CAPTURE) {
        return Ok(None);
    }
    let libcamera = caps.driver == super::libcamera::DRIVER;
    if !libcamera
        && super::libcamera::querycap_fd(dev.handle().fd()).is_some_and(|(_, c)| c & super::libcamera::CAP_IO_MC != 0)
    {
        // Unicam, vimc, …: raw frames from a pipeline only the media controller sets up.
        return Err(format!(
            "{} ({}) is a media-controller capture node: its camera is used through libcamera \
             (src/capture/libcamera/README.md), not as a plain V4L2 camera",
            caps.card, caps.driver
        ));
    }
    let canonical = std::fs::canonicalize(node).unwrap_or_else(|_| node.to_path_buf());
    let mut my_links: Vec<PathBuf> = links.get(&canonical).cloned().unwrap_or_default();
    my_links.sort_by_key(|l| !l.starts_with("/dev/v4l/by-id"));
    let id = my_links
        .first()
        .and_then(|l| l.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| node.display().to_string());
    Ok(Some(VideoDevice {
        id,
        path: node.display().to_string(),
        links: my_links.iter().map(|l| l.display().to_string()).collect(),
        card: caps.card.clone(),
        driver: caps.driver.clone(),
        bus: caps.bus.clone(),
        formats: if libcamera { libcamera_rates(&dev, enumerate_formats(&dev)) } else { enumerate_formats(&dev) },
        controls: enumerate_controls(&dev),
    }))
}

/// libcamera's V4L2 layer enumerates no frame intervals. With `VIDIOC_G_PARM` (libcamera ≥ 0.3.2,
/// which turns `S_PARM` into `FrameDurationLimits`) every size is offered at 1..=MAX_FPS;
/// without it (0.0.x up to 0.3.1) the rate cannot be set and each size is listed at a nominal
/// `NOMINAL_FPS` (the camera runs at libcamera's default rate).
fn libcamera_rates(dev: &v4l::Device, mut formats: Vec<FormatModes>) -> Vec<FormatModes> {
    use super::libcamera::{MAX_FPS, NOMINAL_FPS};
    let settable = dev.params().is_ok();
    for f in &mut formats {
        for s in &mut f.sizes {
            if matches!(&s.intervals, IntervalRange::Discrete { intervals } if intervals.is_empty()) {
                s.intervals = if settable {
                    IntervalRange::Stepwise {
                        min: Fraction::new(1, MAX_FPS),
                        max: Fraction::new(1, 1),
                        step: Fraction::new(1, 1000),
                    }
                } else {
                    IntervalRange::Discrete { intervals: vec![Fraction::new(1, NOMINAL_FPS)] }
                };
            }
        }
    }
    formats
}

fn frac(f: v4l::Fraction) -> Fraction {
    Fraction::new(f.numerator, f.denominator)
}

fn enumerate_formats(dev: &v4l::Device) -> Vec<FormatModes> {
    let mut out = Vec::new();
    for desc in dev.enum_formats().unwrap_or_default() {
        let fourcc = super::constraints::FourCc(desc.fourcc.repr);
        let mut sizes = Vec::new();
        for fs in dev.enum_framesizes(desc.fourcc).unwrap_or_default() {
            let (size, probe) = match fs.size {
                v4l::framesize::FrameSizeEnum::Discrete(d) => {
                    (SizeRange::Discrete { width: d.width, height: d.height }, (d.width, d.height))
                }
                v4l::framesize::FrameSizeEnum::Stepwise(s) => (
                    SizeRange::Stepwise {
                        min_width: s.min_width,
                        max_width: s.max_width,
                        step_width: s.step_width,
                        min_height: s.min_height,
                        max_height: s.max_height,
                        step_height: s.step_height,
                    },
                    // Intervals of a stepwise size are asked at its largest size.
                    (s.max_width, s.max_height),
                ),
            };
            let ivals = dev.enum_frameintervals(desc.fourcc, probe.0, probe.1).unwrap_or_default();
            let mut discrete = Vec::new();
            let mut intervals = None;
            for iv in ivals {
                match iv.interval {
                    v4l::frameinterval::FrameIntervalEnum::Discrete(f) => discrete.push(frac(f)),
                    v4l::frameinterval::FrameIntervalEnum::Stepwise(s) => {
                        intervals = Some(IntervalRange::Stepwise { min: frac(s.min), max: frac(s.max), step: frac(s.step) })
                    }
                }
            }
            let intervals = intervals.unwrap_or(IntervalRange::Discrete { intervals: discrete });
            sizes.push(SizeModes { size, intervals });
        }
        out.push(FormatModes { fourcc, description: desc.description.clone(), sizes });
    }
    out
}

/// v4l2-ctl's control key: "Power Line Frequency" → `power_line_frequency`.
pub fn control_key(name: &str) -> String {
    let mut key = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            key.push(c.to_ascii_lowercase());
        } else if !key.ends_with('_') && !key.is_empty() {
            key.push('_');
        }
    }
    key.trim_end_matches('_').to_string()
}

fn enumerate_controls(dev: &v4l::Device) -> Vec<ControlInfo> {
    use v4l::control::{Flags, MenuItem, Type};
    let mut out = Vec::new();
    // The v4l crate panics on control types it does not know (newer compound types): list
    // none rather than take the process down.
    let all = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dev.query_controls())) {
        Ok(r) => r.unwrap_or_default(),
        Err(_) => {
            log::warn!("cannot list the controls of this camera (unknown control type)");
            Vec::new()
        }
    };
    for d in all {
        if d.flags.contains(Flags::DISABLED) {
            continue;
        }
        let typ = match d.typ {
            Type::Integer => "int",
            Type::Boolean => "bool",
            Type::Menu => "menu",
            Type::IntegerMenu => "intmenu",
            Type::Button => "button",
            Type::Integer64 => "int64",
            Type::Bitmask => "bitmask",
            Type::String => "string",
            _ => continue, // control classes and compound types
        };
        let current = if d.flags.contains(Flags::WRITE_ONLY) || !matches!(d.typ, Type::Integer | Type::Boolean | Type::Menu | Type::IntegerMenu | Type::Integer64) {
            None
        } else {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dev.control(d.id))).unwrap_or_else(|_| Err(std::io::Error::other("panic"))) {
                Ok(c) => match c.value {
                    v4l::control::Value::Integer(v) => Some(v),
                    v4l::control::Value::Boolean(b) => Some(b as i64),
                    _ => None,
                },
                Err(_) => None,
            }
        };
        let menu = d
            .items
            .as_ref()
            .map(|items| {
                items
                    .iter()
                    .map(|(i, item)| {
                        let name = match item {
                            MenuItem::Name(n) => n.clone(),
                            MenuItem::Value(v) => v.to_string(),
                        };
                        (*i as i64, name)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ControlInfo {
            key: control_key(&d.name),
            name: d.name.clone(),
            id: d.id,
            typ: typ.into(),
            min: d.minimum,
            max: d.maximum,
            step: d.step,
            default: d.default,
            current,
            menu,
            read_only: d.flags.contains(Flags::READ_ONLY),
            inactive: d.flags.contains(Flags::INACTIVE),
        });
    }
    out
}

/// Every ALSA card's PCM devices, both directions.
pub fn list_audio() -> Vec<AudioDevice> {
    let mut out = Vec::new();
    for card in alsa::card::Iter::new().flatten() {
        let index = card.get_index();
        let Ok(ctl) = alsa::Ctl::from_card(&card, false) else { continue };
        let (card_name, card_id) = match ctl.card_info() {
            Ok(info) => (info.get_name().unwrap_or("").to_string(), info.get_id().unwrap_or("").to_string()),
            Err(_) => (card.get_name().unwrap_or_default(), String::new()),
        };
        for dev in alsa::ctl::DeviceIter::new(&ctl) {
            for (dir, dname) in [(alsa::Direction::Capture, "capture"), (alsa::Direction::Playback, "playback")] {
                let Ok(info) = ctl.pcm_info(dev as u32, 0, dir) else { continue };
                let pcm = format!("hw:{index},{dev}");
                let mut d = AudioDevice {
                    pcm: pcm.clone(),
                    direction: dname,
                    card: card_name.clone(),
                    card_id: card_id.clone(),
                    device_name: info.get_name().unwrap_or("").to_string(),
                    formats: Vec::new(),
                    rate_min: 0,
                    rate_max: 0,
                    channels_min: 0,
                    channels_max: 0,
                    error: None,
                };
                match probe_pcm(&pcm, dir) {
                    Ok(p) => {
                        d.formats = p.formats;
                        (d.rate_min, d.rate_max, d.channels_min, d.channels_max) =
                            (p.rate_min, p.rate_max, p.channels_min, p.channels_max);
                    }
                    Err(e) => d.error = Some(e),
                }
                out.push(d);
            }
        }
    }
    out
}

/// What one PCM accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct PcmCaps {
    pub formats: Vec<String>,
    pub rate_min: u32,
    pub rate_max: u32,
    pub channels_min: u32,
    pub channels_max: u32,
}

/// Sample formats worth naming (and the ones the capture source can read).
pub const PROBED_FORMATS: [(alsa::pcm::Format, &str); 6] = [
    (alsa::pcm::Format::S16LE, "S16_LE"),
    (alsa::pcm::Format::S32LE, "S32_LE"),
    (alsa::pcm::Format::S24LE, "S24_LE"),
    (alsa::pcm::Format::S243LE, "S24_3LE"),
    (alsa::pcm::Format::FloatLE, "FLOAT_LE"),
    (alsa::pcm::Format::U8, "U8"),
];

/// Opens `name` non-blocking and reads its hardware parameter space. Errors name the PCM.
pub fn probe_pcm(name: &str, dir: alsa::Direction) -> Result<PcmCaps, String> {
    let pcm = alsa::PCM::new(name, dir, true).map_err(|e| describe_open_error(name, e))?;
    let hw = alsa::pcm::HwParams::any(&pcm).map_err(|e| format!("{name}: {e}"))?;
    let formats = PROBED_FORMATS
        .iter()
        .filter(|(f, _)| hw.test_format(*f).is_ok())
        .map(|(_, n)| n.to_string())
        .collect();
    Ok(PcmCaps {
        formats,
        rate_min: hw.get_rate_min().unwrap_or(0),
        rate_max: hw.get_rate_max().unwrap_or(0),
        channels_min: hw.get_channels_min().unwrap_or(0),
        channels_max: hw.get_channels_max().unwrap_or(0),
    })
}

pub fn describe_open_error(name: &str, e: alsa::Error) -> String {
    match e.errno() {
        libc::EBUSY => format!("ALSA PCM {name} is busy (another program has it open)"),
        libc::ENOENT | libc::ENODEV | libc::ENXIO => format!("ALSA PCM {name} does not exist"),
        _ => format!("cannot open ALSA PCM {name}: {e}"),
    }
}

/// PCM names alsa-lib's configuration defines.
pub fn list_pcm_names() -> Vec<PcmName> {
    let Ok(hints) = alsa::device_name::HintIter::new_str(None, "pcm") else { return Vec::new() };
    hints
        .filter_map(|h| {
            let name = h.name?;
            Some(PcmName {
                name,
                description: h.desc.unwrap_or_default().replace('\n', " "),
                direction: match h.direction {
                    Some(alsa::Direction::Capture) => "capture",
                    Some(alsa::Direction::Playback) => "playback",
                    None => "both",
                },
            })
        })
        .collect()
}

/// `peercam devices` without `--json`.
pub fn render_text(list: &DeviceList) -> String {
    let mut s = String::new();
    if list.video.is_empty() {
        s.push_str("No V4L2 capture devices.\n");
    }
    for d in &list.video {
        let _ = writeln!(s, "Camera {}  ({})", d.id, d.path);
        let _ = writeln!(s, "  card: {}  driver: {}  bus: {}", d.card, d.driver, d.bus);
        for l in &d.links {
            let _ = writeln!(s, "  link: {l}");
        }
        for f in &d.formats {
            let _ = writeln!(s, "  format {} ({})", f.fourcc, f.description);
            for sz in &f.sizes {
                let size = match &sz.size {
                    SizeRange::Discrete { width, height } => format!("{width}x{height}"),
                    SizeRange::Stepwise { min_width, max_width, step_width, min_height, max_height, step_height } => {
                        format!("{min_width}x{min_height} - {max_width}x{max_height} step {step_width}/{step_height}")
                    }
                };
                let rates = match &sz.intervals {
                    IntervalRange::Discrete { intervals } => {
                        intervals.iter().map(|i| fmt_rate(i.fps())).collect::<Vec<_>>().join(", ")
                    }
                    IntervalRange::Stepwise { min, max, .. } => format!("{}-{}", fmt_rate(max.fps()), fmt_rate(min.fps())),
                };
                let _ = writeln!(s, "    {size:>12} @ {rates} fps");
            }
        }
        if !d.controls.is_empty() {
            let _ = writeln!(s, "  controls ([video.controls] key = value):");
        }
        for c in &d.controls {
            let cur = c.current.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            let mut line = format!(
                "    {:<32} {:<7} min={} max={} step={} default={} value={}",
                c.key, c.typ, c.min, c.max, c.step, c.default, cur
            );
            if c.read_only {
                line.push_str(" (read-only)");
            }
            if c.inactive {
                line.push_str(" (inactive)");
            }
            let _ = writeln!(s, "{line}");
            for (v, n) in &c.menu {
                let _ = writeln!(s, "        {v}: {n}");
            }
        }
    }
    if list.audio.is_empty() {
        s.push_str("No ALSA sound cards.\n");
    }
    for a in &list.audio {
        let _ = write!(s, "Sound {} {:<8} {} / {}", a.pcm, a.direction, a.card, a.device_name);
        match &a.error {
            Some(e) => {
                let _ = writeln!(s, "  ({e})");
            }
            None => {
                let _ = writeln!(
                    s,
                    "\n  formats: {}  rates: {}-{} Hz  channels: {}-{}",
                    a.formats.join(" "),
                    a.rate_min,
                    a.rate_max,
                    a.channels_min,
                    a.channels_max
                );
            }
        }
    }
    if !list.audio_pcm_names.is_empty() {
        s.push_str("ALSA PCM names (audio.device):\n");
        for p in &list.audio_pcm_names {
            let _ = writeln!(s, "  {:<40} {:<8} {}", p.name, p.direction, p.description);
        }
    }
    s
}

fn fmt_rate(fps: f64) -> String {
    if (fps - fps.round()).abs() < 0.005 { format!("{}", fps.round()) } else { format!("{fps:.2}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_keys_match_v4l2_ctl() {
        assert_eq!(control_key("Power Line Frequency"), "power_line_frequency");
        assert_eq!(control_key("Exposure Time, Absolute"), "exposure_time_absolute");
        assert_eq!(control_key("White Balance Temperature, Auto"), "white_balance_temperature_auto");
        assert_eq!(control_key("Brightness"), "brightness");
        assert_eq!(control_key("Gain, Automatic"), "gain_automatic");
    }

    #[test]
    fn listing_without_devices_does_not_fail() {
        // This machine may have no camera or sound card at all: the listing is then empty, not
        // an error, and renders as such.
        let l = list();
        let text = render_text(&l);
        assert!(!text.is_empty());
        serde_json::to_string(&l).unwrap();
    }
}
