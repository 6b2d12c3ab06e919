//! CSI camera modules (Camera Module 1/2/3, HQ, NoIR) through libcamera's V4L2 compatibility
//! layer. See README.md in this folder for why this integration and what it can and cannot
//! control.
//!
//! A CSI camera on a current kernel is a media-controller pipeline (Unicam or the Pi 5's CFE
//! delivering raw Bayer, the ISP, the sensor subdevice): a plain V4L2 program cannot stream it.
//! libcamera can, and its `v4l2-compat.so`, preloaded, turns each libcamera camera into what
//! looks like an ordinary V4L2 capture node (processed YUV/RGB frames, `ENUM_FMT` /
//! `ENUM_FRAMESIZES` from libcamera's stream configuration). peercam's own V4L2 code
//! (`capture::v4l2`, `capture::devices`) then drives it unchanged.
//!
//! This module decides whether that preload is needed (`plan`), finds the library, and re-execs
//! the process with `LD_PRELOAD` set (what libcamera's `libcamerify` script does), before any
//! thread or device is opened. It knows nothing of the config file: `main` hands it the values.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Set in the environment of the re-executed process: the compatibility layer in use.
pub const ACTIVE_ENV: &str = "PEERCAM_LIBCAMERA_V4L2";
/// Where libcamera installs `v4l2-compat.so`: libexec since 0.1 (Buildroot's 0.7), the library
/// directory in 0.0.x (Debian 12's 0.0.3 packs it in `libcamera-v4l2`).
pub const COMPAT_PATHS: &[&str] = &[
    "/usr/libexec/libcamera/v4l2-compat.so",
    "/usr/local/libexec/libcamera/v4l2-compat.so",
    "/usr/lib/libcamera/v4l2-compat.so",
    "/usr/lib/aarch64-linux-gnu/v4l2-compat.so",
    "/usr/lib/arm-linux-gnueabihf/v4l2-compat.so",
    "/usr/lib/x86_64-linux-gnu/v4l2-compat.so",
    "/usr/lib/v4l2-compat.so",
];
/// The driver name libcamera's V4L2 layer reports in `VIDIOC_QUERYCAP`.
pub const DRIVER: &str = "libcamera";
/// `V4L2_CAP_IO_MC`: a video node whose input is configured through the media controller.
pub const CAP_IO_MC: u32 = 0x2000_0000;
const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
/// The frame rate a libcamera camera is listed with when its V4L2 layer cannot set one
/// (before 0.3.2 it has no `VIDIOC_S_PARM`): the camera runs at libcamera's default rate.
pub const NOMINAL_FPS: u32 = 30;
/// The rates offered when the layer takes `VIDIOC_S_PARM` (libcamera ≥ 0.3.2 turns it into
/// `FrameDurationLimits`; the sensor mode bounds what it really delivers).
pub const MAX_FPS: u32 = 60;

/// What `main` asks for (from `[video]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Setup {
    /// `source = "libcamera"`: a libcamera camera is required (an error if there is none or the
    /// layer is missing). Otherwise (`auto`) it is used when present.
    pub required: bool,
    /// `[video] libcamera_v4l2_compat`: the layer's path; `None` = search [`COMPAT_PATHS`].
    pub compat: Option<String>,
    /// `[video] libcamera_tuning_file`: exported as `LIBCAMERA_RPI_TUNING_FILE` (the Pi's IPA
    /// tuning, e.g. `imx708_noir.json` for a NoIR camera: grey-world white balance).
    pub tuning_file: Option<String>,
}

/// Errors a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LibcameraError {
    #[error(
        "libcamera camera found ({nodes}) but libcamera's V4L2 compatibility layer v4l2-compat.so is missing \
         (looked in {looked}): install libcamera-v4l2 (Debian) or BR2_PACKAGE_LIBCAMERA_V4L2 (Buildroot), \
         or set [video] libcamera_v4l2_compat"
    )]
    CompatMissing { nodes: String, looked: String },
    #[error("[video] libcamera_v4l2_compat = {0:?}: no such file (install libcamera-v4l2, or fix the path)")]
    CompatPathMissing(String),
    #[error("[video] libcamera_tuning_file = {0:?}: no such file (the Pi's tuning files are in /usr/share/libcamera/ipa/rpi/vc4/ or …/ipa/raspberrypi/)")]
    TuningMissing(String),
    #[error(
        "source = \"libcamera\" but no libcamera camera was found (no video capture node driven through the \
         media controller, such as Unicam on a Pi or vimc); `peercam devices` lists the cameras"
    )]
    NoCamera,
    #[error("cannot restart peercam with libcamera's V4L2 layer ({path}): {why}")]
    Exec { path: String, why: String },
}

/// What `plan` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do: no libcamera camera, or the layer is already loaded.
    Stay,
    /// A libcamera camera is present but the layer is missing and it was not required: go on
    /// with plain V4L2 (the warning says what to install).
    StayWithout(LibcameraError),
    /// Re-exec with these environment variables set.
    Reexec(Vec<(String, OsString)>),
}

/// Whether this process runs with the compatibility layer preloaded (set by [`reexec`]).
pub fn active() -> bool {
    std::env::var_os(ACTIVE_ENV).is_some()
        && std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("v4l2-compat"))
}

/// Decides whether to re-exec with the compatibility layer: pure but for the probes passed in
/// (`nodes`: the media-controller capture nodes found; `exists`: a file test).
pub fn decide(setup: &Setup, already: bool, nodes: &[PathBuf], exists: &dyn Fn(&Path) -> bool) -> Result<Plan, LibcameraError> {
    if already {
        return Ok(Plan::Stay);
    }
    if let Some(t) = &setup.tuning_file
        && !exists(Path::new(t))
    {
        return Err(LibcameraError::TuningMissing(t.clone()));
    }
    if nodes.is_empty() {
        return if setup.required { Err(LibcameraError::NoCamera) } else { Ok(Plan::Stay) };
    }
    let compat = match &setup.compat {
        Some(p) if exists(Path::new(p)) => PathBuf::from(p),
        Some(p) => return Err(LibcameraError::CompatPathMissing(p.clone())),
        None => match COMPAT_PATHS.iter().map(Path::new).find(|p| exists(p)) {
            Some(p) => p.to_path_buf(),
            None => {
                let e = LibcameraError::CompatMissing {
                    nodes: nodes.iter().map(|n| n.display().to_string()).collect::<Vec<_>>().join(", "),
                    looked: COMPAT_PATHS.join(", "),
                };
                return if setup.required { Err(e) } else { Ok(Plan::StayWithout(e)) };
            }
        },
    };
    let mut preload = OsString::from(compat.as_os_str());
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let mut env = vec![("LD_PRELOAD".to_string(), preload), (ACTIVE_ENV.to_string(), compat.into_os_string())];
    if let Some(t) = &setup.tuning_file {
        env.push(("LIBCAMERA_RPI_TUNING_FILE".to_string(), OsString::from(t)));
    }
    Ok(Plan::Reexec(env))
}

/// [`decide`] on this machine.
pub fn plan(setup: &Setup) -> Result<Plan, LibcameraError> {
    decide(setup, active(), &mc_capture_nodes(), &|p: &Path| p.exists())
}

/// Replaces this process with itself (same arguments) under `env`. Returns only on failure.
pub fn reexec(env: &[(String, OsString)]) -> LibcameraError {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let e = cmd.exec();
    LibcameraError::Exec { path: exe.display().to_string(), why: e.to_string() }
}

/// `/dev/videoN` capture nodes that are configured through the media controller
/// (`V4L2_CAP_IO_MC`): Unicam / CFE on a Pi, vimc. These need libcamera; plain V4L2 cannot
/// stream them. (UVC webcams are not among them.)
pub fn mc_capture_nodes() -> Vec<PathBuf> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().strip_prefix("video")?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    nodes
        .into_iter()
        .filter(|(_, p)| device_caps_of(p).is_some_and(|c| c & CAP_IO_MC != 0 && c & CAP_VIDEO_CAPTURE != 0))
        .map(|(_, p)| p)
        .collect()
}

/// The raw `VIDIOC_QUERYCAP` of an open V4L2 file: (driver, device_caps). The v4l crate drops
/// capability bits it has no name for (`V4L2_CAP_IO_MC` among them).
pub fn querycap_fd(fd: std::os::raw::c_int) -> Option<(String, u32)> {
    let mut cap: v4l::v4l_sys::v4l2_capability = unsafe { std::mem::zeroed() };
    // SAFETY: QUERYCAP writes one v4l2_capability into the buffer it is given. Called through
    // the C library's ioctl symbol, so libcamera's layer answers for its cameras.
    let r = unsafe {
        libc::ioctl(fd, v4l::v4l2::vidioc::VIDIOC_QUERYCAP as _, &mut cap as *mut _ as *mut libc::c_void)
    };
    if r != 0 {
        return None;
    }
    let end = cap.driver.iter().position(|&b| b == 0).unwrap_or(cap.driver.len());
    let driver = String::from_utf8_lossy(&cap.driver[..end]).into_owned();
    let caps = if cap.capabilities & CAP_DEVICE_CAPS != 0 { cap.device_caps } else { cap.capabilities };
    Some((driver, caps))
}

fn device_caps_of(node: &Path) -> Option<u32> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_nonblock()
        .open(node)
        .ok()?;
    querycap_fd(f.as_raw_fd()).map(|(_, c)| c)
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup::default()
    }

    #[test]
    fn no_media_controller_camera_means_plain_v4l2() {
        assert_eq!(decide(&setup(), false, &[], &|_| true), Ok(Plan::Stay));
        let req = Setup { required: true, ..setup() };
        assert_eq!(decide(&req, false, &[], &|_| true), Err(LibcameraError::NoCamera));
    }

    #[test]
    fn a_camera_and_the_layer_mean_a_reexec_with_the_preload() {
        let nodes = [PathBuf::from("/dev/video0")];
        let want = "/usr/lib/aarch64-linux-gnu/v4l2-compat.so";
        let Ok(Plan::Reexec(env)) = decide(&setup(), false, &nodes, &|p| p == Path::new(want)) else { panic!() };
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.to_string_lossy().into_owned());
        assert!(get("LD_PRELOAD").unwrap().starts_with(want));
        assert_eq!(get(ACTIVE_ENV).as_deref(), Some(want));
        assert_eq!(get("LIBCAMERA_RPI_TUNING_FILE"), None);
        // Already preloaded: nothing more to do (no exec loop).
        assert_eq!(decide(&setup(), true, &nodes, &|_| true), Ok(Plan::Stay));
    }

    #[test]
    fn a_missing_layer_is_named_with_what_to_install() {
        let nodes = [PathBuf::from("/dev/video0")];
        let Ok(Plan::StayWithout(e)) = decide(&setup(), false, &nodes, &|_| false) else { panic!() };
        let msg = e.to_string();
        assert!(msg.contains("/dev/video0") && msg.contains("install libcamera-v4l2") && msg.contains("/usr/libexec/libcamera/v4l2-compat.so"), "{msg}");
        let req = Setup { required: true, ..setup() };
        assert!(matches!(decide(&req, false, &nodes, &|_| false), Err(LibcameraError::CompatMissing { .. })));
        let set = Setup { compat: Some("/opt/v4l2-compat.so".into()), ..setup() };
        assert_eq!(decide(&set, false, &nodes, &|_| false), Err(LibcameraError::CompatPathMissing("/opt/v4l2-compat.so".into())));
    }

    #[test]
    fn the_tuning_file_is_exported_for_the_pi_ipa() {
        let nodes = [PathBuf::from("/dev/video0")];
        let t = "/usr/share/libcamera/ipa/rpi/vc4/imx708_noir.json";
        let s = Setup { tuning_file: Some(t.into()), ..setup() };
        let Ok(Plan::Reexec(env)) = decide(&s, false, &nodes, &|_| true) else { panic!() };
        assert!(env.iter().any(|(k, v)| k == "LIBCAMERA_RPI_TUNING_FILE" && v == t));
        assert_eq!(decide(&s, false, &nodes, &|p| p != Path::new(t)), Err(LibcameraError::TuningMissing(t.into())));
    }
}
