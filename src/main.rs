/// mimalloc for what the gateway allocates and frees per request: under glibc's allocator a cache
/// miss spent ~15 % of its CPU in malloc, free and their bookkeeping, and the process's user time
/// per miss fell by a quarter with mimalloc (docs/benchmarks.md). Cached bodies, most of the
/// memory, come from the system allocator in exact sizes instead (`upstream::exact_body`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    dialnexa_gateway::cli::main()
}
