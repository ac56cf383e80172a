//! SIGTERM drains in-flight requests, reports not ready and exits 0; SIGUSR1 reopens the audit
//! file after logrotate moved it.

use std::net::SocketAddr;
use std::time::Instant;

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

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
    wait_until("upstream holds every request", async || {
        upstream.count(&Method::GET, "/v1/calls") == IN_FLIGHT
    })
    .await;

    gw.signal("TERM");
    let terminated = Instant::now();
    let admin = gw.admin;
    wait_until("/readyz answers 503 while draining", async move || {
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

#[tokio::test]
async fn sigusr1_reopens_the_audit_file_after_logrotate_moved_it() {
    let upstream = FakeUpstream::start().await;
    let mut gw = GatewayBuilder::new(upstream.base_url())
        .spawn_binary()
        .await;
    let c = gw.client();
    assert_eq!(c.get("/v1/calls", BILLING).await.status, 200);
    wait_until("first line written", async || gw.audit().len() == 1).await;

    // What logrotate does: move the file away, then signal.
    let rotated = gw.audit_path.with_extension("jsonl.1");
    std::fs::rename(&gw.audit_path, &rotated).unwrap();
    gw.signal("USR1");
    let path = gw.audit_path.clone();
    wait_until("a new audit file at the configured path", async || {
        path.exists()
    })
    .await;
    assert_eq!(c.get("/v1/calls?after=rotate", BILLING).await.status, 200);
    wait_until("second line written", async || gw.audit().len() == 1).await;

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
