//! Raw config → [`Settings`]: defaults applied, every value checked, org keys read from env or
//! file; every problem collected so an operator sees all of them at once, one line each.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::number::{timeout_ms, whole, Unit, MAX_TTL_SECONDS};
use super::problems::Problems;
use super::raw::*;
use super::teams::{parse_digest, validate_org, validate_team, KnownOrgs};
use super::upstream::validate_upstream;
use super::ConfigError;
use crate::auth::KeyDigest;
use crate::settings::*;

/// Loopback: probes, metrics and purges are for the operator's own agents on the host (or a
/// sidecar), never for the clients on the API listener; exposing them is a deliberate choice.
/// 9090 is the port Prometheus exporters conventionally take.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// 1 MiB: an agent's largest definition (prompts included) is tens of KiB; bodies are held whole
/// in memory before they are forwarded, so the bound is what one request may cost.
const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// 10 s: under Kubernetes' default 30 s termination grace, with room for the audit flush after it;
/// long enough for any answer the upstream timeout allows to start streaming.
const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
/// 30 s: a client on a poor link gets its head across; a connection that sends nothing is closed
/// long before it could pin a slot for good (DESIGN, "Limits on slow, idle and too many clients").
const DEFAULT_REQUEST_HEADER_TIMEOUT_MS: u64 = 30_000;
/// 60 s between two reads: a 1 MiB body crawls through at ~17 KiB/s and still arrives.
const DEFAULT_REQUEST_BODY_TIMEOUT_MS: u64 = 60_000;
/// 75 s: longer than the 60 s idle time of the usual load balancers in front (AWS ALB, nginx's
/// 60 s keep-alive), so the gateway never closes a connection one of them is about to reuse.
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 75_000;
/// Far more clients than one replica serves at once, and well under the usual 65536 descriptors.
const DEFAULT_MAX_CONNECTIONS: u64 = 16_384;
/// A minute: an agent changed outside the gateway (DialNexa's console) is seen within it, while a
/// busy agent is fetched once a minute instead of on every call.
const DEFAULT_TTL_SECONDS: u64 = 60;
/// 256 MiB: thousands of agents of tens of KiB, a small part of a typical container's memory.
const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// 1 MiB, like the request body bound: an answer larger than any agent definition is not one to
/// keep, and it would crowd out many that are.
const DEFAULT_MAX_ENTRY_BYTES: u64 = 1024 * 1024;
/// Five minutes of DialNexa being down answered from what the gateway last saw, while an agent
/// read during a longer outage still fails plainly rather than serving very old data.
const DEFAULT_STALE_IF_ERROR_SECONDS: u64 = 300;
/// Next to where the gateway runs, as JSON lines: found without configuring anything.
const DEFAULT_AUDIT_PATH: &str = "audit.jsonl";
/// On: what an operator expects of a proxy (Envoy, Traefik and Caddy watch their files), and the
/// one way a container image without a shell gets a new config without a restart.
const DEFAULT_WATCH_CONFIG: bool = true;
/// Large enough to absorb a slow disk for a moment at tens of thousands of requests per second.
const DEFAULT_AUDIT_BUFFER_LINES: u64 = 16 * 1024;

/// Bodies are held whole in memory before anything is forwarded; a bigger limit is a typo.
const MAX_BODY_BYTES: Unit = Unit::new(1..=1024 * 1024 * 1024).max_in_words("1073741824 (1 GiB)");
/// Each connection costs a task and buffers; past a million the process runs out of memory or
/// descriptors long before the limit means anything (and near 2^61 the permits overflow).
const MAX_CONNECTIONS: Unit = Unit::new(1..=1_000_000);
/// Threads are started at once; more than this is a typo, not a machine.
const WORKER_THREADS: Unit = Unit::new(1..=1024).zero_hint(" (leave it out for one per CPU)");
/// A minute of a stalled disk at full load; a queue larger than that only hides the stall.
const AUDIT_BUFFER_LINES: Unit = Unit::new(1..=1024 * 1024);
/// The cache's weigher counts in u32; one entry can never weigh more than half of that.
const MAX_ENTRY_BYTES: Unit =
    Unit::new(1..=(u32::MAX / 2) as u64).max_in_words("2147483647 (below 2 GiB)");
const STALE_SECONDS: Unit = Unit::new(0..=MAX_TTL_SECONDS).max_in_words("31536000 s, one year");
const TTL_SECONDS: Unit = Unit::new(1..=MAX_TTL_SECONDS)
    .max_in_words("31536000 s, one year")
    .zero_hint(" (set cache.enabled = false to turn caching off)");

/// The `[server]` connection limits an operator gets by leaving them out.
pub fn default_connection_limits() -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: Duration::from_millis(DEFAULT_REQUEST_HEADER_TIMEOUT_MS),
        body_timeout: Duration::from_millis(DEFAULT_REQUEST_BODY_TIMEOUT_MS),
        idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
        max_connections: nonzero(DEFAULT_MAX_CONNECTIONS).unwrap_or(NonZeroUsize::MIN),
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Settings, ConfigError> {
    let mut p = Problems(Vec::new());

    let server = validate_server(raw.server, &mut p);
    let upstream = validate_upstream(raw.upstream, &mut p);
    let cache = validate_cache(raw.cache, &mut p);
    let audit = validate_audit(raw.audit, &mut p);
    let cluster = raw
        .cluster
        .map(|c| super::cluster::validate_cluster(c, &mut p));
    let tracing = raw
        .tracing
        .map(|t| super::tracing::validate_tracing(t, &mut p));
    let admin_token = raw.admin.and_then(|a| match a.token_sha256 {
        None => None,
        Some(hex) => parse_digest(&hex, "admin.token_sha256", &mut p),
    });

    // Declared orgs, valid or not: a team naming an invalid one is not reported a second time.
    let declared: HashSet<String> = raw.orgs.keys().cloned().collect();
    let mut orgs: HashMap<String, Org> = HashMap::new();
    for (name, org) in raw.orgs {
        let key = format!("orgs.{name}");
        if !valid_name(&name) {
            p.push(&key, "organisation names must be lowercase [a-z0-9_-]+");
            continue;
        }
        if let Some(org) = validate_org(&name, org, &key, &mut p) {
            orgs.insert(name, org);
        }
    }

    if raw.teams.is_empty() {
        p.push(
            "teams",
            "at least one [teams.<name>] is required (without one every request is refused)",
        );
    }
    let mut teams = Vec::new();
    let mut seen_digests: HashMap<KeyDigest, String> = HashMap::new();
    for (name, team) in raw.teams {
        let key = format!("teams.{name}");
        if !valid_name(&name) {
            p.push(&key, "team names must be lowercase [a-z0-9_-]+");
            continue;
        }
        let known = KnownOrgs {
            valid: &orgs,
            declared: &declared,
        };
        if let Some(team) = validate_team(&name, team, &key, known, &mut seen_digests, &mut p) {
            teams.push(team);
        }
    }

    super::budget::check_budgets(&teams, &mut p);

    match (server, upstream, cache, audit) {
        (Some(server), Some(upstream), Some(cache), Some(audit)) if p.0.is_empty() => {
            Ok(Settings {
                server,
                upstream,
                cache,
                audit,
                admin_token,
                teams,
                cluster: cluster.flatten(),
                // Filled in by the loader, which has the file's text.
                fingerprint: Arc::from(""),
                tracing: tracing.flatten(),
            })
        }
        _ => Err(ConfigError { problems: p.0 }),
    }
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn parse_addr(
    value: Option<String>,
    default: Option<&str>,
    key: &str,
    p: &mut Problems,
) -> Option<SocketAddr> {
    let Some(text) = value.or_else(|| default.map(str::to_owned)) else {
        p.push(key, "is required (e.g. \"127.0.0.1:8080\")");
        return None;
    };
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.push(key, format!("{text:?} is not an IP:port address"));
            None
        }
    }
}

fn validate_server(raw: RawServer, p: &mut Problems) -> Option<ServerSettings> {
    let listen = parse_addr(raw.listen, None, "server.listen", p);
    let admin_listen = parse_addr(
        raw.admin_listen,
        Some(DEFAULT_ADMIN_LISTEN),
        "server.admin_listen",
        p,
    );
    let max_body_bytes = whole(
        raw.max_body_bytes,
        DEFAULT_MAX_BODY_BYTES,
        "server.max_body_bytes",
        MAX_BODY_BYTES,
        p,
    );
    let shutdown_grace = timeout_ms(
        raw.shutdown_grace_ms,
        DEFAULT_SHUTDOWN_GRACE_MS,
        "server.shutdown_grace_ms",
        p,
    );
    let header_timeout = timeout_ms(
        raw.request_header_timeout_ms,
        DEFAULT_REQUEST_HEADER_TIMEOUT_MS,
        "server.request_header_timeout_ms",
        p,
    );
    let body_timeout = timeout_ms(
        raw.request_body_timeout_ms,
        DEFAULT_REQUEST_BODY_TIMEOUT_MS,
        "server.request_body_timeout_ms",
        p,
    );
    let idle_timeout = timeout_ms(
        raw.idle_timeout_ms,
        DEFAULT_IDLE_TIMEOUT_MS,
        "server.idle_timeout_ms",
        p,
    );
    let max_connections = whole(
        raw.max_connections,
        DEFAULT_MAX_CONNECTIONS,
        "server.max_connections",
        MAX_CONNECTIONS,
        p,
    )
    .and_then(nonzero);
    // Absent: one per CPU. Present: `Some(None)` once refused.
    let worker_threads = raw
        .worker_threads
        .map(|n| whole(Some(n), 0, "server.worker_threads", WORKER_THREADS, p).and_then(nonzero));
    let (listen, admin_listen, shutdown_grace) = (listen?, admin_listen?, shutdown_grace?);
    let (max_body_bytes, worker_threads) = (
        max_body_bytes?,
        worker_threads.map_or(Some(None), |n| n.map(Some))?,
    );
    let limits = ConnectionLimits {
        header_timeout: header_timeout?,
        body_timeout: body_timeout?,
        idle_timeout: idle_timeout?,
        max_connections: max_connections?,
    };
    if listen == admin_listen && listen.port() != 0 {
        p.push("server.admin_listen", "must differ from server.listen");
    }
    Some(ServerSettings {
        listen,
        admin_listen,
        max_body_bytes,
        shutdown_grace,
        limits,
        worker_threads,
        watch_config: raw.watch_config.unwrap_or(DEFAULT_WATCH_CONFIG),
    })
}

/// A count already checked to be at least 1.
fn nonzero(n: u64) -> Option<NonZeroUsize> {
    usize::try_from(n).ok().and_then(NonZeroUsize::new)
}

fn validate_cache(raw: RawCache, p: &mut Problems) -> Option<CacheSettings> {
    let enabled = raw.enabled.unwrap_or(true);
    let before = p.0.len();
    // Switched off, zero sizes and lifetimes are fine; the upper bounds still hold, since a
    // reload may switch it on and entries stored before it was switched off still live.
    let when_on = |unit: Unit| {
        if enabled {
            unit
        } else {
            Unit {
                range: (0, unit.range.1),
                ..unit
            }
        }
    };
    let ttl_seconds = whole(
        raw.ttl_seconds,
        DEFAULT_TTL_SECONDS,
        "cache.ttl_seconds",
        when_on(TTL_SECONDS),
        p,
    );
    let stale_if_error = whole(
        raw.stale_if_error_seconds,
        DEFAULT_STALE_IF_ERROR_SECONDS,
        "cache.stale_if_error_seconds",
        STALE_SECONDS,
        p,
    );
    let max_bytes = whole(
        raw.max_bytes,
        DEFAULT_CACHE_MAX_BYTES,
        "cache.max_bytes",
        when_on(Unit::new(1..=u64::MAX)),
        p,
    );
    let max_entry_bytes = whole(
        raw.max_entry_bytes,
        DEFAULT_MAX_ENTRY_BYTES,
        "cache.max_entry_bytes",
        when_on(MAX_ENTRY_BYTES),
        p,
    );
    if let (true, Some(max_bytes), Some(max_entry_bytes)) = (enabled, max_bytes, max_entry_bytes) {
        if max_entry_bytes > max_bytes {
            p.push("cache.max_entry_bytes", "must not exceed cache.max_bytes");
        }
    }
    if p.0.len() != before {
        return None;
    }
    Some(CacheSettings {
        enabled,
        ttl: Duration::from_secs(ttl_seconds?),
        max_bytes: max_bytes?,
        max_entry_bytes: max_entry_bytes?,
        stale_if_error: Duration::from_secs(stale_if_error?),
    })
}

fn validate_audit(raw: RawAudit, p: &mut Problems) -> Option<AuditSettings> {
    let buffer_lines = whole(
        raw.buffer_lines,
        DEFAULT_AUDIT_BUFFER_LINES,
        "audit.buffer_lines",
        AUDIT_BUFFER_LINES,
        p,
    )
    .and_then(nonzero)?;
    let sink = match raw.sink.as_deref().unwrap_or("file") {
        "file" => {
            let path = raw
                .path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_AUDIT_PATH));
            if path.as_os_str().is_empty() {
                p.push("audit.path", "must not be empty");
                return None;
            }
            AuditSink::File(path)
        }
        "stdout" => AuditSink::Stdout,
        other => {
            p.push(
                "audit.sink",
                format!("{other:?} is not one of \"file\", \"stdout\""),
            );
            return None;
        }
    };
    Some(AuditSettings { sink, buffer_lines })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::auth::Access;
    use crate::config::testing::{base, key_file, problems, DIGEST_A};
    use crate::settings::*;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let key = key_file("  org-secret-123\n");
        let s = Settings::from_toml_str(&base(
            key.path(),
            &format!("[teams.billing]\norg = \"acme\"\nkey_sha256 = [\"{DIGEST_A}\"]\nrate_limit = {{ per_minute = 600, burst = 60 }}"),
        ))
        .unwrap();
        assert_eq!(s.server.max_body_bytes, 1024 * 1024);
        assert_eq!(s.server.shutdown_grace, Duration::from_secs(10));
        assert_eq!(s.server.limits, super::default_connection_limits());
        assert_eq!(s.server.limits.header_timeout, Duration::from_secs(30));
        assert_eq!(s.server.limits.max_connections.get(), 16_384);
        assert_eq!(s.upstream.base_url, "http://127.0.0.1:1/v1");
        assert_eq!(s.upstream.timeout, Duration::from_secs(15));
        assert!(s.cache.enabled);
        assert_eq!(s.cache.ttl, Duration::from_secs(60));
        assert_eq!(s.audit.sink, AuditSink::File(PathBuf::from("audit.jsonl")));
        assert_eq!(s.audit.buffer_lines.get(), 16 * 1024);
        assert!(s.admin_token.is_none());
        let team = &s.teams[0];
        assert_eq!(team.access, Access::ReadWrite);
        // The key file's surrounding whitespace is trimmed.
        assert_eq!(
            team.org.authorization.to_str().unwrap(),
            "Bearer org-secret-123"
        );
        assert!(!format!("{team:?}").contains("org-secret-123"));
    }

    #[test]
    fn a_config_without_teams_is_refused() {
        let key = key_file("k");
        assert_eq!(
            problems(&base(key.path(), "")),
            vec![
                "teams: at least one [teams.<name>] is required (without one every request is refused)"
            ]
        );
    }

    #[test]
    fn zero_timeouts_bad_url_and_missing_rate_limit_are_all_reported_at_once() {
        let key = key_file("k");
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[upstream]
base_url = "ftp://example"
timeout_ms = 0
connect_timeout_ms = 0
[orgs.acme]
api_key_file = "{}"
[teams.t]
org = "acme"
key_sha256 = ["{DIGEST_A}"]
"#,
            key.path().display()
        );
        let p = problems(&toml);
        for k in [
            "upstream.base_url",
            "upstream.timeout_ms",
            "upstream.connect_timeout_ms",
            "teams.t.rate_limit",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(&format!("{k}: "))),
                "{k} missing from {p:?}"
            );
        }
    }

    #[test]
    fn uppercase_team_names_are_refused() {
        let key = key_file("k");
        let p = problems(&base(
            key.path(),
            &format!("[teams.Billing]\norg = \"acme\"\nkey_sha256 = [\"{DIGEST_A}\"]\nrate_limit = {{ per_minute = 1, burst = 1 }}"),
        ));
        assert!(p.iter().any(|l| l.contains("lowercase")), "{p:?}");
    }
}
