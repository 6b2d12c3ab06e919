//! `[night]`: night vision — IR LEDs and an IR-cut filter on GPIO lines, greyscale at night, and
//! when to switch (see `pipeline::night`). Documented in the README's configuration block.

use super::Ranged;
use serde::{Deserialize, Serialize};

/// `mode`: `off`, `on`, `auto` (from the picture's brightness) or `watching` (as `auto`, but
/// night only while at least one viewer watches video).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NightMode {
    #[default]
    Off,
    On,
    Auto,
    Watching,
}

impl NightMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NightMode::Off => "off",
            NightMode::On => "on",
            NightMode::Auto => "auto",
            NightMode::Watching => "watching",
        }
    }
}

/// A GPIO output line: `{ chip = "gpiochip0", line = 17, active_low = false }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawGpioLine")]
pub struct GpioLine {
    /// `gpiochipN` (under `/dev`) or an absolute path to the character device.
    pub chip: String,
    /// The line's offset on that chip (`gpioinfo` lists them; on a Pi, the BCM GPIO number on
    /// `gpiochip0` (Pi 5: `gpiochip4`)).
    pub line: u32,
    /// The wire is low when the LED shines / the filter is out.
    pub active_low: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpioLine {
    chip: String,
    line: Ranged<0, 1023>,
    #[serde(default)]
    active_low: bool,
}

impl TryFrom<RawGpioLine> for GpioLine {
    type Error = String;
    fn try_from(r: RawGpioLine) -> Result<Self, String> {
        let chip = r.chip.trim().to_string();
        let named = chip.strip_prefix("gpiochip").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let path = chip.starts_with("/dev/") && chip.len() > 5 && !chip.contains("..");
        if !named && !path {
            return Err(format!("chip {chip:?}: expected \"gpiochipN\" or a path under /dev such as \"/dev/gpiochip0\""));
        }
        Ok(GpioLine { chip, line: r.line.get(), active_low: r.active_low })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawNightConfig")]
pub struct NightConfig {
    pub mode: NightMode,
    /// Night pictures in greyscale (chroma set neutral before encoding).
    pub greyscale: bool,
    /// The IR LEDs (absent: none wired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ir_led: Option<GpioLine>,
    /// The IR-cut filter (absent: none wired); active = filter out (night), inactive = in (day).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ir_cut: Option<GpioLine>,
    /// Mean luma (0–255, video black = 16) under which the picture counts as dark.
    pub dark_below: Ranged<1, 254>,
    /// Mean luma over which it counts as bright; at least `dark_below` + 10.
    pub bright_above: Ranged<1, 254>,
    /// The picture must stay dark (bright) this long without a break before a switch.
    pub switch_after_s: Ranged<1, 600>,
    /// At least this long between two switches the light makes.
    pub min_hold_s: Ranged<0, 3600>,
}

impl Default for NightConfig {
    fn default() -> Self {
        Self {
            mode: NightMode::Off,
            greyscale: true,
            ir_led: None,
            ir_cut: None,
            dark_below: Ranged(40),
            bright_above: Ranged(100),
            switch_after_s: Ranged(5),
            min_hold_s: Ranged(60),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawNightConfig {
    mode: NightMode,
    greyscale: bool,
    ir_led: Option<GpioLine>,
    ir_cut: Option<GpioLine>,
    dark_below: Ranged<1, 254>,
    bright_above: Ranged<1, 254>,
    switch_after_s: Ranged<1, 600>,
    min_hold_s: Ranged<0, 3600>,
}

impl Default for RawNightConfig {
    fn default() -> Self {
        let d = NightConfig::default();
        Self {
            mode: d.mode,
            greyscale: d.greyscale,
            ir_led: d.ir_led,
            ir_cut: d.ir_cut,
            dark_below: d.dark_below,
            bright_above: d.bright_above,
            switch_after_s: d.switch_after_s,
            min_hold_s: d.min_hold_s,
        }
    }
}

impl TryFrom<RawNightConfig> for NightConfig {
    type Error = String;
    fn try_from(r: RawNightConfig) -> Result<Self, String> {
        if r.bright_above.get() < r.dark_below.get() + 10 {
            return Err(format!(
                "bright_above ({}) must be at least dark_below ({}) + 10: the gap keeps dusk from flapping",
                r.bright_above.get(),
                r.dark_below.get()
            ));
        }
        if let (Some(a), Some(b)) = (&r.ir_led, &r.ir_cut) {
            if a.chip == b.chip && a.line == b.line {
                return Err(format!("ir_led and ir_cut are both line {} of {}", a.line, a.chip));
            }
        }
        Ok(NightConfig {
            mode: r.mode,
            greyscale: r.greyscale,
            ir_led: r.ir_led,
            ir_cut: r.ir_cut,
            dark_below: r.dark_below,
            bright_above: r.bright_above,
            switch_after_s: r.switch_after_s,
            min_hold_s: r.min_hold_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml(text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_a_full_section() {
        let c = parse("").unwrap();
        assert_eq!(c.night, NightConfig::default());
        let c = parse(
            "[night]\nmode = \"watching\"\ngreyscale = false\nir_led = { chip = \"gpiochip0\", line = 17 }\n\
             ir_cut = { chip = \"/dev/gpiochip0\", line = 27, active_low = true }\ndark_below = 30\nbright_above = 90\n\
             switch_after_s = 10\nmin_hold_s = 0\n",
        )
        .unwrap();
        let n = &c.night;
        assert_eq!(n.mode, NightMode::Watching);
        assert!(!n.greyscale);
        assert_eq!(n.ir_led, Some(GpioLine { chip: "gpiochip0".into(), line: 17, active_low: false }));
        assert_eq!(n.ir_cut.as_ref().map(|l| (l.line, l.active_low)), Some((27, true)));
        assert_eq!((n.dark_below.get(), n.bright_above.get(), n.switch_after_s.get(), n.min_hold_s.get()), (30, 90, 10, 0));
        // Round trip through the TOML `check-config` prints.
        assert_eq!(parse(&c.to_toml()).unwrap().night, c.night);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse("[night]\nmode = \"dusk\"\n").unwrap_err();
        assert!(e.contains("night.mode") && e.contains("off") && e.contains("watching"), "{e}");
        let e = parse("[night]\nir_led = { chip = \"gpio0\", line = 3 }\n").unwrap_err();
        assert!(e.contains("gpiochipN"), "{e}");
        let e = parse("[night]\nir_led = { chip = \"gpiochip0\", line = 5000 }\n").unwrap_err();
        assert!(e.contains("5000") && e.contains("0 to 1023"), "{e}");
        let e = parse("[night]\nir_led = { chip = \"gpiochip0\", line = 3, colour = 1 }\n").unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = parse("[night]\ndark_below = 80\nbright_above = 85\n").unwrap_err();
        assert!(e.contains("bright_above") && e.contains("+ 10"), "{e}");
        let e = parse("[night]\nir_led = { chip = \"gpiochip0\", line = 3 }\nir_cut = { chip = \"gpiochip0\", line = 3 }\n").unwrap_err();
        assert!(e.contains("both line 3"), "{e}");
        let e = parse("[night]\nswitch_after_s = 0\n").unwrap_err();
        assert!(e.contains("switch_after_s") || e.contains("1 to 600"), "{e}");
    }
}
