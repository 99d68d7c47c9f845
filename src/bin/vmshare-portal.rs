//! The guest portal, `ssh vmshare@HOST`: the portal account's login shell.
fn main() -> std::process::ExitCode {
    vmshare::portal::run(std::env::args_os().collect())
}
