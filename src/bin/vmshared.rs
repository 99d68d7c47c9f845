//! The vmshare daemon.
fn main() -> std::process::ExitCode {
    vmshare::daemon::main()
}
