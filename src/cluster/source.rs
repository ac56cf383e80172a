//! Where the primary is: one address from `redis_url`, or whichever server the Sentinels name as
//! the primary of `master_name`, asked again on every (re)connection, so a replica follows a
//! failover by itself (a `READONLY` from an old primary marks the link down, and the next probe
//! asks again). redis-rs's `sentinel` feature does the asking: it queries each Sentinel for its
//! masters and checks with `ROLE` that the address it got is a primary, which is what we would
//! write by hand with `SENTINEL get-master-addr-by-name`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, ConnectionAddr, IntoConnectionInfo, ProtocolVersion, RedisError, TlsMode};

use super::ClusterStartError;
use crate::settings::{ClusterSettings, RedisTarget, SentinelTarget};

pub(super) enum Source {
    Fixed {
        client: Client,
        url: String,
    },
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        master_name: String,
        /// The primary last connected to, so each change is logged once.
        last: Mutex<Option<String>>,
    },
}

impl Source {
    pub(super) fn new(settings: &ClusterSettings) -> Result<Self, ClusterStartError> {
        let password = settings.password.as_ref().map(|p| p.expose());
        match &settings.target {
            RedisTarget::Url(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| ClusterStartError(e.to_string()))?;
                let mut redis = info
                    .redis_settings()
                    .clone()
                    // RESP3: the connection's push sender learns of a disconnect (see link.rs).
                    .set_protocol(ProtocolVersion::RESP3);
                if let Some(password) = password {
                    redis = redis.set_password(password);
                }
                let client = Client::open(info.set_redis_settings(redis))
                    .map_err(|e| ClusterStartError(e.to_string()))?;
                Ok(Self::Fixed {
                    client,
                    url: url.clone(),
                })
            }
            RedisTarget::Sentinel(target) => Ok(Self::Sentinel {
                client: tokio::sync::Mutex::new(sentinel_client(target, password)?),
                master_name: target.master_name.clone(),
                last: Mutex::new(None),
            }),
        }
    }

    /// A client for the primary, as known now. For Sentinels, asked within `budget`.
    pub(super) async fn primary(&self, budget: Duration) -> Result<Client, String> {
        match self {
            Self::Fixed { client, .. } => Ok(client.clone()),
            Self::Sentinel {
                client,
                master_name,
                last,
            } => {
                let asked = async { client.lock().await.async_get_client().await };
                let primary = tokio::time::timeout(budget, asked)
                    .await
                    .map_err(|_| format!("no Sentinel answered within {budget:?}"))?
                    .map_err(|e| {
                        format!("the Sentinels named no primary for {master_name:?}: {e}")
                    })?;
                let addr = primary.get_connection_info().addr().to_string();
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                if last.as_deref() != Some(addr.as_str()) {
                    tracing::info!(primary = %addr, master_name, "cluster: the Sentinels name a primary");
                    *last = Some(addr);
                }
                Ok(primary)
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed { url, .. } => f.write_str(url),
            Self::Sentinel {
                master_name, last, ..
            } => {
                let last = last.lock().unwrap_or_else(|p| p.into_inner());
                write!(
                    f,
                    "{} (primary of {master_name:?} by the Sentinels)",
                    last.as_deref().unwrap_or("?")
                )
            }
        }
    }
}

fn sentinel_client(
    target: &SentinelTarget,
    password: Option<&str>,
) -> Result<SentinelClient, ClusterStartError> {
    let addrs = target.sentinels.iter().map(|(host, port)| {
        if target.tls {
            ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.clone(), *port)
        }
    });
    let mut builder =
        SentinelClientBuilder::new(addrs, &target.master_name, SentinelServerType::Master)
            .map_err(|e| ClusterStartError(e.to_string()))?
            .set_client_to_redis_db(target.database)
            .set_client_to_redis_protocol(ProtocolVersion::RESP3);
    if target.tls {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
    }
    if let Some(user) = &target.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = password {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(password) = &target.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password.expose());
    }
    builder
        .build()
        .map_err(|e| ClusterStartError(e.to_string()))
}

/// An error as `/readyz` and the log name it: Redis's own code and words for a reply (they never
/// hold a secret), redis-rs's description otherwise.
pub(super) fn describe(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("Redis answered {code} {detail}"),
        _ => e.to_string(),
    }
}

/// Evicting keys other than expiring ones can drop a write's in-progress mark or a team's quota
/// state early (versions are safe: a lost one is a fresh one). Said once per connection; a host
/// that forbids `CONFIG` is not asked twice.
pub(super) async fn warn_if_evicting(conn: &mut MultiplexedConnection) {
    // A map under RESP3, pairs under RESP2: redis-rs reads both as one.
    let policy: Result<HashMap<String, String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    if let Some(policy) = policy.ok().and_then(|p| p.get("maxmemory-policy").cloned()) {
        if policy.starts_with("allkeys") {
            tracing::warn!(
                %policy,
                "cluster: Redis may evict any key; use noeviction or a volatile-* policy so in-progress writes and quotas are kept"
            );
        }
    }
}
