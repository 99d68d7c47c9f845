//! sshd's AuthorizedKeysCommand: prints the keys of an owner's accepted guests.
fn main() -> std::process::ExitCode {
    vmshare::keys_command::run(std::env::args_os().collect(), &mut std::io::stdout().lock())
}
