//! Admin purge (`POST /admin/cache/purge` on the admin listener): by agent, by organisation or
//! everything, dropping fills in flight too; the admin token is required.

use super::*;

#[tokio::test]
async fn admin_purge_by_agent_by_org_or_everything() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let admin = bearer(ADMIN_TOKEN);
    let acme = ["/v1/agents2/a1", "/v1/agents/a1", "/v1/agents2/a2"];
    for path in acme {
        c.get(path, BILLING).await;
    }
    c.get("/v1/agents2/a1", RIVAL).await;
    assert_eq!(upstream.total(), 4);

    let r = purge(&gw, Some(&admin), r#"{"org":"acme","agent_id":"a1"}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(
        (&body["purged"], &body["org"], &body["agent_id"]),
        (&json!(2), &json!("acme"), &json!("a1"))
    );
    for path in ["/v1/agents2/a1", "/v1/agents/a1"] {
        assert_eq!(c.get(path, BILLING).await.x_cache(), "MISS", "{path}");
    }
    assert_eq!(c.get("/v1/agents2/a2", BILLING).await.x_cache(), "HIT");
    assert_eq!(c.get("/v1/agents2/a1", RIVAL).await.x_cache(), "HIT");

    // The organisation: acme's three variants, not globex's.
    let r = purge(&gw, Some(&admin), r#"{"org":"acme"}"#).await;
    assert_eq!((r.status, &r.json()["purged"]), (200, &json!(3)));
    for path in acme {
        assert_eq!(c.get(path, SUPPORT).await.x_cache(), "MISS", "{path}");
    }
    assert_eq!(c.get("/v1/agents2/a1", RIVAL).await.x_cache(), "HIT");

    // Everything: acme's three again plus globex's one.
    let r = purge(&gw, Some(&admin), "").await;
    assert_eq!((r.status, &r.json()["purged"]), (200, &json!(4)));
    assert_eq!(c.get("/v1/agents2/a1", RIVAL).await.x_cache(), "MISS");
    assert_eq!(c.get("/v1/agents2/a2", BILLING).await.x_cache(), "MISS");

    // One agent id in every organisation.
    c.get("/v1/agents2/a1", BILLING).await;
    let r = purge(&gw, Some(&admin), r#"{"agent_id":"a1"}"#).await;
    assert_eq!((r.status, &r.json()["purged"]), (200, &json!(2)));
    assert_eq!(c.get("/v1/agents2/a1", RIVAL).await.x_cache(), "MISS");
    assert_eq!(c.get("/v1/agents2/a1", BILLING).await.x_cache(), "MISS");
    assert_eq!(c.get("/v1/agents2/a2", BILLING).await.x_cache(), "HIT");
}

/// An empty name is a mistake, not "everything": `400` in the gateway's error shape, nothing
/// purged, and the refusal audited.
#[tokio::test]
async fn admin_purge_with_an_empty_org_or_agent_id_is_400_and_purges_nothing() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    let admin = bearer(ADMIN_TOKEN);
    c.get("/v1/agents2/a1", BILLING).await;
    let bodies = [
        r#"{"agent_id":""}"#,
        r#"{"org":""}"#,
        r#"{"org":"acme","agent_id":" "}"#,
        r#"{"org":"","agent_id":"a1"}"#,
    ];
    for body in bodies {
        let r = purge(&gw, Some(&admin), body).await;
        assert_eq!(r.status, 400, "{body}");
        let json = r.json();
        assert_eq!(
            (&json["statusCode"], &json["error"], &json["code"]),
            (
                &json!(400),
                &json!("Bad Request"),
                &json!("invalid_request")
            ),
            "{body}"
        );
        assert!(
            json["message"]
                .as_str()
                .unwrap()
                .contains("must not be empty"),
            "{json}"
        );
        assert!(json["request_id"].is_string());
    }
    assert_eq!(c.get("/v1/agents2/a1", BILLING).await.x_cache(), "HIT");
    assert_eq!(upstream.total(), 1);
    let lines = gw.audit_lines(bodies.len() + 2).await;
    let refused: Vec<_> = lines
        .iter()
        .filter(|l| l["path"] == "/admin/cache/purge")
        .collect();
    assert_eq!(refused.len(), bodies.len(), "{lines:?}");
    for l in refused {
        assert_eq!(
            (&l["status"], &l["decision"], &l["invalidated"], &l["team"]),
            (&json!(400), &json!("bad_request"), &json!(0), &json!(null)),
            "{l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_drops_a_fill_that_was_in_flight_when_it_ran() {
    let (upstream, gw) = setup().await;
    upstream.set_delay(Method::GET, Duration::from_millis(300));
    let c = gw.client();
    let admin = bearer(ADMIN_TOKEN);
    for (agent, scope) in [
        ("p1", r#"{"org":"acme","agent_id":"p1"}"#),
        ("p2", r#"{"org":"acme"}"#),
        ("p3", r#"{"agent_id":"p3"}"#),
        ("p4", ""),
    ] {
        let path = format!("/v1/agents2/{agent}");
        let read = spawn_get(&c, &path, BILLING);
        wait_until("upstream received the fill", async || {
            upstream.count(&Method::GET, &path) == 1
        })
        .await;
        assert_eq!(purge(&gw, Some(&admin), scope).await.status, 200);
        assert_eq!(read.await.unwrap().status, 200);
        let r = c.get(&path, BILLING).await;
        assert_eq!(r.x_cache(), "MISS", "purge {scope:?} let an older fill in");
    }
}

#[tokio::test]
async fn admin_purge_without_the_admin_token_is_401_and_purges_nothing() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    c.get("/v1/agents2/a1", BILLING).await;
    let body = r#"{"org":"acme","agent_id":"a1"}"#;
    for auth in [
        None,
        Some("Bearer not-the-admin-token".to_owned()),
        Some(bearer(BILLING)),
    ] {
        let r = purge(&gw, auth.as_deref(), body).await;
        assert_eq!(r.status, 401);
    }
    // The admin token is a Bearer token, not an `X-Api-Key`.
    let r = gw
        .admin_client()
        .send(
            Method::POST,
            "/admin/cache/purge",
            &[("x-api-key", ADMIN_TOKEN)],
            Bytes::from_static(body.as_bytes()),
        )
        .await;
    assert_eq!(r.status, 401);
    // The admin API does not exist on the API listener: its paths are the gateway's own 404.
    let r = c
        .send(
            Method::POST,
            "/admin/cache/purge",
            &[("authorization", &bearer(ADMIN_TOKEN))],
            Bytes::from_static(body.as_bytes()),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(c.get("/v1/agents2/a1", BILLING).await.x_cache(), "HIT");
    assert_eq!(upstream.total(), 1);
}
