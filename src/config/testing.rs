//! What the config's unit tests share: made-up key digests, an org key in a temporary file, and
//! the smallest config around the teams a test is about.

use std::io::Write;
use std::path::Path;

use crate::settings::Settings;

pub(super) const DIGEST_A: &str =
    "1111111111111111111111111111111111111111111111111111111111111111";
pub(super) const DIGEST_B: &str =
    "2222222222222222222222222222222222222222222222222222222222222222";

/// A file holding `contents`, removed when dropped.
pub(super) fn key_file(contents: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    f
}

/// A config with one org, `acme`, whose key is read from `org_key_path`, and `teams` after it.
pub(super) fn base(org_key_path: &Path, teams: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[upstream]
base_url = "http://127.0.0.1:1/v1/"
[orgs.acme]
api_key_file = "{}"
{teams}
"#,
        org_key_path.display()
    )
}

/// One team of `acme`, `billing`, with the key [`DIGEST_A`], for tests about something else.
pub(super) const ONE_TEAM: &str = "[teams.billing]\norg = \"acme\"\n\
     key_sha256 = [\"1111111111111111111111111111111111111111111111111111111111111111\"]\n\
     rate_limit = { per_minute = 60, burst = 10 }\n";

/// The problems of a config that must be refused.
pub(super) fn problems(toml: &str) -> Vec<String> {
    Settings::from_toml_str(toml).unwrap_err().problems
}
