//! API keys: configured as SHA-256 hashes (never the keys themselves), each with an id for logs
//! and metrics, an optional list of models, and optional per-minute limits.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AuthError;
use crate::quota::Limits;

/// One API key as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name for the key, shown in logs and used for its quotas; never the key itself.
    pub id: String,
    /// The SHA-256 of the key, in hex (`inferd hash-key` prints it).
    pub sha256: String,
    /// The models the key may use; every model when absent.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Its limits per minute.
    #[serde(flatten)]
    pub limits: Limits,
}

/// A keys file: `[[keys]]` tables, the same fields as inline keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<ApiKey>,
}

/// Keys ready for lookup: hashes decoded.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<([u8; 32], ApiKey)>,
}

impl KeySet {
    /// Checks and decodes `keys`; ids must be unique and hashes 64 hex digits.
    pub(crate) fn new(keys: Vec<ApiKey>) -> Result<Self, AuthError> {
        let mut decoded = Vec::with_capacity(keys.len());
        for key in keys {
            if key.id.is_empty() {
                return Err(AuthError::Config("an API key has an empty id".into()));
            }
            if key.id.starts_with("jwt:") {
                return Err(AuthError::Config(format!(
                    "API key id '{}' must not start with 'jwt:', which names JWT subjects",
                    key.id
                )));
            }
            if decoded.iter().any(|(_, other): &([u8; 32], ApiKey)| other.id == key.id) {
                return Err(AuthError::Config(format!("API key id '{}' is used twice", key.id)));
            }
            let hash = decode_hex(&key.sha256).ok_or_else(|| {
                AuthError::Config(format!("API key '{}': sha256 must be 64 hexadecimal digits", key.id))
            })?;
            key.limits.validate().map_err(|reason| AuthError::Config(format!("API key '{}': {reason}", key.id)))?;
            decoded.push((hash, key));
        }
        Ok(Self { keys: decoded })
    }

    /// Reads a keys file.
    pub(crate) fn read_file(path: &Path) -> Result<Vec<ApiKey>, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| AuthError::Config(format!("cannot read keys file {}: {err}", path.display())))?;
        let file: KeysFile = toml::from_str(&text)
            .map_err(|err| AuthError::Config(format!("invalid keys file {}: {err}", path.display())))?;
        Ok(file.keys)
    }

    /// How many keys there are.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key whose hash is `presented`'s. Every configured hash is compared, in constant
    /// time, so the time taken says nothing about which key matched or how closely.
    pub(crate) fn find(&self, presented: &str) -> Option<&ApiKey> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (candidate, key) in &self.keys {
            if bool::from(candidate.ct_eq(&hash)) {
                found = Some(key);
            }
        }
        found
    }
}

/// The SHA-256 of `key`, in lowercase hex: what the configuration holds.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, secret: &str) -> ApiKey {
        ApiKey { id: id.into(), sha256: hash_key(secret), models: None, limits: Limits::default() }
    }

    #[test]
    fn finds_keys_by_their_hash_only() {
        let set = KeySet::new(vec![key("a", "secret-a"), key("b", "secret-b")]).unwrap();
        assert_eq!(set.find("secret-b").map(|k| k.id.as_str()), Some("b"));
        assert!(set.find("secret-c").is_none());
        assert!(set.find("").is_none());
        // A known vector: SHA-256("abc").
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn refuses_bad_keys() {
        let mut bad = key("a", "x");
        bad.sha256 = "abc".into();
        assert!(KeySet::new(vec![bad]).unwrap_err().to_string().contains("64 hexadecimal"));
        assert!(KeySet::new(vec![key("a", "x"), key("a", "y")]).unwrap_err().to_string().contains("twice"));
    }
}
