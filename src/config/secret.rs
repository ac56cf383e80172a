//! Secrets (org keys, Redis passwords): read from an environment variable or a file, never from
//! the config itself. Secret files (`api_key_file`, `redis_password_file`, and any other `*_file`
//! naming a secret) are regular files of at most [`MAX_SECRET_FILE_BYTES`], read with that bound.
//!
//! Read at start, by `check` and on every reload, so a path that names a device (`/dev/zero`
//! never ends), a FIFO (opening one for reading waits for a writer) or a directory must be an
//! error at once, never a hang or a read until memory runs out.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::problems::Problems;

/// What [`read_secret`] found.
pub(super) enum SecretLookup {
    Read(String),
    /// Neither source was named.
    Absent,
    /// A source was named but could not be used; the problem is already reported.
    Unreadable,
}

/// The names of a secret's two sources in its table, for problems.
#[derive(Clone, Copy)]
pub(super) struct SecretFields {
    pub(super) env: &'static str,
    pub(super) file: &'static str,
}

/// A secret from an environment variable or a file (never from the config itself), trimmed of
/// surrounding whitespace: org keys and the Redis password alike.
pub(super) fn read_secret(
    env: Option<String>,
    file: Option<PathBuf>,
    key: &str,
    fields: SecretFields,
    p: &mut Problems,
) -> SecretLookup {
    let (from, found) = match (env, file) {
        (Some(var), None) => {
            let found = std::env::var(&var)
                .map_err(|_| format!("environment variable {var} is not set"))
                .and_then(|v| {
                    (!v.trim().is_empty())
                        .then(|| v.trim().to_owned())
                        .ok_or_else(|| format!("environment variable {var} is empty"))
                });
            (fields.env, found)
        }
        (None, Some(path)) => {
            let found = read_secret_file(&path)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    (!v.trim().is_empty())
                        .then(|| v.trim().to_owned())
                        .ok_or_else(|| format!("{} is empty", path.display()))
                });
            (fields.file, found)
        }
        (Some(_), Some(_)) => {
            p.push(
                key,
                format!("set {} or {}, not both", fields.env, fields.file),
            );
            return SecretLookup::Unreadable;
        }
        (None, None) => return SecretLookup::Absent,
    };
    match found {
        Ok(secret) => SecretLookup::Read(secret),
        Err(problem) => {
            p.push(&format!("{key}.{from}"), problem);
            SecretLookup::Unreadable
        }
    }
}

/// A key or password is a few hundred bytes at most; 64 KiB leaves room for a PEM-wrapped one.
pub(super) const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Why a secret file could not be used. Never holds any of the file's contents.
#[derive(Debug, thiserror::Error)]
pub(super) enum SecretFileError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a regular file ({kind})", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{} is larger than {MAX_SECRET_FILE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{} is not UTF-8 text", path.display())]
    NotText { path: PathBuf },
}

/// The whole file as text, after checking it is a regular file of at most
/// [`MAX_SECRET_FILE_BYTES`]. Opened non-blocking, so a FIFO is refused instead of waiting for a
/// writer; the type is then checked on the open file itself, so a swap after the check cannot
/// slip a device in; and the read stops one byte past the bound, whatever the file claims.
pub(super) fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    let unreadable = |source| SecretFileError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(unreadable)?;
    let kind = file.metadata().map_err(unreadable)?.file_type();
    if !kind.is_file() {
        return Err(SecretFileError::NotRegular {
            path: path.to_owned(),
            kind: describe(&kind),
        });
    }
    let mut bytes = Vec::new();
    Read::take(&file, MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    String::from_utf8(bytes).map_err(|_| SecretFileError::NotText {
        path: path.to_owned(),
    })
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_small_regular_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, " made-up-key\n").unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), " made-up-key\n");
        let exact = "k".repeat(MAX_SECRET_FILE_BYTES as usize);
        std::fs::write(&path, &exact).unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), exact);
    }

    #[test]
    fn a_file_past_the_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "k".repeat(MAX_SECRET_FILE_BYTES as usize + 1)).unwrap();
        let e = read_secret_file(&path).unwrap_err().to_string();
        assert!(e.ends_with("is larger than 65536 bytes"), "{e}");
        assert!(!e.contains("kkk"), "{e}");
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let started = Instant::now();
        for (path, kind) in [
            (Path::new("/dev/zero"), "a character device"),
            (dir.path(), "a directory"),
            (fifo.as_path(), "a FIFO"),
        ] {
            let e = read_secret_file(path).unwrap_err().to_string();
            assert!(
                e.ends_with(&format!("is not a regular file ({kind})")),
                "{e}"
            );
        }
        // Nothing waited for a writer or read an endless device.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn unset_env_and_unreadable_file_are_named() {
        let toml = r#"
[server]
listen = "127.0.0.1:0"
[upstream]
base_url = "https://api.dialnexa.com/v1"
[orgs.one]
api_key_env = "DNXGW_TEST_SURELY_UNSET_VAR"
[orgs.two]
api_key_file = "/nonexistent/dialnexa/key"
"#;
        let p = crate::config::testing::problems(toml);
        assert!(
            p.iter().any(|l| l.starts_with(
                "orgs.one.api_key_env: environment variable DNXGW_TEST_SURELY_UNSET_VAR is not set"
            )),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l
                    .starts_with("orgs.two.api_key_file: cannot read /nonexistent/dialnexa/key")),
            "{p:?}"
        );
    }
}
