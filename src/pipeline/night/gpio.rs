//! The IR LED and IR-cut lines through the kernel's GPIO character device (uAPI v2, crate
//! `gpiocdev`). Each line is requested once, as an output, at start, and stays ours until the
//! request is dropped (the kernel then releases it; most drivers keep the last value).
//! "Active" is the night position: LEDs on, filter out of the light path; `active_low` lets the
//! kernel invert the wire level, so the rest of the code never thinks about polarity.

use crate::config::GpioLine;
use gpiocdev::line::Value;
use std::path::PathBuf;

/// The consumer name other tools (`gpioinfo`, `/sys/kernel/debug/gpio`) show for our lines.
pub const CONSUMER: &str = "peercam";

#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("[night] {role}: cannot request line {line} of {chip} as an output: {source}")]
    Request { role: &'static str, chip: String, line: u32, #[source] source: gpiocdev::Error },
    #[error("[night] {role}: cannot set line {line} of {chip}: {source}")]
    Set { role: &'static str, chip: String, line: u32, #[source] source: gpiocdev::Error },
}

/// `gpiochip0` → `/dev/gpiochip0`; a path stays as it is.
pub fn chip_path(chip: &str) -> PathBuf {
    if chip.starts_with('/') { PathBuf::from(chip) } else { PathBuf::from("/dev").join(chip) }
}

/// One requested output line.
pub struct OutputLine {
    role: &'static str,
    spec: GpioLine,
    request: gpiocdev::Request,
    active: bool,
}

impl std::fmt::Debug for OutputLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} line {}, active {})", self.role, self.spec.chip, self.spec.line, self.active)
    }
}

impl OutputLine {
    /// Requests the line as an output, driven inactive (day) from the first moment.
    pub fn open(role: &'static str, spec: &GpioLine) -> Result<OutputLine, GpioError> {
        let mut b = gpiocdev::Request::builder();
        b.on_chip(chip_path(&spec.chip)).with_consumer(CONSUMER).with_line(spec.line).as_output(Value::Inactive);
        if spec.active_low {
            b.as_active_low();
        }
        let request = b.request().map_err(|source| GpioError::Request { role, chip: spec.chip.clone(), line: spec.line, source })?;
        Ok(OutputLine { role, spec: spec.clone(), request, active: false })
    }

    /// Drives the line: `true` = active (night).
    pub fn set(&mut self, active: bool) -> Result<(), GpioError> {
        let value = if active { Value::Active } else { Value::Inactive };
        self.request.set_value(self.spec.line, value).map_err(|source| GpioError::Set {
            role: self.role,
            chip: self.spec.chip.clone(),
            line: self.spec.line,
            source,
        })?;
        self.active = active;
        Ok(())
    }

    pub fn active(&self) -> bool {
        self.active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chip_names_become_paths() {
        assert_eq!(chip_path("gpiochip0"), PathBuf::from("/dev/gpiochip0"));
        assert_eq!(chip_path("/dev/gpiochip4"), PathBuf::from("/dev/gpiochip4"));
    }

    #[test]
    fn a_missing_chip_is_a_clear_error_not_a_panic() {
        let spec = GpioLine { chip: "/dev/gpiochip-peercam-test-none".into(), line: 17, active_low: false };
        let e = OutputLine::open("ir_led", &spec).unwrap_err().to_string();
        assert!(e.contains("ir_led") && e.contains("line 17") && e.contains("gpiochip-peercam-test-none"), "{e}");
    }
}
