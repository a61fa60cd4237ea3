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
