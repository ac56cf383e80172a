//! `[cluster]`: the shared Redis. Its password comes from env or a file, like org keys; one
//! written into `redis_url` is refused without being repeated.

use std::sync::Arc;

use super::number::timeout_ms;
use super::raw::RawCluster;
use super::teams::{read_secret, Secret as Found, SecretFields};
use super::validate::Problems;
use crate::settings::{ClusterSettings, OnUnavailable, Secret};

const DEFAULT_KEY_PREFIX: &str = "dnxgw";
const DEFAULT_TIMEOUT_MS: u64 = 200;

pub(super) fn validate_cluster(raw: RawCluster, p: &mut Problems) -> Option<ClusterSettings> {
    let redis_url = match raw.redis_url {
        None => {
            p.push("cluster.redis_url", "is required in [cluster]");
            None
        }
        Some(url) => match check_url(&url) {
            Ok(()) => Some(url),
            Err(problem) => {
                p.push("cluster.redis_url", problem);
                None
            }
        },
    };
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
        Found::Read(secret) => Some(Some(Secret::new(secret))),
        Found::Absent => Some(None),
        Found::Unreadable => None,
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
    let timeout = timeout_ms(raw.timeout_ms, DEFAULT_TIMEOUT_MS, "cluster.timeout_ms", p);
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
    Some(ClusterSettings {
        redis_url: redis_url?,
        password: password?,
        key_prefix: prefix_ok.then(|| Arc::from(key_prefix))?,
        timeout: timeout?,
        on_unavailable: on_unavailable?,
    })
}

/// A Redis URL the client can use, with no password in it. The problem text never repeats the
/// URL, which may hold one.
fn check_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("must be redis://host[:port][/db] or rediss://…".into());
    };
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!(
            "scheme must be redis:// or rediss://, not {scheme}://"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            return Err(
                "must not contain a password (set cluster.redis_password_env or \
                 cluster.redis_password_file; the URL may name an ACL user)"
                    .into(),
            );
        }
    }
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err("names no host".into());
    }
    if rest.contains('?') {
        return Err(
            "takes no query parameters (set the password and timeouts in [cluster])".into(),
        );
    }
    // What the redis client itself would refuse only on the first connection attempt.
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a valid URL: {e}"))?;
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

    #[test]
    fn a_password_in_the_url_is_refused_without_being_repeated() {
        let e = check_url("redis://user:hunter2@redis.internal:6379/0").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("password"), "{e}");
        let e = check_url("redis://:hunter2@redis.internal").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn urls_name_a_scheme_and_a_host() {
        assert!(check_url("redis://redis.internal:6379/0").is_ok());
        assert!(check_url("rediss://gateway@redis.internal").is_ok());
        assert!(check_url("redis://127.0.0.1:6390").is_ok());
        assert!(check_url("http://redis.internal").is_err());
        assert!(check_url("redis.internal:6379").is_err());
        assert!(check_url("redis://").is_err());
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
