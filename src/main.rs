fn main() -> std::process::ExitCode {
    referloop::cli::run()
}
