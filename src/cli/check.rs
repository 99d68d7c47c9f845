//! `vmshare check [PATH]`: validate a grant file.

use std::path::Path;
use std::process::ExitCode;

use crate::grant::model::Status;
use crate::store::config::Config;
use crate::store::source::{self, Outcome};
use crate::sys::accounts::SystemAccounts;

pub fn run(config: &Config, path: Option<&Path>) -> ExitCode {
    let path = path.unwrap_or(&config.grants);
    let loaded = source::load(path, &SystemAccounts);
    for note in loaded.notes() {
        eprintln!("warning: {}", note.in_file(path));
    }
    match &loaded.outcome {
        Outcome::Missing => {
            eprintln!("{}: no such file (nothing is shared)", path.display());
            ExitCode::FAILURE
        }
        Outcome::Invalid(errors) => {
            for e in &errors.errors {
                eprintln!("error: {}", e.in_file(path));
            }
            eprintln!(
                "{}: invalid; no guest gets in anywhere until it is fixed",
                path.display()
            );
            ExitCode::FAILURE
        }
        Outcome::Valid { grants, policy } => {
            let guests: usize = grants.owners.iter().map(|o| o.guests.len()).sum();
            let accepted: usize = grants
                .owners
                .iter()
                .filter(|o| o.sharing && policy.owners.contains_key(&o.name))
                .flat_map(|o| &o.guests)
                .filter(|g| g.status == Status::Accepted)
                .count();
            println!(
                "{}: ok: {} owners, {} guests, {} with access",
                path.display(),
                grants.owners.len(),
                guests,
                accepted
            );
            ExitCode::SUCCESS
        }
    }
}
