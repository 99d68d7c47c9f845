//! The `vmshare` command line for ops and guests.

mod check;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "vmshare",
    version,
    about = "Share this VM's accounts with guests over SSH"
)]
pub struct Cli {
    /// Agent configuration file.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a grant file and print every error (exit 1 if invalid).
    Check {
        /// Grant file to check; default: the configured one.
        path: Option<PathBuf>,
    },
}

/// Runs the CLI; the single place where errors become an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmshare: bad configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Check { path } => check::run(&config, path.as_deref()),
    }
}
