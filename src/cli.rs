//! Command line: run (default), `check`, `hash-key`, `gen-key`, `demo`, `sim`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};

use crate::auth::{new_key, KeyDigest};
use crate::server::{self, Signals};
use crate::settings::Settings;
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "dialnexa-gateway",
    version,
    about = "Authenticating, caching gateway in front of the DialNexa API"
)]
pub struct Cli {
    /// Config file (TOML). Env vars DNXGW__SECTION__KEY override its values.
    #[arg(long, short = 'c', global = true, env = "DNXGW_CONFIG")]
    config: Option<PathBuf>,
    /// Diagnostics format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "DNXGW_LOG_FORMAT",
        default_value = "pretty"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the config file and exit 0 (valid) or 1 (invalid).
    Check,
    /// Read a key on stdin and print its SHA-256 hex digest (for key_sha256 / token_sha256).
    HashKey,
    /// Print a new random team key.
    GenKey,
    /// Run the gateway in front of a built-in simulated DialNexa, with a generated team key.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// Export every request's spans over OTLP/HTTP to this collector (a local Jaeger:
        /// `http://127.0.0.1:4318`).
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
    },
    /// Run the simulated DialNexa alone (no gateway), for a service's own tests. Prints its URL
    /// and organisation key.
    Sim {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// The organisation key clients must send as `Authorization: Bearer <key>`; generated
        /// (and printed) when not given.
        #[arg(long, env = "DNXGW_SIM_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Added to every answer, as the network to the real API would.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Enforce an organisation quota: past this many requests a minute, 429 with Retry-After.
        #[arg(long, value_name = "PER_MIN")]
        rate_limit: Option<std::num::NonZeroU32>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    let command = cli.command.unwrap_or(Command::Run);
    // Serving commands install the exporter themselves, once they know where spans go.
    if !matches!(command, Command::Run | Command::Demo { .. }) {
        logs_only(format);
    }
    match command {
        Command::Run => match cli.config {
            Some(path) => run(&path, format),
            None => fail("--config FILE is required (or try `dialnexa-gateway demo`)"),
        },
        Command::Check => match cli.config {
            Some(path) => check(&path),
            None => fail("--config FILE is required"),
        },
        Command::HashKey => hash_key(),
        Command::GenKey => {
            println!("{}", new_key());
            ExitCode::SUCCESS
        }
        Command::Demo {
            listen,
            admin_listen,
            otlp_endpoint,
        } => demo(listen, admin_listen, otlp_endpoint, format),
        Command::Sim {
            listen,
            key,
            latency_ms,
            rate_limit,
        } => sim(listen, key, Duration::from_millis(latency_ms), rate_limit),
    }
}

fn logs_only(format: LogFormat) {
    // Without `[tracing]` there is no exporter to fail or to flush.
    let _ = telemetry::init(format, None).map(|t| t.shutdown(Duration::ZERO));
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

fn load(path: &Path) -> Result<Settings, ExitCode> {
    Settings::load(path).map_err(|e| {
        for line in &e.problems {
            eprintln!("config error: {line}");
        }
        ExitCode::FAILURE
    })
}

/// How far ahead `check` warns of team keys that end: the `TeamKeyEndingSoon` alert's horizon, so
/// the two agree, and a week leaves a rotation time to be noticed and done.
const KEY_END_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

fn check(path: &Path) -> ExitCode {
    match load(path) {
        Ok(s) => {
            let budgets = crate::config::budget_warnings(&s);
            for line in keys_ending(&s, SystemTime::now(), KEY_END_WARNING)
                .into_iter()
                .chain(budgets)
            {
                eprintln!("config warning: {line}");
            }
            println!("{}: ok ({} teams)", path.display(), s.teams.len());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// One line for each team key that ends before `now + within` (or has ended), naming it by its
/// place in the file and its `key_id`, never by its digest.
fn keys_ending(settings: &Settings, now: SystemTime, within: Duration) -> Vec<String> {
    let mut lines = Vec::new();
    for team in &settings.teams {
        for (i, key) in team.keys.iter().enumerate() {
            let Some(end) = key.not_after else { continue };
            let when = humantime::format_rfc3339_seconds(end);
            let place = format!(
                "teams.{}.key_sha256[{i}] (key_id {})",
                team.name,
                key.digest.key_id()
            );
            match end.duration_since(now) {
                Err(_) => lines.push(format!("{place} ended at {when}; it is refused")),
                Ok(left) if left < within => {
                    // To the minute: "6days 23h 59m" reads better than its seconds.
                    let left = Duration::from_secs(left.as_secs() / 60 * 60);
                    lines.push(format!(
                        "{place} ends at {when}, in {}",
                        humantime::format_duration(left)
                    ));
                }
                Ok(_) => {}
            }
        }
    }
    lines
}

fn hash_key() -> ExitCode {
    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_err() {
        return fail("cannot read the key from stdin");
    }
    let key = input.trim();
    if key.is_empty() {
        return fail("no key on stdin");
    }
    println!("{}", KeyDigest::of(key).to_hex());
    ExitCode::SUCCESS
}

/// `server.worker_threads = 1` gets tokio's current-thread runtime: the same single thread running
/// every request, without the work-stealing scheduler's cross-thread bookkeeping, which cost a few
/// percent of CPU per cache hit (docs/benchmarks.md).
fn runtime(
    worker_threads: Option<std::num::NonZeroUsize>,
) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        Some(n) if n.get() == 1 => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.get());
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    builder.build()
}

fn run(path: &Path, format: LogFormat) -> ExitCode {
    let settings = match load(path) {
        Ok(s) => s,
        Err(code) => {
            logs_only(format);
            return code;
        }
    };
    let tracing = match telemetry::init(format, settings.tracing.as_ref()) {
        Ok(t) => t,
        Err(e) => return fail(&e.to_string()),
    };
    let grace = settings.server.shutdown_grace;
    let rt = match runtime(settings.server.worker_threads) {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    rt.block_on(async {
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => return fail(&format!("cannot install signal handlers: {e}")),
        };
        match server::start(settings, Some(path.to_path_buf())).await {
            Ok(running) => {
                let stopping = running.run_until_signalled(signals).await;
                // What is left of the grace once requests drained and the audit log flushed.
                tracing.shutdown(grace.saturating_sub(stopping.elapsed()));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        }
    })
}

fn demo(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    otlp_endpoint: Option<String>,
    format: LogFormat,
) -> ExitCode {
    let settings = match crate::demo::tracing(otlp_endpoint) {
        Ok(settings) => settings,
        Err(e) => {
            logs_only(format);
            return fail(&e);
        }
    };
    let tracing = match telemetry::init(format, settings.as_ref()) {
        Ok(t) => t,
        Err(e) => return fail(&e.to_string()),
    };
    let rt = match runtime(None) {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    rt.block_on(async {
        let ran = crate::demo::run(listen, admin_listen, settings.as_ref()).await;
        // The demo stops on Ctrl-C: what its last requests made still reaches the collector.
        tracing.shutdown(DEMO_FLUSH);
        match ran {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("{e:#}")),
        }
    })
}

/// How long the demo waits for its last spans to reach the collector as it stops.
const DEMO_FLUSH: Duration = Duration::from_secs(2);

fn sim(
    listen: SocketAddr,
    key: Option<String>,
    latency: Duration,
    rate_limit: Option<std::num::NonZeroU32>,
) -> ExitCode {
    if key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        return fail("--key must not be empty");
    }
    let rt = match runtime(None) {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    rt.block_on(async {
        match crate::demo::run_sim(listen, key, latency, rate_limit).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("{e:#}")),
        }
    })
}
