//! The vmshare command line.
fn main() -> std::process::ExitCode {
    vmshare::cli::main()
}
