//! The write race: once a PATCH is answered, no later GET returns the old body, and a fill that
//! started before the write neither answers a later read nor overwrites the newer entry.

use super::*;

/// How often each race runs. Every run forces its interleaving itself: the fill that started
/// before the write is held at upstream until the test has seen the write answered (and, in the
/// second race, the next read fetch for itself), so no run depends on timing and more runs would
/// repeat the same order of events. A few runs (both path families, in alternation) only give
/// the gateway's own tasks some room to schedule differently.
const RUNS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_racing_a_patch_never_returns_the_old_version_once_the_patch_is_answered() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    for i in 0..RUNS {
        let path = format!("/v1/agents2/race-{i:03}");
        // Both families address the same agent: alternate the one written to.
        let family = if i % 2 == 0 { "agents2" } else { "agents" };
        let held = upstream.hold_next(Method::GET);
        let slow = spawn_get(&c, &path, BILLING);
        wait_until("upstream received the cold GET", async || {
            upstream.count(&Method::GET, &path) == 1
        })
        .await;
        let patched = c
            .patch(&format!("/v1/{family}/race-{i:03}"), SUPPORT, "{}")
            .await;
        assert_eq!((patched.status, patched.version()), (200, 2));
        // The read that began before the write may answer the old version...
        held.release();
        let slow = slow.await.unwrap();
        assert_eq!(
            slow.version(),
            1,
            "iteration {i}: {} {:?} {:?}",
            slow.status,
            slow.headers,
            slow.body
        );
        // ...but nothing after the write's answer may.
        let after = c.get(&path, BILLING).await;
        assert_eq!(
            (after.x_cache(), after.version()),
            ("MISS", 2),
            "iteration {i}"
        );
        assert_eq!(upstream.count(&Method::GET, &path), 2, "iteration {i}");
        let cached = c.get(&path, SUPPORT).await;
        assert_eq!(
            (cached.x_cache(), cached.version()),
            ("HIT", 2),
            "iteration {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_after_a_patch_never_joins_a_fill_that_started_before_it() {
    let (upstream, gw) = setup().await;
    let c = gw.client();
    for i in 0..RUNS {
        let path = format!("/v1/agents/join-{i:03}");
        // Only the first GET is held: it is still in flight through the PATCH and the next GET.
        let held = upstream.hold_next(Method::GET);
        let slow = spawn_get(&c, &path, BILLING);
        wait_until("upstream received the cold GET", async || {
            upstream.count(&Method::GET, &path) == 1
        })
        .await;
        let patched = c.patch(&path, BILLING, "{}").await;
        assert_eq!((patched.status, patched.version()), (200, 2));

        let fresh = c.get(&path, SUPPORT).await;
        assert_eq!(
            (fresh.x_cache(), fresh.version()),
            ("MISS", 2),
            "iteration {i}"
        );
        assert_eq!(
            upstream.count(&Method::GET, &path),
            2,
            "iteration {i}: the read after the PATCH made its own upstream request"
        );
        held.release();
        let slow = slow.await.unwrap();
        assert_eq!(
            slow.version(),
            1,
            "iteration {i}: {} {:?} {:?}",
            slow.status,
            slow.headers,
            slow.body
        );
        // The older fill, ending last, did not overwrite the newer entry.
        let cached = c.get(&path, BILLING).await;
        assert_eq!(
            (cached.x_cache(), cached.version()),
            ("HIT", 2),
            "iteration {i}"
        );
        assert_eq!(upstream.count(&Method::GET, &path), 2);
    }
}
