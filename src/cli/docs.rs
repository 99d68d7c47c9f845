//! `vmshare completions SHELL` and `vmshare man`: generated from the same
//! definition as the parser, so they never drift.

use std::path::Path;
use std::process::ExitCode;

use super::output::print_bytes;

pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = super::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "vmshare", &mut out);
    print_bytes(&out)
}

/// Prints the main page or one subcommand's, or writes them all to
/// `out_dir`.
pub fn man(subcommand: Option<&str>, out_dir: Option<&Path>) -> ExitCode {
    let mut cmd = super::command().disable_help_subcommand(true);
    // Built, subcommands are named `vmshare-invite` etc.
    cmd.build();
    if let Some(dir) = out_dir {
        return match clap_mangen::generate_to(cmd, dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vmshare: cannot write man pages to {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    let page = match subcommand {
        None => cmd,
        Some(name) => match cmd.find_subcommand(name) {
            Some(sub) => sub.clone(),
            None => {
                eprintln!("vmshare: no subcommand `{name}`");
                return ExitCode::from(2);
            }
        },
    };
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(page).render(&mut out) {
        eprintln!("vmshare: cannot render the man page: {e}");
        return ExitCode::FAILURE;
    }
    print_bytes(&out)
}
