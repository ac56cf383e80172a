//! Raw config → [`Settings`]: defaults applied, every value checked, org keys read from env or
//! file; every problem collected so an operator sees all of them at once, one line each.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::*;
use super::teams::{parse_digest, validate_org, validate_team, KnownOrgs};
use super::ConfigError;
use crate::auth::KeyDigest;
use crate::settings::*;

const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
const DEFAULT_REQUEST_HEADER_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_REQUEST_BODY_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 75_000;
const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
const DEFAULT_TIMEOUT_MS: u64 = 15_000;
const DEFAULT_TTL_SECONDS: u64 = 60;
const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;
const DEFAULT_MAX_ENTRY_BYTES: u64 = 1024 * 1024;
const DEFAULT_STALE_IF_ERROR_SECONDS: u64 = 300;
const DEFAULT_AUDIT_PATH: &str = "audit.jsonl";
/// Large enough to absorb a slow disk for a moment at tens of thousands of requests per second.
const DEFAULT_AUDIT_BUFFER_LINES: usize = 16 * 1024;

pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    pub(super) fn push(&mut self, key: &str, msg: impl fmt::Display) {
        self.0
            .push(super::one_printable_line(&format!("{key}: {msg}")));
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

pub(super) fn positive_ms(
    value: Option<u64>,
    default: u64,
    key: &str,
    p: &mut Problems,
) -> Option<Duration> {
    match value.unwrap_or(default) {
        0 => {
            p.push(key, "must be greater than 0");
            None
        }
        ms => Some(Duration::from_millis(ms)),
    }
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
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        p.push("server.max_body_bytes", "must be greater than 0");
    }
    let shutdown_grace = positive_ms(
        raw.shutdown_grace_ms,
        DEFAULT_SHUTDOWN_GRACE_MS,
        "server.shutdown_grace_ms",
        p,
    );
    let header_timeout = positive_ms(
        raw.request_header_timeout_ms,
        DEFAULT_REQUEST_HEADER_TIMEOUT_MS,
        "server.request_header_timeout_ms",
        p,
    );
    let body_timeout = positive_ms(
        raw.request_body_timeout_ms,
        DEFAULT_REQUEST_BODY_TIMEOUT_MS,
        "server.request_body_timeout_ms",
        p,
    );
    let idle_timeout = positive_ms(
        raw.idle_timeout_ms,
        DEFAULT_IDLE_TIMEOUT_MS,
        "server.idle_timeout_ms",
        p,
    );
    let max_connections = NonZeroUsize::new(raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS));
    if max_connections.is_none() {
        p.push("server.max_connections", "must be at least 1");
    }
    let worker_threads = match raw.worker_threads {
        None => None,
        Some(n) => {
            let n = NonZeroUsize::new(n);
            if n.is_none() {
                p.push(
                    "server.worker_threads",
                    "must be at least 1 (leave it out for one per CPU)",
                );
            }
            n
        }
    };
    let (listen, admin_listen, shutdown_grace) = (listen?, admin_listen?, shutdown_grace?);
    let limits = ConnectionLimits {
        header_timeout: header_timeout?,
        body_timeout: body_timeout?,
        idle_timeout: idle_timeout?,
        max_connections: max_connections?,
    };
    if listen == admin_listen && listen.port() != 0 {
        p.push("server.admin_listen", "must differ from server.listen");
    }
    (max_body_bytes > 0).then_some(ServerSettings {
        listen,
        admin_listen,
        max_body_bytes,
        shutdown_grace,
        limits,
        worker_threads,
    })
}

fn validate_upstream(raw: RawUpstream, p: &mut Problems) -> Option<UpstreamSettings> {
    let base_url = match raw.base_url {
        None => {
            p.push(
                "upstream.base_url",
                "is required (e.g. \"https://api.dialnexa.com/v1\")",
            );
            None
        }
        Some(url) => match validate_base_url(&url) {
            Ok(url) => Some(url),
            Err(why) => {
                p.push("upstream.base_url", format!("{url:?} {why}"));
                None
            }
        },
    };
    let connect_timeout = positive_ms(
        raw.connect_timeout_ms,
        DEFAULT_CONNECT_TIMEOUT_MS,
        "upstream.connect_timeout_ms",
        p,
    );
    let timeout = positive_ms(raw.timeout_ms, DEFAULT_TIMEOUT_MS, "upstream.timeout_ms", p);
    Some(UpstreamSettings {
        base_url: base_url?,
        connect_timeout: connect_timeout?,
        timeout: timeout?,
    })
}

pub(super) fn validate_base_url(url: &str) -> Result<String, &'static str> {
    let uri: http::Uri = url.parse().map_err(|_| "is not a valid URL")?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("must start with http:// or https://"),
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err("has no host");
    }
    if uri.query().is_some() {
        return Err("must not carry a query string");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn validate_cache(raw: RawCache, p: &mut Problems) -> Option<CacheSettings> {
    let enabled = raw.enabled.unwrap_or(true);
    let ttl_seconds = raw.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_CACHE_MAX_BYTES);
    let max_entry_bytes = raw.max_entry_bytes.unwrap_or(DEFAULT_MAX_ENTRY_BYTES);
    let before = p.0.len();
    if enabled {
        if ttl_seconds == 0 {
            p.push(
                "cache.ttl_seconds",
                "must be greater than 0 (set cache.enabled = false to turn caching off)",
            );
        }
        if max_bytes == 0 {
            p.push("cache.max_bytes", "must be greater than 0");
        }
        if max_entry_bytes == 0 {
            p.push("cache.max_entry_bytes", "must be greater than 0");
        }
        if max_bytes > 0 && max_entry_bytes > max_bytes {
            p.push("cache.max_entry_bytes", "must not exceed cache.max_bytes");
        }
        // The weigher counts in u32; one entry can never weigh more than that.
        if max_entry_bytes > u64::from(u32::MAX) / 2 {
            p.push("cache.max_entry_bytes", "must be below 2 GiB");
        }
    }
    (p.0.len() == before).then(|| CacheSettings {
        enabled,
        ttl: Duration::from_secs(ttl_seconds),
        max_bytes,
        max_entry_bytes,
        stale_if_error: Duration::from_secs(
            raw.stale_if_error_seconds
                .unwrap_or(DEFAULT_STALE_IF_ERROR_SECONDS),
        ),
    })
}

fn validate_audit(raw: RawAudit, p: &mut Problems) -> Option<AuditSettings> {
    let buffer_lines =
        match NonZeroUsize::new(raw.buffer_lines.unwrap_or(DEFAULT_AUDIT_BUFFER_LINES)) {
            Some(n) => n,
            None => {
                p.push("audit.buffer_lines", "must be at least 1");
                return None;
            }
        };
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
