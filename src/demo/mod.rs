//! `demo` and `sim`: the built-in simulated DialNexa ([`sim`]), alone for a service's own tests, or
//! with the gateway in front of it and freshly minted keys, so a newcomer sees authentication,
//! caching, invalidation and auditing work without an account.

pub mod sim;

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::Context;

use crate::auth::{new_key, KeyDigest};
use crate::server::{self, Signals};
use crate::settings::{Settings, TracingSettings};

use sim::{SimOptions, Simulator};

/// The simulator's added latency under `demo`: small, but enough that a cache hit is visibly
/// faster than a miss in curl's `time_total`.
const DEMO_LATENCY: Duration = Duration::from_millis(40);
/// The demo org's budget (per minute, burst): team demo's part (share 3 of 4: a burst of 15) is
/// more than the walkthrough's own commands spend, and team batch's (5) is small enough that its
/// printed flood is refused well within its 30 calls.
const DEMO_BUDGET: (u32, u32) = (120, 20);
/// The agent the printed commands use (a seeded one, from the GET page's example).
const DEMO_AGENT: &str = "agt_abc123";

/// The `[tracing]` of `demo --otlp-endpoint URL`, checked as the config file's would be.
pub fn tracing(otlp_endpoint: Option<String>) -> Result<Option<TracingSettings>, String> {
    otlp_endpoint
        .map(crate::config::demo_tracing)
        .transpose()
        .map_err(|e| format!("--otlp-endpoint: {e}"))
}

pub async fn run(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    tracing: Option<&TracingSettings>,
) -> anyhow::Result<()> {
    let signals = Signals::install().context("installing signal handlers")?;
    let org_key = sim::new_org_key();
    let team_key = new_key();
    let batch_key = new_key();
    let admin_token = new_key();

    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the simulator")?;
    let sim = Simulator::spawn_with(
        sim_listener,
        SimOptions::new(org_key.clone()).latency(DEMO_LATENCY),
    );

    // The org key goes through a file, exactly as `api_key_file` is used in production.
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let key_path = dir.path().join("org-key");
    std::fs::write(&key_path, &org_key).context("writing the org key file")?;
    let toml = format!(
        r#"
[server]
listen = "{listen}"
admin_listen = "{admin_listen}"
[upstream]
base_url = "http://{sim}/v1"
[audit]
sink = "stdout"
[admin]
token_sha256 = "{admin}"
[orgs.demo]
api_key_file = "{key_file}"
upstream_rate_limit = {{ per_minute = {budget_per_minute}, burst = {budget_burst} }}
[teams.demo]
org = "demo"
key_sha256 = ["{team}"]
rate_limit = {{ per_minute = 600, burst = 60 }}
write_rate_limit = {{ per_minute = 60, burst = 10 }}
upstream_share = 3
[teams.batch]
org = "demo"
key_sha256 = ["{batch}"]
rate_limit = {{ per_minute = 600, burst = 60 }}
upstream_share = 1
{tracing_section}
"#,
        tracing_section = tracing.map_or_else(String::new, |t| format!(
            "[tracing]\notlp_endpoint = {:?}\nsample_ratio = {}",
            t.otlp_endpoint, t.sample_ratio
        )),
        sim = sim.addr,
        admin = KeyDigest::of(&admin_token).to_hex(),
        key_file = key_path.display(),
        team = KeyDigest::of(&team_key).to_hex(),
        batch = KeyDigest::of(&batch_key).to_hex(),
        budget_per_minute = DEMO_BUDGET.0,
        budget_burst = DEMO_BUDGET.1,
    );
    let settings = Settings::from_toml_str(&toml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let running = server::start(settings, None).await?;
    let api = running.api_addr;
    let admin = running.admin_addr;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        r#"dialnexa-gateway demo: gateway on {api}/v1 in front of a simulated DialNexa on http://{sim}/v1
Team key (made up for this run): {team_key}
Batch team key (made up for this run): {batch_key}

  # read an agent twice: the first is a MISS (the simulator adds {latency} ms), the second X-Cache: HIT
  curl -si {api}/v1/agents2/{agent} -H 'Authorization: Bearer {team_key}' -w '\ntime: %{{time_total}}s\n'
  curl -si {api}/v1/agents2/{agent} -H 'Authorization: Bearer {team_key}' -w '\ntime: %{{time_total}}s\n'
  # change its pipeline: every cached variant is dropped, the next read is a MISS with the new body
  curl -si -X PATCH {api}/v1/agents2/{agent} -H 'Authorization: Bearer {team_key}' -H 'Content-Type: application/json' -d '{{"pipeline_type":"Speech_To_Speech"}}'
  # one speech setting: objects merge, so the other speech.* fields stay as they were
  curl -si -X PATCH {api}/v1/agents2/{agent} -H 'Authorization: Bearer {team_key}' -H 'Content-Type: application/json' -d '{{"speech":{{"backchanneling":true,"responsiveness":0.8}}}}'
  # a bad value: 400 naming the field, and nothing changes
  curl -si -X PATCH {api}/v1/agents2/{agent} -H 'Authorization: Bearer {team_key}' -H 'Content-Type: application/json' -d '{{"pipeline_type":"Telepathy"}}'
  # an older version of another agent, by query
  curl -si '{api}/v1/agents2/agt_k7m2nq9xw4p8?version_number=1' -H 'Authorization: Bearer {team_key}'
  # the legacy unversioned path the Python SDK uses, with X-Api-Key (served as /v1/agents2/...)
  curl -si {api}/agents2/{agent} -H 'X-Api-Key: {team_key}'
  # the other family names the same agent, cached apart until a write drops both
  curl -si {api}/v1/agents/{agent} -H 'Authorization: Bearer {team_key}'
  # no key: 401
  curl -si {api}/v1/agents2
  # metrics and an admin purge
  curl -s http://{admin}/metrics | grep dialnexa_gateway_cache
  curl -si -X POST http://{admin}/admin/cache/purge -H 'Authorization: Bearer {admin_token}' -d '{{"org":"demo"}}'

  # the org's DialNexa budget ({budget_per_minute} calls a minute, burst {budget_burst}) is shared by team demo (share 3)
  # and team batch (share 1). batch floods: its part and what it may borrow go upstream, then 429
  # org_quota_exhausted; cache hits never spend the budget
  for i in $(seq 30); do curl -s -o /dev/null -w '%{{http_code}} ' {api}/v1/calls -H 'Authorization: Bearer {batch_key}'; done; echo
  # demo's part was kept for it: still served
  curl -si {api}/v1/calls -H 'Authorization: Bearer {team_key}'
  # calls upstream by team, and the refusals
  curl -s http://{admin}/metrics | grep -E 'upstream_calls|org_budget'

{traces}Audit lines follow on stdout, diagnostics on stderr. Ctrl-C stops.
"#,
        traces = tracing.map_or_else(String::new, |t| format!(
            "Every request's spans go to {} (OTLP/HTTP); a local Jaeger shows them at http://127.0.0.1:16686.\n",
            t.otlp_endpoint
        )),
        api = format_args!("http://{api}"),
        sim = sim.addr,
        agent = DEMO_AGENT,
        latency = DEMO_LATENCY.as_millis(),
        budget_per_minute = DEMO_BUDGET.0,
        budget_burst = DEMO_BUDGET.1,
    );
    drop(out);
    running.run_until_signalled(signals).await;
    drop(sim);
    Ok(())
}

/// `sim`: the simulated DialNexa alone, for a service's own tests. Prints its base URL and the
/// organisation key to use (generated unless given), then serves until `SIGTERM`/`SIGINT`.
pub async fn run_sim(
    listen: SocketAddr,
    key: Option<String>,
    latency: Duration,
    rate_limit: Option<NonZeroU32>,
) -> anyhow::Result<()> {
    let mut signals = Signals::install().context("installing signal handlers")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let key = key.unwrap_or_else(sim::new_org_key);
    let mut options = SimOptions::new(key.clone()).latency(latency);
    if let Some(per_minute) = rate_limit {
        options = options.rate_limit(per_minute);
    }
    let sim = Simulator::spawn_with(listener, options);
    let quota = rate_limit.map_or_else(
        || "none enforced".to_owned(),
        |n| format!("{n} requests per minute, then 429"),
    );
    // The key is printed on purpose: it is this process's own made-up key, and the operator
    // needs it to call the simulator. It goes to stdout only, never to the logs.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        r#"dialnexa-gateway sim: a simulated DialNexa (organization {org})
URL: http://{addr}/v1
Key: {key}
Legacy unversioned routes too (http://{addr}/agents2/...). Added latency: {latency} ms. Org quota: {quota}.

  curl -si http://{addr}/v1/agents2 -H 'Authorization: Bearer {key}'

SIGTERM or Ctrl-C stops."#,
        org = sim::ORGANIZATION_ID,
        addr = sim.addr,
        latency = latency.as_millis(),
    );
    let _ = out.flush();
    drop(out);
    signals.stop_requested().await;
    tracing::info!("simulator stopped");
    drop(sim);
    Ok(())
}
