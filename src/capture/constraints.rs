//! Constraint resolution in the manner of getUserMedia (W3C Media Capture and Streams, §
//! "SelectSettings"): every constraint is a plain value (= `ideal`) or `{ exact | min | max |
//! ideal }`; each candidate setting gets a *fitness distance* (∞ if a required bound fails,
//! otherwise the sum of `|actual − ideal| / max(|actual|, |ideal|)` over numeric ideals and
//! 0 / 1 for string ideals) and the smallest distance wins. When nothing satisfies the required
//! bounds, the error names one constraint that cannot be met (the spec's `OverconstrainedError`).
//!
//! Pure logic: no device I/O. `v4l2` and `alsa` describe what a device offers as mode lists
//! (format × size × frame interval, or sample rate × channels), this module chooses.
//!
//! Ties (equal fitness distance) are broken by how cheap the pixel format is to turn into I420
//! (I420 < NV12 < YUYV/UYVY < MJPEG < camera H.264), then by the higher frame rate, then by the
//! larger picture. Frame rates are the device's own intervals: frames are never decimated.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Relative tolerance for `exact`/`min`/`max` checks on non-integer values (frame rates given as
/// fractions, aspect ratios).
const EPS: f64 = 1e-6;

// ---------------------------------------------------------------------------------------------
// Constraint values
// ---------------------------------------------------------------------------------------------

/// A numeric constraint (ConstrainDouble / ConstrainULong). A bare number in the config is `ideal`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NumConstraint {
    pub exact: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub ideal: Option<f64>,
}

impl NumConstraint {
    pub fn ideal(v: f64) -> Self {
        Self { ideal: Some(v), ..Self::default() }
    }

    pub fn exact(v: f64) -> Self {
        Self { exact: Some(v), ..Self::default() }
    }

    /// Whether any of `exact`, `min`, `max` is set (the constraint can fail).
    pub fn is_required(&self) -> bool {
        self.exact.is_some() || self.min.is_some() || self.max.is_some()
    }

    /// Whether `v` meets `exact`, `min` and `max`.
    pub fn satisfied_by(&self, v: f64) -> bool {
        let tol = |x: f64| EPS * x.abs().max(1.0);
        if let Some(e) = self.exact {
            if (v - e).abs() > tol(e) {
                return false;
            }
        }
        if let Some(m) = self.min {
            if v < m - tol(m) {
                return false;
            }
        }
        if let Some(m) = self.max {
            if v > m + tol(m) {
                return false;
            }
        }
        true
    }

    /// The W3C fitness distance of `v` against this constraint.
    pub fn distance(&self, v: f64) -> f64 {
        if !self.satisfied_by(v) {
            return f64::INFINITY;
        }
        match self.ideal {
            Some(ideal) if v != ideal => (v - ideal).abs() / v.abs().max(ideal.abs()),
            _ => 0.0,
        }
    }

    /// The values worth trying inside a continuous range `min..=max` (step `step`): its ends and
    /// every bound or ideal this constraint names, snapped to the step and clamped.
    pub fn probe_points(&self, min: f64, max: f64, step: f64, extra: &[f64]) -> Vec<f64> {
        let mut pts = vec![min, max];
        let named = [self.exact, self.min, self.max, self.ideal];
        for v in named.iter().flatten().chain(extra) {
            let clamped = v.clamp(min, max);
            if step > 0.0 {
                let k = ((clamped - min) / step).round();
                let snapped = (min + k * step).clamp(min, max);
                pts.push(snapped);
                // The neighbour on the other side of the value, in case rounding lost it.
                pts.push((snapped + step).min(max));
                pts.push((snapped - step).max(min));
            } else {
                pts.push(clamped);
            }
        }
        pts.sort_by(|a, b| a.total_cmp(b));
        pts.dedup();
        pts
    }

    fn check(&self) -> Result<(), String> {
        for (k, v) in [("exact", self.exact), ("min", self.min), ("max", self.max), ("ideal", self.ideal)] {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(format!("{k} = {v}: expected a non-negative number"));
                }
            }
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max) {
            if lo > hi {
                return Err(format!("min = {lo} is greater than max = {hi}"));
            }
        }
        if let Some(e) = self.exact {
            if !self.satisfied_by(e) {
                return Err(format!("exact = {e} lies outside min/max"));
            }
        }
        if self.exact.is_none() && self.min.is_none() && self.max.is_none() && self.ideal.is_none() {
            return Err("empty constraint: give a number or one of exact, min, max, ideal".into());
        }
        Ok(())
    }
}

impl fmt::Display for NumConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (k, v) in [("exact", self.exact), ("min", self.min), ("max", self.max), ("ideal", self.ideal)] {
            if let Some(v) = v {
                parts.push(format!("{k} {v}"));
            }
        }
        f.write_str(&parts.join(", "))
    }
}

impl<'de> Deserialize<'de> for NumConstraint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NumConstraint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number (the ideal value) or a table with exact, min, max and/or ideal")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumConstraint, E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumConstraint, E> {
                self.visit_f64(v as f64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumConstraint, E> {
                let c = NumConstraint::ideal(v);
                c.check().map_err(E::custom)?;
                Ok(c)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NumConstraint, A::Error> {
                let mut c = NumConstraint::default();
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "exact" => &mut c.exact,
                        "min" => &mut c.min,
                        "max" => &mut c.max,
                        "ideal" => &mut c.ideal,
                        other => {
                            return Err(de::Error::unknown_field(other, &["exact", "min", "max", "ideal"]));
                        }
                    };
                    *slot = Some(map.next_value::<f64>()?);
                }
                c.check().map_err(de::Error::custom)?;
                Ok(c)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for NumConstraint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.is_required() {
            if let Some(i) = self.ideal {
                return s.serialize_f64(i);
            }
        }
        let mut m = s.serialize_map(None)?;
        for (k, v) in [("exact", self.exact), ("min", self.min), ("max", self.max), ("ideal", self.ideal)] {
            if let Some(v) = v {
                m.serialize_entry(k, &v)?;
            }
        }
        m.end()
    }
}

/// A string constraint (ConstrainDOMString): device ids, pixel formats. A bare string is `ideal`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrConstraint {
    pub exact: Option<String>,
    pub ideal: Option<String>,
}

impl StrConstraint {
    pub fn ideal(v: &str) -> Self {
        Self { ideal: Some(v.into()), exact: None }
    }

    pub fn exact(v: &str) -> Self {
        Self { exact: Some(v.into()), ideal: None }
    }

    pub fn is_required(&self) -> bool {
        self.exact.is_some()
    }

    /// The value asked for (exact before ideal).
    pub fn wanted(&self) -> Option<&str> {
        self.exact.as_deref().or(self.ideal.as_deref())
    }

    /// Fitness distance of a candidate known by any of `names` (a device has several: stable id,
    /// node path, card name). Matching ignores ASCII case.
    pub fn distance(&self, names: &[&str]) -> f64 {
        let hit = |want: &str| names.iter().any(|n| n.eq_ignore_ascii_case(want));
        if let Some(e) = &self.exact {
            if !hit(e) {
                return f64::INFINITY;
            }
        }
        match &self.ideal {
            Some(i) if !hit(i) => 1.0,
            _ => 0.0,
        }
    }
}

impl fmt::Display for StrConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.exact, &self.ideal) {
            (Some(e), _) => write!(f, "exact {e:?}"),
            (None, Some(i)) => write!(f, "ideal {i:?}"),
            (None, None) => Ok(()),
        }
    }
}

impl<'de> Deserialize<'de> for StrConstraint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrConstraint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string (the ideal value) or a table with exact and/or ideal")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrConstraint, E> {
                if v.is_empty() {
                    return Err(E::custom("empty string"));
                }
                Ok(StrConstraint::ideal(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrConstraint, A::Error> {
                let mut c = StrConstraint::default();
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "exact" => &mut c.exact,
                        "ideal" => &mut c.ideal,
                        other => return Err(de::Error::unknown_field(other, &["exact", "ideal"])),
                    };
                    *slot = Some(map.next_value::<String>()?);
                }
                if c.exact.is_none() && c.ideal.is_none() {
                    return Err(de::Error::custom("empty constraint: give a string or exact / ideal"));
                }
                Ok(c)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for StrConstraint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (&self.exact, &self.ideal) {
            (None, Some(i)) => s.serialize_str(i),
            _ => {
                let mut m = s.serialize_map(None)?;
                if let Some(e) = &self.exact {
                    m.serialize_entry("exact", e)?;
                }
                if let Some(i) = &self.ideal {
                    m.serialize_entry("ideal", i)?;
                }
                m.end()
            }
        }
    }
}

/// `[video.constraints]`: what `getUserMedia({video: …})` would take.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VideoConstraints {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<NumConstraint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<NumConstraint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_rate: Option<NumConstraint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aspect_ratio: Option<NumConstraint>,
    /// V4L2 pixel format (FourCC such as `"YUYV"`, `"MJPG"`), or `"H264"` for camera passthrough.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<StrConstraint>,
}

/// `[audio.constraints]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConstraints {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<NumConstraint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_count: Option<NumConstraint>,
}

/// A V4L2 control value from `[video.controls]`: an integer, a boolean, or a menu item's name
/// (e.g. `power_line_frequency = "50 Hz"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlValue {
    Int(i64),
    Bool(bool),
    Menu(String),
}

impl fmt::Display for ControlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlValue::Int(v) => write!(f, "{v}"),
            ControlValue::Bool(v) => write!(f, "{v}"),
            ControlValue::Menu(v) => write!(f, "{v:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for ControlValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ControlValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer, a boolean or a menu item name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ControlValue, E> {
                Ok(ControlValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ControlValue, E> {
                i64::try_from(v).map(ControlValue::Int).map_err(|_| E::custom("integer too large"))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ControlValue, E> {
                Ok(ControlValue::Bool(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ControlValue, E> {
                Ok(ControlValue::Menu(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ControlValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ControlValue::Int(v) => s.serialize_i64(*v),
            ControlValue::Bool(v) => s.serialize_bool(*v),
            ControlValue::Menu(v) => s.serialize_str(v),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What a device offers
// ---------------------------------------------------------------------------------------------

/// A V4L2 pixel format code, e.g. `FourCc(*b"YUYV")`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FourCc(pub [u8; 4]);

impl FourCc {
    /// The code as text; a big-endian variant (bit 31 set, as V4L2 marks them) gets `-BE`,
    /// like v4l2-ctl prints it.
    pub fn as_str(&self) -> String {
        let mut b = self.0;
        let big_endian = b[3] & 0x80 != 0;
        b[3] &= 0x7f;
        let text: String = b.iter().map(|&c| if c.is_ascii_graphic() || c == b' ' { c as char } else { '?' }).collect();
        let text = text.trim_end();
        if big_endian { format!("{text}-BE") } else { text.to_string() }
    }

    pub fn parse(s: &str) -> Option<FourCc> {
        let (s, big_endian) = match s.strip_suffix("-BE") {
            Some(base) => (base, true),
            None => (s, false),
        };
        let b = s.as_bytes();
        if b.is_empty() || b.len() > 4 || !s.is_ascii() {
            return None;
        }
        let mut out = [b' '; 4];
        out[..b.len()].copy_from_slice(b);
        if big_endian {
            out[3] |= 0x80;
        }
        Some(FourCc(out))
    }
}

impl fmt::Debug for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// How a pixel format becomes I420, cheapest first. `None`: not supported.
pub fn format_cost(fourcc: FourCc, allow_h264: bool) -> Option<u32> {
    match &fourcc.0 {
        b"YU12" => Some(0),
        b"NV12" | b"NV21" | b"YV12" => Some(1),
        b"YUYV" | b"UYVY" | b"YVYU" | b"VYUY" => Some(2),
        b"MJPG" | b"JPEG" => Some(3),
        b"H264" if allow_h264 => Some(4),
        // Packed RGB (libcamera's vimc pipeline, some ISPs): a colour-space conversion per pixel.
        b"RGB3" | b"BGR3" => Some(5),
        _ => None,
    }
}

/// A frame interval in seconds, `num/den` (V4L2 `timeperframe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fraction {
    pub num: u32,
    pub den: u32,
}

impl Fraction {
    pub fn new(num: u32, den: u32) -> Self {
        Self { num, den }
    }

    pub fn fps(&self) -> f64 {
        if self.num == 0 { 0.0 } else { self.den as f64 / self.num as f64 }
    }

    /// The interval of `fps` frames per second, as a fraction with a millisecond-ish denominator.
    pub fn from_fps(fps: f64) -> Self {
        let den = (fps * 1000.0).round() as u32;
        let (mut a, mut b) = (1000u32, den.max(1));
        let g = gcd(a, b);
        a /= g;
        b /= g;
        Fraction { num: a, den: b }
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// Frame sizes a format offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SizeRange {
    Discrete { width: u32, height: u32 },
    Stepwise { min_width: u32, max_width: u32, step_width: u32, min_height: u32, max_height: u32, step_height: u32 },
}

/// Frame intervals offered at one size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum IntervalRange {
    Discrete { intervals: Vec<Fraction> },
    /// `min` is the shortest interval (highest rate).
    Stepwise { min: Fraction, max: Fraction, step: Fraction },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeModes {
    pub size: SizeRange,
    pub intervals: IntervalRange,
}

/// One pixel format with its sizes and intervals; serializes as `peercam devices --json` shows
/// it (and reads back, for fixtures).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormatModes {
    #[serde(serialize_with = "ser_fourcc", deserialize_with = "de_fourcc")]
    pub fourcc: FourCc,
    pub description: String,
    pub sizes: Vec<SizeModes>,
}

fn ser_fourcc<S: Serializer>(f: &FourCc, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&f.as_str())
}

fn de_fourcc<'de, D: Deserializer<'de>>(d: D) -> Result<FourCc, D::Error> {
    let s = String::deserialize(d)?;
    FourCc::parse(&s).ok_or_else(|| de::Error::custom(format!("{s:?} is not a FourCC")))
}

/// One concrete camera setting: what `VIDIOC_S_FMT` + `VIDIOC_S_PARM` get.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoMode {
    pub fourcc: FourCc,
    pub width: u32,
    pub height: u32,
    pub interval: Fraction,
}

impl VideoMode {
    pub fn fps(&self) -> f64 {
        self.interval.fps()
    }
}

impl fmt::Display for VideoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}x{} @ {} fps", self.fourcc, self.width, self.height, fmt_fps(self.fps()))
    }
}

fn fmt_fps(fps: f64) -> String {
    if (fps - fps.round()).abs() < 0.005 { format!("{}", fps.round()) } else { format!("{fps:.2}") }
}

/// A camera as the resolver sees it: the names it answers to and what it offers.
#[derive(Debug, Clone)]
pub struct VideoDeviceModes {
    /// Stable id (by-id / by-path link name), node path, card name … any of them selects it.
    pub names: Vec<String>,
    pub formats: Vec<FormatModes>,
}

/// Expands a mode list into the concrete settings worth scoring for `c`.
pub fn video_candidates(formats: &[FormatModes], c: &VideoConstraints) -> Vec<VideoMode> {
    let any = NumConstraint::default();
    let mut out = Vec::new();
    for f in formats {
        for s in &f.sizes {
            let sizes: Vec<(u32, u32)> = match s.size {
                SizeRange::Discrete { width, height } => vec![(width, height)],
                SizeRange::Stepwise { min_width, max_width, step_width, min_height, max_height, step_height } => {
                    let ws = c.width.as_ref().unwrap_or(&any).probe_points(
                        min_width as f64,
                        max_width as f64,
                        step_width.max(1) as f64,
                        &[],
                    );
                    let hs = c.height.as_ref().unwrap_or(&any).probe_points(
                        min_height as f64,
                        max_height as f64,
                        step_height.max(1) as f64,
                        &[],
                    );
                    let mut v = Vec::new();
                    for &w in &ws {
                        for &h in &hs {
                            v.push((w as u32, h as u32));
                        }
                    }
                    // Sizes that keep a wanted aspect ratio are worth a look as well.
                    if let Some(ar) = c.aspect_ratio.and_then(|a| a.exact.or(a.ideal)) {
                        for &w in &ws {
                            let h = (w / ar).round().clamp(min_height as f64, max_height as f64) as u32;
                            let h = h - (h - min_height) % step_height.max(1);
                            v.push((w as u32, h));
                        }
                    }
                    v
                }
            };
            let intervals: Vec<Fraction> = match &s.intervals {
                IntervalRange::Discrete { intervals } => intervals.clone(),
                IntervalRange::Stepwise { min, max, .. } => {
                    // Scored in frames per second; the device rounds to its step when set.
                    let (lo, hi) = (max.fps(), min.fps());
                    c.frame_rate
                        .as_ref()
                        .unwrap_or(&any)
                        .probe_points(lo, hi, 0.0, &[])
                        .into_iter()
                        .map(Fraction::from_fps)
                        .collect()
                }
            };
            for &(width, height) in &sizes {
                for &interval in &intervals {
                    out.push(VideoMode { fourcc: f.fourcc, width, height, interval });
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------------------------

/// No candidate meets the required constraints: the `OverconstrainedError` of the W3C model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("OverconstrainedError: {constraint} ({wanted}) cannot be satisfied by {subject}; it offers {offers}")]
pub struct Overconstrained {
    /// The constraint's config name, e.g. `frame_rate`.
    pub constraint: String,
    /// The constraint as given, e.g. `min 60`.
    pub wanted: String,
    /// The device (or "any device").
    pub subject: String,
    /// What the device does offer for that property, for the message.
    pub offers: String,
}

/// One named constraint applied to candidates of type `T`.
pub struct Criterion<'a, T> {
    pub name: &'static str,
    pub shown: String,
    pub required: bool,
    pub distance: Box<dyn Fn(&T) -> f64 + 'a>,
    /// What the candidates offer for this property, for the error message.
    pub offers: Box<dyn Fn(&[T]) -> String + 'a>,
}

/// SelectSettings: the candidate with the smallest total fitness distance; `tiebreak` orders
/// equals (smaller first). On failure, names the first constraint (in `criteria` order) that
/// alone rules out every candidate, else the one that empties the set when added in order.
pub fn select<T, K: PartialOrd>(
    candidates: &[T],
    criteria: &[Criterion<'_, T>],
    subject: &str,
    tiebreak: impl Fn(&T) -> K,
) -> Result<usize, Overconstrained> {
    let total = |t: &T| criteria.iter().map(|c| (c.distance)(t)).sum::<f64>();
    let mut best: Option<(usize, f64)> = None;
    for (i, t) in candidates.iter().enumerate() {
        let d = total(t);
        if !d.is_finite() {
            continue;
        }
        let better = match best {
            None => true,
            Some((j, bd)) => {
                d < bd - 1e-12 || ((d - bd).abs() <= 1e-12 && tiebreak(t) < tiebreak(&candidates[j]))
            }
        };
        if better {
            best = Some((i, d));
        }
    }
    if let Some((i, _)) = best {
        return Ok(i);
    }
    let fail = |c: &Criterion<'_, T>| Overconstrained {
        constraint: c.name.to_string(),
        wanted: c.shown.clone(),
        subject: subject.to_string(),
        offers: (c.offers)(candidates),
    };
    if candidates.is_empty() {
        return Err(Overconstrained {
            constraint: criteria.first().map(|c| c.name).unwrap_or("device").to_string(),
            wanted: criteria.first().map(|c| c.shown.clone()).unwrap_or_default(),
            subject: subject.to_string(),
            offers: "nothing usable".into(),
        });
    }
    for c in criteria.iter().filter(|c| c.required) {
        if candidates.iter().all(|t| !(c.distance)(t).is_finite()) {
            return Err(fail(c));
        }
    }
    let mut alive: Vec<&T> = candidates.iter().collect();
    for c in criteria.iter().filter(|c| c.required) {
        alive.retain(|t| (c.distance)(t).is_finite());
        if alive.is_empty() {
            return Err(fail(c));
        }
    }
    // Unreachable in practice (a non-required criterion is never infinite); name the first.
    Err(fail(&criteria[0]))
}

fn num_criterion<'a, T: 'a>(
    name: &'static str,
    c: Option<&'a NumConstraint>,
    get: impl Fn(&T) -> f64 + Clone + 'a,
    show: impl Fn(f64) -> String + 'a,
) -> Option<Criterion<'a, T>> {
    let c = c?;
    let g2 = get.clone();
    Some(Criterion {
        name,
        shown: c.to_string(),
        required: c.is_required(),
        distance: Box::new(move |t| c.distance(get(t))),
        offers: Box::new(move |all| {
            let mut vals: Vec<f64> = all.iter().map(&g2).collect();
            vals.sort_by(|a, b| a.total_cmp(b));
            vals.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
            let shown: Vec<String> = vals.iter().map(|&v| show(v)).collect();
            summarize(&shown)
        }),
    })
}

fn summarize(vals: &[String]) -> String {
    if vals.len() > 12 {
        format!("{} … {} ({} values)", vals[..6].join(", "), vals[vals.len() - 3..].join(", "), vals.len())
    } else {
        vals.join(", ")
    }
}

/// The result of resolving video constraints over one or more cameras.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoChoice {
    /// Index into the device list given to [`resolve_video`].
    pub device: usize,
    pub mode: VideoMode,
    pub fitness: f64,
}

/// Chooses a camera and mode. `device` is the device constraint (id, path or card name);
/// `allow_h264` admits camera H.264 (passthrough) as the last-resort format.
pub fn resolve_video(
    devices: &[VideoDeviceModes],
    device: Option<&StrConstraint>,
    c: &VideoConstraints,
    allow_h264: bool,
) -> Result<VideoChoice, Overconstrained> {
    struct Cand<'d> {
        device: usize,
        names: &'d [String],
        mode: VideoMode,
        cost: u32,
    }
    let mut cands = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let usable: Vec<FormatModes> =
            d.formats.iter().filter(|f| format_cost(f.fourcc, allow_h264).is_some()).cloned().collect();
        for mode in video_candidates(&usable, c) {
            if mode.width < 2 || mode.height < 2 || mode.interval.num == 0 {
                continue;
            }
            let cost = format_cost(mode.fourcc, allow_h264).unwrap_or(u32::MAX);
            cands.push(Cand { device: i, names: &d.names, mode, cost });
        }
    }
    let subject = match devices {
        [one] => one.names.first().cloned().unwrap_or_else(|| "the camera".into()),
        _ => "any camera".into(),
    };
    if cands.is_empty() {
        let offered: Vec<String> =
            devices.iter().flat_map(|d| d.formats.iter().map(|f| f.fourcc.as_str())).collect();
        return Err(Overconstrained {
            constraint: "format".into(),
            wanted: "a format peercam can convert (YU12, NV12, YUYV, UYVY, MJPG, RGB3, BGR3)".into(),
            subject,
            offers: if offered.is_empty() { "no capture formats".into() } else { summarize(&offered) },
        });
    }
    let mut criteria: Vec<Criterion<'_, Cand<'_>>> = Vec::new();
    if let Some(dc) = device {
        criteria.push(Criterion {
            name: "device",
            shown: dc.to_string(),
            required: dc.is_required(),
            distance: Box::new(move |t: &Cand| {
                let names: Vec<&str> = t.names.iter().map(String::as_str).collect();
                dc.distance(&names)
            }),
            offers: Box::new(|all: &[Cand]| {
                let mut v: Vec<String> = all.iter().map(|t| t.names.join(" / ")).collect();
                v.dedup();
                v.join("; ")
            }),
        });
    }
    if let Some(fc) = c.format.as_ref() {
        criteria.push(Criterion {
            name: "format",
            shown: fc.to_string(),
            required: fc.is_required(),
            distance: Box::new(move |t: &Cand| {
                let s = t.mode.fourcc.as_str();
                // "I420" is the common name of V4L2's YU12.
                let alias = if s == "YU12" { "I420" } else { s.as_str() };
                fc.distance(&[s.as_str(), alias])
            }),
            offers: Box::new(|all: &[Cand]| {
                let mut v: Vec<String> = all.iter().map(|t| t.mode.fourcc.as_str()).collect();
                v.sort();
                v.dedup();
                v.join(", ")
            }),
        });
    }
    let int = |v: f64| format!("{v}");
    criteria.extend(num_criterion("width", c.width.as_ref(), |t: &Cand| t.mode.width as f64, int));
    criteria.extend(num_criterion("height", c.height.as_ref(), |t: &Cand| t.mode.height as f64, int));
    criteria.extend(num_criterion("frame_rate", c.frame_rate.as_ref(), |t: &Cand| t.mode.fps(), fmt_fps));
    criteria.extend(num_criterion(
        "aspect_ratio",
        c.aspect_ratio.as_ref(),
        |t: &Cand| t.mode.width as f64 / t.mode.height as f64,
        |v| format!("{v:.3}"),
    ));
    let i = select(&cands, &criteria, &subject, |t| {
        (t.cost, -t.mode.fps(), -((t.mode.width * t.mode.height) as f64), t.device)
    })?;
    let fitness = criteria.iter().map(|c| (c.distance)(&cands[i])).sum();
    Ok(VideoChoice { device: cands[i].device, mode: cands[i].mode, fitness })
}

/// What an audio device offers (ALSA hw params are ranges).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioModes {
    pub names: Vec<String>,
    pub rate_min: u32,
    pub rate_max: u32,
    pub channels_min: u32,
    pub channels_max: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AudioChoice {
    pub device: usize,
    pub rate: u32,
    pub channels: u32,
}

/// Chooses a microphone, rate and channel count. Without constraints the pipeline's own
/// 48 kHz mono is ideal (no resampling, no downmix).
pub fn resolve_audio(
    devices: &[AudioModes],
    device: Option<&StrConstraint>,
    c: &AudioConstraints,
) -> Result<AudioChoice, Overconstrained> {
    let rate_c = c.sample_rate.unwrap_or(NumConstraint::ideal(48_000.0));
    let ch_c = c.channel_count.unwrap_or(NumConstraint::ideal(1.0));
    let mut cands: Vec<(usize, u32, u32)> = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let common = [8000.0, 16000.0, 32000.0, 44100.0, 48000.0, 96000.0];
        let rates = rate_c.probe_points(d.rate_min as f64, d.rate_max as f64, 1.0, &common);
        let chans = ch_c.probe_points(d.channels_min as f64, d.channels_max as f64, 1.0, &[1.0, 2.0]);
        for &r in &rates {
            for &ch in &chans {
                if r >= 1.0 && ch >= 1.0 {
                    cands.push((i, r as u32, ch as u32));
                }
            }
        }
    }
    let subject = match devices {
        [one] => one.names.first().cloned().unwrap_or_else(|| "the microphone".into()),
        _ => "any microphone".into(),
    };
    let mut criteria: Vec<Criterion<'_, (usize, u32, u32)>> = Vec::new();
    if let Some(dc) = device {
        criteria.push(Criterion {
            name: "device",
            shown: dc.to_string(),
            required: dc.is_required(),
            distance: Box::new(move |t: &(usize, u32, u32)| {
                let names: Vec<&str> = devices[t.0].names.iter().map(String::as_str).collect();
                dc.distance(&names)
            }),
            offers: Box::new(move |_| {
                devices.iter().map(|d| d.names.join(" / ")).collect::<Vec<_>>().join("; ")
            }),
        });
    }
    let ranges = move |f: fn(&AudioModes) -> (u32, u32)| {
        move |_: &[(usize, u32, u32)]| {
            devices
                .iter()
                .map(|d| {
                    let (a, b) = f(d);
                    if a == b { format!("{a}") } else { format!("{a}..{b}") }
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
    };
    criteria.push(Criterion {
        name: "sample_rate",
        shown: rate_c.to_string(),
        required: rate_c.is_required(),
        distance: Box::new(move |t: &(usize, u32, u32)| rate_c.distance(t.1 as f64)),
        offers: Box::new(ranges(|d| (d.rate_min, d.rate_max))),
    });
    criteria.push(Criterion {
        name: "channel_count",
        shown: ch_c.to_string(),
        required: ch_c.is_required(),
        distance: Box::new(move |t: &(usize, u32, u32)| ch_c.distance(t.2 as f64)),
        offers: Box::new(ranges(|d| (d.channels_min, d.channels_max))),
    });
    let i = select(&cands, &criteria, &subject, |t| (t.0, t.2, u32::MAX - t.1))?;
    let (device, rate, channels) = cands[i];
    Ok(AudioChoice { device, rate, channels })
}

// ---------------------------------------------------------------------------------------------
// `v4l2-ctl --list-formats-ext` text (the fixtures, and handy for bug reports)
// ---------------------------------------------------------------------------------------------

/// Parses the output of `v4l2-ctl --list-formats-ext` into mode lists. Interval lines keep the
/// frame rate v4l2-ctl printed (3 decimals), turned back into a fraction.
pub fn parse_v4l2_ctl_formats(text: &str) -> Result<Vec<FormatModes>, String> {
    let mut out: Vec<FormatModes> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let err = |m: &str| format!("line {}: {m}: {raw:?}", n + 1);
        if line.starts_with('[') {
            // [0]: 'YUYV' (YUYV 4:2:2)
            let q1 = line.find('\'').ok_or_else(|| err("no fourcc"))?;
            let q2 = line[q1 + 1..].find('\'').ok_or_else(|| err("no fourcc"))? + q1 + 1;
            let fourcc = FourCc::parse(&line[q1 + 1..q2]).ok_or_else(|| err("bad fourcc"))?;
            let description = line[q2 + 1..].trim().trim_start_matches('(').trim_end_matches(')').to_string();
            out.push(FormatModes { fourcc, description, sizes: Vec::new() });
        } else if let Some(rest) = line.strip_prefix("Size: Discrete ") {
            let (w, h) = rest.split_once('x').ok_or_else(|| err("bad size"))?;
            let f = out.last_mut().ok_or_else(|| err("size before format"))?;
            f.sizes.push(SizeModes {
                size: SizeRange::Discrete {
                    width: w.trim().parse().map_err(|_| err("bad width"))?,
                    height: h.trim().parse().map_err(|_| err("bad height"))?,
                },
                intervals: IntervalRange::Discrete { intervals: Vec::new() },
            });
        } else if let Some(rest) = line.strip_prefix("Size: Stepwise ").or(line.strip_prefix("Size: Continuous ")) {
            // 16x16 - 1920x1080 with step 1/1
            let nums: Vec<u32> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap_or(0))
                .collect();
            if nums.len() < 4 {
                return Err(err("bad stepwise size"));
            }
            let (sw, sh) = if nums.len() >= 6 { (nums[4], nums[5]) } else { (1, 1) };
            let f = out.last_mut().ok_or_else(|| err("size before format"))?;
            f.sizes.push(SizeModes {
                size: SizeRange::Stepwise {
                    min_width: nums[0],
                    min_height: nums[1],
                    max_width: nums[2],
                    max_height: nums[3],
                    step_width: sw,
                    step_height: sh,
                },
                intervals: IntervalRange::Discrete { intervals: Vec::new() },
            });
        } else if let Some(rest) = line.strip_prefix("Interval: Discrete ") {
            // 0.033s (30.000 fps)
            let fps: f64 = rest
                .split('(')
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| err("bad interval"))?;
            let s = out.last_mut().and_then(|f| f.sizes.last_mut()).ok_or_else(|| err("interval before size"))?;
            if let IntervalRange::Discrete { intervals } = &mut s.intervals {
                intervals.push(Fraction::from_fps(fps));
            }
        } else if let Some(rest) = line.strip_prefix("Interval: Stepwise ").or(line.strip_prefix("Interval: Continuous ")) {
            // 0.033s - 1.000s with step 0.000s (1.000-30.000 fps)
            let secs: Vec<f64> = rest
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.parse().ok())
                .collect();
            if secs.len() < 2 {
                return Err(err("bad stepwise interval"));
            }
            let to_frac = |s: f64| Fraction::from_fps(if s > 0.0 { 1.0 / s } else { 0.0 });
            let s = out.last_mut().and_then(|f| f.sizes.last_mut()).ok_or_else(|| err("interval before size"))?;
            s.intervals = IntervalRange::Stepwise {
                min: to_frac(secs[0]),
                max: to_frac(secs[1]),
                step: Fraction::new(1, 1000),
            };
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<FormatModes> {
        let path = format!("{}/tests/fixtures/modes/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        parse_v4l2_ctl_formats(&text).unwrap()
    }

    fn vivid() -> VideoDeviceModes {
        VideoDeviceModes {
            names: vec!["platform-vivid.0-video-index0".into(), "/dev/video0".into(), "vivid".into()],
            formats: fixture("vivid-webcam.txt"),
        }
    }

    fn c920() -> VideoDeviceModes {
        VideoDeviceModes {
            names: vec![
                "usb-046d_HD_Pro_Webcam_C920_8F3E1A2F-video-index0".into(),
                "/dev/video2".into(),
                "HD Pro Webcam C920".into(),
            ],
            formats: fixture("uvc-c920.txt"),
        }
    }

    fn vc(w: Option<NumConstraint>, h: Option<NumConstraint>, fr: Option<NumConstraint>) -> VideoConstraints {
        VideoConstraints { width: w, height: h, frame_rate: fr, ..Default::default() }
    }

    fn ideal(v: f64) -> Option<NumConstraint> {
        Some(NumConstraint::ideal(v))
    }

    fn pick(d: &VideoDeviceModes, c: &VideoConstraints) -> VideoMode {
        resolve_video(std::slice::from_ref(d), None, c, false).unwrap().mode
    }

    /// vivid's complete mode list (83 formats) as `peercam devices --json` printed it inside the
    /// rig-3 VM (docs/test-rigs.md; Debian arm64 kernel 6.1).
    fn vivid_from_the_vm() -> VideoDeviceModes {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/modes/vivid-6.1-devices.json");
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cam = &doc["video"][0];
        VideoDeviceModes {
            names: vec![cam["path"].as_str().unwrap().into(), cam["card"].as_str().unwrap().into()],
            formats: serde_json::from_value(cam["formats"].clone()).unwrap(),
        }
    }

    #[test]
    fn real_vivid_listing_from_the_vm() {
        let d = vivid_from_the_vm();
        assert_eq!(d.formats.len(), 83);
        // Default config (ideal 1280x720 @ 30): 720p at its best 12.5 fps, as a straight copy.
        let m = pick(&d, &vc(ideal(1280.0), ideal(720.0), ideal(30.0)));
        assert_eq!((m.fourcc.as_str().as_str(), m.width, m.height, m.fps()), ("YU12", 1280, 720, 12.5));
        // The VM test's constraints.
        for f in ["YUYV", "NV12"] {
            let c = VideoConstraints {
                format: Some(StrConstraint::exact(f)),
                ..vc(Some(NumConstraint::exact(640.0)), Some(NumConstraint::exact(480.0)), ideal(10.0))
            };
            let r = resolve_video(std::slice::from_ref(&d), Some(&StrConstraint::exact("vivid")), &c, false).unwrap();
            assert_eq!((r.mode.fourcc.as_str().as_str(), r.mode.width, r.mode.height, r.mode.fps()), (f, 640, 480, 10.0));
        }
        // vivid offers RGB 5-6-5, which peercam does not convert: asking for it names it.
        let c = VideoConstraints { format: Some(StrConstraint::exact("RGBP")), ..Default::default() };
        let e = resolve_video(&[d], None, &c, false).unwrap_err();
        assert_eq!(e.constraint, "format");
        assert!(e.offers.contains("YUYV") && !e.offers.contains("RGBP"), "{}", e.offers);
    }

    #[test]
    fn fourcc_text_round_trips_including_big_endian_variants() {
        for t in ["YUYV", "MJPG", "Y16", "Y16-BE", "RGB3"] {
            assert_eq!(FourCc::parse(t).unwrap().as_str(), t);
        }
        assert_eq!(FourCc(*b"Y16 ").as_str(), "Y16");
        assert_eq!(FourCc([b'Y', b'1', b'6', b' ' | 0x80]).as_str(), "Y16-BE");
        assert_eq!(FourCc::parse("TOOLONG"), None);
    }

    #[test]
    fn fitness_distance_follows_the_spec() {
        let c = NumConstraint::ideal(30.0);
        assert_eq!(c.distance(30.0), 0.0);
        assert!((c.distance(15.0) - 0.5).abs() < 1e-12);
        assert!((c.distance(60.0) - 0.5).abs() < 1e-12);
        let r = NumConstraint { min: Some(20.0), max: Some(40.0), ideal: Some(30.0), exact: None };
        assert_eq!(r.distance(19.0), f64::INFINITY);
        assert_eq!(r.distance(41.0), f64::INFINITY);
        assert!((r.distance(40.0) - 0.25).abs() < 1e-12);
        assert_eq!(NumConstraint::exact(25.0).distance(25.0), 0.0);
        assert_eq!(NumConstraint::exact(25.0).distance(30.0), f64::INFINITY);
        let s = StrConstraint::ideal("YUYV");
        assert_eq!(s.distance(&["YUYV"]), 0.0);
        assert_eq!(s.distance(&["MJPG"]), 1.0);
        assert_eq!(StrConstraint::exact("yuyv").distance(&["YUYV"]), 0.0);
        assert_eq!(StrConstraint::exact("MJPG").distance(&["YUYV"]), f64::INFINITY);
    }

    #[test]
    fn fixtures_parse_as_the_drivers_list_them() {
        let v = vivid();
        // vivid (webcam input) lists the same sizes for every format; 640x480 up to 25 fps,
        // 1280x720 up to 12.5 fps (docs/test-rigs.md, rig 3).
        let yuyv = v.formats.iter().find(|f| f.fourcc == FourCc(*b"YUYV")).unwrap();
        assert_eq!(yuyv.sizes.len(), 6);
        let max_fps = |w: u32, h: u32| {
            let s = yuyv.sizes.iter().find(|s| s.size == SizeRange::Discrete { width: w, height: h }).unwrap();
            match &s.intervals {
                IntervalRange::Discrete { intervals } => intervals.iter().map(|i| i.fps()).fold(0.0, f64::max),
                _ => panic!(),
            }
        };
        assert_eq!(max_fps(640, 480), 25.0);
        assert_eq!(max_fps(1280, 720), 12.5);
        let c = c920();
        assert_eq!(
            c.formats.iter().map(|f| f.fourcc.as_str()).collect::<Vec<_>>(),
            vec!["YUYV", "H264", "MJPG"]
        );
    }

    #[test]
    fn vivid_exact_640x480_picks_the_cheapest_format_at_the_highest_rate() {
        let c = vc(ideal(640.0), ideal(480.0), ideal(30.0));
        let m = pick(&vivid(), &c);
        assert_eq!((m.width, m.height), (640, 480));
        assert_eq!(m.fps(), 25.0);
        // YU12 is a straight copy; vivid offers it.
        assert_eq!(m.fourcc, FourCc(*b"YU12"));
    }

    #[test]
    fn format_constraint_selects_yuyv_or_nv12() {
        for f in ["YUYV", "NV12", "UYVY"] {
            let c = VideoConstraints {
                format: Some(StrConstraint::exact(f)),
                ..vc(Some(NumConstraint::exact(640.0)), Some(NumConstraint::exact(480.0)), ideal(25.0))
            };
            let m = pick(&vivid(), &c);
            assert_eq!(m.fourcc.as_str(), f);
            assert_eq!((m.width, m.height, m.fps()), (640, 480, 25.0));
        }
    }

    #[test]
    fn default_720p30_on_vivid_trades_rate_for_size_by_fitness() {
        // ideal 1280x720@30: 1280x720@12.5 scores 0.583, 640x360@30 scores 0.5+0.5 = 1.0 → 720p.
        let m = pick(&vivid(), &vc(ideal(1280.0), ideal(720.0), ideal(30.0)));
        assert_eq!((m.width, m.height), (1280, 720));
        assert_eq!(m.fps(), 12.5);
    }

    #[test]
    fn uvc_720p30_prefers_mjpeg_over_slow_yuyv() {
        // C920: YUYV 1280x720 only at 10 fps; MJPEG does 30. Fitness picks MJPEG, and camera
        // H.264 is only a candidate when passthrough is allowed.
        let m = pick(&c920(), &vc(ideal(1280.0), ideal(720.0), ideal(30.0)));
        assert_eq!(m.fourcc, FourCc(*b"MJPG"));
        assert_eq!((m.width, m.height, m.fps()), (1280, 720, 30.0));
    }

    #[test]
    fn uvc_640x480_at_30_prefers_raw_yuyv() {
        let m = pick(&c920(), &vc(ideal(640.0), ideal(480.0), ideal(30.0)));
        assert_eq!(m.fourcc, FourCc(*b"YUYV"));
        assert_eq!((m.width, m.height, m.fps()), (640, 480, 30.0));
    }

    #[test]
    fn h264_only_as_a_last_resort_or_when_asked_for() {
        let d = [c920()];
        let c = vc(ideal(1920.0), ideal(1080.0), ideal(30.0));
        let m = resolve_video(&d, None, &c, true).unwrap().mode;
        assert_eq!(m.fourcc, FourCc(*b"MJPG"), "equal fitness: MJPEG is cheaper than passthrough");
        let c = VideoConstraints { format: Some(StrConstraint::exact("H264")), ..c };
        let m = resolve_video(&d, None, &c, true).unwrap().mode;
        assert_eq!(m.fourcc, FourCc(*b"H264"));
        let e = resolve_video(&d, None, &c, false).unwrap_err();
        assert_eq!(e.constraint, "format");
    }

    #[test]
    fn min_and_max_bound_the_choice() {
        // At least 1280 wide and at least 20 fps on the C920: only MJPEG qualifies.
        let c = vc(
            Some(NumConstraint { min: Some(1280.0), ..Default::default() }),
            None,
            Some(NumConstraint { min: Some(20.0), ideal: Some(30.0), ..Default::default() }),
        );
        let m = pick(&c920(), &c);
        assert_eq!(m.fourcc, FourCc(*b"MJPG"));
        assert!(m.width >= 1280 && m.fps() >= 20.0, "{m}");
        // At most 10 fps with an ideal of 1080p: YUYV 1920x1080 @ 5 is raw but slower; MJPEG
        // 1920x1080 @ 10 is the better fit.
        let c = vc(ideal(1920.0), ideal(1080.0), Some(NumConstraint { max: Some(10.0), ideal: Some(10.0), ..Default::default() }));
        let m = pick(&c920(), &c);
        assert_eq!((m.width, m.height, m.fps()), (1920, 1080, 10.0));
    }

    #[test]
    fn aspect_ratio_constraint() {
        let c = VideoConstraints {
            aspect_ratio: Some(NumConstraint { exact: Some(4.0 / 3.0), ..Default::default() }),
            ..vc(ideal(1280.0), None, ideal(25.0))
        };
        let m = pick(&vivid(), &c);
        assert_eq!((m.width, m.height), (640, 480));
    }

    #[test]
    fn overconstrained_names_the_constraint_and_what_is_offered() {
        let e = resolve_video(&[vivid()], None, &vc(None, None, Some(NumConstraint::exact(60.0)).map(|mut c| {
            c.exact = None;
            c.min = Some(61.0);
            c
        })), false)
        .unwrap_err();
        assert_eq!(e.constraint, "frame_rate");
        assert!(e.to_string().contains("min 61"), "{e}");
        assert!(e.to_string().contains("60"), "offers should list rates: {e}");

        let e = resolve_video(&[c920()], None, &vc(Some(NumConstraint::exact(1000.0)), None, None), false)
            .unwrap_err();
        assert_eq!(e.constraint, "width");
        assert!(e.offers.contains("1920"), "{}", e.offers);

        // Each alone is possible (640 wide; 30 fps), together impossible on vivid → the second
        // in order is named.
        let e = resolve_video(
            &[vivid()],
            None,
            &vc(Some(NumConstraint::exact(1920.0)), None, Some(NumConstraint::exact(30.0))),
            false,
        )
        .unwrap_err();
        assert_eq!(e.constraint, "frame_rate");
        assert!(e.to_string().starts_with("OverconstrainedError: frame_rate"), "{e}");
    }

    #[test]
    fn device_constraint_by_id_path_or_name() {
        let devs = [vivid(), c920()];
        let c = vc(ideal(640.0), ideal(480.0), ideal(30.0));
        for name in ["/dev/video2", "HD Pro Webcam C920", "usb-046d_HD_Pro_Webcam_C920_8F3E1A2F-video-index0"] {
            let r = resolve_video(&devs, Some(&StrConstraint::exact(name)), &c, false).unwrap();
            assert_eq!(r.device, 1, "{name}");
        }
        // ideal: a missing device falls back to the best other one.
        let r = resolve_video(&devs, Some(&StrConstraint::ideal("/dev/video9")), &c, false).unwrap();
        assert_eq!(r.device, 1, "C920 does 640x480@30, vivid only @25");
        let e = resolve_video(&devs, Some(&StrConstraint::exact("/dev/video9")), &c, false).unwrap_err();
        assert_eq!(e.constraint, "device");
        assert!(e.offers.contains("/dev/video0") && e.offers.contains("/dev/video2"), "{}", e.offers);
    }

    #[test]
    fn unsupported_formats_only_is_a_clear_error() {
        let d = VideoDeviceModes {
            names: vec!["/dev/video5".into()],
            formats: vec![FormatModes {
                fourcc: FourCc(*b"BA81"),
                description: "8-bit Bayer BGBG/GRGR".into(),
                sizes: vec![SizeModes {
                    size: SizeRange::Discrete { width: 640, height: 480 },
                    intervals: IntervalRange::Discrete { intervals: vec![Fraction::new(1, 30)] },
                }],
            }],
        };
        let e = resolve_video(&[d], None, &VideoConstraints::default(), false).unwrap_err();
        assert_eq!(e.constraint, "format");
        assert!(e.to_string().contains("/dev/video5") && e.to_string().contains("BA81"), "{e}");
    }

    #[test]
    fn stepwise_sizes_and_continuous_intervals() {
        let text = "\t[0]: 'NV12' (Y/UV 4:2:0)\n\t\tSize: Stepwise 32x32 - 2592x1944 with step 2/2\n\t\t\tInterval: Continuous 0.017s - 1.000s (1.000-60.000 fps)\n";
        let d = VideoDeviceModes { names: vec!["isp".into()], formats: parse_v4l2_ctl_formats(text).unwrap() };
        let m = pick(&d, &vc(ideal(1280.0), ideal(720.0), ideal(30.0)));
        assert_eq!((m.width, m.height), (1280, 720));
        assert!((m.fps() - 30.0).abs() < 0.01, "{m}");
        let m = pick(&d, &vc(Some(NumConstraint { min: Some(2000.0), ..Default::default() }), ideal(1080.0), None));
        assert!(m.width >= 2000 && m.height == 1080, "{m}");
        let e = resolve_video(&[d], None, &vc(Some(NumConstraint { min: Some(3000.0), ..Default::default() }), None, None), false)
            .unwrap_err();
        assert_eq!(e.constraint, "width");
    }

    #[test]
    fn audio_prefers_48k_mono_and_honours_constraints() {
        let usb = AudioModes { names: vec!["hw:1,0".into(), "USB Audio".into()], rate_min: 44100, rate_max: 48000, channels_min: 2, channels_max: 2 };
        let any = AudioModes { names: vec!["default".into()], rate_min: 4000, rate_max: 4_294_967_295, channels_min: 1, channels_max: 10000 };
        let r = resolve_audio(&[usb.clone()], None, &AudioConstraints::default()).unwrap();
        assert_eq!((r.rate, r.channels), (48000, 2));
        let r = resolve_audio(&[any.clone()], None, &AudioConstraints::default()).unwrap();
        assert_eq!((r.rate, r.channels), (48000, 1));
        let c = AudioConstraints { sample_rate: Some(NumConstraint::exact(16000.0)), channel_count: None };
        let e = resolve_audio(&[usb.clone()], None, &c).unwrap_err();
        assert_eq!(e.constraint, "sample_rate");
        assert!(e.to_string().contains("44100..48000"), "{e}");
        let r = resolve_audio(&[usb.clone(), any.clone()], None, &c).unwrap();
        assert_eq!((r.device, r.rate), (1, 16000));
        let e = resolve_audio(&[usb.clone(), any], Some(&StrConstraint::exact("hw:7,0")), &AudioConstraints::default())
            .unwrap_err();
        assert_eq!(e.constraint, "device");
        let c = AudioConstraints { sample_rate: None, channel_count: Some(NumConstraint::exact(1.0)) };
        assert_eq!(resolve_audio(&[usb], None, &c).unwrap_err().constraint, "channel_count");
    }

    #[test]
    fn constraints_parse_from_toml_with_errors_naming_the_problem() {
        #[derive(Deserialize, Debug)]
        struct T {
            c: VideoConstraints,
        }
        let t: T = toml::from_str("[c]\nwidth = 640\nheight = { min = 360, ideal = 720 }\nframe_rate = 29.97\nformat = { exact = \"YUYV\" }\n").unwrap();
        assert_eq!(t.c.width, Some(NumConstraint::ideal(640.0)));
        assert_eq!(t.c.height, Some(NumConstraint { min: Some(360.0), ideal: Some(720.0), ..Default::default() }));
        assert_eq!(t.c.frame_rate, Some(NumConstraint::ideal(29.97)));
        assert_eq!(t.c.format, Some(StrConstraint::exact("YUYV")));
        for (text, what) in [
            ("[c]\nwidth = { mni = 3 }\n", "mni"),
            ("[c]\nwidth = { min = 800, max = 600 }\n", "greater than max"),
            ("[c]\nwidth = -5\n", "non-negative"),
            ("[c]\nwidht = 5\n", "widht"),
            ("[c]\nformat = 5\n", "string"),
            ("[c]\nwidth = {}\n", "empty"),
        ] {
            let e = toml::from_str::<T>(text).unwrap_err().to_string();
            assert!(e.contains(what), "{what:?} not in {e}");
            assert!(e.contains("line 2"), "{e}");
        }
        // Round trip through serialization.
        let s = toml::to_string(&t.c).unwrap();
        let again: VideoConstraints = toml::from_str(&s).unwrap();
        assert_eq!(again, t.c);
    }
}
