//! Operators' config: the TOML file (plus `DNXGW__SECTION__KEY` env overrides) read, checked and
//! turned into [`Settings`]. Only start-up, reloads (`state`), `cli` and `demo` come here; the stages
//! read [`crate::settings`].

use std::fmt;
use std::path::Path;

use crate::settings::Settings;

mod raw;
mod teams;
mod toml_errors;
mod validate;

use raw::RawConfig;
use toml_errors::{check_syntax, one_line};
use validate::validate;

/// Env overrides are `DNXGW__SECTION__KEY`.
const ENV_PREFIX: &str = "DNXGW";

/// Every problem found in a config, one operator-readable line each.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl ConfigError {
    fn one(msg: impl Into<String>) -> Self {
        Self {
            problems: vec![msg.into()],
        }
    }
}

impl Settings {
    /// Reads `path`, applies `DNXGW__SECTION__KEY` env overrides, reads org keys, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::one(format!(
                "config file {}: not found or not a regular file",
                path.display()
            )));
        }
        let origin = format!("config file {}", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(format!("{origin}: cannot be read: {e}")))?;
        Self::from_text(&text, &origin)
    }

    /// Same as [`Settings::load`] for TOML held in memory (the demo and tests).
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Self::from_text(toml, "config")
    }

    fn from_text(text: &str, origin: &str) -> Result<Self, ConfigError> {
        check_syntax(text, origin)?;
        Self::build(
            config::File::from_str(text, config::FileFormat::Toml),
            origin,
        )
    }

    fn build<S>(source: S, origin: &str) -> Result<Self, ConfigError>
    where
        S: config::Source + Send + Sync + 'static,
    {
        let raw: RawConfig = config::Config::builder()
            .add_source(source)
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::one(one_line(&format!("{origin}: {e}"))))?;
        validate(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::toml_errors::key_on_line;
    use crate::auth::Access;
    use crate::settings::*;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    const DIGEST_A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const DIGEST_B: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn key_file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    fn base(org_key_path: &Path, teams: &str) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[upstream]
base_url = "http://127.0.0.1:1/v1/"
[orgs.acme]
api_key_file = "{}"
{teams}
"#,
            org_key_path.display()
        )
    }

    fn problems(toml: &str) -> Vec<String> {
        Settings::from_toml_str(toml).unwrap_err().problems
    }

    #[test]
    fn toml_syntax_errors_are_one_line_naming_line_and_key() {
        let key = key_file("org-secret");
        let twice = base(key.path(), "").replace(
            "[upstream]\n",
            "[upstream]\ntimeout_ms = 1\ntimeout_ms = 2\n",
        );
        assert_eq!(
            problems(&twice),
            ["config: line 7: `upstream.timeout_ms`: duplicate key (at `timeout_ms`)"]
        );
        // A bad value names its key and table; an unclosed header names the table.
        for (edit, starts) in [
            (
                "[upstream]\nbase = x\n",
                "config: line 6: `upstream.base`: ",
            ),
            (
                "[upstream]\ntimeout_ms = = 5\n",
                "config: line 6: `upstream.timeout_ms`: ",
            ),
            ("[upstream\n", "config: line 5: `upstream`: "),
        ] {
            let p = problems(&base(key.path(), "").replace("[upstream]\n", edit));
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(p[0].starts_with(starts), "{p:?}");
            assert!(!p[0].contains('\n'), "{p:?}");
        }
    }

    #[test]
    fn the_key_of_a_line_is_dotted_with_its_table() {
        let text = "top = 1\n[teams.billing]\nrate_limit = { per_minute = 6 }\nkey_sha256 = [\n  \"ab\",\n]\norg acme\n";
        assert_eq!(key_on_line(text, 1).as_deref(), Some("top"));
        assert_eq!(key_on_line(text, 2).as_deref(), Some("teams.billing"));
        assert_eq!(
            key_on_line(text, 3).as_deref(),
            Some("teams.billing.rate_limit")
        );
        assert_eq!(key_on_line(text, 5), None);
        assert_eq!(key_on_line(text, 7).as_deref(), Some("teams.billing.org"));
        assert_eq!(key_on_line(text, 99), None);
    }

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
    fn unset_env_and_unreadable_file_are_named() {
        let toml = r#"
[server]
listen = "127.0.0.1:0"
[upstream]
base_url = "https://api.dialnexa.com/v1"
[orgs.one]
api_key_env = "DNXGW_TEST_SURELY_UNSET_VAR"
[orgs.two]
api_key_file = "/nonexistent/dialnexa/key"
"#;
        let p = problems(toml);
        assert!(
            p.iter().any(|l| l.starts_with(
                "orgs.one.api_key_env: environment variable DNXGW_TEST_SURELY_UNSET_VAR is not set"
            )),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l
                    .starts_with("orgs.two.api_key_file: cannot read /nonexistent/dialnexa/key")),
            "{p:?}"
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
    fn unknown_field_is_rejected_with_its_name() {
        let key = key_file("k");
        let toml = base(key.path(), "").replace("[upstream]", "[upstream]\nretries = 3");
        let p = problems(&toml);
        assert!(p[0].contains("retries"), "{p:?}");
    }

    #[test]
    fn shipped_example_config_is_valid() {
        // The only test that sets this variable, so no other test can observe it.
        std::env::set_var("DIALNEXA_KEY_ACME", "made-up-org-key");
        let s = Settings::from_toml_str(include_str!("../../config/gateway.toml"))
            .unwrap_or_else(|e| panic!("config/gateway.toml: {e}"));
        assert_eq!(s.teams.len(), 2);
        assert_eq!(s.upstream.base_url, "https://api.dialnexa.com/v1");
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
