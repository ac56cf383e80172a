//! The gateway under test, configured through a real TOML file, started in-process (or as the
//! real binary), in front of a [`FakeUpstream`](super::FakeUpstream).
//!
//! Teams (keys are made up): `billing` and `support` (org `acme`), `rival` (org `globex`),
//! `viewer` (org `acme`, read-only). Org keys: `org-key-acme`, `org-key-globex`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dialnexa_gateway::auth::KeyDigest;
use dialnexa_gateway::server::{self, RunningGateway};
use dialnexa_gateway::settings::Settings;

use super::{wait_until, Client};

pub const BILLING: &str = "team-key-billing-0001";
pub const SUPPORT: &str = "team-key-support-0002";
pub const RIVAL: &str = "team-key-rival-0003";
pub const VIEWER: &str = "team-key-viewer-0004";
pub const ADMIN_TOKEN: &str = "admin-token-made-up-0005";
pub const ORG_KEY_ACME: &str = "org-key-acme";
pub const ORG_KEY_GLOBEX: &str = "org-key-globex";

const GENEROUS: &str = "{ per_minute = 1000000, burst = 100000 }";

pub struct GatewayBuilder {
    upstream: String,
    server: Vec<String>,
    upstream_extra: Vec<String>,
    cache: Vec<String>,
    audit: Vec<String>,
    audit_fifo: bool,
    team_limits: Vec<(String, String, Option<String>)>,
    extra_teams: String,
    binary_env: Vec<(String, String)>,
    capture_stdout: bool,
    fd_limit: Option<u32>,
}

impl GatewayBuilder {
    pub fn new(upstream_base_url: impl Into<String>) -> Self {
        Self {
            upstream: upstream_base_url.into(),
            server: Vec::new(),
            upstream_extra: Vec::new(),
            cache: Vec::new(),
            audit: Vec::new(),
            audit_fifo: false,
            team_limits: Vec::new(),
            extra_teams: String::new(),
            binary_env: Vec::new(),
            capture_stdout: false,
            fd_limit: None,
        }
    }

    /// Runs the binary with at most `n` open file descriptors (util-linux's `prlimit`).
    pub fn fd_limit(mut self, n: u32) -> Self {
        self.fd_limit = Some(n);
        self
    }

    /// A raw `key = value` line for `[server]`.
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.into());
        self
    }

    /// A raw `key = value` line for `[upstream]`.
    pub fn upstream(mut self, line: &str) -> Self {
        self.upstream_extra.push(line.into());
        self
    }

    /// A raw `key = value` line for `[cache]`.
    pub fn cache(mut self, line: &str) -> Self {
        self.cache.push(line.into());
        self
    }

    /// A raw `key = value` line for `[audit]` (the sink is always the file `audit.jsonl`).
    pub fn audit(mut self, line: &str) -> Self {
        self.audit.push(line.into());
        self
    }

    /// Makes the audit file a FIFO whose reading end the test holds ([`TestGateway::audit_fifo`]):
    /// until the test reads it, the sink stalls as a hung disk would.
    pub fn audit_fifo(mut self) -> Self {
        self.audit_fifo = true;
        self
    }

    /// Overrides a team's quotas, e.g. `("billing", "{ per_minute = 60, burst = 3 }", None)`.
    pub fn limits(mut self, team: &str, rate: &str, write: Option<&str>) -> Self {
        self.team_limits
            .push((team.into(), rate.into(), write.map(Into::into)));
        self
    }

    /// Raw TOML appended after the standard teams.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra_teams.push_str(toml);
        self
    }

    /// An environment variable for [`spawn_binary`](Self::spawn_binary) (e.g. `RUST_LOG`, which
    /// defaults to `warn`).
    pub fn binary_env(mut self, name: &str, value: &str) -> Self {
        self.binary_env.push((name.into(), value.into()));
        self
    }

    /// Pipes the binary's stdout (null by default) so a test can read it from `child.stdout`.
    /// Read it while the binary runs if it may write more than a pipe holds (64 KiB).
    pub fn capture_stdout(mut self) -> Self {
        self.capture_stdout = true;
        self
    }

    fn toml(&self, dir: &std::path::Path, listen: &str, admin: &str) -> String {
        let mut upstream_extra = self.upstream_extra.clone();
        if !upstream_extra.iter().any(|l| l.starts_with("timeout_ms")) {
            upstream_extra.push("timeout_ms = 5000".into());
        }
        let mut t = format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n{}\n\
             [upstream]\nbase_url = \"{}\"\n{}\n\
             [cache]\n{}\n\
             [audit]\nsink = \"file\"\npath = \"{}\"\n{}\n\
             [admin]\ntoken_sha256 = \"{}\"\n\
             [orgs.acme]\napi_key_file = \"{}\"\n[orgs.globex]\napi_key_file = \"{}\"\n",
            self.server.join("\n"),
            self.upstream,
            upstream_extra.join("\n"),
            self.cache.join("\n"),
            dir.join("audit.jsonl").display(),
            self.audit.join("\n"),
            KeyDigest::of(ADMIN_TOKEN).to_hex(),
            dir.join("acme.key").display(),
            dir.join("globex.key").display(),
        );
        for (team, org, key, access) in [
            ("billing", "acme", BILLING, "read_write"),
            ("support", "acme", SUPPORT, "read_write"),
            ("rival", "globex", RIVAL, "read_write"),
            ("viewer", "acme", VIEWER, "read_only"),
        ] {
            let (rate, write) = self
                .team_limits
                .iter()
                .find(|(t, _, _)| t == team)
                .map(|(_, r, w)| (r.clone(), w.clone()))
                .unwrap_or((GENEROUS.into(), None));
            t.push_str(&format!(
                "[teams.{team}]\norg = \"{org}\"\nkey_sha256 = [\"{}\"]\naccess = \"{access}\"\nrate_limit = {rate}\n",
                KeyDigest::of(key).to_hex()
            ));
            if let Some(w) = write {
                t.push_str(&format!("write_rate_limit = {w}\n"));
            }
        }
        t.push_str(&self.extra_teams);
        t
    }

    fn prepare(&self, listen: &str, admin: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        if self.audit_fifo {
            let made = Command::new("mkfifo")
                .arg(dir.path().join("audit.jsonl"))
                .status()
                .unwrap();
            assert!(made.success(), "mkfifo failed");
        }
        std::fs::write(dir.path().join("acme.key"), format!("{ORG_KEY_ACME}\n")).unwrap();
        std::fs::write(dir.path().join("globex.key"), ORG_KEY_GLOBEX).unwrap();
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, self.toml(dir.path(), listen, admin)).unwrap();
        (dir, config)
    }

    /// Starts the gateway in this test's runtime.
    pub async fn start(self) -> TestGateway {
        let (dir, config) = self.prepare("127.0.0.1:0", "127.0.0.1:0");
        // Opening a FIFO waits for the other end: ours opens while the gateway starts.
        let fifo_path = dir.path().join("audit.jsonl");
        let audit_fifo = self
            .audit_fifo
            .then(|| std::thread::spawn(move || std::fs::File::open(fifo_path).unwrap()));
        let settings =
            Settings::load(&config).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let running = server::start(settings, Some(config.clone())).await.unwrap();
        let audit_fifo = audit_fifo.map(|opening| opening.join().unwrap());
        TestGateway {
            api: running.api_addr,
            admin: running.admin_addr,
            audit_path: dir.path().join("audit.jsonl"),
            config_path: config,
            running: Some(running),
            audit_fifo,
            _dir: dir,
        }
    }

    /// Starts the real binary (for signals and exit codes). Waits until `/readyz` answers 200.
    pub async fn spawn_binary(self) -> BinaryGateway {
        let (api, admin) = (free_port(), free_port());
        let (dir, config) = self.prepare(&api.to_string(), &admin.to_string());
        let bin = env!("CARGO_BIN_EXE_dialnexa-gateway");
        let mut command = match self.fd_limit {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .envs(self.binary_env.iter().map(|(k, v)| (k, v)))
            .stdout(if self.capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut gw = BinaryGateway {
            api,
            admin,
            audit_path: dir.path().join("audit.jsonl"),
            config_path: config,
            child,
            _dir: dir,
        };
        let probe = Client::new(admin);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = gw.child.try_wait().unwrap() {
                let mut stderr = String::new();
                if let Some(mut pipe) = gw.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                panic!("binary exited before becoming ready ({status}): {stderr}");
            }
            // `Client::send` panics on a refused connection: probe only once the port is bound.
            if tokio::net::TcpStream::connect(admin).await.is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "binary did not start listening"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let ready = tokio::time::timeout(
                Duration::from_millis(500),
                probe.send(http::Method::GET, "/readyz", &[], ""),
            )
            .await;
            if matches!(ready, Ok(ref r) if r.status == 200) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "binary did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gw
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The complete lines of the audit file. A line the writer is still in the middle of (no newline
/// yet) is not a line yet, so it is left for the next read.
fn read_audit(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
        })
        .collect()
}

pub struct TestGateway {
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub audit_path: PathBuf,
    pub config_path: PathBuf,
    pub running: Option<RunningGateway>,
    /// The reading end of the audit FIFO, with [`GatewayBuilder::audit_fifo`].
    pub audit_fifo: Option<std::fs::File>,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    pub fn client(&self) -> Client {
        Client::new(self.api)
    }

    pub fn admin_client(&self) -> Client {
        Client::new(self.admin)
    }

    pub fn running(&self) -> &RunningGateway {
        self.running.as_ref().expect("gateway running")
    }

    /// Every audit line written so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        read_audit(&self.audit_path)
    }

    /// Waits until at least `n` audit lines are on disk and returns them.
    pub async fn audit_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let path = self.audit_path.clone();
        wait_until(&format!("{n} audit lines"), || read_audit(&path).len() >= n).await;
        self.audit()
    }

    pub async fn metrics(&self) -> String {
        let r = self
            .admin_client()
            .send(http::Method::GET, "/metrics", &[], "")
            .await;
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    /// Rewrites the config file (through `edit`) and reloads it, as SIGHUP does.
    pub fn rewrite_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, edit(text)).unwrap();
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// The real binary, with its config file and audit file.
pub struct BinaryGateway {
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub audit_path: PathBuf,
    pub config_path: PathBuf,
    pub child: Child,
    _dir: tempfile::TempDir,
}

impl BinaryGateway {
    pub fn client(&self) -> Client {
        Client::new(self.api)
    }

    pub fn admin_client(&self) -> Client {
        Client::new(self.admin)
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        read_audit(&self.audit_path)
    }

    /// Everything the binary wrote to stderr; call once it has exited.
    pub fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        }
        text
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for BinaryGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
