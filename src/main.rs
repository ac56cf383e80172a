fn main() -> std::process::ExitCode {
    dialnexa_gateway::cli::main()
}
