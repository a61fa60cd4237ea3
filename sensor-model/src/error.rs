//! Errors every layer shares: a bad config value (named by its key), and one way to show an
//! error with its causes on one line.

use std::{net::IpAddr, path::PathBuf};

use ipnet::IpNet;

/// Errors from reading or validating a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Parses IPs (as host routes) and CIDRs; host bits set in a CIDR are an error, since
/// `10.1.2.3/8` is more likely a typo than a wish to block 10/8.
pub fn parse_nets(key: &'static str, items: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    items
        .iter()
        .map(|s| {
            let s = s.trim();
            if let Ok(ip) = s.parse::<IpAddr>() {
                return Ok(IpNet::from(ip));
            }
            let net = s.parse::<IpNet>().map_err(|_| ConfigError::Invalid {
                key,
                message: format!("{s:?} is not an IP address or CIDR"),
            })?;
            if net.trunc() != net {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{s:?} has host bits set (did you mean {}?)", net.trunc()),
                });
            }
            Ok(net)
        })
        .collect()
}

/// The widest prefixes a list of sources may hold (`0.0.0.0/0` in a drop map drops everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixRails {
    /// Shortest IPv4 prefix length accepted (16 = at most a /16).
    pub v4: u8,
    /// Shortest IPv6 prefix length accepted (32 = at most a /32).
    pub v6: u8,
}

impl Default for PrefixRails {
    fn default() -> Self {
        Self { v4: 16, v6: 32 }
    }
}

impl PrefixRails {
    /// Refuses any of `nets` wider than the rails, naming `key` and the key that sets the rail.
    pub fn check(
        &self,
        key: &'static str,
        rail_key: &str,
        nets: &[IpNet],
    ) -> Result<(), ConfigError> {
        if self.v4 > 32 || self.v6 > 128 {
            return Err(ConfigError::Invalid {
                key,
                message: format!("{rail_key} must be at most {{ v4 = 32, v6 = 128 }}"),
            });
        }
        for n in nets {
            let (len, min) = match n {
                IpNet::V4(n) => (n.prefix_len(), self.v4),
                IpNet::V6(n) if n.addr().to_ipv4_mapped().is_some() && n.prefix_len() >= 96 => {
                    (n.prefix_len() - 96, self.v4)
                }
                IpNet::V6(n) => (n.prefix_len(), self.v6),
            };
            if len < min {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!(
                        "{n} is wider than /{min}, the widest {rail_key} allows (raise it if this is intended)"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Formats an error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s.replace('\n', " ")
}
