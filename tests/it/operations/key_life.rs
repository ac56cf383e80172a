//! The life of a team key: one with a `not_after` is refused from then on (`401` `key_expired`,
//! audited with its `key_id`) while the team's other keys work; when each key ends and when it was
//! last used are in `/metrics`, the last use surviving reloads.

use std::time::{SystemTime, UNIX_EPOCH};

use dialnexa_gateway::auth::KeyDigest;
use http::Method;

use super::*;

/// `billing`'s second key, one that ends (made up).
const OLD_KEY: &str = "team-key-billing-old-0008";

const NOT_AFTER: &str = "dialnexa_gateway_team_key_not_after_timestamp_seconds";
const LAST_USED: &str = "dialnexa_gateway_team_key_last_used_timestamp_seconds";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn an_ended_key_gets_key_expired_while_its_sibling_works() {
    let (upstream, gw) =
        setup_with(|c| c.team_key_ending("billing", OLD_KEY, "2026-01-01T00:00:00Z")).await;
    let (c, old_id) = (gw.client(), KeyDigest::of(OLD_KEY).key_id());

    let r = c.get("/v1/calls?old", OLD_KEY).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let body = r.json();
    assert_eq!(body["statusCode"], 401);
    assert_eq!(body["error"], "Unauthorized");
    assert_eq!(body["code"], "key_expired");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("2026-01-01T00:00:00Z"), "{message}");
    assert!(!message.contains(OLD_KEY), "{message}");
    assert_eq!(upstream.count(&Method::GET, "/v1/calls"), 0);

    // The team's other key is unaffected.
    assert_eq!(c.get("/v1/calls?current", BILLING).await.status, 200);
    assert_eq!(upstream.count(&Method::GET, "/v1/calls"), 1);

    let lines = gw.audit_lines(2).await;
    let refused = lines.iter().find(|l| l["status"] == 401).unwrap();
    assert_eq!(refused["decision"], "unauthenticated");
    assert_eq!(refused["key_id"], old_id.as_str());
    assert!(refused["team"].is_null());
    assert!(refused["upstream_status"].is_null());

    // The end is shown; both keys' last use too, to the minute, the ended one included.
    let m = gw.metrics().await;
    let current_id = KeyDigest::of(BILLING).key_id();
    let old = [("team", "billing"), ("key_id", old_id.as_str())];
    let current = [("team", "billing"), ("key_id", current_id.as_str())];
    assert_eq!(m.value(NOT_AFTER, &old), 1_767_225_600.0);
    assert_eq!(m.sample(NOT_AFTER, &current), None, "{m}");
    for labels in [&old, &current] {
        let used = m.value(LAST_USED, labels);
        assert_eq!(used % 60.0, 0.0, "to the minute: {used}");
        assert!(used <= unix_now() && used > unix_now() - 120.0, "{used}");
    }
}

#[tokio::test]
async fn a_key_is_refused_from_the_moment_it_ends_while_the_gateway_runs() {
    // Far enough ahead that the first request lands before it, whole seconds being cut off.
    let end = SystemTime::now() + Duration::from_secs(3);
    let end_text = humantime::format_rfc3339_seconds(end).to_string();
    let (_upstream, gw) = setup_with(|c| c.team_key_ending("billing", OLD_KEY, &end_text)).await;
    let c = gw.client();
    assert_eq!(c.get("/v1/calls", OLD_KEY).await.status, 200);
    wait_until("the key is refused once it ended", async || {
        c.get("/v1/calls", OLD_KEY).await.status == 401
    })
    .await;
    assert!(SystemTime::now() >= end - Duration::from_secs(1));
    assert_eq!(
        c.get("/v1/calls", OLD_KEY).await.json()["code"],
        "key_expired"
    );
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
}

#[tokio::test]
async fn a_keys_last_use_survives_a_reload_and_a_removed_keys_series_go() {
    let (_upstream, mut gw) =
        setup_with(|c| c.team_key_ending("billing", OLD_KEY, "2099-01-01T00:00:00Z")).await;
    let c = gw.client();
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    assert_eq!(c.get("/v1/calls", OLD_KEY).await.status, 200);
    let current_id = KeyDigest::of(BILLING).key_id();
    let old_id = KeyDigest::of(OLD_KEY).key_id();
    let current = [("team", "billing"), ("key_id", current_id.as_str())];
    let old = [("team", "billing"), ("key_id", old_id.as_str())];
    let used = gw.metrics().await.value(LAST_USED, &current);
    assert!(used > 0.0);

    // The reload drops the ended key (billing keeps only its current one).
    gw.rewrite_config(|config| {
        config
            .without_team("billing")
            .team("billing", "acme", BILLING)
    });
    gw.running().reload().unwrap();
    let m = gw.metrics().await;
    assert_eq!(m.value(LAST_USED, &current), used, "{m}");
    assert_eq!(m.sample(LAST_USED, &old), None, "{m}");
    assert_eq!(m.sample(NOT_AFTER, &old), None, "{m}");
    assert_eq!(
        c.get("/v1/calls", OLD_KEY).await.json()["code"],
        "invalid_team_key"
    );
}
