//! `server.watch_config`: a change to the config file or to a secret file it names is reloaded as
//! `SIGHUP` reloads, without a signal: a ConfigMap's `..data` swap, an in-place edit, a replaced
//! key file. A refused change keeps the old config, counted once. And the fingerprint that tells
//! which config each process serves.

use super::*;

/// A team key that only exists once a change adds its team (made up).
const NEWCOMER: &str = "team-key-newcomer-0007";

/// DESIGN promises a reload within 2 s of a change; a loaded test machine gets one more.
const PROMPTLY: Duration = Duration::from_secs(3);

const CONFIG_INFO: &str = "dialnexa_gateway_config_info";
const LOADED_AT: &str = "dialnexa_gateway_config_loaded_timestamp_seconds";

/// The fingerprint a process serves, by `/metrics`.
async fn fingerprint(admin: &Client) -> String {
    let shown = scrape(admin).await.label_values(CONFIG_INFO, "fingerprint");
    assert_eq!(shown.len(), 1, "one config_info series: {shown:?}");
    shown.into_iter().next().unwrap()
}

/// The fingerprint, once no reload is under way: `/metrics` and `/readyz` name the same one.
async fn settled_fingerprint(admin: &Client) -> String {
    let fingerprint = fingerprint(admin).await;
    let ready = admin.send(http::Method::GET, "/readyz", &[], "").await;
    let body = String::from_utf8_lossy(&ready.body).into_owned();
    assert!(
        body.ends_with(&format!("config: {fingerprint}")),
        "/readyz names the fingerprint {fingerprint}: {body}"
    );
    fingerprint
}

#[tokio::test]
async fn a_configmap_swap_adding_a_team_is_applied_within_3_s_and_sighup_still_reloads() {
    let upstream = FakeUpstream::start().await;
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .watch_config(true)
        .configmap_mount()
        .spawn_binary()
        .await;
    let (c, admin) = (gw.client(), gw.admin_client());
    assert!(
        gw.config_path.is_symlink(),
        "precondition: a ConfigMap layout"
    );
    assert_eq!(c.get("/v1/calls", NEWCOMER).await.status, 401);

    gw.rewrite_config(|config| config.team("newcomer", "globex", NEWCOMER));
    wait_until_within(
        PROMPTLY,
        "the team added by the swap is let in",
        async || c.get("/v1/calls", NEWCOMER).await.status == 200,
    )
    .await;

    // A second swap, then SIGHUP: each is one reload, the old directory's removal none.
    gw.rewrite_config(|config| config.without_team("support"));
    wait_until_within(
        PROMPTLY,
        "the team removed by the swap is shut out",
        async || c.get("/v1/calls", SUPPORT).await.status == 401,
    )
    .await;
    assert_eq!(scrape(&admin).await.count(RELOADS, OK), 2.0);
    gw.signal("HUP");
    wait_until("SIGHUP reloads with the watcher on", async || {
        scrape(&admin).await.count(RELOADS, OK) == 3.0
    })
    .await;
    assert_eq!(c.get("/v1/calls", NEWCOMER).await.status, 200);
    let m = scrape(&admin).await;
    assert_eq!(m.count(RELOADS, FAILED), 0.0, "{m}");
}

#[tokio::test]
async fn a_broken_configmap_swap_keeps_the_old_config_serving_and_is_counted_once() {
    let upstream = FakeUpstream::start().await;
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .watch_config(true)
        .configmap_mount()
        .spawn_binary()
        .await;
    let (c, admin) = (gw.client(), gw.admin_client());
    let before = settled_fingerprint(&admin).await;

    // An unknown organisation; it also removes `support`, which a partly applied file would show.
    gw.rewrite_config(|config| {
        config
            .without_team("support")
            .team("broken", "initech", NEWCOMER)
    });
    wait_until_within(PROMPTLY, "the refused swap is counted", async || {
        scrape(&admin).await.count(RELOADS, FAILED) == 1.0
    })
    .await;
    assert_eq!(c.get("/v1/calls", SUPPORT).await.status, 200);
    assert_eq!(c.get("/v1/calls", NEWCOMER).await.status, 401);
    assert_eq!(settled_fingerprint(&admin).await, before);
    assert!(gw.child.try_wait().unwrap().is_none(), "the process is up");

    // The next swap fixes it; the broken one was not tried again in between.
    gw.rewrite_config(|config| config.team_org("broken", "globex"));
    wait_until_within(PROMPTLY, "the fixed swap is applied", async || {
        c.get("/v1/calls", NEWCOMER).await.status == 200
    })
    .await;
    assert_eq!(c.get("/v1/calls", SUPPORT).await.status, 401);
    let m = scrape(&admin).await;
    assert_eq!(m.count(RELOADS, FAILED), 1.0, "{m}");
    assert_eq!(m.count(RELOADS, OK), 1.0, "{m}");
    assert_ne!(settled_fingerprint(&admin).await, before);

    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)).await, Some(0));
    let log = gw.stderr();
    assert_eq!(
        log.matches("config reload failed").count(),
        1,
        "the refusal is logged once: {log}"
    );
    assert!(log.contains("teams.broken.org"), "it names the key: {log}");
}

#[tokio::test]
async fn an_in_place_edit_of_a_regular_config_file_is_applied_within_3_s() {
    let upstream = FakeUpstream::start().await;
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .watch_config(true)
        .spawn_binary()
        .await;
    let c = gw.client();
    assert_eq!(c.get("/v1/calls", NEWCOMER).await.status, 401);

    gw.rewrite_config_in_place(|config| config.team("newcomer", "globex", NEWCOMER));
    wait_until_within(PROMPTLY, "the edited file is applied", async || {
        c.get("/v1/calls", NEWCOMER).await.status == 200
    })
    .await;
}

#[tokio::test]
async fn a_replaced_org_key_file_reaches_upstream_within_3_s() {
    const ROTATED: &str = "org-key-acme-rotated-by-file";
    let upstream = FakeUpstream::start().await;
    let gw = GatewayBuilder::new(upstream.base_url())
        .watch_config(true)
        .spawn_binary()
        .await;
    let c = gw.client();
    assert_eq!(
        org_key_seen_upstream(&c, &upstream, "before").await,
        bearer(ORG_KEY_ACME)
    );

    // Only the key file changes, replaced as a secret manager does: a new file renamed over it.
    let key_file = gw.config_path.parent().unwrap().join("acme.key");
    let new_file = key_file.with_extension("key.new");
    std::fs::write(&new_file, format!("{ROTATED}\n")).unwrap();
    std::fs::rename(&new_file, &key_file).unwrap();
    let mut attempt = 0;
    wait_until_within(PROMPTLY, "upstream sees the new org key", async || {
        attempt += 1;
        let id = format!("after-{attempt}");
        org_key_seen_upstream(&c, &upstream, &id).await == bearer(ROTATED)
    })
    .await;
}

#[tokio::test]
async fn two_processes_on_one_config_show_one_fingerprint_until_only_one_has_reloaded() {
    let upstream = FakeUpstream::start().await;
    let mut watching = GatewayBuilder::new(upstream.base_url())
        .watch_config(true)
        .spawn_binary()
        .await;
    // The same file, the watcher turned off by an env override (which the fingerprint leaves out).
    let signalled = watching
        .spawn_sibling(&[("DNXGW__SERVER__WATCH_CONFIG", "false")])
        .await;
    let (a, b) = (watching.admin_client(), signalled.admin_client());
    let before = settled_fingerprint(&a).await;
    assert_eq!(settled_fingerprint(&b).await, before);
    let loaded_before = scrape(&b).await.value(LOADED_AT, &[]);

    watching.rewrite_config(|config| config.team("newcomer", "globex", NEWCOMER));
    wait_until_within(
        PROMPTLY,
        "the watching process serves the new file",
        async || fingerprint(&a).await != before,
    )
    .await;
    let after = settled_fingerprint(&a).await;
    assert_eq!(
        settled_fingerprint(&b).await,
        before,
        "the other one waits for SIGHUP"
    );
    assert!(scrape(&a).await.value(LOADED_AT, &[]) >= loaded_before);

    signalled.signal("HUP");
    wait_until("both serve the new file", async || {
        fingerprint(&b).await == after
    })
    .await;
    assert_eq!(settled_fingerprint(&b).await, after);
    assert_eq!(
        signalled.client().get("/v1/calls", NEWCOMER).await.status,
        200
    );
}

#[tokio::test]
async fn turning_watch_config_off_in_a_watched_change_leaves_reloads_to_sighup() {
    let upstream = FakeUpstream::start().await;
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .watch_config(true)
        .spawn_binary()
        .await;
    let (c, admin) = (gw.client(), gw.admin_client());

    // The change that turns watching off is itself applied as a watched change.
    gw.rewrite_config(|config| config.watch_config(false).without_team("support"));
    wait_until_within(PROMPTLY, "the change is applied", async || {
        c.get("/v1/calls", SUPPORT).await.status == 401
    })
    .await;
    wait_until("the watcher stops", async || {
        gw.stderr_so_far()
            .contains("config changes wait for SIGHUP")
    })
    .await;

    gw.rewrite_config(|config| config.team("newcomer", "globex", NEWCOMER));
    gw.signal("HUP");
    wait_until("SIGHUP applies the next change", async || {
        c.get("/v1/calls", NEWCOMER).await.status == 200
    })
    .await;
    let m = scrape(&admin).await;
    assert_eq!(m.count(RELOADS, OK), 2.0, "{m}");
}
