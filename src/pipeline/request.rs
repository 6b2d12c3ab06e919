//! The config → capture requests. `capture` knows nothing of the TOML file (it sits below
//! `config` in the layer rule, and `config` uses `capture::constraints` for the
//! `[*.constraints]` keys), so the pipeline, which reads the config anyway, builds the
//! requests the camera and microphone open with.

use crate::capture::alsa::MicRequest;
use crate::capture::constraints::NumConstraint;
use crate::capture::v4l2::CameraRequest;
use crate::config::{AudioConfig, VideoConfig};

/// `[video]` → camera request: constraints the config leaves unset take `width`, `height`,
/// `fps` as their ideal.
pub fn camera_request(v: &VideoConfig) -> CameraRequest {
    let mut c = v.constraints.clone();
    c.width.get_or_insert(NumConstraint::ideal(v.width.get() as f64));
    c.height.get_or_insert(NumConstraint::ideal(v.height.get() as f64));
    c.frame_rate.get_or_insert(NumConstraint::ideal(v.fps.get() as f64));
    // `source = "libcamera"` without a `device`: any libcamera camera, never a plain V4L2 one
    // (every libcamera camera answers to the name "libcamera", see `VideoDevice::names`).
    // `source = "auto"` under libcamera's layer (a camera module is present): prefer it to a USB
    // camera that happens to be plugged in (an ideal, so the USB camera is still used if the
    // libcamera one cannot satisfy a required constraint).
    use crate::capture::{constraints::StrConstraint, libcamera};
    use crate::config::VideoSourceKind;
    let device = match (&v.device, v.source) {
        (None, VideoSourceKind::Libcamera) => Some(StrConstraint::exact(libcamera::DRIVER)),
        (None, VideoSourceKind::Auto) if libcamera::active() => Some(StrConstraint::ideal(libcamera::DRIVER)),
        (d, _) => d.clone(),
    };
    CameraRequest { device, constraints: c, controls: v.controls.clone() }
}

/// `[audio]` → microphone request.
pub fn mic_request(a: &AudioConfig) -> MicRequest {
    MicRequest { device: a.device.clone(), constraints: a.constraints.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::constraints::StrConstraint;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn camera_request_takes_width_height_fps_as_ideals() {
        let c = Config::from_toml(
            "[video]\nwidth = 640\nheight = 480\nfps = 25\n[video.constraints]\nheight = { exact = 360 }\n",
            Path::new("t"),
        )
        .unwrap();
        let r = camera_request(&c.video);
        assert_eq!(r.constraints.width, Some(NumConstraint::ideal(640.0)));
        assert_eq!(r.constraints.height, Some(NumConstraint::exact(360.0)));
        assert_eq!(r.constraints.frame_rate, Some(NumConstraint::ideal(25.0)));
        assert_eq!(r.nominal(), (640, 360, 25));
    }

    #[test]
    fn mic_request_copies_device_and_constraints() {
        let c = Config::from_toml(
            "[audio]\nsource = \"alsa\"\ndevice = { exact = \"hw:3,0\" }\n[audio.constraints]\nsample_rate = { min = 16000 }\n",
            Path::new("t"),
        )
        .unwrap();
        let r = mic_request(&c.audio);
        assert_eq!(r.device, Some(StrConstraint::exact("hw:3,0")));
        assert_eq!(r.constraints.sample_rate.unwrap().min, Some(16000.0));
    }
}
