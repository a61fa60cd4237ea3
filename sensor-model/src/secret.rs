//! Secrets (API keys, webhook keys): read from the environment or a file, never printed.
//!
//! [`Secret`] has no `Display`, and its `Debug` prints `Secret(***)`, so a secret can sit in a
//! config or a client struct that is logged with `{:?}` without leaking.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::ConfigError;

/// A secret value. Read it with [`Secret::expose`] only where it goes on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for building a request. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a secret comes from, as a config section writes it: `<prefix>_env = "VAR"` or
/// `<prefix>_file = "/path"`. Sections flatten this under their own key names.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Name of an environment variable holding the secret.
    pub env: Option<String>,
    /// A file whose content (trimmed) is the secret; keep it mode 0600.
    pub file: Option<PathBuf>,
}

impl SecretSource {
    /// True when neither source is set.
    pub fn is_unset(&self) -> bool {
        self.env.is_none() && self.file.is_none()
    }

    /// Reads the secret. `key` names the config key in errors (e.g. `intel.threatbook.api_key`);
    /// errors never contain the value.
    pub fn resolve(&self, key: &'static str) -> Result<Secret, ConfigError> {
        let value = match (&self.env, &self.file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    key,
                    message: "set either `env` or `file`, not both".into(),
                });
            }
            (Some(var), None) => std::env::var(var).map_err(|_| ConfigError::Invalid {
                key,
                message: format!("environment variable {var} is not set or not UTF-8"),
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Invalid {
                    key,
                    message: format!("cannot read {}: {e}", path.display()),
                })?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err(ConfigError::Invalid {
                    key,
                    message: "no secret source: set `env` or `file`".into(),
                });
            }
        };
        if value.is_empty() {
            return Err(ConfigError::Invalid {
                key,
                message: "the secret is empty".into(),
            });
        }
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("canary-123");
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }

    #[test]
    fn file_source_is_trimmed_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "abc\n").unwrap();
        let src = SecretSource {
            env: None,
            file: Some(path),
        };
        assert_eq!(src.resolve("x.key").unwrap().expose(), "abc");
        let err = SecretSource::default().resolve("x.key").unwrap_err();
        assert!(err.to_string().contains("`x.key`"), "{err}");
    }
}
