//! sshd's AuthorizedKeysCommand: prints the keys of an owner's accepted guests.
use std::os::fd::AsFd;

fn main() -> std::process::ExitCode {
    let args = std::env::args_os().collect();
    // Write to stdout's file descriptor directly: stdout's line buffering
    // would turn thousands of key lines into thousands of writes.
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => vmshare::keys_command::run(args, &mut std::fs::File::from(fd)),
        Err(_) => vmshare::keys_command::run(args, &mut std::io::stdout().lock()),
    }
}
