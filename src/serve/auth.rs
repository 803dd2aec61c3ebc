//! Optional API keys: read from a file (one per line) or an environment variable (comma
//! separated), checked against `Authorization: Bearer <key>` in constant time.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The keys a request may present; none configured means no check.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    /// Keys from `file` (one per line; blank lines and `#` comments skipped) and from the value
    /// of an environment variable (comma separated). An empty key file is an error: a server
    /// meant to check keys must not start open.
    pub fn load(file: Option<&Path>, env_value: Option<&str>) -> Result<ApiKeys> {
        let mut keys: Vec<String> = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let found: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect();
            if found.is_empty() {
                return Err(Error::Invalid(format!(
                    "API key file {} holds no key (expected one key per line)",
                    path.display()
                )));
            }
            keys.extend(found);
        }
        if let Some(v) = env_value {
            keys.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_string),
            );
        }
        Ok(ApiKeys::new(&keys))
    }

    /// These keys.
    pub fn new(keys: &[String]) -> ApiKeys {
        ApiKeys {
            digests: keys
                .iter()
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
        }
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether an `Authorization` header value carries a configured key. Every key is compared,
    /// byte by byte over fixed-length digests, so the time taken says nothing about the key.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        if !self.enabled() {
            return true;
        }
        let presented = authorization
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .unwrap_or(b"");
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut ok = 0u8;
        for d in &self.digests {
            let diff = d.iter().zip(&digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            ok |= u8::from(diff == 0);
        }
        ok == 1 && !presented.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_bearer_key_passes() {
        let keys = ApiKeys::new(&["k1".into(), "secret-2".into()]);
        assert!(keys.allows(Some(b"Bearer secret-2")));
        assert!(keys.allows(Some(b"Bearer k1")));
        assert!(!keys.allows(Some(b"Bearer secret-3")));
        assert!(!keys.allows(Some(b"secret-2")));
        assert!(!keys.allows(Some(b"Bearer ")));
        assert!(!keys.allows(None));
        assert!(ApiKeys::default().allows(None));
    }

    #[test]
    fn an_empty_key_file_is_an_error_naming_it() {
        let path = std::env::temp_dir().join(format!("dsg-empty-keys-{}", std::process::id()));
        std::fs::write(&path, "# no keys\n\n").unwrap();
        let err = ApiKeys::load(Some(&path), None).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::remove_file(&path).unwrap();
        let keys = ApiKeys::load(None, Some(" a, ,b ")).unwrap();
        assert!(keys.allows(Some(b"Bearer b")));
    }
}
