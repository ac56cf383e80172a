//! `[cluster]`: the shared Redis. Its password comes from env or a file, like org keys; one
//! written into `redis_url` is refused without being repeated.

use std::sync::Arc;

use super::number::{self, timeout_ms, Unit};
use super::problems::Problems;
use super::raw::RawCluster;
use super::secret::{read_secret, SecretFields, SecretLookup};
use crate::settings::{ClusterSettings, OnUnavailable, RedisTarget, Secret, SentinelTarget};

/// The product's short name: in a Redis that other software also uses, every key is plainly ours.
const DEFAULT_KEY_PREFIX: &str = "dnxgw";
/// A healthy Redis in the same zone answers in well under a millisecond; 200 ms leaves it ample
/// room yet keeps what a stalled one costs the request that finds out small.
const DEFAULT_REDIS_TIMEOUT_MS: u64 = 200;
/// More Redis replicas than any deployment runs; a larger count is a typo that would refuse every
/// agent write.
const MAX_REPLICAS_ACKED: u32 = 100;

pub(super) fn validate_cluster(raw: RawCluster, p: &mut Problems) -> Option<ClusterSettings> {
    let target = validate_target(&raw, p);
    let fields = SecretFields {
        env: "redis_password_env",
        file: "redis_password_file",
    };
    let password = match read_secret(
        raw.redis_password_env,
        raw.redis_password_file,
        "cluster",
        fields,
        p,
    ) {
        SecretLookup::Read(secret) => Some(Some(Secret::new(secret))),
        SecretLookup::Absent => Some(None),
        SecretLookup::Unreadable => None,
    };
    let fields = SecretFields {
        env: "sentinel_password_env",
        file: "sentinel_password_file",
    };
    let sentinel_password = match read_secret(
        raw.sentinel_password_env,
        raw.sentinel_password_file,
        "cluster",
        fields,
        p,
    ) {
        SecretLookup::Read(secret) => Some(Some(Secret::new(secret))),
        SecretLookup::Absent => Some(None),
        SecretLookup::Unreadable => None,
    };
    let key_prefix = raw.key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.into());
    let prefix_ok = !key_prefix.is_empty()
        && key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if !prefix_ok {
        p.push(
            "cluster.key_prefix",
            "must be non-empty [A-Za-z0-9_.:-]+ (no braces: the organisation is the hash tag)",
        );
    }
    let timeout = timeout_ms(
        raw.timeout_ms,
        DEFAULT_REDIS_TIMEOUT_MS,
        "cluster.timeout_ms",
        p,
    );
    let on_unavailable = match raw.on_unavailable.as_deref() {
        None | Some("degrade") => Some(OnUnavailable::Degrade),
        Some("refuse") => Some(OnUnavailable::Refuse),
        Some(other) => {
            p.push(
                "cluster.on_unavailable",
                format!("must be \"degrade\" or \"refuse\", not {other:?}"),
            );
            None
        }
    };
    // Taken as written, like every count: `1.5` is refused, not rounded.
    let min_replicas_acked = number::whole(
        raw.min_replicas_acked,
        0,
        "cluster.min_replicas_acked",
        Unit::new(0..=u64::from(MAX_REPLICAS_ACKED)),
        p,
    )
    .and_then(|n| u32::try_from(n).ok());
    let target = match (target?, sentinel_password?) {
        (RedisTarget::Sentinel(mut s), password) => {
            s.sentinel_password = password;
            RedisTarget::Sentinel(s)
        }
        (url, None) => url,
        (RedisTarget::Url(_), Some(_)) => {
            p.push(
                "cluster.sentinel_password_env",
                "is only for sentinels (set cluster.sentinels and cluster.master_name)",
            );
            return None;
        }
    };
    Some(ClusterSettings {
        target,
        password: password?,
        key_prefix: prefix_ok.then(|| Arc::from(key_prefix))?,
        timeout: timeout?,
        on_unavailable: on_unavailable?,
        min_replicas_acked: min_replicas_acked?,
    })
}

/// `redis_url`, or `sentinels` with `master_name` (and what the URL would have said), not both.
fn validate_target(raw: &RawCluster, p: &mut Problems) -> Option<RedisTarget> {
    match (&raw.redis_url, &raw.sentinels) {
        (Some(_), Some(_)) => {
            p.push(
                "cluster.redis_url",
                "set cluster.redis_url or cluster.sentinels, not both",
            );
            None
        }
        (None, None) => {
            p.push(
                "cluster.redis_url",
                "is required in [cluster] (or cluster.sentinels with cluster.master_name)",
            );
            None
        }
        (Some(url), None) => {
            let sentinel_only = [
                ("master_name", raw.master_name.is_some()),
                ("database", raw.database.is_some()),
                ("username", raw.username.is_some()),
                ("tls", raw.tls.is_some()),
            ];
            let mut ok = true;
            for (key, set) in sentinel_only {
                if set {
                    p.push(
                        &format!("cluster.{key}"),
                        "is only for cluster.sentinels (with redis_url, say it in the URL)",
                    );
                    ok = false;
                }
            }
            match check_url(url) {
                Ok(()) => ok.then(|| RedisTarget::Url(url.clone())),
                Err(problem) => {
                    p.push("cluster.redis_url", problem);
                    None
                }
            }
        }
        (None, Some(list)) => {
            let mut sentinels = Vec::new();
            if list.is_empty() {
                p.push("cluster.sentinels", "must name at least one Sentinel");
            }
            for entry in list {
                match check_host_port(entry) {
                    Some(addr) => sentinels.push(addr),
                    None => p.push(
                        "cluster.sentinels",
                        format!("{entry:?} is not host:port (port 1-65535)"),
                    ),
                }
            }
            let master_name = match raw.master_name.as_deref().map(str::trim) {
                Some(name) if !name.is_empty() => Some(name.to_owned()),
                _ => {
                    p.push(
                        "cluster.master_name",
                        "is required with cluster.sentinels (the name the Sentinels monitor)",
                    );
                    None
                }
            };
            (sentinels.len() == list.len() && !list.is_empty()).then_some(())?;
            Some(RedisTarget::Sentinel(SentinelTarget {
                sentinels,
                master_name: master_name?,
                database: i64::from(raw.database.unwrap_or(0)),
                username: raw.username.clone().filter(|u| !u.is_empty()),
                tls: raw.tls.unwrap_or(false),
                sentinel_password: None,
            }))
        }
    }
}

/// `host:port` (a bracketed IPv6 literal too), with a port Redis can listen on.
fn check_host_port(entry: &str) -> Option<(String, u16)> {
    let (host, port) = entry.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!host.is_empty() && !host.contains(['/', '@', ' '])).then(|| (host.to_owned(), port))
}

/// A Redis URL the client can use, with no password in it. The problem text never repeats the
/// URL, which may hold one (nor does `url`'s parse error). Parsed by `url`, the parser the redis
/// client reads it with, so what passes here is what the client accepts.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| match e {
        // No `scheme:` at all, as in `redis.internal:6379/0` read as a relative reference.
        url::ParseError::RelativeUrlWithoutBase => {
            "must be redis://host[:port][/db] or rediss://…".to_owned()
        }
        e => format!("is not a valid URL: {e}"),
    })?;
    let scheme = parsed.scheme();
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!(
            "scheme must be redis:// or rediss://, not {scheme}://"
        ));
    }
    // `url` drops an empty password (`user:@host`); the `:` still says one was meant.
    let userinfo = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next()?.rsplit_once('@'));
    if parsed.password().is_some() || userinfo.is_some_and(|(u, _)| u.contains(':')) {
        return Err(
            "must not contain a password (set cluster.redis_password_env or \
             cluster.redis_password_file; the URL may name an ACL user)"
                .into(),
        );
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("names no host".into());
    }
    if parsed.query().is_some() {
        return Err(
            "takes no query parameters (set the password and timeouts in [cluster])".into(),
        );
    }
    if parsed.port() == Some(0) {
        return Err("port must be between 1 and 65535".into());
    }
    let db = parsed.path().trim_matches('/');
    if !db.is_empty() && (db.parse::<u16>().is_err() || db.starts_with('+')) {
        return Err(format!(
            "the database after the host must be a number from 0 to 65535, not {db:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[cluster]` from TOML, validated: the settings, or every problem's line.
    fn cluster(toml: &str) -> Result<ClusterSettings, Vec<String>> {
        let raw: RawCluster = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .unwrap();
        let mut p = Problems(Vec::new());
        let settings = validate_cluster(raw, &mut p);
        match (settings, p.0) {
            (Some(s), lines) if lines.is_empty() => Ok(s),
            (_, lines) => Err(lines),
        }
    }

    #[test]
    fn sentinels_take_the_place_of_the_url() {
        let s = cluster(
            r#"
sentinels = ["10.0.0.1:26379", "10.0.0.2:26379", "[::1]:26380"]
master_name = "dnxgw"
database = 2
username = "gateway"
tls = true
min_replicas_acked = 1
"#,
        )
        .unwrap();
        let RedisTarget::Sentinel(t) = s.target else {
            panic!("{:?}", s.target)
        };
        assert_eq!(t.sentinels[2], ("::1".to_owned(), 26380));
        assert_eq!(
            (
                t.master_name.as_str(),
                t.database,
                t.username.as_deref(),
                t.tls
            ),
            ("dnxgw", 2, Some("gateway"), true)
        );
        assert_eq!(s.min_replicas_acked, 1);
        let s = cluster("redis_url = \"redis://r:6379\"").unwrap();
        assert_eq!(s.target, RedisTarget::Url("redis://r:6379".into()));
        assert_eq!(s.min_replicas_acked, 0);
    }

    #[test]
    fn a_url_and_sentinels_together_or_half_a_sentinel_setup_is_one_line_each() {
        let both =
            cluster("redis_url = \"redis://r\"\nsentinels = [\"s:26379\"]\nmaster_name = \"m\"");
        assert_eq!(
            both.unwrap_err(),
            ["cluster.redis_url: set cluster.redis_url or cluster.sentinels, not both"]
        );
        let e = cluster("sentinels = [\"s:26379\"]").unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("cluster.master_name: "), "{e:?}");
        let e = cluster("sentinels = [\"s:99999\"]\nmaster_name = \"m\"").unwrap_err();
        assert!(e[0].starts_with("cluster.sentinels: "), "{e:?}");
        let e = cluster("redis_url = \"redis://r\"\nmaster_name = \"m\"").unwrap_err();
        assert!(e[0].starts_with("cluster.master_name: "), "{e:?}");
        for value in ["101", "1.5", "-1"] {
            let e = cluster(&format!(
                "redis_url = \"redis://r\"\nmin_replicas_acked = {value}"
            ))
            .unwrap_err();
            assert!(
                e[0].starts_with("cluster.min_replicas_acked: "),
                "{value}: {e:?}"
            );
        }
        let e = cluster("").unwrap_err();
        assert!(e[0].starts_with("cluster.redis_url: is required"), "{e:?}");
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_being_repeated() {
        let e = check_url("redis://user:hunter2@redis.internal:6379/0").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("password"), "{e}");
        let e = check_url("redis://:hunter2@redis.internal").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        // An empty one too, which `url` would drop without a trace.
        assert!(check_url("redis://user:@redis.internal").is_err());
    }

    #[test]
    fn sentinels_are_host_and_port() {
        assert_eq!(
            check_host_port("10.0.0.1:26379"),
            Some(("10.0.0.1".into(), 26379))
        );
        assert_eq!(check_host_port("[::1]:26379"), Some(("::1".into(), 26379)));
        assert_eq!(check_host_port("sentinel:99999"), None);
        assert_eq!(check_host_port("sentinel:0"), None);
        assert_eq!(check_host_port("sentinel"), None);
        assert_eq!(check_host_port(":26379"), None);
    }

    #[test]
    fn urls_name_a_scheme_and_a_host() {
        assert!(check_url("redis://redis.internal:6379/0").is_ok());
        assert!(check_url("rediss://gateway@redis.internal").is_ok());
        assert!(check_url("redis://127.0.0.1:6390").is_ok());
        assert!(check_url("http://redis.internal").is_err());
        assert!(check_url("redis.internal:6379").is_err());
        assert!(check_url("redis://").is_err());
        assert!(check_url("redis:///0").is_err());
        assert!(check_url("redis://h?password=x").is_err());
    }

    #[test]
    fn ports_and_databases_out_of_range_are_refused() {
        assert!(check_url("redis://redis.internal:65535/15").is_ok());
        assert!(check_url("redis://[::1]:6379/0").is_ok());
        for (url, says) in [
            ("redis://redis.internal:99999", "invalid port number"),
            ("redis://redis.internal:0", "port must be"),
            ("redis://redis.internal:6379/-1", "not \"-1\""),
            ("redis://redis.internal:6379/1.5", "not \"1.5\""),
            ("redis://redis.internal:6379/99999999999", "from 0 to 65535"),
            ("redis://redis.internal/x", "database"),
        ] {
            let e = check_url(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
