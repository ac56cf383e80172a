//! The gateway under test, configured through a real TOML file, started in-process (or as the
//! real binary), in front of a [`FakeUpstream`](super::FakeUpstream).
//!
//! Teams (keys are made up): `billing` and `support` (org `acme`), `rival` (org `globex`),
//! `viewer` (org `acme`, read-only). Org keys: `org-key-acme`, `org-key-globex`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialnexa_gateway::auth::KeyDigest;
use dialnexa_gateway::server::{self, RunningGateway};
use dialnexa_gateway::settings::Settings;

use super::{scrape, wait_until, wait_until_within, Client, Metrics};

pub const BILLING: &str = "team-key-billing-0001";
pub const SUPPORT: &str = "team-key-support-0002";
pub const RIVAL: &str = "team-key-rival-0003";
pub const VIEWER: &str = "team-key-viewer-0004";
pub const ADMIN_TOKEN: &str = "admin-token-made-up-0005";
pub const ORG_KEY_ACME: &str = "org-key-acme";
pub const ORG_KEY_GLOBEX: &str = "org-key-globex";

/// A quota far above what any test reaches, for teams whose quota is not under test.
const GENEROUS: Quota = Quota {
    per_minute: 1_000_000,
    burst: 100_000,
};

/// A rate limit: `{ per_minute, burst }`.
#[derive(Debug, Clone, Copy)]
struct Quota {
    per_minute: u32,
    burst: u32,
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Quota { per_minute, burst } = self;
        write!(f, "{{ per_minute = {per_minute}, burst = {burst} }}")
    }
}

/// One `[teams.<name>]` table.
#[derive(Debug, Clone)]
struct Team {
    name: String,
    org: String,
    key: String,
    access: &'static str,
    rate: Quota,
    write: Option<Quota>,
    /// More keys after `key`, each with its `not_after` (RFC 3339), if it has one.
    more_keys: Vec<(String, Option<String>)>,
}

/// How the config file is laid out and replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// A regular file, replaced by writing a new one and renaming it over the old.
    File,
    /// As Kubernetes mounts a ConfigMap: `gateway.toml -> ..data/gateway.toml`,
    /// `..data -> ..<generation>/`, replaced by renaming a new `..data` link over the old one.
    ConfigMap,
}

/// The gateway's config, set through typed methods (a misspelt setting does not compile), written
/// as a TOML file when the gateway starts. Unset keys keep the gateway's defaults, except
/// `upstream.timeout_ms` (5 s, so a test never waits the default 15 s) and `server.watch_config`
/// (off, so that a test's rewrite is applied when it says: by `SIGHUP` or `reload()`; the tests of
/// watching turn it on).
///
/// Starts with the four standard teams, each with a generous quota.
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    upstream: String,
    /// `(table, key, value as TOML)`, in the order first set; setting a key again replaces it.
    settings: Vec<(&'static str, &'static str, String)>,
    audit_fifo: bool,
    teams: Vec<Team>,
    /// `(org, key, value as TOML)` added to an `[orgs.*]` table.
    org_settings: Vec<(&'static str, &'static str, String)>,
    binary_env: Vec<(String, String)>,
    capture_stdout: bool,
    fd_limit: Option<u32>,
    layout: Layout,
}

impl GatewayBuilder {
    pub fn new(upstream_base_url: impl Into<String>) -> Self {
        let teams = [
            ("billing", "acme", BILLING, "read_write"),
            ("support", "acme", SUPPORT, "read_write"),
            ("rival", "globex", RIVAL, "read_write"),
            ("viewer", "acme", VIEWER, "read_only"),
        ]
        .map(|(name, org, key, access)| Team {
            name: name.into(),
            org: org.into(),
            key: key.into(),
            access,
            rate: GENEROUS,
            write: None,
            more_keys: Vec::new(),
        });
        Self {
            upstream: upstream_base_url.into(),
            settings: Vec::new(),
            audit_fifo: false,
            teams: teams.into(),
            org_settings: Vec::new(),
            binary_env: Vec::new(),
            capture_stdout: false,
            fd_limit: None,
            layout: Layout::File,
        }
        .upstream_timeout_ms(5000)
        .watch_config(false)
    }

    fn set(mut self, table: &'static str, key: &'static str, value: impl ToString) -> Self {
        let value = value.to_string();
        match self
            .settings
            .iter_mut()
            .find(|(t, k, _)| (*t, *k) == (table, key))
        {
            Some(setting) => setting.2 = value,
            None => self.settings.push((table, key, value)),
        }
        self
    }

    // --- [tracing] ---

    /// Spans exported to the OTLP collector at `url` (a `[tracing]` table appears once any key is
    /// set).
    pub fn tracing_endpoint(self, url: &str) -> Self {
        self.set("tracing", "otlp_endpoint", format!("{url:?}"))
    }

    pub fn tracing_sample_ratio(self, ratio: f64) -> Self {
        self.set("tracing", "sample_ratio", format!("{ratio:?}"))
    }

    // --- [cluster] ---

    /// Cluster mode against the Redis at `url` (a `[cluster]` table appears once any key is set).
    pub fn cluster_redis_url(self, url: &str) -> Self {
        self.set("cluster", "redis_url", format!("{url:?}"))
    }

    /// Cluster mode against the Redis at `url`, with a short call deadline.
    pub fn in_cluster(self, url: &str) -> Self {
        self.cluster_redis_url(url).cluster_timeout_ms(200)
    }

    pub fn cluster_timeout_ms(self, ms: u64) -> Self {
        self.set("cluster", "timeout_ms", ms)
    }

    /// `"degrade"` or `"refuse"`.
    pub fn cluster_on_unavailable(self, mode: &str) -> Self {
        self.set("cluster", "on_unavailable", format!("{mode:?}"))
    }

    /// The environment variable the Redis password is read from.
    pub fn cluster_password_env(self, var: &str) -> Self {
        self.set("cluster", "redis_password_env", format!("{var:?}"))
    }

    /// Cluster mode through Sentinels (`host:port` each) that monitor `master_name`.
    pub fn cluster_sentinels(self, sentinels: &[String], master_name: &str) -> Self {
        self.set("cluster", "sentinels", format!("{sentinels:?}"))
            .set("cluster", "master_name", format!("{master_name:?}"))
    }

    pub fn cluster_min_replicas_acked(self, n: u32) -> Self {
        self.set("cluster", "min_replicas_acked", n)
    }

    // --- [server] ---

    pub fn max_body_bytes(self, bytes: u64) -> Self {
        self.set("server", "max_body_bytes", bytes)
    }

    pub fn shutdown_grace_ms(self, ms: u64) -> Self {
        self.set("server", "shutdown_grace_ms", ms)
    }

    pub fn request_header_timeout_ms(self, ms: u64) -> Self {
        self.set("server", "request_header_timeout_ms", ms)
    }

    pub fn request_body_timeout_ms(self, ms: u64) -> Self {
        self.set("server", "request_body_timeout_ms", ms)
    }

    pub fn idle_timeout_ms(self, ms: u64) -> Self {
        self.set("server", "idle_timeout_ms", ms)
    }

    pub fn max_connections(self, n: u32) -> Self {
        self.set("server", "max_connections", n)
    }

    pub fn watch_config(self, on: bool) -> Self {
        self.set("server", "watch_config", on)
    }

    // --- [upstream] ---

    pub fn upstream_timeout_ms(self, ms: u64) -> Self {
        self.set("upstream", "timeout_ms", ms)
    }

    // --- [cache] ---

    pub fn cache_enabled(self, enabled: bool) -> Self {
        self.set("cache", "enabled", enabled)
    }

    pub fn cache_ttl_seconds(self, seconds: u64) -> Self {
        self.set("cache", "ttl_seconds", seconds)
    }

    pub fn cache_stale_if_error_seconds(self, seconds: u64) -> Self {
        self.set("cache", "stale_if_error_seconds", seconds)
    }

    pub fn cache_max_entry_bytes(self, bytes: u64) -> Self {
        self.set("cache", "max_entry_bytes", bytes)
    }

    // --- [audit] (the sink is always the file `audit.jsonl`) ---

    pub fn audit_buffer_lines(self, lines: usize) -> Self {
        self.set("audit", "buffer_lines", lines)
    }

    /// Makes the audit file a FIFO whose reading end the test holds ([`TestGateway::audit_fifo`]):
    /// until the test reads it, the sink stalls as a hung disk would.
    pub fn audit_fifo(mut self) -> Self {
        self.audit_fifo = true;
        self
    }

    // --- [teams.*] ---

    fn team_mut(&mut self, name: &str) -> &mut Team {
        self.teams
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no team {name} in the test config"))
    }

    /// Sets a team's general quota (`rate_limit`).
    pub fn team_quota(mut self, team: &str, per_minute: u32, burst: u32) -> Self {
        self.team_mut(team).rate = Quota { per_minute, burst };
        self
    }

    /// Gives a team a write quota (`write_rate_limit`).
    pub fn write_quota(mut self, team: &str, per_minute: u32, burst: u32) -> Self {
        self.team_mut(team).write = Some(Quota { per_minute, burst });
        self
    }

    /// Adds a read-write team of `org` with one `key` and a generous quota.
    pub fn team(mut self, name: &str, org: &str, key: &str) -> Self {
        assert!(
            self.teams.iter().all(|t| t.name != name),
            "team {name} already in the test config"
        );
        self.teams.push(Team {
            name: name.into(),
            org: org.into(),
            key: key.into(),
            access: "read_write",
            rate: GENEROUS,
            write: None,
            more_keys: Vec::new(),
        });
        self
    }

    /// Gives a team another key, one that ends at `not_after` (RFC 3339).
    pub fn team_key_ending(mut self, team: &str, key: &str, not_after: &str) -> Self {
        self.team_mut(team)
            .more_keys
            .push((key.into(), Some(not_after.into())));
        self
    }

    /// Moves a team to another organisation (which need not exist: an unknown org is invalid).
    pub fn team_org(mut self, team: &str, org: &str) -> Self {
        self.team_mut(team).org = org.into();
        self
    }

    fn org_set(mut self, org: &'static str, key: &'static str, value: String) -> Self {
        self.org_settings.retain(|(o, k, _)| (*o, *k) != (org, key));
        self.org_settings.push((org, key, value));
        self
    }

    /// Gives `org` (`acme` or `globex`) a budget for its upstream calls (`upstream_rate_limit`).
    pub fn org_budget(self, org: &'static str, per_minute: u32, burst: u32) -> Self {
        let budget = Quota { per_minute, burst };
        self.org_set(org, "upstream_rate_limit", budget.to_string())
    }

    /// Caps how long DialNexa's refusal holds `org` (`max_upstream_hold_seconds`).
    pub fn org_max_hold_seconds(self, org: &'static str, seconds: u64) -> Self {
        self.org_set(org, "max_upstream_hold_seconds", seconds.to_string())
    }

    pub fn without_team(mut self, name: &str) -> Self {
        self.team_mut(name);
        self.teams.retain(|t| t.name != name);
        self
    }

    // --- the binary ---

    /// Runs the binary with at most `n` open file descriptors (util-linux's `prlimit`).
    pub fn fd_limit(mut self, n: u32) -> Self {
        self.fd_limit = Some(n);
        self
    }

    /// An environment variable for [`spawn_binary`](Self::spawn_binary) (e.g. `RUST_LOG`, which
    /// defaults to warnings and the server's info lines; a test's own `RUST_LOG` must keep
    /// `dialnexa_gateway::server` at `info`, or the binary never says where it listens).
    pub fn binary_env(mut self, name: &str, value: &str) -> Self {
        self.binary_env.push((name.into(), value.into()));
        self
    }

    /// Lays the config file out as Kubernetes mounts a ConfigMap (`gateway.toml` a link through
    /// `..data`), and makes every rewrite an atomic swap of `..data`, as kubelet does.
    pub fn configmap_mount(mut self) -> Self {
        self.layout = Layout::ConfigMap;
        self
    }

    /// Pipes the binary's stdout (null by default) so a test can read it from `child.stdout`.
    /// Read it while the binary runs if it may write more than a pipe holds (64 KiB).
    pub fn capture_stdout(mut self) -> Self {
        self.capture_stdout = true;
        self
    }

    /// The config file's text. Both listeners bind port 0: the gateway reports what it bound.
    fn toml(&self, dir: &Path) -> String {
        let mut t = String::new();
        let mut table = |name: &str, fixed: &[(&str, String)]| {
            t.push_str(&format!("[{name}]\n"));
            for (key, value) in fixed {
                t.push_str(&format!("{key} = {value}\n"));
            }
            for (_, key, value) in self.settings.iter().filter(|(t, _, _)| *t == name) {
                t.push_str(&format!("{key} = {value}\n"));
            }
        };
        let quoted = |s: &str| format!("{s:?}");
        table(
            "server",
            &[
                ("listen", quoted("127.0.0.1:0")),
                ("admin_listen", quoted("127.0.0.1:0")),
            ],
        );
        table("upstream", &[("base_url", quoted(&self.upstream))]);
        table("cache", &[]);
        table(
            "audit",
            &[
                ("sink", quoted("file")),
                (
                    "path",
                    quoted(&dir.join("audit.jsonl").display().to_string()),
                ),
            ],
        );
        table(
            "admin",
            &[("token_sha256", quoted(&KeyDigest::of(ADMIN_TOKEN).to_hex()))],
        );
        if self.settings.iter().any(|(t, _, _)| *t == "cluster") {
            table("cluster", &[]);
        }
        if self.settings.iter().any(|(t, _, _)| *t == "tracing") {
            table("tracing", &[]);
        }
        for org in ["acme", "globex"] {
            let key_file = dir.join(format!("{org}.key")).display().to_string();
            t.push_str(&format!(
                "[orgs.{org}]\napi_key_file = {}\n",
                quoted(&key_file)
            ));
            for (_, key, value) in self.org_settings.iter().filter(|(o, _, _)| *o == org) {
                t.push_str(&format!("{key} = {value}\n"));
            }
        }
        for team in &self.teams {
            let mut keys = vec![quoted(&KeyDigest::of(&team.key).to_hex())];
            for (key, not_after) in &team.more_keys {
                let digest = quoted(&KeyDigest::of(key).to_hex());
                keys.push(match not_after {
                    Some(end) => format!("{{ sha256 = {digest}, not_after = {} }}", quoted(end)),
                    None => digest,
                });
            }
            t.push_str(&format!(
                "[teams.{}]\norg = {}\nkey_sha256 = [{}]\naccess = {}\nrate_limit = {}\n",
                team.name,
                quoted(&team.org),
                keys.join(", "),
                quoted(team.access),
                team.rate,
            ));
            if let Some(write) = team.write {
                t.push_str(&format!("write_rate_limit = {write}\n"));
            }
        }
        t
    }

    fn prepare(&self) -> (tempfile::TempDir, ConfigFile) {
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
        let mut config = ConfigFile {
            path: dir.path().join("gateway.toml"),
            written_from: self.clone(),
            generation: 0,
        };
        config.write();
        (dir, config)
    }

    /// Starts the gateway in this test's runtime.
    pub async fn start(self) -> TestGateway {
        let (dir, config) = self.prepare();
        // Opening a FIFO waits for the other end: ours opens while the gateway starts.
        let fifo_path = dir.path().join("audit.jsonl");
        let audit_fifo = self
            .audit_fifo
            .then(|| std::thread::spawn(move || std::fs::File::open(fifo_path).unwrap()));
        let settings =
            Settings::load(&config.path).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let running = server::start(settings, Some(config.path.clone()))
            .await
            .unwrap();
        let audit_fifo = audit_fifo.map(|opening| opening.join().unwrap());
        TestGateway {
            api: running.api_addr,
            admin: running.admin_addr,
            audit_path: dir.path().join("audit.jsonl"),
            config,
            running: Some(running),
            audit_fifo,
            _dir: dir,
        }
    }

    /// Starts the real binary (for signals and exit codes), reads the addresses it bound from its
    /// `listening` log line, and waits until `/readyz` answers 200.
    pub async fn spawn_binary(self) -> BinaryGateway {
        let (dir, config) = self.prepare();
        launch(config, Arc::new(dir)).await
    }
}

/// Runs the binary on `config` as its builder says, reads the addresses it bound from its
/// `listening` log line, and waits until `/readyz` answers 200.
async fn launch(config: ConfigFile, dir: Arc<tempfile::TempDir>) -> BinaryGateway {
    let this = &config.written_from;
    let bin = env!("CARGO_BIN_EXE_dialnexa-gateway");
    let mut command = match this.fd_limit {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = command
        .arg("--config")
        .arg(&config.path)
        .env("RUST_LOG", LISTENING_AND_WARNINGS)
        .envs(this.binary_env.iter().map(|(k, v)| (k, v)))
        .stdout(if this.capture_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = Stderr::read(child.stderr.take().unwrap());
    wait_until_within(STARTUP, "the binary listens", async || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "binary exited before listening ({status}): {}",
                stderr.all()
            );
        }
        stderr.listening().is_some()
    })
    .await;
    let (api, admin) = stderr.listening().expect("listening");
    let mut gw = BinaryGateway {
        api,
        admin,
        audit_path: dir.path().join("audit.jsonl"),
        config_path: config.path.clone(),
        config,
        child,
        stderr,
        dir,
    };
    let probe = Client::new(admin);
    wait_until_within(STARTUP, "the binary is ready", async || {
        if let Some(status) = gw.child.try_wait().unwrap() {
            panic!(
                "binary exited before becoming ready ({status}): {}",
                gw.stderr()
            );
        }
        let ready = tokio::time::timeout(
            Duration::from_millis(500),
            probe.send(http::Method::GET, "/readyz", &[], ""),
        )
        .await;
        matches!(ready, Ok(ref r) if r.status == 200)
    })
    .await;
    gw
}

/// How long the binary may take to listen, and again to be ready: a debug build on a machine
/// busy compiling and testing in parallel.
const STARTUP: Duration = Duration::from_secs(20);

/// `RUST_LOG` for the binary: warnings, and the server's own lines, among them the one that says
/// where it listens.
const LISTENING_AND_WARNINGS: &str = "warn,dialnexa_gateway::server=info";

/// The config file and the builder it was last written from, so a test can change it in types.
#[derive(Debug, Clone)]
struct ConfigFile {
    path: PathBuf,
    written_from: GatewayBuilder,
    /// Rewrites so far (names a ConfigMap layout's data directories).
    generation: u32,
}

impl ConfigFile {
    /// Writes the file in one rename (of the file, or of a ConfigMap's `..data` link), so a
    /// gateway reloading meanwhile never reads half a file.
    fn write(&mut self) {
        let dir = self.path.parent().unwrap().to_owned();
        let text = self.written_from.toml(&dir);
        match self.written_from.layout {
            Layout::File => {
                let tmp = self.path.with_extension("toml.new");
                std::fs::write(&tmp, text).unwrap();
                std::fs::rename(&tmp, &self.path).unwrap();
            }
            Layout::ConfigMap => {
                // kubelet's AtomicWriter: a new data directory, a new `..data` link renamed over
                // the old one, then the old directory removed.
                use std::os::unix::fs::symlink;
                let name = format!("..{}", self.generation);
                std::fs::create_dir(dir.join(&name)).unwrap();
                std::fs::write(dir.join(&name).join("gateway.toml"), text).unwrap();
                symlink(&name, dir.join("..data_tmp")).unwrap();
                std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
                if self.generation == 0 {
                    symlink("..data/gateway.toml", &self.path).unwrap();
                } else {
                    let old = dir.join(format!("..{}", self.generation - 1));
                    std::fs::remove_dir_all(old).unwrap();
                }
            }
        }
        self.generation += 1;
    }

    fn rewrite(&mut self, change: impl FnOnce(GatewayBuilder) -> GatewayBuilder) {
        self.written_from = change(self.written_from.clone());
        self.write();
    }

    /// Rewrites the file where it is: truncated, then written (as `echo … > file` or an editor
    /// that saves in place does).
    fn rewrite_in_place(&mut self, change: impl FnOnce(GatewayBuilder) -> GatewayBuilder) {
        assert_eq!(self.written_from.layout, Layout::File);
        self.written_from = change(self.written_from.clone());
        let text = self.written_from.toml(self.path.parent().unwrap());
        std::fs::write(&self.path, text).unwrap();
    }
}

/// The binary's stderr, read on a thread as it comes (so a chatty log never blocks it), kept whole.
struct Stderr {
    text: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Stderr {
    fn read(pipe: impl std::io::Read + Send + 'static) -> Self {
        let text = Arc::new(Mutex::new(Vec::new()));
        let kept = text.clone();
        let reader = std::thread::spawn(move || {
            let mut pipe = BufReader::new(pipe);
            let mut line = Vec::new();
            while matches!(pipe.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                kept.lock().unwrap().extend_from_slice(&line);
                line.clear();
            }
        });
        Self {
            text,
            reader: Some(reader),
        }
    }

    /// What was written so far.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned()
    }

    /// Everything, once the process closed its stderr (it exited).
    fn all(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.text()
    }

    /// The API and admin addresses of the `dialnexa-gateway listening api=… admin=…` line.
    fn listening(&self) -> Option<(SocketAddr, SocketAddr)> {
        let text = self.text();
        let line = strip_ansi(
            text.lines()
                .find(|l| l.contains("dialnexa-gateway listening"))?,
        );
        let field = |name: &str| -> SocketAddr {
            let value = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"));
            value
                .parse()
                .unwrap_or_else(|e| panic!("{name}={value} is not an address ({e})"))
        };
        Some((field("api"), field("admin")))
    }
}

/// `line` without the terminal colour codes (`ESC [ … letter`) the log may carry.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // The parameters up to and including the final byte, a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
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
    config: ConfigFile,
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
        wait_until(&format!("{n} audit lines"), async || {
            read_audit(&path).len() >= n
        })
        .await;
        self.audit()
    }

    /// One scrape of `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        scrape(&self.admin_client()).await
    }

    /// Rewrites the config file with `change` applied to the settings it was written from;
    /// [`RunningGateway::reload`] applies it, as SIGHUP does.
    pub fn rewrite_config(&mut self, change: impl FnOnce(GatewayBuilder) -> GatewayBuilder) {
        self.config.rewrite(change);
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
    config: ConfigFile,
    pub child: Child,
    stderr: Stderr,
    /// Shared with the other processes started on the same config ([`Self::spawn_sibling`]).
    dir: Arc<tempfile::TempDir>,
}

impl BinaryGateway {
    /// Another process of the binary on the same config file (the same audit file, the same key
    /// files), with `env` added to its environment.
    pub async fn spawn_sibling(&self, env: &[(&str, &str)]) -> BinaryGateway {
        let mut config = self.config.clone();
        config
            .written_from
            .binary_env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        launch(config, self.dir.clone()).await
    }

    pub fn client(&self) -> Client {
        Client::new(self.api)
    }

    pub fn admin_client(&self) -> Client {
        Client::new(self.admin)
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        read_audit(&self.audit_path)
    }

    /// One scrape of `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        scrape(&self.admin_client()).await
    }

    /// Everything the binary wrote to stderr; call once it has exited.
    pub fn stderr(&mut self) -> String {
        self.stderr.all()
    }

    /// What the binary wrote to stderr so far, while it runs.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.text()
    }

    /// Rewrites the config file (in one rename) with `change` applied to the settings it was
    /// written from; SIGHUP applies it.
    pub fn rewrite_config(&mut self, change: impl FnOnce(GatewayBuilder) -> GatewayBuilder) {
        self.config.rewrite(change);
    }

    /// Rewrites the config file in place (truncated, then written), not by a rename.
    pub fn rewrite_config_in_place(
        &mut self,
        change: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
    ) {
        self.config.rewrite_in_place(change);
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
