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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("peercam: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
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
