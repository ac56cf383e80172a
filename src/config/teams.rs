//! Organisations and teams: org keys read from env or file, key digests, quotas, and the checks
//! across them (a team's org exists, no key belongs to two teams).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;

use super::problems::Problems;
use super::rate::validate_rate;
use super::raw::*;
use super::secret::{read_secret, SecretFields, SecretLookup};
use crate::auth::{Access, KeyDigest};
use crate::settings::*;

pub(super) fn validate_org(name: &str, raw: RawOrg, key: &str, p: &mut Problems) -> Option<Org> {
    let (upstream_rate_limit, max_upstream_hold) = super::budget::validate_org_budget(
        raw.upstream_rate_limit,
        raw.max_upstream_hold_seconds,
        key,
        p,
    );
    let fields = SecretFields {
        env: "api_key_env",
        file: "api_key_file",
    };
    let secret = match read_secret(raw.api_key_env, raw.api_key_file, key, fields, p) {
        SecretLookup::Read(secret) => secret,
        SecretLookup::Unreadable => return None,
        SecretLookup::Absent => {
            p.push(key, "needs api_key_env or api_key_file");
            return None;
        }
    };
    match HeaderValue::from_str(&format!("Bearer {secret}")) {
        Ok(mut authorization) => {
            authorization.set_sensitive(true);
            Some(Org {
                name: Arc::from(name),
                authorization,
                upstream_rate_limit: upstream_rate_limit?,
                max_upstream_hold: max_upstream_hold?,
            })
        }
        Err(_) => {
            p.push(
                key,
                "the organisation key contains characters not allowed in an HTTP header",
            );
            None
        }
    }
}

pub(super) fn parse_digest(hex: &str, key: &str, p: &mut Problems) -> Option<KeyDigest> {
    match KeyDigest::from_hex(hex) {
        Some(d) => Some(d),
        None => {
            p.push(
                key,
                "must be a SHA-256 digest: 64 hex characters (see `dialnexa-gateway hash-key`)",
            );
            None
        }
    }
}

/// One `key_sha256` entry, checked: its digest and, when it has one, its end.
fn team_key(entry: RawKey, item: &str, p: &mut Problems) -> Option<TeamKey> {
    let dated = match entry {
        RawKey::Digest(hex) => {
            return parse_digest(&hex, item, p).map(|digest| TeamKey {
                digest,
                not_after: None,
            })
        }
        RawKey::Dated(dated) => dated,
    };
    for field in dated.unknown.keys() {
        p.push(
            &format!("{item}.{field}"),
            "unknown field (an entry is a digest, or { sha256 = \"<hex>\", not_after = \"<RFC 3339 time>\" })",
        );
    }
    let digest = match &dated.sha256 {
        Some(hex) => parse_digest(hex, &format!("{item}.sha256"), p),
        None => {
            p.push(&format!("{item}.sha256"), "is required");
            None
        }
    };
    let not_after = match dated.not_after.as_deref().map(parse_rfc3339) {
        None => None,
        Some(Some(t)) => Some(t),
        Some(None) => {
            p.push(
                &format!("{item}.not_after"),
                "must be an RFC 3339 time with its offset, e.g. \"2027-03-01T00:00:00Z\"",
            );
            return None;
        }
    };
    (dated.unknown.is_empty())
        .then_some(())
        .and(digest)
        .map(|digest| TeamKey { digest, not_after })
}

/// An RFC 3339 time (`2027-03-01T00:00:00Z`, `2027-03-01T01:00:00+01:00`) as a `SystemTime`.
pub(super) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let t =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .ok()?;
    Some(SystemTime::from(t))
}

/// The organisations a team may name: the valid ones, and every one the file declares.
#[derive(Clone, Copy)]
pub(super) struct KnownOrgs<'a> {
    pub(super) valid: &'a HashMap<String, Org>,
    pub(super) declared: &'a HashSet<String>,
}

pub(super) fn validate_team(
    name: &str,
    raw: RawTeam,
    key: &str,
    orgs: KnownOrgs<'_>,
    seen: &mut HashMap<KeyDigest, String>,
    p: &mut Problems,
) -> Option<Team> {
    let org = match raw.org {
        None => {
            p.push(&format!("{key}.org"), "is required");
            None
        }
        Some(org_name) => match orgs.valid.get(&org_name) {
            Some(org) => Some(org.clone()),
            // Its own problem is already reported, under `orgs.<name>`.
            None if orgs.declared.contains(&org_name) => None,
            None => {
                p.push(
                    &format!("{key}.org"),
                    format!("unknown organisation {org_name:?} (no [orgs.{org_name}] section)"),
                );
                None
            }
        },
    };
    if raw.key_sha256.is_empty() {
        p.push(&format!("{key}.key_sha256"), "needs at least one digest");
    }
    let mut keys = Vec::new();
    let mut own = HashSet::new();
    for (i, entry) in raw.key_sha256.into_iter().enumerate() {
        let item = format!("{key}.key_sha256[{i}]");
        let Some(team_key) = team_key(entry, &item, p) else {
            continue;
        };
        let d = team_key.digest;
        if !own.insert(d) {
            p.push(&item, "duplicate digest within this team");
            continue;
        }
        if let Some(other) = seen.insert(d, name.to_owned()) {
            p.push(&item, format!("digest already belongs to team {other:?}"));
            continue;
        }
        keys.push(team_key);
    }
    let access = match raw.access.as_deref().unwrap_or("read_write") {
        "read_write" => Some(Access::ReadWrite),
        "read_only" => Some(Access::ReadOnly),
        other => {
            p.push(
                &format!("{key}.access"),
                format!("{other:?} is not one of \"read_write\", \"read_only\""),
            );
            None
        }
    };
    let rate_limit = match raw.rate_limit {
        None => {
            p.push(
                &format!("{key}.rate_limit"),
                "is required, e.g. { per_minute = 600, burst = 60 }",
            );
            None
        }
        some => validate_rate(some, &format!("{key}.rate_limit"), p),
    };
    let write_rate_limit =
        validate_rate(raw.write_rate_limit, &format!("{key}.write_rate_limit"), p);
    let upstream_share = super::budget::validate_share(raw.upstream_share, key, p);
    Some(Team {
        name: Arc::from(name),
        org: org?,
        keys,
        access: access?,
        rate_limit: rate_limit?,
        write_rate_limit,
        upstream_share: upstream_share?,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::testing::{base, key_file, problems, DIGEST_A, DIGEST_B};
    use crate::settings::*;

    #[test]
    fn unknown_org_is_named() {
        let key = key_file("k");
        let p = problems(&base(
            key.path(),
            &format!("[teams.billing]\norg = \"nope\"\nkey_sha256 = [\"{DIGEST_A}\"]\nrate_limit = {{ per_minute = 1, burst = 1 }}"),
        ));
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("teams.billing.org: unknown organisation \"nope\""),
            "{p:?}"
        );
    }

    #[test]
    fn an_invalid_org_is_one_problem_not_one_per_team() {
        let missing = Path::new("/nonexistent/acme.key");
        let p = problems(&base(
            missing,
            &format!("[teams.billing]\norg = \"acme\"\nkey_sha256 = [\"{DIGEST_A}\"]\nrate_limit = {{ per_minute = 1, burst = 1 }}"),
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("orgs.acme.api_key_file"), "{p:?}");
    }

    #[test]
    fn duplicate_and_malformed_digests_are_named() {
        let key = key_file("k");
        let p = problems(&base(
            key.path(),
            &format!(
                "[teams.a]\norg = \"acme\"\nkey_sha256 = [\"{DIGEST_A}\"]\nrate_limit = {{ per_minute = 1, burst = 1 }}\n\
                 [teams.b]\norg = \"acme\"\nkey_sha256 = [\"{DIGEST_A}\", \"xyz\", \"{DIGEST_B}\"]\nrate_limit = {{ per_minute = 1, burst = 1 }}"
            ),
        ));
        assert!(
            p.iter()
                .any(|l| l
                    .starts_with("teams.b.key_sha256[0]: digest already belongs to team \"a\"")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("teams.b.key_sha256[1]: must be a SHA-256 digest")),
            "{p:?}"
        );
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn a_key_may_have_an_end_beside_plain_digests() {
        let key = key_file("k");
        let s = Settings::from_toml_str(&base(
            key.path(),
            &format!(
                "[teams.billing]\norg = \"acme\"\nrate_limit = {{ per_minute = 1, burst = 1 }}\n\
                 key_sha256 = [\"{DIGEST_A}\", {{ sha256 = \"{DIGEST_B}\", not_after = \"2027-03-01T01:00:00+01:00\" }}]"
            ),
        ))
        .unwrap();
        let keys = &s.teams[0].keys;
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].not_after, None);
        assert_eq!(keys[1].digest.to_hex(), DIGEST_B);
        // 2027-03-01T00:00:00Z, whatever offset it was written with.
        let end = std::time::UNIX_EPOCH + Duration::from_secs(1_803_859_200);
        assert_eq!(keys[1].not_after, Some(end));
    }

    #[test]
    fn a_dated_key_names_its_wrong_parts() {
        let key = key_file("k");
        let p = problems(&base(
            key.path(),
            &format!(
                "[teams.billing]\norg = \"acme\"\nrate_limit = {{ per_minute = 1, burst = 1 }}\n\
                 key_sha256 = [{{ sha256 = \"{DIGEST_A}\", not_after = \"next tuesday\" }}, \
                 {{ not_after = \"2027-03-01T00:00:00Z\" }}, {{ sha256 = \"{DIGEST_B}\", not_afer = \"x\" }}]"
            ),
        ));
        for starts in [
            "teams.billing.key_sha256[0].not_after: must be an RFC 3339 time",
            "teams.billing.key_sha256[1].sha256: is required",
            "teams.billing.key_sha256[2].not_afer: unknown field",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(starts)),
                "{starts} missing from {p:?}"
            );
        }
        assert_eq!(p.len(), 3, "{p:?}");
    }
}
