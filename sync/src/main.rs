fn main() -> std::process::ExitCode {
    vmshare_sync::cli::main()
}
