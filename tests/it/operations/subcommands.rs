//! The subcommands: `check` (exit 0 or 1 naming the key, env overrides validated too), `hash-key`,
//! `gen-key`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use dialnexa_gateway::auth::KeyDigest;

use super::*;

const BIN: &str = env!("CARGO_BIN_EXE_dialnexa-gateway");

fn team_table(name: &str, org: &str, key: &str) -> String {
    format!(
        "[teams.{name}]\norg = \"{org}\"\nkey_sha256 = [\"{}\"]\nrate_limit = {{ per_minute = 600, burst = 60 }}\n",
        KeyDigest::of(key).to_hex()
    )
}

/// Stands for the directory [`check`] writes the file (and the org key file) into.
const DIR: &str = "{DIR}";

/// A valid config, with `server_extra` appended to the `[server]` table.
fn config_text(server_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server_extra}\n\
         [upstream]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         [audit]\nsink = \"file\"\npath = \"{DIR}/audit.jsonl\"\n\
         [orgs.acme]\napi_key_file = \"{DIR}/acme.key\"\n{}",
        team_table("billing", "acme", BILLING),
    )
}

/// Runs `dialnexa-gateway check` on `toml` with only the `env` given from `DNXGW*`.
fn check(toml: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acme.key"), ORG_KEY_ACME).unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml.replace(DIR, &dir.path().display().to_string())).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("check").arg("--config").arg(&path);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DNXGW")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_a_valid_file_with_exit_0() {
    let toml = config_text("");
    let out = check(&toml, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"), "{}", text(&out.stdout));
}

#[test]
fn check_rejects_invalid_files_with_exit_1_naming_the_key() {
    let valid = config_text("");
    let digest = KeyDigest::of(BILLING).to_hex();
    let cases = [
        (
            "unknown org",
            valid.replace("org = \"acme\"", "org = \"initech\""),
            vec!["teams.billing.org", "initech"],
        ),
        (
            "malformed digest",
            valid.replace(&digest, &digest[..40]),
            vec!["teams.billing.key_sha256[0]"],
        ),
        (
            "unknown field",
            config_text("colour = \"blue\""),
            vec!["colour", "server"],
        ),
    ];
    for (what, toml, names) in cases {
        assert_ne!(toml, valid, "{what}: the case changes nothing");
        let out = check(&toml, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        for name in names {
            assert!(
                stderr.contains(name),
                "{what}: {name} not named in {stderr:?}"
            );
        }
        assert!(!text(&out.stdout).contains("ok"), "{what}");
    }
}

#[test]
fn env_override_is_validated_like_the_file() {
    let toml = config_text("");
    let out = check(&toml, &[("DNXGW__UPSTREAM__TIMEOUT_MS", "0")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("upstream.timeout_ms"), "{stderr}");
    // The same file without the override is fine: the env var is what broke it.
    assert_eq!(check(&toml, &[]).status.code(), Some(0));
    // An override is held to the same bounds, and a float is refused, not rounded.
    for (var, value, key) in [
        ("DNXGW__CACHE__TTL_SECONDS", "1.5", "cache.ttl_seconds"),
        (
            "DNXGW__UPSTREAM__TIMEOUT_MS",
            "1e300",
            "upstream.timeout_ms",
        ),
        (
            "DNXGW__SERVER__MAX_CONNECTIONS",
            "2305843009213693952",
            "server.max_connections",
        ),
    ] {
        let stderr = text(&check(&toml, &[(var, value)]).stderr);
        assert!(
            stderr.starts_with(&format!("config error: {key}: ")) && stderr.lines().count() == 1,
            "{var}={value}: {stderr}"
        );
    }
}

#[test]
fn check_warns_of_each_key_ending_within_7_days_and_still_exits_0() {
    let rfc3339 = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86_400);
    let keys = [
        (BILLING, None),
        ("team-key-soon-0009", Some(rfc3339(now + 3 * day))),
        ("team-key-later-0010", Some(rfc3339(now + 30 * day))),
        (
            "team-key-ended-0011",
            Some("2026-01-01T00:00:00Z".to_owned()),
        ),
    ];
    let entries: Vec<String> = keys
        .iter()
        .map(|(key, end)| {
            let digest = KeyDigest::of(key).to_hex();
            match end {
                Some(end) => format!("{{ sha256 = \"{digest}\", not_after = \"{end}\" }}"),
                None => format!("\"{digest}\""),
            }
        })
        .collect();
    let toml = config_text("").replace(
        &format!("[\"{}\"]", KeyDigest::of(BILLING).to_hex()),
        &format!("[{}]", entries.join(", ")),
    );
    let out = check(&toml, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("config warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    let soon = KeyDigest::of(keys[1].0).key_id();
    assert!(
        warnings[0].contains("teams.billing.key_sha256[1]") && warnings[0].contains(&soon),
        "{warnings:?}"
    );
    assert!(
        warnings[0].contains(keys[1].1.as_deref().unwrap()),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains("teams.billing.key_sha256[3]")
            && warnings[1].contains("ended at 2026-01-01T00:00:00Z"),
        "{warnings:?}"
    );
    assert!(
        !stderr.contains(&KeyDigest::of(keys[1].0).to_hex()),
        "{stderr}"
    );
}

fn hash_key(stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn hash_key_prints_the_sha256_hex_of_the_trimmed_stdin_key() {
    let out = hash_key("  team-key-made-up-7777 \n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        KeyDigest::of("team-key-made-up-7777").to_hex()
    );
    let out = hash_key(" \n");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).trim().is_empty());
}

#[test]
fn gen_key_prints_a_different_key_each_run() {
    let keys: Vec<String> = (0..3)
        .map(|_| {
            let out = Command::new(BIN).arg("gen-key").output().unwrap();
            assert_eq!(out.status.code(), Some(0));
            let key = text(&out.stdout).trim().to_owned();
            assert!(key.len() >= 32, "too short to be unguessable: {key:?}");
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{key:?} is not safe in a header"
            );
            key
        })
        .collect();
    let distinct: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "{keys:?}");
}

/// `valid` with `line` added to `[table]` (appended as a new table when the file has none).
fn with_line(valid: &str, table: &str, line: &str) -> String {
    let header = format!("[{table}]\n");
    if valid.contains(&header) {
        valid.replacen(&header, &format!("{header}{line}\n"), 1)
    } else {
        format!("{valid}{header}{line}\n")
    }
}

/// The values the gateway once accepted and then crashed, wedged or overflowed on, and their
/// neighbours: each is refused by `check` with exit 1 and exactly one line, naming its key.
#[test]
fn check_refuses_numbers_the_gateway_cannot_run_with_in_one_line_naming_the_key() {
    let valid = config_text("");
    let redis = "redis_url = \"redis://127.0.0.1:6379/0\"";
    let cases: &[(&str, &str, &str)] = &[
        ("cache", "ttl_seconds = 30000000000", "cache.ttl_seconds"),
        ("cache", "ttl_seconds = 31536001", "cache.ttl_seconds"),
        (
            "cache",
            "stale_if_error_seconds = 31536001",
            "cache.stale_if_error_seconds",
        ),
        ("cache", "ttl_seconds = 1.5", "cache.ttl_seconds"),
        (
            "server",
            "max_connections = 2305843009213693952",
            "server.max_connections",
        ),
        (
            "server",
            "max_connections = 1000001",
            "server.max_connections",
        ),
        ("server", "max_connections = 0", "server.max_connections"),
        ("server", "max_connections = -1", "server.max_connections"),
        (
            "server",
            "shutdown_grace_ms = 86400001",
            "server.shutdown_grace_ms",
        ),
        (
            "server",
            "request_header_timeout_ms = 1e300",
            "server.request_header_timeout_ms",
        ),
        (
            "server",
            "request_body_timeout_ms = 86400001",
            "server.request_body_timeout_ms",
        ),
        (
            "server",
            "idle_timeout_ms = 9223372036854775807",
            "server.idle_timeout_ms",
        ),
        ("server", "max_body_bytes = 2.5", "server.max_body_bytes"),
        (
            "upstream",
            "timeout_ms = 9200000000000000000",
            "upstream.timeout_ms",
        ),
        ("upstream", "timeout_ms = 1e300", "upstream.timeout_ms"),
        (
            "upstream",
            "connect_timeout_ms = 86400001",
            "upstream.connect_timeout_ms",
        ),
        ("audit", "buffer_lines = true", "audit.buffer_lines"),
        (
            "cluster",
            &format!("{redis}\ntimeout_ms = 9200000000000000000"),
            "cluster.timeout_ms",
        ),
        (
            "cluster",
            &format!("{redis}\ntimeout_ms = 1e300"),
            "cluster.timeout_ms",
        ),
        (
            "cluster",
            "redis_url = \"redis://127.0.0.1:99999\"",
            "cluster.redis_url",
        ),
        (
            "cluster",
            "redis_url = \"redis://127.0.0.1:6379/-1\"",
            "cluster.redis_url",
        ),
    ];
    let replaced = [
        valid.replace("127.0.0.1:9/v1", "127.0.0.1:99999/v1"),
        valid.replacen(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:99999\"",
            1,
        ),
    ];
    let keys = ["upstream.base_url", "server.listen"];
    let mut files: Vec<(String, &str)> = cases
        .iter()
        .map(|&(table, line, key)| (with_line(&valid, table, line), key))
        .collect();
    files.extend(replaced.into_iter().zip(keys));
    for (toml, key) in files {
        let line = toml.clone();
        let out = check(&toml, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{line}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{line}: {stderr}");
        assert!(
            lines[0].starts_with(&format!("config error: {key}: ")),
            "{line}: {stderr}"
        );
    }
    // The edges themselves are fine.
    for (table, line) in [
        ("cache", "ttl_seconds = 31536000"),
        ("server", "max_connections = 1000000"),
        ("upstream", "timeout_ms = 86400000"),
        ("cluster", "redis_url = \"redis://127.0.0.1:65535/15\""),
    ] {
        let out = check(&with_line(&valid, table, line), &[]);
        assert_eq!(out.status.code(), Some(0), "{line}: {}", text(&out.stderr));
    }
}

/// A key file that never ends or never opens is an error at once, not a hang or a read until
/// memory runs out.
#[test]
fn check_refuses_a_device_a_fifo_or_a_large_file_as_a_key_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("acme.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let large = dir.path().join("large.key");
    std::fs::write(&large, "k".repeat(64 * 1024 + 1)).unwrap();
    let valid = config_text("");
    for (path, says) in [
        (
            "/dev/zero".to_owned(),
            "is not a regular file (a character device)",
        ),
        (fifo.display().to_string(), "is not a regular file (a FIFO)"),
        (large.display().to_string(), "is larger than 65536 bytes"),
    ] {
        let toml = valid.replace(&format!("{DIR}/acme.key"), &path);
        let started = std::time::Instant::now();
        let out = check(&toml, &[]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{path}"
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("config error: orgs.acme.api_key_file: ") && stderr.contains(says),
            "{path}: {stderr}"
        );
        assert!(!stderr.contains("kkkk"), "{stderr}");
    }
    // The Redis password file is read by the same rule.
    let toml = with_line(
        &valid,
        "cluster",
        "redis_url = \"redis://127.0.0.1:6379\"\nredis_password_file = \"/dev/zero\"",
    );
    let stderr = text(&check(&toml, &[]).stderr);
    assert!(
        stderr.starts_with("config error: cluster.redis_password_file: ")
            && stderr.contains("not a regular file"),
        "{stderr}"
    );
}
