//! SIGHUP: teams added and removed without a failed request, an invalid file keeps the old config
//! (counted), requests in flight finish on their config, organisation key files are re-read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Method;
use serde_json::json;

use super::*;

/// A team key that only exists once a reload adds its team (made up).
const NEWCOMER: &str = "team-key-newcomer-0006";

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
    wait_until("requests flowing before the reload", async || {
        answered_count() >= 6
    })
    .await;

    gw.rewrite_config(|config| {
        config
            .without_team("support")
            .team("newcomer", "globex", NEWCOMER)
    });
    gw.signal("HUP");

    wait_until("the added team is let in", async || {
        c.get("/v1/calls", NEWCOMER).await.status == 200
    })
    .await;
    wait_until("the removed team is shut out", async || {
        c.get("/v1/calls", SUPPORT).await.status == 401
    })
    .await;
    let seen = answered_count();
    wait_until("requests flowing after the reload", async || {
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
                ("authorization", &bearer(NEWCOMER)),
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
        bearer(ORG_KEY_GLOBEX).as_str()
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
    wait_until("the failed reload is counted", async || {
        scrape(&admin).await.count(RELOADS, FAILED) == 1.0
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
    wait_until("the fixed file is applied", async || {
        c.get("/v1/calls", NEWCOMER).await.status == 200
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
    wait_until("the slow request reached upstream", async || {
        upstream.count(&Method::GET, "/v1/slow") == 1
    })
    .await;

    gw.rewrite_config(|config| config.without_team("support"));
    gw.signal("HUP");
    wait_until("the removed team is shut out", async || {
        c.get("/v1/calls", SUPPORT).await.status == 401
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
    wait_until("the slow request's audit line", async || {
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
    assert_eq!(
        org_key_seen_upstream(&c, &upstream, "before").await,
        bearer(ORG_KEY_ACME)
    );

    // Only the key file changes: the config file is the same.
    let key_file = gw.config_path.parent().unwrap().join("acme.key");
    std::fs::write(&key_file, format!("{ROTATED}\n")).unwrap();
    gw.signal("HUP");
    wait_until("the reload is done", async || {
        scrape(&admin).await.count(RELOADS, OK) == 1.0
    })
    .await;
    assert_eq!(
        org_key_seen_upstream(&c, &upstream, "after").await,
        bearer(ROTATED)
    );
}
