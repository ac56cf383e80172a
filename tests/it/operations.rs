//! Running it: the admin listener (probes, metrics), SIGHUP reloads, SIGTERM drains, and the
//! `check` / `hash-key` / `gen-key` subcommands, against the real binary where signals, exit codes
//! and stderr are the point.

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dialnexa_gateway::auth::KeyDigest;
use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_dialnexa-gateway");
/// A team key that only exists once a reload adds its team (made up).
const NEWCOMER: &str = "team-key-newcomer-0006";

/// The async sibling of [`wait_until`], for conditions only an HTTP answer can tell.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const REQUESTS: &str = "dialnexa_gateway_requests_total";
const BILLING_GET_200: &[(&str, &str)] =
    &[("team", "billing"), ("method", "GET"), ("status", "200")];
const UNIDENTIFIED_GET_401: &[(&str, &str)] = &[("team", ""), ("method", "GET"), ("status", "401")];
const CACHE_HITS: &str = "dialnexa_gateway_cache_hits_total";
const CACHE_MISSES: &str = "dialnexa_gateway_cache_misses_total";
const UPSTREAM_COUNT: &str = "dialnexa_gateway_upstream_request_duration_seconds_count";
const AUDIT_WRITTEN: &str = "dialnexa_gateway_audit_lines_written_total";
const RELOADS: &str = "dialnexa_gateway_config_reloads_total";
const OK: &[(&str, &str)] = &[("result", "ok")];
const FAILED: &[(&str, &str)] = &[("result", "failed")];

/// `/readyz`'s status, or `None` once nothing listens (the process is gone).
async fn readyz(admin: SocketAddr) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.ok()?;
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Everything the child writes to the pipe, read on a thread so a chatty log never blocks it.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

// === admin listener ===

#[tokio::test]
async fn probes_and_metrics_are_served_on_the_admin_listener_only() {
    let (upstream, gw) = setup().await;
    let admin = gw.admin_client();
    let api = gw.client();

    assert_eq!(
        admin.send(Method::GET, "/healthz", &[], "").await.status,
        200
    );
    assert_eq!(
        admin.send(Method::GET, "/readyz", &[], "").await.status,
        200
    );
    let m = admin.send(Method::GET, "/metrics", &[], "").await;
    assert_eq!(m.status, 200);
    assert_eq!(
        m.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // A scraper that asks for OpenMetrics (as Prometheus does) is told it gets it.
    let om = admin
        .send(
            Method::GET,
            "/metrics",
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )],
            "",
        )
        .await;
    assert!(om
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    let om_text = String::from_utf8(om.body.to_vec()).unwrap();
    assert!(om_text.contains("# TYPE dialnexa_gateway_requests counter\n"));
    assert!(om_text.ends_with("# EOF\n"));
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    // The classic format declares a counter under its samples' name.
    assert!(
        text.contains("# TYPE dialnexa_gateway_requests_total counter\n"),
        "{text}"
    );

    // On the API listener these are just unversioned API paths: no key, no answer.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = api.send(Method::GET, path, &[], "").await;
        assert_eq!(r.status, 401, "{path} on the API listener");
        assert_eq!(r.json()["code"], "invalid_team_key");
    }
    // Purging is not an API-listener action: the gateway's own 404, whatever the key.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = api
        .send(
            Method::POST,
            "/admin/cache/purge",
            &[("authorization", &auth)],
            "{}",
        )
        .await;
    assert_eq!(r.status, 404);
    // A team reaching `/metrics` through the API gets upstream's answer, never the gateway's figures.
    let r = api.get("/metrics", BILLING).await;
    assert!(
        !String::from_utf8_lossy(&r.body).contains("dialnexa_gateway_"),
        "gateway metrics leaked on the API listener"
    );

    // The admin listener proxies nothing, whatever the key.
    for path in ["/v1/agents2/a1", "/v1/calls", "/agents2/a1", "/calls"] {
        assert_eq!(admin.get(path, BILLING).await.status, 404, "{path}");
    }
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2"), 0);
    assert_eq!(upstream.count(&Method::GET, "/v1/calls"), 0);
}

#[tokio::test]
async fn metrics_follow_requests_cache_hits_upstream_calls_and_audit_lines() {
    let (upstream, gw) = setup().await;
    let admin = gw.admin_client();
    let c = gw.client();
    let before = scrape(&admin).await;

    let miss = c.get("/v1/agents2/m1", BILLING).await;
    assert_eq!(miss.header("x-cache"), Some("MISS"));
    let hit = c.get("/v1/agents2/m1", BILLING).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    assert_eq!(c.get("/v1/calls", "not-a-team-key").await.status, 401);
    assert_eq!(upstream.total(), 2);

    let after = scrape(&admin).await;
    let delta = |name, labels| after.count(name, labels) - before.count(name, labels);
    assert_eq!(delta(REQUESTS, BILLING_GET_200), 3.0, "{after}");
    assert_eq!(delta(REQUESTS, UNIDENTIFIED_GET_401), 1.0, "{after}");
    assert_eq!(delta(CACHE_HITS, &[]), 1.0, "{after}");
    assert_eq!(delta(CACHE_MISSES, &[]), 1.0, "{after}");
    // The miss and the forwarded call went upstream; the hit and the 401 did not.
    assert_eq!(delta(UPSTREAM_COUNT, &[]), 2.0, "{after}");

    // Audit lines are written off the request path: the counter catches up, and matches the file.
    eventually("4 audit lines counted", || {
        let admin = &admin;
        async move { scrape(admin).await.count(AUDIT_WRITTEN, &[]) >= 4.0 }
    })
    .await;
    let lines = gw.audit_lines(4).await;
    assert_eq!(lines.len(), 4);
    assert_eq!(scrape(&admin).await.count(AUDIT_WRITTEN, &[]), 4.0);
}

// === SIGHUP ===

#[tokio::test]
async fn sighup_adds_and_removes_teams_while_requests_keep_being_answered() {
    let upstream = FakeUpstream::start().await;
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .spawn_binary()
        .await;
    let (c, admin) = (gw.client(), gw.admin_client());
    assert_eq!(c.get("/v1/calls", SUPPORT).await.status, 200);
    assert_eq!(c.get("/v1/calls", NEWCOMER).await.status, 401);

    // A steady trickle of an unaffected team's requests across the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(Vec::<(&str, u16)>::new()));
    let load = tokio::spawn({
        let (c, stop, answered) = (c.clone(), stop.clone(), answered.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                for path in ["/v1/calls", "/v1/agents2/h1"] {
                    let status = c.get(path, BILLING).await.status;
                    answered.lock().unwrap().push((path, status));
                }
            }
        }
    });
    let answered_count = || answered.lock().unwrap().len();
    wait_until("requests flowing before the reload", || {
        answered_count() >= 6
    })
    .await;

    gw.rewrite_config(|config| {
        config
            .without_team("support")
            .team("newcomer", "globex", NEWCOMER)
    });
    gw.signal("HUP");

    eventually("the added team is let in", || {
        let c = &c;
        async move { c.get("/v1/calls", NEWCOMER).await.status == 200 }
    })
    .await;
    eventually("the removed team is shut out", || {
        let c = &c;
        async move { c.get("/v1/calls", SUPPORT).await.status == 401 }
    })
    .await;
    let seen = answered_count();
    wait_until("requests flowing after the reload", || {
        answered_count() >= seen + 6
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    load.await.expect("every background request was answered");

    let answered = answered.lock().unwrap().clone();
    let failed: Vec<_> = answered.iter().filter(|(_, s)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the reload: {failed:?}",
        failed.len(),
        answered.len()
    );

    // The new team is wired to its organisation's key.
    let r = c
        .send(
            Method::GET,
            "/v1/calls",
            &[
                ("authorization", &format!("Bearer {NEWCOMER}")),
                ("x-request-id", "newcomer-after-reload"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = upstream
        .request_with_id("newcomer-after-reload")
        .expect("newcomer's request reached upstream");
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {ORG_KEY_GLOBEX}").as_str()
    );

    let m = scrape(&admin).await;
    assert_eq!(m.count(RELOADS, OK), 1.0, "{m}");
    assert_eq!(m.count(RELOADS, FAILED), 0.0, "{m}");
}

#[tokio::test]
async fn sighup_with_an_invalid_file_keeps_the_old_config_and_counts_the_failure() {
    let upstream = FakeUpstream::start().await;
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .spawn_binary()
        .await;
    let (c, admin) = (gw.client(), gw.admin_client());
    // Exposed at 0 before any reload, so `increase(...{result="failed"}[5m]) > 0` sees the first one.
    let m = scrape(&admin).await;
    assert_eq!(m.sample(RELOADS, FAILED), Some(0.0), "{m}");
    assert_eq!(m.sample(RELOADS, OK), Some(0.0), "{m}");

    // Removes `support` too: a partly applied file would shut it out.
    gw.rewrite_config(|config| {
        config
            .without_team("support")
            .team("broken", "initech", NEWCOMER)
    });
    gw.signal("HUP");
    eventually("the failed reload is counted", || {
        let admin = &admin;
        async move { scrape(admin).await.count(RELOADS, FAILED) == 1.0 }
    })
    .await;
    assert_eq!(scrape(&admin).await.count(RELOADS, OK), 0.0);
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    assert_eq!(c.get("/v1/calls", SUPPORT).await.status, 200);
    assert_eq!(c.get("/v1/calls", NEWCOMER).await.status, 401);
    assert_eq!(
        admin.send(Method::GET, "/readyz", &[], "").await.status,
        200
    );

    // Once fixed, the next SIGHUP applies it.
    gw.rewrite_config(|config| config.team_org("broken", "globex"));
    gw.signal("HUP");
    eventually("the fixed file is applied", || {
        let c = &c;
        async move { c.get("/v1/calls", NEWCOMER).await.status == 200 }
    })
    .await;
    assert_eq!(c.get("/v1/calls", SUPPORT).await.status, 401);
    let m = scrape(&admin).await;
    assert_eq!(m.count(RELOADS, OK), 1.0, "{m}");
    assert_eq!(m.count(RELOADS, FAILED), 1.0, "{m}");

    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)).await, Some(0));
    let log = gw.stderr();
    assert!(
        log.contains("teams.broken.org"),
        "the failed reload names the key: {log}"
    );
}

#[tokio::test]
async fn a_request_in_flight_across_sighup_finishes_on_the_config_it_started_with() {
    /// Far longer than a reload takes, so the reload lands while the request is out.
    const SLOW: Duration = Duration::from_secs(3);
    let upstream = FakeUpstream::start().await;
    upstream.set_override(|r| {
        (r.path() == "/v1/slow").then(|| Reply::json(200, json!({"slow": true})).with_delay(SLOW))
    });
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .spawn_binary()
        .await;
    let c = gw.client();
    let slow = tokio::spawn({
        let c = c.clone();
        async move { c.get("/v1/slow", SUPPORT).await }
    });
    wait_until("the slow request reached upstream", || {
        upstream.count(&Method::GET, "/v1/slow") == 1
    })
    .await;

    gw.rewrite_config(|config| config.without_team("support"));
    gw.signal("HUP");
    eventually("the removed team is shut out", || {
        let c = &c;
        async move { c.get("/v1/calls", SUPPORT).await.status == 401 }
    })
    .await;
    assert!(
        !slow.is_finished(),
        "precondition: the slow request must still be out when the reload lands"
    );

    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["slow"], true);
    // Its quota headers and audit line are still the removed team's.
    assert!(r.header("ratelimit-limit").is_some());
    let path = gw.audit_path.clone();
    wait_until("the slow request's audit line", || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("/v1/slow"))
    })
    .await;
    let line = gw
        .audit()
        .into_iter()
        .find(|l| l["path"] == "/v1/slow")
        .unwrap();
    assert_eq!(line["team"], "support");
    assert_eq!(line["status"], 200);
}

#[tokio::test]
async fn sighup_rereads_the_organisation_key_files() {
    const ROTATED: &str = "org-key-acme-rotated";
    let upstream = FakeUpstream::start().await;
    let gw = GatewayBuilder::new(upstream.base_url())
        .spawn_binary()
        .await;
    let (c, admin) = (gw.client(), gw.admin_client());
    let org_key_sent = |request_id: &'static str| {
        let c = c.clone();
        let upstream = upstream.clone();
        async move {
            let auth = format!("Bearer {BILLING}");
            let headers = [
                ("authorization", auth.as_str()),
                ("x-request-id", request_id),
            ];
            let r = c
                .send(Method::GET, "/v1/calls", &headers, Bytes::new())
                .await;
            assert_eq!(r.status, 200);
            let seen = upstream
                .request_with_id(request_id)
                .expect("request reached upstream");
            seen.headers["authorization"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(
        org_key_sent("before").await,
        format!("Bearer {ORG_KEY_ACME}")
    );

    // Only the key file changes: the config file is the same.
    let key_file = gw.config_path.parent().unwrap().join("acme.key");
    std::fs::write(&key_file, format!("{ROTATED}\n")).unwrap();
    gw.signal("HUP");
    eventually("the reload is done", || {
        let admin = &admin;
        async move { scrape(admin).await.count(RELOADS, OK) == 1.0 }
    })
    .await;
    assert_eq!(org_key_sent("after").await, format!("Bearer {ROTATED}"));
}

// === SIGTERM ===

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_reports_not_ready_and_exits_0() {
    const IN_FLIGHT: usize = 4;
    const GRACE: Duration = Duration::from_millis(5000);
    /// Long enough for the test to see `/readyz` turn 503 while the answers are still out.
    const UPSTREAM_DELAY: Duration = Duration::from_millis(1500);
    const MARGIN: Duration = Duration::from_secs(5);

    let upstream = FakeUpstream::start().await;
    upstream.set_delay(Method::GET, UPSTREAM_DELAY);
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .shutdown_grace_ms(GRACE.as_millis() as u64)
        .spawn_binary()
        .await;
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            // A client each: one connection per request, as separate callers would have.
            let c = gw.client();
            tokio::spawn(async move { c.get(&format!("/v1/calls?n={i}"), BILLING).await })
        })
        .collect();
    wait_until("upstream holds every request", || {
        upstream.count(&Method::GET, "/v1/calls") == IN_FLIGHT
    })
    .await;

    gw.signal("TERM");
    let terminated = Instant::now();
    let admin = gw.admin;
    eventually("/readyz answers 503 while draining", || async move {
        readyz(admin).await == Some(503)
    })
    .await;

    let code = gw
        .wait_exit((GRACE + MARGIN).saturating_sub(terminated.elapsed()))
        .await;
    assert_eq!(code, Some(0), "exit within shutdown_grace_ms + margin");

    let mut ids = Vec::new();
    for r in requests {
        let r = r.await.expect("in-flight request answered");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        ids.push(r.header("x-request-id").unwrap().to_owned());
    }
    // Every answered request has exactly its one line, flushed before exit; probes have none.
    let audit = gw.audit();
    let mut audited: Vec<String> = audit
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_owned())
        .collect();
    audited.sort();
    ids.sort();
    assert_eq!(audited, ids, "{audit:#?}");
    for line in &audit {
        assert_eq!(line["status"], 200);
        assert_eq!(line["upstream_status"], 200);
        assert_eq!(line["team"], "billing");
    }
}

// === secrets stay out of the process output ===

#[tokio::test]
async fn the_binary_never_prints_team_keys_org_keys_or_the_admin_token() {
    const UNKNOWN_KEY: &str = "team-key-unknown-9999";
    const WRONG_ADMIN_TOKEN: &str = "admin-token-wrong-0007";
    const THIRD_PARTY_SECRET: &str = "sk-made-up-third-party-0008";

    let upstream = FakeUpstream::start().await;
    upstream.set_override(|r| (r.path() == "/v1/boom").then(Reply::reset));
    // As chatty as it gets: every level from every crate.
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .binary_env("RUST_LOG", "trace")
        .capture_stdout()
        .spawn_binary()
        .await;
    let stdout = drain(gw.child.stdout.take().unwrap());
    let (c, admin) = (gw.client(), gw.admin_client());

    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    for _ in 0..2 {
        let r = c
            .send(
                Method::GET,
                "/v1/agents2/s1",
                &[("x-api-key", SUPPORT)],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let body = format!(r#"{{"llm":{{"api_key":"{THIRD_PARTY_SECRET}"}}}}"#);
    assert_eq!(c.patch("/v1/agents2/s1", BILLING, &body).await.status, 200);
    assert_eq!(c.get("/v1/calls", RIVAL).await.status, 200);
    assert_eq!(c.get("/v1/calls", UNKNOWN_KEY).await.status, 401);
    assert_eq!(c.get("/v1/boom", BILLING).await.status, 502);
    for (token, status) in [(ADMIN_TOKEN, 200), (WRONG_ADMIN_TOKEN, 401)] {
        let r = admin
            .send(
                Method::POST,
                "/admin/cache/purge",
                &[("authorization", &format!("Bearer {token}"))],
                "{}",
            )
            .await;
        assert_eq!(r.status, status);
    }
    gw.signal("HUP");
    eventually("the reload (re-reading org keys) is done", || {
        let admin = &admin;
        async move { scrape(admin).await.count(RELOADS, OK) == 1.0 }
    })
    .await;
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)).await, Some(0));

    let (stderr, stdout) = (gw.stderr(), stdout.join().unwrap());
    // Not vacuous: the diagnostics were captured.
    assert!(stderr.contains("listening"), "{stderr}");
    assert!(stderr.contains("config reloaded"), "{stderr}");
    let audit = std::fs::read_to_string(&gw.audit_path).unwrap();
    for secret in [
        BILLING,
        SUPPORT,
        RIVAL,
        UNKNOWN_KEY,
        ORG_KEY_ACME,
        ORG_KEY_GLOBEX,
        ADMIN_TOKEN,
        WRONG_ADMIN_TOKEN,
        THIRD_PARTY_SECRET,
    ] {
        assert!(!stderr.contains(secret), "{secret} on stderr");
        assert!(!stdout.contains(secret), "{secret} on stdout");
        assert!(!audit.contains(secret), "{secret} in the audit file");
    }
}

// === subcommands ===

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

#[tokio::test]
async fn sigusr1_reopens_the_audit_file_after_logrotate_moved_it() {
    let upstream = FakeUpstream::start().await;
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .spawn_binary()
        .await;
    let c = gw.client();
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    wait_until("first line written", || gw.audit().len() == 1).await;

    // What logrotate does: move the file away, then signal.
    let rotated = gw.audit_path.with_extension("jsonl.1");
    std::fs::rename(&gw.audit_path, &rotated).unwrap();
    gw.signal("USR1");
    let path = gw.audit_path.clone();
    wait_until("a new audit file at the configured path", || path.exists()).await;
    assert_eq!(c.get("/v1/calls?after=rotate", BILLING).await.status, 200);
    wait_until("second line written", || gw.audit().len() == 1).await;

    let moved = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(
        moved.lines().count(),
        1,
        "the old file keeps the line written before the move"
    );
    assert_eq!(gw.audit()[0]["path"], "/v1/calls");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&gw.audit_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)).await, Some(0));
}
