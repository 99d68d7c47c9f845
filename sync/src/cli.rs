//! The program: `vmshare-sync run` (the service) and `vmshare-sync status`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::agent::Agent;
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::status::Status;

#[derive(Parser)]
#[command(
    name = "vmshare-sync",
    version,
    about = "Keep this VM's vmshare grant file in step with etcd"
)]
struct Args {
    /// The agent's configuration.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Follow this VM's grants key and write the grant file (the service).
    Run,
    /// Print what the agent last applied and reported.
    Status {
        /// The status as JSON, exactly as reported to etcd.
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmshare-sync: {e}");
            return ExitCode::from(2);
        }
    };
    match args.command {
        Command::Run => run(config),
        Command::Status { json } => status(&config, json),
    }
}

fn run(config: Config) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VMSHARE_SYNC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmshare-sync: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(Agent::new(config).run());
    ExitCode::SUCCESS
}

fn status(config: &Config, json: bool) -> ExitCode {
    match Status::read(&config.status_path()) {
        Ok(Some(s)) if json => {
            println!("{}", s.to_json());
            ExitCode::SUCCESS
        }
        Ok(Some(s)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            print!("{}", s.render(now));
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!(
                "vmshare-sync: no status in {} (is the agent running?)",
                config.status_path().display()
            );
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("vmshare-sync: {e}");
            ExitCode::FAILURE
        }
    }
}
