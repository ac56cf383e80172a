//! No team key, org key or admin token ever reaches the binary's stderr, stdout or audit file.

use std::io::Read;

use bytes::Bytes;
use http::Method;

use super::*;

/// Everything the child writes to the pipe, read on a thread so a chatty log never blocks it.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

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
                &[("authorization", &bearer(token))],
                "{}",
            )
            .await;
        assert_eq!(r.status, status);
    }
    gw.signal("HUP");
    wait_until("the reload (re-reading org keys) is done", async || {
        scrape(&admin).await.count(RELOADS, OK) == 1.0
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
