//! The PAM session hook, run by pam_exec.so in sshd's session stack.
fn main() -> std::process::ExitCode {
    vmshare::session::hook::run(std::env::args_os().collect())
}
