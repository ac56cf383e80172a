//! The config file's shape as operators write it: every field optional, unknown fields refused, so
//! that validation (`validate.rs` and the files beside it) can name each missing or wrong key. Numbers are
//! [`Whole`]: kept as written, so a fraction or a negative is refused rather than rounded.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::number::Whole;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) audit: RawAudit,
    pub(super) admin: Option<RawAdmin>,
    pub(super) cluster: Option<RawCluster>,
    pub(super) tracing: Option<RawTracing>,
    #[serde(default)]
    pub(super) orgs: BTreeMap<String, RawOrg>,
    #[serde(default)]
    pub(super) teams: BTreeMap<String, RawTeam>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) redis_url: Option<String>,
    pub(super) redis_password_env: Option<String>,
    pub(super) redis_password_file: Option<PathBuf>,
    pub(super) key_prefix: Option<String>,
    pub(super) timeout_ms: Option<Whole>,
    pub(super) on_unavailable: Option<String>,
    pub(super) sentinels: Option<Vec<String>>,
    pub(super) master_name: Option<String>,
    pub(super) database: Option<u32>,
    pub(super) username: Option<String>,
    pub(super) tls: Option<bool>,
    pub(super) sentinel_password_env: Option<String>,
    pub(super) sentinel_password_file: Option<PathBuf>,
    pub(super) min_replicas_acked: Option<Whole>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTracing {
    pub(super) otlp_endpoint: Option<String>,
    pub(super) sample_ratio: Option<f64>,
    pub(super) service_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) max_body_bytes: Option<Whole>,
    pub(super) shutdown_grace_ms: Option<Whole>,
    pub(super) request_header_timeout_ms: Option<Whole>,
    pub(super) request_body_timeout_ms: Option<Whole>,
    pub(super) idle_timeout_ms: Option<Whole>,
    pub(super) max_connections: Option<Whole>,
    pub(super) worker_threads: Option<Whole>,
    pub(super) watch_config: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) base_url: Option<String>,
    pub(super) connect_timeout_ms: Option<Whole>,
    pub(super) timeout_ms: Option<Whole>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) enabled: Option<bool>,
    pub(super) ttl_seconds: Option<Whole>,
    pub(super) max_bytes: Option<Whole>,
    pub(super) max_entry_bytes: Option<Whole>,
    pub(super) stale_if_error_seconds: Option<Whole>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) sink: Option<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) buffer_lines: Option<Whole>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) token_sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOrg {
    pub(super) api_key_env: Option<String>,
    pub(super) api_key_file: Option<PathBuf>,
    pub(super) upstream_rate_limit: Option<RawRate>,
    pub(super) max_upstream_hold_seconds: Option<Whole>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTeam {
    pub(super) org: Option<String>,
    #[serde(default)]
    pub(super) key_sha256: Vec<RawKey>,
    pub(super) access: Option<String>,
    pub(super) rate_limit: Option<RawRate>,
    pub(super) write_rate_limit: Option<RawRate>,
    pub(super) upstream_share: Option<Whole>,
}

/// One `key_sha256` entry: a bare digest, or `{ sha256 = "<hex>", not_after = "<RFC 3339>" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawKey {
    Digest(String),
    Dated(RawDatedKey),
}

/// Unknown fields are kept (not refused by serde) so that validation names the entry they are in:
/// an untagged enum's own error names neither the field nor the entry.
#[derive(Debug, Deserialize)]
pub(super) struct RawDatedKey {
    pub(super) sha256: Option<String>,
    /// A TOML date-time arrives here as its text too.
    pub(super) not_after: Option<String>,
    #[serde(flatten)]
    pub(super) unknown: BTreeMap<String, serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRate {
    pub(super) per_minute: Option<Whole>,
    pub(super) burst: Option<Whole>,
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{base, key_file, problems};

    #[test]
    fn unknown_field_is_rejected_with_its_name() {
        let key = key_file("k");
        let toml = base(key.path(), "").replace("[upstream]", "[upstream]\nretries = 3");
        let p = problems(&toml);
        assert!(p[0].contains("retries"), "{p:?}");
    }
}
