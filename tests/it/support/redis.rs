//! A real `redis-server` for cluster-mode tests, owned by the test: started on a Unix socket in
//! the test's own directory (so no port is ever guessed), stopped by its PID. Gateways reach it
//! through a [`FaultyProxy`] on `127.0.0.1:0`, which can pass, black-hole or delay the traffic,
//! standing in for a network that breaks in the ways networks do.
//!
//! It stands alone (no other fixture), so the library's unit tests of the Lua scripts start their
//! `redis-server` with it too (`src/cluster/scripts.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixStream};

/// Whether this machine has a `redis-server` (CI installs Debian's; see `.ci/run`).
pub fn redis_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `redis-server` child process on a Unix socket (and, for replication and Sentinels, which
/// speak only TCP, on a loopback port too).
pub struct TestRedis {
    dir: tempfile::TempDir,
    child: Option<Child>,
    password: Option<String>,
    port: u16,
    args: Vec<String>,
}

impl TestRedis {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// With `requirepass` set to `password` (made up by the test).
    pub fn start_with(password: Option<&str>) -> Self {
        let mut redis = Self {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            password: password.map(str::to_owned),
            port: 0,
            args: Vec::new(),
        };
        redis.spawn();
        redis
    }

    /// On a loopback port as well, with `args` added (`--replicaof ...`).
    pub fn start_tcp(args: &[&str]) -> Self {
        let mut redis = Self {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            password: None,
            port: free_port(),
            // A replica's full sync starts at once, not after the default 5 s wait for others.
            args: ["--repl-diskless-sync-delay", "0"]
                .iter()
                .chain(args)
                .map(|a| a.to_string())
                .collect(),
        };
        redis.spawn();
        redis
    }

    /// The loopback port (0: Unix socket only).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn spawn(&mut self) {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        cmd.args(&self.args);
        self.child = Some(cmd.spawn().expect("redis-server starts"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} redis-server");
    }

    /// Kills it (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same socket.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts it again, empty, on the same port, as a replica of the server on `primary_port`.
    pub fn restart_as_replica_of(&mut self, primary_port: u16) {
        if let Some(at) = self.args.iter().position(|a| a == "--replicaof") {
            self.args.drain(at..at + 3);
        }
        self.args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary_port.to_string(),
        ]);
        self.restart_empty();
    }

    /// SIGSTOP: connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Runs one command with `redis-cli` on the socket and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("-s").arg(self.socket());
        if let Some(pw) = &self.password {
            cmd.env("REDISCLI_AUTH", pw);
        }
        let out = cmd.args(args).output().expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A number from `INFO` (`used_memory`, `connected_slaves`, ...).
    pub fn info(&self, field: &str) -> u64 {
        let info = self.cli(&["INFO"]);
        let prefix = format!("{field}:");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("INFO has no {field}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Every key under `prefix`, with its remaining life in ms (`-1`: none).
    pub fn keys_and_ttls(&self, prefix: &str) -> Vec<(String, i64)> {
        let keys = self.cli(&["--scan", "--pattern", &format!("{prefix}*")]);
        keys.lines()
            .filter(|k| !k.is_empty())
            .map(|k| (k.to_owned(), self.cli(&["PTTL", k]).parse().unwrap()))
            .collect()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // SIGKILL ends a paused server too.
        self.kill();
    }
}

/// A loopback port free when asked: bound on port 0 and released for the server to take. Redis
/// replication and Sentinel speak only TCP, and a Sentinel config names ports before its server
/// runs, so the port is chosen here; another process taking it in between fails the start loudly.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Redis Sentinel (`redis-server FILE --sentinel`) on a loopback port, monitoring `master_name`
/// at `primary_port` with a quorum of 2 and short timeouts, so a failover takes seconds.
pub struct TestSentinel {
    _dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
}

impl TestSentinel {
    pub fn start(master_name: &str, primary_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {master_name} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {master_name} 1000\n\
                 sentinel failover-timeout {master_name} 5000\n\
                 sentinel parallel-syncs {master_name} 1\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "sentinel did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            _dir: dir,
            child,
            port,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Asks this Sentinel for a failover of `master_name` (as an operator does for maintenance);
    /// its answer (`OK`, or why not: no replica it deems good yet, one already under way).
    pub fn failover(&self, master_name: &str) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(["SENTINEL", "FAILOVER", master_name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The primary's port as this Sentinel sees it now.
    pub fn primary_port(&self, master_name: &str) -> Option<u16> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(["SENTINEL", "get-master-addr-by-name", master_name])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for TestSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the proxy treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass = 0,
    /// Accepts and reads, forwards and answers nothing: a half-open link.
    Blackhole = 1,
    /// Holds every chunk this long before passing it on.
    Delay = 2,
}

/// A TCP proxy on `127.0.0.1:0` in front of a Unix socket, with a switchable fault.
pub struct FaultyProxy {
    pub addr: SocketAddr,
    fault: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyProxy {
    pub async fn start(target: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(AtomicU8::new(Fault::Pass as u8));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (f, d) = (fault.clone(), delay_ms.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (f, d, target) = (f.clone(), d.clone(), target.clone());
                tokio::spawn(async move {
                    let Ok(server) = UnixStream::connect(&target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, f.clone(), d.clone()) => {}
                        _ = pump(sr, cw, f, d) => {}
                    }
                });
            }
        });
        Self {
            addr,
            fault,
            delay_ms,
            task,
        }
    }

    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
        self.set(Fault::Delay);
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    fault: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match fault.load(Ordering::SeqCst) {
            x if x == Fault::Blackhole as u8 => continue,
            x if x == Fault::Delay as u8 => {
                let ms = delay_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
