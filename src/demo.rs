//! `demo`: the gateway in front of the built-in simulated DialNexa, with freshly minted keys, so a
//! newcomer sees authentication, caching, invalidation and auditing work without an account.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;

use crate::auth::KeyDigest;
use crate::server::{self, Signals};
use crate::settings::Settings;
use crate::sim::Simulator;

pub async fn run(listen: SocketAddr, admin_listen: SocketAddr) -> anyhow::Result<()> {
    let signals = Signals::install().context("installing signal handlers")?;
    let org_key = crate::cli::new_key();
    let team_key = crate::cli::new_key();
    let admin_token = crate::cli::new_key();

    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the simulator")?;
    let sim = Simulator::spawn(sim_listener, org_key.clone());

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
[teams.demo]
org = "demo"
key_sha256 = ["{team}"]
rate_limit = {{ per_minute = 600, burst = 60 }}
write_rate_limit = {{ per_minute = 60, burst = 10 }}
"#,
        sim = sim.addr,
        admin = KeyDigest::of(&admin_token).to_hex(),
        key_file = key_path.display(),
        team = KeyDigest::of(&team_key).to_hex(),
    );
    let settings = Settings::from_toml_str(&toml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let running = server::start(settings, None).await?;
    let api = running.api_addr;
    let admin = running.admin_addr;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        r#"dialnexa-gateway demo: gateway on http://{api}/v1 in front of a simulated DialNexa on http://{sim}/v1
Team key (made up for this run): {team_key}

  # read an agent twice: the second answer is X-Cache: HIT
  curl -si http://{api}/v1/agents2/agt_demo_support -H 'Authorization: Bearer {team_key}'
  curl -si http://{api}/v1/agents2/agt_demo_support -H 'Authorization: Bearer {team_key}'
  # change it: every cached variant is dropped, the next read is a MISS with the new body
  curl -si -X PATCH http://{api}/v1/agents2/agt_demo_support -H 'Authorization: Bearer {team_key}' -H 'Content-Type: application/json' -d '{{"llm":{{"settings":{{"temperature":0.3}}}}}}'
  # the legacy unversioned path the Python SDK uses, with X-Api-Key (served as /v1/agents2/...)
  curl -si http://{api}/agents2/agt_demo_support -H 'X-Api-Key: {team_key}'
  # the other family names the same agent, cached apart until a write drops both
  curl -si http://{api}/v1/agents/agt_demo_support -H 'Authorization: Bearer {team_key}'
  # no key: 401
  curl -si http://{api}/v1/agents2
  # metrics and an admin purge
  curl -s http://{admin}/metrics | grep dialnexa_gateway_cache
  curl -si -X POST http://{admin}/admin/cache/purge -H 'Authorization: Bearer {admin_token}' -d '{{"org":"demo"}}'

Audit lines follow on stdout, diagnostics on stderr. Ctrl-C stops.
"#,
        sim = sim.addr,
    );
    drop(out);
    running.run_until_signalled(signals).await;
    drop(sim);
    Ok(())
}
