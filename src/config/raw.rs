//! The config file's shape as operators write it: every field optional, unknown fields refused, so
//! that validation (in [`super::validate`]) can name each missing or wrong key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

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
    pub(super) timeout_ms: Option<u64>,
    pub(super) on_unavailable: Option<String>,
    pub(super) sentinels: Option<Vec<String>>,
    pub(super) master_name: Option<String>,
    pub(super) database: Option<u32>,
    pub(super) username: Option<String>,
    pub(super) tls: Option<bool>,
    pub(super) sentinel_password_env: Option<String>,
    pub(super) sentinel_password_file: Option<PathBuf>,
    pub(super) min_replicas_acked: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) shutdown_grace_ms: Option<u64>,
    pub(super) request_header_timeout_ms: Option<u64>,
    pub(super) request_body_timeout_ms: Option<u64>,
    pub(super) idle_timeout_ms: Option<u64>,
    pub(super) max_connections: Option<usize>,
    pub(super) worker_threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) base_url: Option<String>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) enabled: Option<bool>,
    pub(super) ttl_seconds: Option<u64>,
    pub(super) max_bytes: Option<u64>,
    pub(super) max_entry_bytes: Option<u64>,
    pub(super) stale_if_error_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) sink: Option<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) buffer_lines: Option<usize>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTeam {
    pub(super) org: Option<String>,
    #[serde(default)]
    pub(super) key_sha256: Vec<String>,
    pub(super) access: Option<String>,
    pub(super) rate_limit: Option<RawRate>,
    pub(super) write_rate_limit: Option<RawRate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRate {
    pub(super) per_minute: Option<u32>,
    pub(super) burst: Option<u32>,
}
