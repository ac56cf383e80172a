//! `server.watch_config`: watches the config file and every secret file it names, and says when
//! they changed. What a change leads to is the server's one reload path, the one `SIGHUP` takes
//! (`server::signals`); this only decides when.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_debouncer_mini::notify::{self, RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{new_debouncer, DebounceEventResult, Debouncer};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// Events closer together than this make one reload: an editor's write then rename, or kubelet's
/// swap of a ConfigMap's `..data` link followed by the removal of the old directory. Short enough
/// that a change is applied well within DESIGN's 2 s (the debouncer may hold a batch up to twice
/// this long).
const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(400);

/// Symbolic links followed from one watched path before giving up: Linux's own limit (ELOOP).
const MAX_LINKS: usize = 40;

/// More than any config or secret file may hold (secret files are bounded at 64 KiB); past it,
/// what a file holds is compared by its first bytes only.
const MAX_COMPARED_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("cannot watch the config file: {0}")]
pub struct WatchError(#[from] notify::Error);

/// The watcher thread's line to the server: which paths count, and the wake-up it sends.
struct Signal {
    /// The paths an event must name to count (see [`ConfigWatcher::rewatch`]).
    interesting: Mutex<HashSet<PathBuf>>,
    /// Set by the watcher thread; one stored wake-up however many events came meanwhile.
    changed: Notify,
}

/// The files a config reads, watched. Dropping it stops the watching.
pub struct ConfigWatcher {
    debouncer: Debouncer<RecommendedWatcher>,
    signal: Arc<Signal>,
    config_path: PathBuf,
    /// The directories watched now (each non-recursively).
    dirs: HashSet<PathBuf>,
    /// What each file held when the config was last (re)loaded, as digests.
    contents: Vec<(PathBuf, Option<[u8; 32]>)>,
}

impl ConfigWatcher {
    /// Starts watching `config_path` and the secret files it names, as they are now.
    pub fn start(config_path: &Path) -> Result<Self, WatchError> {
        let signal = Arc::new(Signal {
            interesting: Mutex::new(HashSet::new()),
            changed: Notify::new(),
        });
        let seen = Arc::clone(&signal);
        let debouncer = new_debouncer(DEFAULT_DEBOUNCE, move |events: DebounceEventResult| {
            match events {
                Ok(events) => {
                    let interesting = seen.interesting.lock().unwrap_or_else(|e| e.into_inner());
                    if events.iter().any(|e| interesting.contains(&e.path)) {
                        seen.changed.notify_one();
                    }
                }
                // Overflowed kernel queues and the like: a reload cannot miss what it re-reads.
                Err(e) => {
                    tracing::warn!(error = %e, "config watcher: events may have been lost; reloading");
                    seen.changed.notify_one();
                }
            }
        })?;
        let config_path = absolute(config_path);
        let mut watcher = Self {
            debouncer,
            signal,
            contents: Vec::new(),
            config_path,
            dirs: HashSet::new(),
        };
        let contents = watcher.read_contents();
        watcher.rewatch(contents);
        Ok(watcher)
    }

    /// Waits until an event names a watched path and what the files hold differs from what was
    /// last loaded: a reload is due (then hand what it returns to [`rewatch`](Self::rewatch)).
    /// Events that change nothing a reload would read (a file touched, an old ConfigMap directory
    /// removed, the second half of a change already reloaded) are passed over. Cancel-safe.
    pub async fn changed(&mut self) -> Contents {
        loop {
            self.signal.changed.notified().await;
            let now = self.read_contents();
            if now.0 != self.contents {
                return now;
            }
        }
    }

    /// What the config file and the files it names hold now, to take just before a reload reads
    /// them: a change made after this is seen by the next [`changed`](Self::changed).
    pub fn read_contents(&self) -> Contents {
        let mut files = vec![self.config_path.clone()];
        files.extend(named_files(&self.config_path));
        Contents(
            files
                .into_iter()
                .map(|f| {
                    let digest = digest_of(&f);
                    (f, digest)
                })
                .collect(),
        )
    }

    /// After a reload (or an attempt): watches the files the config names now, the symbolic
    /// links on the way to each included, and remembers what they held (`contents`, taken before
    /// the reload).
    ///
    /// The watches are on directories, not files, filtered by path: a ConfigMap or Secret volume
    /// is updated by replacing its `..data` directory link (`gateway.toml -> ..data/gateway.toml`),
    /// which no watch on the file itself sees, and editors save by writing a new file and renaming
    /// it over the old one, which ends a watch on the old file's inode.
    pub fn rewatch(&mut self, contents: Contents) {
        let mut interesting = HashSet::new();
        for (file, _) in &contents.0 {
            interesting.extend(chain(file));
        }
        let dirs: HashSet<PathBuf> = interesting
            .iter()
            .filter_map(|p| p.parent().map(Path::to_owned))
            .collect();
        let watcher = self.debouncer.watcher();
        for gone in self.dirs.difference(&dirs) {
            let _ = watcher.unwatch(gone);
        }
        let mut watched = HashSet::new();
        for dir in dirs {
            if self.dirs.contains(&dir) {
                watched.insert(dir);
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                // A secret file's directory that is not there (yet): the reload that needs it has
                // already failed and said so; watching starts once a reload names it again.
                Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "not watched"),
            }
        }
        self.dirs = watched;
        *self
            .signal
            .interesting
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = interesting;
        self.contents = contents.0;
    }
}

/// What the watched files held at one moment, by path (`None`: unreadable or absent).
pub struct Contents(Vec<(PathBuf, Option<[u8; 32]>)>);

/// Every file the config at `path` names (any key ending in `_file`: `api_key_file`,
/// `redis_password_file`, …), env overrides applied, read leniently: a file a reload refused still
/// names the files whose arrival may fix it.
fn named_files(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(values) = super::layered(&text).and_then(|c| c.try_deserialize::<serde_json::Value>())
    else {
        return Vec::new();
    };
    let mut files = Vec::new();
    collect_files(&values, &mut files);
    files.into_iter().map(|f| absolute(&f)).collect()
}

fn collect_files(value: &serde_json::Value, out: &mut Vec<PathBuf>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match v {
                    serde_json::Value::String(file) if key.ends_with("_file") => {
                        out.push(PathBuf::from(file));
                    }
                    v => collect_files(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_files(v, out)),
        _ => {}
    }
}

/// The digest of what `path` holds now (following links); never the contents themselves. Opened
/// non-blocking and read only if it is a regular file, as secret files are: a FIFO or a device
/// named in the config must not stall the watcher.
fn digest_of(path: &Path) -> Option<[u8; 32]> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_COMPARED_BYTES).read_to_end(&mut bytes).ok()?;
    Some(Sha256::digest(&bytes).into())
}

/// Relative paths are relative to the working directory, as the config loader reads them.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The paths whose replacement changes what `path` reads: `path` itself, every symbolic link met
/// on the way to the file it names (for a ConfigMap's `gateway.toml`, the `..data` link), and that
/// file.
fn chain(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_owned()];
    let mut pending = lexical(path);
    for _ in 0..MAX_LINKS {
        let parts: Vec<Component<'_>> = pending.components().collect();
        let mut prefix = PathBuf::new();
        let mut link = None;
        for (i, part) in parts.iter().enumerate() {
            prefix.push(part);
            let is_link = std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.is_symlink());
            if is_link {
                link = Some((prefix.clone(), i));
                break;
            }
        }
        let Some((link, i)) = link else {
            break;
        };
        let Ok(target) = std::fs::read_link(&link) else {
            break;
        };
        let mut next = link.parent().unwrap_or(Path::new("/")).join(target);
        next.extend(&parts[i + 1..]);
        out.push(link);
        pending = lexical(&next);
    }
    out.push(pending);
    out.sort();
    out.dedup();
    out
}

/// `path` without `.` and with each `..` applied to what precedes it. The part before a link's
/// target is free of links by then (they are resolved left to right), so this is exact there.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_configmap_file_is_followed_through_its_data_link() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..2026_12_07_09_00_00.1")).unwrap();
        std::fs::write(d.join("..2026_12_07_09_00_00.1/gateway.toml"), "").unwrap();
        symlink("..2026_12_07_09_00_00.1", d.join("..data")).unwrap();
        symlink("..data/gateway.toml", d.join("gateway.toml")).unwrap();
        let mut expected = vec![
            d.join("gateway.toml"),
            d.join("..data"),
            d.join("..2026_12_07_09_00_00.1/gateway.toml"),
        ];
        expected.sort();
        assert_eq!(chain(&d.join("gateway.toml")), expected);
    }

    #[test]
    fn a_regular_file_is_its_own_chain() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("gateway.toml");
        std::fs::write(&f, "").unwrap();
        assert_eq!(chain(&f), vec![f.clone()]);
        // A file not there yet is watched for all the same.
        let missing = dir.path().join("later.key");
        assert_eq!(chain(&missing), vec![missing.clone()]);
    }

    #[test]
    fn every_key_ending_in_file_is_a_watched_file() {
        let value = serde_json::json!({
            "orgs": {"acme": {"api_key_file": "/run/secrets/acme"}, "b": {"api_key_env": "X"}},
            "cluster": {"redis_password_file": "redis.pw"},
            "audit": {"path": "audit.jsonl"},
        });
        let mut files = Vec::new();
        collect_files(&value, &mut files);
        files.sort();
        assert_eq!(
            files,
            vec![
                PathBuf::from("/run/secrets/acme"),
                PathBuf::from("redis.pw")
            ]
        );
    }
}
