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
