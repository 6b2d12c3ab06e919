//! The `peercam` command: a thin CLI over the library.

use clap::{Parser, Subcommand};
use peercam::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "peercam", version, about = "A camera that browsers watch directly over WebRTC", long_about = None)]
struct Cli {
    /// Configuration file (TOML). Without it, every key takes its default.
    #[arg(long, short, global = true, env = "PEERCAM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default when no command is given).
    Run,
    /// Check the configuration file and print the effective configuration.
    CheckConfig,
    /// Read a password on stdin and print its Argon2 hash for `[auth] password_hash`.
    HashPassword,
    /// Make a random bearer token for scripts/WHEP clients; prints the token and the hash line
    /// for `[auth] token_sha256`.
    NewToken,
    /// List cameras (formats, sizes, frame rates, controls) and sound devices, and exit.
    Devices {
        /// Print JSON (the same document as `GET /api/devices`).
        #[arg(long)]
        json: bool,
    },
    /// Diagnostic: drive a V4L2 memory-to-memory encoder through the service's M2M code path
    /// (format negotiation, buffers, keyframe on request, bitrate in place, stream off/on,
    /// decode + PSNR where the kernel has a decoder) and print a JSON report. Exit 0 if all
    /// checks passed, 1 if one failed, 3 if the device failed or vanished.
    #[command(hide = true)]
    EncoderCheck {
        /// The encoder node; default: the first M2M device that makes --codec.
        #[arg(long)]
        device: Option<String>,
        /// h264 (a Pi's bcm2835-codec) or fwht (the kernel's vicodec, for tests).
        #[arg(long, default_value = "h264")]
        codec: String,
        /// The decoder node to check the output with; "none" skips it; default: look for one.
        #[arg(long)]
        decoder: Option<String>,
        #[arg(long, default_value_t = 320)]
        width: u32,
        #[arg(long, default_value_t = 240)]
        height: u32,
        #[arg(long, default_value_t = 10)]
        fps: u32,
        /// Only encode, for this many seconds or until the device fails (vanishing-device test).
        #[arg(long)]
        run_seconds: Option<u64>,
        /// Encode frames from this V4L2 camera, read in place from its buffers (DMABUF), instead
        /// of a test pattern (the zero-copy check).
        #[arg(long)]
        camera: Option<String>,
        /// The camera's pixel format for --camera (NV12 or YU12).
        #[arg(long)]
        camera_format: Option<String>,
    },
    /// Write the viewer page (index.html, app.js, style.css, vendor/peerjs.min.js) into DIR, to
    /// host anywhere (a static site, a file server) for remote viewers: open it as
    /// …/index.html#device=ID&token=VIEWER_TOKEN&server=wss://PEERSERVER/&key=KEY (docs/remote.md).
    ExportPage {
        /// The folder to write into (made if missing; files there are replaced).
        dir: PathBuf,
    },
    /// Encode a few seconds of the test pattern and tone, print timings, exit 0 if all worked.
    Selftest {
        /// Frames of video to encode.
        #[arg(long, default_value_t = 60)]
        frames: u64,
    },
}

fn load(path: &Option<PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

/// Reads one line from stdin; on a terminal without echo, asking twice.
fn read_password() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let read_line = || -> Result<String, String> {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map_err(|e| format!("cannot read the password: {e}"))?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    if !stdin.is_terminal() {
        return read_line();
    }
    // SAFETY: plain termios calls on fd 0 with a zeroed struct that tcgetattr fills in.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let echo_off = unsafe { libc::tcgetattr(0, &mut saved) } == 0 && {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) == 0 }
    };
    eprint!("New password: ");
    let first = read_line();
    eprint!("\nAgain: ");
    let second = read_line();
    eprintln!();
    if echo_off {
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    }
    let (first, second) = (first?, second?);
    if first != second {
        return Err("the two passwords differ".into());
    }
    Ok(first)
}

/// Re-execs under libcamera's V4L2 compatibility layer when `[video]` wants a camera and a
/// libcamera camera is present (`capture::libcamera`). `Some(code)`: exit with it (an error the
/// user must fix); `None`: go on in this process.
fn libcamera_preload(config: &peercam::config::Config) -> Option<ExitCode> {
    use peercam::capture::libcamera::{self, Plan};
    use peercam::config::VideoSourceKind;
    let v = &config.video;
    if !matches!(v.source, VideoSourceKind::Auto | VideoSourceKind::Libcamera) {
        return None;
    }
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let setup = libcamera::Setup {
        required: v.source == VideoSourceKind::Libcamera,
        compat: non_empty(&v.libcamera_v4l2_compat),
        tuning_file: non_empty(&v.libcamera_tuning_file),
    };
    match libcamera::plan(&setup) {
        Ok(Plan::Stay) => None,
        Ok(Plan::StayWithout(e)) => {
            eprintln!("peercam: warning: {e}");
            None
        }
        Ok(Plan::Reexec(env)) => {
            let e = libcamera::reexec(&env);
            eprintln!("peercam: {e}");
            Some(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("peercam: {e}");
            Some(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::ExportPage { ref dir }) => {
            return match peercam::http::export_page(dir) {
                Ok(files) => {
                    for f in files {
                        println!("{}", f.display());
                    }
                    eprintln!(
                        "open it as …/index.html#device=ID&token=VIEWER_TOKEN&server=wss://PEERSERVER/&key=KEY (docs/remote.md)"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("peercam: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::HashPassword) => {
            let result = read_password().and_then(|pw| {
                if pw.chars().count() < 8 {
                    Err("use at least 8 characters".into())
                } else {
                    peercam::http::auth::hash_password(&pw)
                }
            });
            return match result {
                Ok(hash) => {
                    println!("{hash}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("peercam: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::NewToken) => {
            let (token, hash) = peercam::http::auth::new_token();
            println!("token (give this to the client, shown once): {token}");
            println!("add to [auth] in peercam.toml:  token_sha256 = [\"{hash}\"]");
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let config = match load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("peercam: {e}");
            return ExitCode::from(2);
        }
    };
    // CSI cameras: when a libcamera camera is present, run again with libcamera's V4L2 layer
    // preloaded (before any thread or device is opened). Only for the commands that open cameras.
    if matches!(cli.command, None | Some(Command::Run) | Some(Command::Devices { .. }))
        && let Some(code) = libcamera_preload(&config)
    {
        return code;
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::HashPassword | Command::NewToken | Command::ExportPage { .. } => unreachable!("handled above"),
        Command::Devices { json } => {
            let list = peercam::capture::devices::list();
            if json {
                println!("{}", serde_json::to_string_pretty(&list).expect("device list serializes"));
            } else {
                print!("{}", peercam::capture::devices::render_text(&list));
            }
            ExitCode::SUCCESS
        }
        Command::EncoderCheck { device, codec, decoder, width, height, fps, run_seconds, camera, camera_format } => {
            use peercam::codec::m2m::{self, check};
            let Some(codec) = m2m::Codec::parse(&codec) else {
                eprintln!("peercam: --codec must be h264 or fwht");
                return ExitCode::from(2);
            };
            let args = check::CheckArgs { device, codec, decoder, width, height, fps, run_seconds, camera, camera_format };
            match check::run(&args) {
                Ok(report) => {
                    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    match (report["ok"].as_bool(), report.get("error")) {
                        (Some(true), _) => ExitCode::SUCCESS,
                        (_, Some(_)) => ExitCode::from(3),
                        _ => ExitCode::FAILURE,
                    }
                }
                Err(e) => {
                    println!("{}", serde_json::json!({ "ok": false, "error": e }));
                    eprintln!("peercam: encoder-check: {e}");
                    ExitCode::from(3)
                }
            }
        }
        Command::CheckConfig => {
            print!("{}", config.to_toml());
            eprintln!("peercam: configuration OK");
            ExitCode::SUCCESS
        }
        Command::Selftest { frames } => match peercam::selftest::run(&config, frames) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("peercam: selftest failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run => {
            peercam::service::init_logging(config.log.level.to_filter());
            // Blocking work (password hashing, JPEG stills, listing devices, joining a recording's
            // writer) is short and capped by the request limits; 32 threads, not tokio's 512, is
            // what a Pi Zero's 512 MB can afford if a burst of requests ever arrives at once.
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(32)
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("peercam: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(peercam::service::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e:#}");
                    eprintln!("peercam: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
