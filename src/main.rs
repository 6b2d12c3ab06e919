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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
    match cli.command.unwrap_or(Command::Run) {
        Command::HashPassword | Command::NewToken => unreachable!("handled above"),
        Command::Devices { json } => {
            let list = peercam::capture::devices::list();
            if json {
                println!("{}", serde_json::to_string_pretty(&list).expect("device list serializes"));
            } else {
                print!("{}", peercam::capture::devices::render_text(&list));
            }
            ExitCode::SUCCESS
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
            let runtime = match tokio::runtime::Runtime::new() {
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
