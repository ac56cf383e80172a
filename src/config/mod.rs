//! Operators' config: the TOML file (plus `DNXGW__SECTION__KEY` env overrides) read, checked and
//! turned into [`Settings`]. Only start-up, reloads (`state`), `cli` and `demo` come here; the stages
//! read [`crate::settings`].

use std::fmt;
use std::path::Path;

use crate::settings::Settings;

mod budget;
mod cluster;
mod fingerprint;
mod number;
mod problems;
mod rate;
mod raw;
mod secret;
mod teams;
mod toml_errors;
mod tracing;
mod upstream;
mod validate;
mod watch;

use raw::RawConfig;
use toml_errors::{check_syntax, one_line};
use validate::validate;
pub use watch::{ConfigWatcher, Contents, WatchError};

/// The `[server]` connection limits of a config that leaves them out; the simulated DialNexa
/// serves under the same ones.
pub use budget::budget_warnings;
pub use validate::default_connection_limits;

pub use self::tracing::demo_tracing;

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
            problems: vec![one_printable_line(&msg.into())],
        }
    }
}

/// A problem as one line an operator can read: control characters that came from the file (a
/// line break in a quoted name, a carriage return) are shown escaped instead of breaking the
/// line or the terminal.
fn one_printable_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
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
        let raw: RawConfig = layered(text)
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::one(one_line(&format!("{origin}: {e}"))))?;
        let mut settings = validate(raw)?;
        settings.fingerprint = fingerprint::of(text, &settings);
        Ok(settings)
    }
}

/// The file's values with the `DNXGW__SECTION__KEY` env overrides laid over them, unchecked.
fn layered(text: &str) -> Result<config::Config, config::ConfigError> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use crate::settings::Settings;

    #[test]
    fn shipped_example_config_is_valid() {
        // The only test that sets this variable, so no other test can observe it.
        std::env::set_var("DIALNEXA_KEY_ACME", "made-up-org-key");
        let s = Settings::from_toml_str(include_str!("../../config/gateway.toml"))
            .unwrap_or_else(|e| panic!("config/gateway.toml: {e}"));
        assert_eq!(s.teams.len(), 2);
        assert_eq!(s.upstream.base_url, "https://api.dialnexa.com/v1");
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use std::io::Write;

    use super::*;

    /// What a key of the file holds, so most generated values have the type serde expects and
    /// validation is reached.
    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Int,
        Str,
        Bool,
        Rate,
        Strings,
    }

    const SERVER: &[(&str, Kind)] = &[
        ("listen", Kind::Str),
        ("admin_listen", Kind::Str),
        ("max_body_bytes", Kind::Int),
        ("shutdown_grace_ms", Kind::Int),
        ("request_header_timeout_ms", Kind::Int),
        ("request_body_timeout_ms", Kind::Int),
        ("idle_timeout_ms", Kind::Int),
        ("max_connections", Kind::Int),
        ("worker_threads", Kind::Int),
        ("watch_config", Kind::Bool),
    ];
    const UPSTREAM: &[(&str, Kind)] = &[
        ("base_url", Kind::Str),
        ("connect_timeout_ms", Kind::Int),
        ("timeout_ms", Kind::Int),
    ];
    const CACHE: &[(&str, Kind)] = &[
        ("enabled", Kind::Bool),
        ("ttl_seconds", Kind::Int),
        ("max_bytes", Kind::Int),
        ("max_entry_bytes", Kind::Int),
        ("stale_if_error_seconds", Kind::Int),
    ];
    const AUDIT: &[(&str, Kind)] = &[
        ("sink", Kind::Str),
        ("path", Kind::Str),
        ("buffer_lines", Kind::Int),
    ];
    const ADMIN: &[(&str, Kind)] = &[("token_sha256", Kind::Str)];
    const ORG: &[(&str, Kind)] = &[("api_key_env", Kind::Str), ("api_key_file", Kind::Str)];
    const TEAM: &[(&str, Kind)] = &[
        ("org", Kind::Str),
        ("key_sha256", Kind::Strings),
        ("access", Kind::Str),
        ("rate_limit", Kind::Rate),
        ("write_rate_limit", Kind::Rate),
    ];
    const CLUSTER: &[(&str, Kind)] = &[
        ("redis_url", Kind::Str),
        ("redis_password_env", Kind::Str),
        ("redis_password_file", Kind::Str),
        ("key_prefix", Kind::Str),
        ("timeout_ms", Kind::Int),
        ("on_unavailable", Kind::Str),
    ];
    const UNKNOWN: &[(&str, Kind)] = &[
        ("retries", Kind::Int),
        ("Listen", Kind::Str),
        ("max-body-bytes", Kind::Int),
        ("redis_url", Kind::Str),
    ];

    fn without_controls(s: String, controls: bool) -> String {
        if controls {
            s
        } else {
            s.chars().filter(|c| !c.is_control()).collect()
        }
    }

    /// A TOML basic string holding `s` exactly.
    fn quoted(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// Values, some of them operators' typos; with `controls`, some holding control characters.
    fn text(controls: bool) -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "127.0.0.1:8080",
                "127.0.0.1:0",
                "[::1]:9090",
                "http://127.0.0.1:1/v1",
                "https://api.dialnexa.com/v1",
                "ftp://x",
                "http://",
                "http://h/v1?q=1",
                "file",
                "stdout",
                "read_only",
                "read_write",
                "acme",
                "billing",
                "Billing",
                "PATH",
                "DNXGW_UNSET_VAR",
                "A=B",
                "a\0b",
                "",
                "/nonexistent/key",
                "/dev/zero",
                "/dev/null",
                "/",
                "redis://127.0.0.1:6379/0",
                "redis://127.0.0.1:99999",
                "redis://127.0.0.1:6379/-1",
                "rediss://user@redis.internal",
                "degrade",
                "refuse",
                "1111111111111111111111111111111111111111111111111111111111111111",
                "zz11111111111111111111111111111111111111111111111111111111111111",
            ])
            .prop_map(str::to_owned),
            "\\PC{0,12}",
            "[a-z\n\r\t\"\\\\ =.\\[\\]\u{e9}\u{0}]{0,10}",
        ]
        .prop_map(move |s| without_controls(s, controls))
    }

    /// Any TOML value text, nested a little.
    fn any_value(controls: bool) -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (-2i64..70_000).prop_map(|n| n.to_string()),
            Just("18446744073709551616".to_owned()),
            any::<bool>().prop_map(|b| b.to_string()),
            text(controls).prop_map(|s| quoted(&s)),
            prop::sample::select(vec!["1.5", "-0.0", "inf", "nan", "1979-05-27", "'lit\\n'"])
                .prop_map(str::to_owned),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(", "))),
                prop::collection::vec(
                    (
                        prop::sample::select(vec!["per_minute", "burst", "x", "a b"]),
                        inner
                    ),
                    0..3,
                )
                .prop_map(|kv| {
                    let kv: Vec<String> = kv
                        .iter()
                        .map(|(k, v)| format!("{} = {v}", quoted(k)))
                        .collect();
                    format!("{{ {} }}", kv.join(", "))
                }),
            ]
        })
    }

    /// A value for a key of `kind`; with `noise`, now and then one of any type.
    fn value_of(kind: Kind, noise: bool, controls: bool) -> BoxedStrategy<String> {
        let typed = match kind {
            Kind::Int => prop_oneof![
                (0u64..100_000).prop_map(|n| n.to_string()),
                (0..=i64::MAX).prop_map(|n| n.to_string()),
                Just("0".to_owned()),
                // Either side of every bound `check` holds numbers to.
                prop::sample::select(vec![
                    "86400000",
                    "86400001",
                    "31536000",
                    "31536001",
                    "1000000",
                    "1000001",
                    "1024",
                    "1025",
                    "1048576",
                    "1048577",
                    "1073741824",
                    "1073741825",
                    "2147483647",
                    "2147483648",
                    "4294967295",
                    "4294967296",
                    "30000000000",
                    "2305843009213693952",
                    "9223372036854775807",
                    "-1",
                    "-9223372036854775808",
                ])
                .prop_map(str::to_owned),
                // What the `config` crate would otherwise round, saturate or read as 1.
                prop::sample::select(vec![
                    "1.5", "0.4", "1e300", "9.2e18", "-0.0", "inf", "nan", "true", "\"300\"",
                    "\"1.5\"", "\"-2\"", "\"\"",
                ])
                .prop_map(str::to_owned),
            ]
            .boxed(),
            Kind::Str => text(controls).prop_map(|s| quoted(&s)).boxed(),
            Kind::Bool => any::<bool>().prop_map(|b| b.to_string()).boxed(),
            Kind::Rate => (prop::option::of(0i64..5000), prop::option::of(-1i64..100))
                .prop_map(|(pm, b)| {
                    let mut kv = Vec::new();
                    if let Some(pm) = pm {
                        kv.push(format!("per_minute = {pm}"));
                    }
                    if let Some(b) = b {
                        kv.push(format!("burst = {b}"));
                    }
                    format!("{{ {} }}", kv.join(", "))
                })
                .boxed(),
            Kind::Strings => prop::collection::vec(text(controls), 0..3)
                .prop_map(|v| {
                    let v: Vec<String> = v.iter().map(|s| quoted(s)).collect();
                    format!("[{}]", v.join(", "))
                })
                .boxed(),
        };
        if noise {
            prop_oneof![4 => typed, 1 => any_value(controls)].boxed()
        } else {
            typed
        }
    }

    /// One table: its header and some of its keys, each once; with `noise`, now and then a key
    /// it does not have and values of any type.
    fn table(
        header: String,
        keys: &'static [(&'static str, Kind)],
        noise: bool,
        controls: bool,
    ) -> BoxedStrategy<String> {
        let unknown = if noise { 0..2 } else { 0..1 };
        (
            prop::sample::subsequence(keys.to_vec(), 0..=keys.len()),
            prop::sample::subsequence(UNKNOWN.to_vec(), unknown),
        )
            .prop_flat_map(move |(known, unknown)| {
                known
                    .into_iter()
                    .chain(unknown)
                    .map(|(k, kind)| {
                        value_of(kind, noise, controls).prop_map(move |v| format!("{k} = {v}\n"))
                    })
                    .collect::<Vec<_>>()
            })
            .prop_map(move |lines| format!("[{header}]\n{}", lines.concat()))
            .boxed()
    }

    /// Org and team names: valid ones and ones that are not, some needing quotes.
    fn names(controls: bool) -> impl Strategy<Value = Vec<String>> {
        prop::sample::subsequence(
            vec![
                "acme", "billing", "ops-2", "Billing", "a.b", "a\nb", "", "é",
            ],
            0..4,
        )
        .prop_map(move |names| {
            names
                .into_iter()
                .map(|n| without_controls(n.to_owned(), controls))
                .map(|n| {
                    let bare = !n.is_empty()
                        && n.bytes()
                            .all(|b| b.is_ascii_lowercase() || b == b'-' || b.is_ascii_digit());
                    if bare {
                        n
                    } else {
                        quoted(&n)
                    }
                })
                .collect()
        })
    }

    /// A config file in the shape operators write, with any of its parts missing, wrong or extra.
    fn config_text(noise: bool, controls: bool) -> impl Strategy<Value = String> {
        let optional = |header: &str, keys, weight| {
            prop::option::weighted(weight, table(header.to_owned(), keys, noise, controls))
        };
        (
            optional("server", SERVER, 0.95),
            optional("upstream", UPSTREAM, 0.95),
            optional("cache", CACHE, 0.5),
            optional("audit", AUDIT, 0.5),
            optional("admin", ADMIN, 0.3),
            (names(controls), names(controls)),
            optional("cluster", CLUSTER, if noise { 0.3 } else { 0.2 }),
        )
            .prop_flat_map(
                move |(server, upstream, cache, audit, admin, (orgs, teams), cluster)| {
                    let orgs: Vec<_> = orgs
                        .into_iter()
                        .map(|n| table(format!("orgs.{n}"), ORG, noise, controls))
                        .collect();
                    let teams: Vec<_> = teams
                        .into_iter()
                        .map(|n| table(format!("teams.{n}"), TEAM, noise, controls))
                        .collect();
                    let fixed: String = [server, upstream, cache, audit, admin, cluster]
                        .into_iter()
                        .flatten()
                        .collect();
                    (Just(fixed), orgs, teams)
                },
            )
            .prop_map(|(fixed, orgs, teams)| fixed + &orgs.concat() + &teams.concat())
    }

    /// Every problem is one line of text.
    /// `breaks`: what counts as the end of a line.
    fn assert_one_line_each(
        text: &str,
        result: &Result<Settings, ConfigError>,
        breaks: &[char],
    ) -> Result<(), TestCaseError> {
        if let Err(e) = result {
            prop_assert!(!e.problems.is_empty(), "no problem named for {text:?}");
            for p in &e.problems {
                prop_assert!(!p.trim().is_empty(), "an empty problem for {text:?}");
                prop_assert!(
                    !p.contains(breaks),
                    "{p:?} is more than one line, for {text:?}"
                );
            }
        }
        Ok(())
    }

    /// What the gateway builds from its settings at start, built here: a config `check` accepts
    /// must not panic or overflow there (moka's lifetime, the connection permits, the audit
    /// queue, the deadlines made from every timeout).
    fn assert_runnable(
        text: &str,
        result: &Result<Settings, ConfigError>,
    ) -> Result<(), TestCaseError> {
        let Ok(s) = result else { return Ok(()) };
        let day = std::time::Duration::from_secs(24 * 60 * 60);
        let year = 365 * day;
        let limits = &s.server.limits;
        let mut timeouts = vec![
            ("server.shutdown_grace_ms", s.server.shutdown_grace),
            ("server.request_header_timeout_ms", limits.header_timeout),
            ("server.request_body_timeout_ms", limits.body_timeout),
            ("server.idle_timeout_ms", limits.idle_timeout),
            ("upstream.connect_timeout_ms", s.upstream.connect_timeout),
            ("upstream.timeout_ms", s.upstream.timeout),
        ];
        if let Some(cluster) = &s.cluster {
            timeouts.push(("cluster.timeout_ms", cluster.timeout));
        }
        for (key, t) in timeouts {
            prop_assert!(
                !t.is_zero() && t <= day,
                "{key} = {t:?} accepted in {text:?}"
            );
            prop_assert!(tokio::time::Instant::now().checked_add(t * 4).is_some());
        }
        prop_assert!(
            s.cache.ttl <= year && s.cache.stale_if_error <= year,
            "{text:?}"
        );
        prop_assert!(limits.max_connections.get() <= 1_000_000, "{text:?}");
        let _ = tokio::sync::Semaphore::new(limits.max_connections.get());
        let _ = tokio::sync::mpsc::channel::<()>(s.audit.buffer_lines.get());
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let _ = crate::cache::AgentCache::new(&s.cache, metrics);
        Ok(())
    }

    fn load(text: &str) -> Result<Settings, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        Settings::load(file.path())
    }

    const CR_OR_LF: &[char] = &['\n', '\r'];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_text_is_loaded_or_refused_in_lines(text in "\\PC{0,200}") {
            let result = load(&text);
            assert_one_line_each(&text, &result, CR_OR_LF)?;
            assert_runnable(&text, &result)?;
        }

        /// Loaded (and then runnable), or refused in lines that neither a line feed nor a
        /// carriage return breaks.
        #[test]
        fn toml_like_text_is_loaded_or_refused_in_lines(
            text in "[\\[\\]a-z_.=\"' \n\r\t0-9{},#\\\\-]{0,120}"
        ) {
            let result = load(&text);
            assert_one_line_each(&text, &result, CR_OR_LF)?;
            assert_runnable(&text, &result)?;
        }

        #[test]
        fn a_config_of_any_shape_is_loaded_or_refused_in_lines(text in config_text(true, false)) {
            let result = Settings::from_toml_str(&text);
            assert_one_line_each(&text, &result, CR_OR_LF)?;
            assert_runnable(&text, &result)?;
        }

        #[test]
        fn a_well_typed_config_is_loaded_or_refused_in_lines(text in config_text(false, false)) {
            let result = Settings::from_toml_str(&text);
            assert_one_line_each(&text, &result, CR_OR_LF)?;
            assert_runnable(&text, &result)?;
        }

        #[test]
        fn a_config_with_line_breaks_in_its_values_is_refused_in_lines(
            text in config_text(false, true)
        ) {
            let result = Settings::from_toml_str(&text);
            assert_one_line_each(&text, &result, CR_OR_LF)?;
        }
    }

    /// Every number `check` reads, with its table.
    const NUMBERS: &[(&str, &str)] = &[
        ("server", "max_body_bytes"),
        ("server", "shutdown_grace_ms"),
        ("server", "request_header_timeout_ms"),
        ("server", "request_body_timeout_ms"),
        ("server", "idle_timeout_ms"),
        ("server", "max_connections"),
        ("server", "worker_threads"),
        ("upstream", "connect_timeout_ms"),
        ("upstream", "timeout_ms"),
        ("cache", "ttl_seconds"),
        ("cache", "max_bytes"),
        ("cache", "max_entry_bytes"),
        ("cache", "stale_if_error_seconds"),
        ("audit", "buffer_lines"),
        ("cluster", "timeout_ms"),
    ];

    /// A valid config with some of its numbers set to any value, in and out of range.
    fn valid_config_with_numbers() -> impl Strategy<Value = (String, Vec<String>)> {
        (
            prop::sample::subsequence(NUMBERS.to_vec(), 1..5),
            prop::collection::vec(value_of(Kind::Int, false, false), 5),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["per_minute", "burst"]),
                    value_of(Kind::Int, false, false),
                ),
                0..2,
            ),
        )
            .prop_map(|(keys, values, rates)| {
                let mut tables: std::collections::BTreeMap<&str, String> = [
                    (
                        "server",
                        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
                    ),
                    ("upstream", "base_url = \"http://127.0.0.1:1/v1\"\n"),
                    ("cache", ""),
                    ("audit", ""),
                    ("cluster", "redis_url = \"redis://127.0.0.1:6379/0\"\n"),
                ]
                .into_iter()
                .map(|(t, body)| (t, body.to_owned()))
                .collect();
                let mut changed = Vec::new();
                for ((table, key), value) in keys.into_iter().zip(values) {
                    tables
                        .get_mut(table)
                        .unwrap()
                        .push_str(&format!("{key} = {value}\n"));
                    changed.push(format!("{table}.{key}"));
                }
                let mut rate = vec![("per_minute", "600".to_owned()), ("burst", "60".to_owned())];
                for (key, value) in rates {
                    rate.retain(|(k, _)| *k != key);
                    rate.push((key, value));
                    changed.push(format!("teams.t.rate_limit.{key}"));
                }
                let rate: Vec<String> = rate.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                let mut text: String = tables
                    .iter()
                    .map(|(table, body)| format!("[{table}]\n{body}"))
                    .collect();
                text.push_str(&format!(
                    "[orgs.acme]\napi_key_env = \"PATH\"\n[teams.t]\norg = \"acme\"\n\
                     key_sha256 = [\"{}\"]\nrate_limit = {{ {} }}\n",
                    "1".repeat(64),
                    rate.join(", ")
                ));
                (text, changed)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any number is either taken and runnable, or refused with one line per problem, each
        /// naming one of the keys that was changed (first, or as the other side of a rule
        /// between two keys).
        #[test]
        fn numbers_out_of_range_are_refused_naming_their_key((text, changed) in valid_config_with_numbers()) {
            let result = Settings::from_toml_str(&text);
            assert_one_line_each(&text, &result, CR_OR_LF)?;
            assert_runnable(&text, &result)?;
            if let Err(e) = &result {
                for problem in &e.problems {
                    prop_assert!(
                        changed.iter().any(|key| problem.starts_with(&format!("{key}: "))
                            || problem.ends_with(&format!(" {key}"))),
                        "{problem:?} names none of {changed:?}, in {text:?}"
                    );
                }
            }
        }
    }

    /// The minimal input the property above once found, read the way `load` reads it.
    #[test]
    fn a_line_break_in_an_org_name_stays_in_its_problem_line() {
        let e =
            Settings::from_toml_str("[server]\n[upstream]\n[orgs.\"a\\u000Ab\"]\n").unwrap_err();
        assert!(e.problems.iter().all(|p| !p.contains('\n')), "{e:?}");
    }

    /// The minimal input toml_like_text_is_loaded_or_refused_in_lines found.
    #[test]
    fn a_carriage_return_in_a_table_header_stays_out_of_its_problem_line() {
        let e = Settings::from_toml_str("[0\r0").unwrap_err();
        assert!(e.problems.iter().all(|p| !p.contains('\r')), "{e:?}");
    }
}
