//! Which config a replica serves, as 16 hex digits that replicas can compare (`config_info`,
//! `/readyz`) without anything secret in them.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::settings::Settings;

/// Bumped if what goes into the hash changes, so that old and new never compare equal by chance.
const FORMAT: &[u8] = b"dialnexa-gateway config fingerprint 1";

/// A SHA-256 over the config file's text and the digest of every secret read for it (org keys,
/// the Redis password), cut to its first 16 hex digits: enough to tell configs apart, and no
/// secret goes in, only its digest. The `DNXGW__…` env overrides are left out, so that replicas
/// told apart by them (a watcher turned off on one) still show that they serve one file.
pub(super) fn of(text: &str, settings: &Settings) -> Arc<str> {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        // Length-prefixed, so that no two different lists of parts hash alike.
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(FORMAT);
    part(text.as_bytes());
    let mut orgs: Vec<_> = settings.teams.iter().map(|t| &t.org).collect();
    orgs.sort_by(|a, b| a.name.cmp(&b.name));
    orgs.dedup_by(|a, b| a.name == b.name);
    for org in orgs {
        part(org.name.as_bytes());
        part(&Sha256::digest(org.authorization.as_bytes()));
    }
    if let Some(password) = settings.cluster.as_ref().and_then(|c| c.password.as_ref()) {
        part(b"cluster.redis_password");
        part(&Sha256::digest(password.expose().as_bytes()));
    }
    Arc::from(hex::encode(&h.finalize()[..8]))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{base, key_file, ONE_TEAM};
    use crate::settings::Settings;

    fn config(org_key: &str, comment: &str) -> (String, tempfile::NamedTempFile) {
        let key = key_file(org_key);
        let text = format!("{comment}\n{}", base(key.path(), ONE_TEAM));
        (text, key)
    }

    fn fingerprint(text: &str) -> String {
        Settings::from_toml_str(text)
            .unwrap()
            .fingerprint
            .to_string()
    }

    #[test]
    fn the_same_file_and_secrets_give_the_same_fingerprint_and_any_change_another() {
        let (text, key) = config("org-key-one", "# a");
        let same = fingerprint(&text);
        assert_eq!(same.len(), 16);
        assert!(same.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(fingerprint(&text), same);
        // The key file's contents count, the file's text staying the same.
        std::fs::write(key.path(), "org-key-two").unwrap();
        assert_ne!(
            fingerprint(&text),
            same,
            "a new org key must change the fingerprint"
        );
        // So does any change to the file, a comment included: the fingerprint names the file.
        assert_ne!(fingerprint(&text.replace("# a", "# b")), same);
    }

    #[test]
    fn no_secret_shows_in_the_fingerprint() {
        let (text, _key) = config("0123456789abcdef", "");
        let fp = fingerprint(&text);
        assert_ne!(fp, "0123456789abcdef");
    }
}
