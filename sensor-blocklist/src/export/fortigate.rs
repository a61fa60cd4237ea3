//! FortiGate external threat feed, type "IP Address": the file FortiOS fetches over HTTP(S)
//! (`config system external-resource`, `set type address`).
//!
//! Grammar (FortiOS administration guide, "IP address threat feed" and "Threat feeds"; the
//! Fortinet community article "How to use an external resource on a remote HTTP server"): a
//! plain text file, one IPv4 or IPv6 address, address range (`a-b`) or subnet (`a/len`) per
//! line; the file is at most 10 MB, at most 128 × 1024 = 131,072 lines, each line at most 4 KB
//! (FortiOS 7.4.4 and later: 300,000 IP entries for all feeds together). The documented IP
//! grammar has no comment syntax, so the file carries no reasons or expiries: only addresses,
//! and the feed changes when the list is published (expired entries leave it then).

use std::{net::IpAddr, path::PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use super::{ExportEntry, ExportError, Written};
use sensor_model::error::ConfigError;

/// FortiOS's documented line limit for one external resource file.
pub const MAX_LINES: usize = 128 * 1024;

/// `[blocklist.export.fortigate]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FortigateSection {
    /// The feed file, replaced atomically.
    pub path: PathBuf,
    /// Serve the feed on the EDL server (`[blocklist.edl] listen`) at this URL path, with the
    /// EDL's authentication and limits; absent = not served.
    pub url_path: Option<String>,
    /// Most lines written (FortiOS skips lines beyond 131,072); the rest are counted as left out.
    pub max_entries: usize,
}

impl Default for FortigateSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/dns-sensor/export/fortigate.txt"),
            max_entries: MAX_LINES,
            url_path: None,
        }
    }
}

impl FortigateSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_entries == 0 || self.max_entries > MAX_LINES {
            return Err(ConfigError::Invalid {
                key: "blocklist.export.fortigate.max_entries",
                message: format!("must be 1 to {MAX_LINES} (FortiOS's line limit)"),
            });
        }
        Ok(())
    }
}

/// The feed text: one address or subnet per line, `\n` line ends; entries expired at `now` are
/// left out. Returns the text and how many entries it holds / left out over `max`.
pub fn render(entries: &[ExportEntry], now: i64, max: usize) -> (String, Written) {
    let mut out = String::with_capacity(entries.len() * 20);
    let (mut written, mut left_out) = (0, 0);
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        if e.remaining(now) == Some(0) || !seen.insert(e.net) {
            continue;
        }
        if written == max {
            left_out += 1;
            continue;
        }
        if e.net.prefix_len() == e.net.max_prefix_len() {
            out.push_str(&e.net.addr().to_string());
        } else {
            out.push_str(&e.net.to_string());
        }
        out.push('\n');
        written += 1;
    }
    (out, (written, left_out))
}

/// Reads a feed file (an operator may have edited it) by the documented grammar: each line one
/// address, `a/len` subnet or `a-b` range, IPv4 or IPv6, at most 4 KB, at most
/// [`MAX_LINES`] lines. Returns the networks with their line numbers (a range as the subnets
/// that cover it exactly).
pub fn parse(text: &str) -> Result<Vec<(usize, IpNet)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.split_terminator('\n').enumerate() {
        let n = i + 1;
        if n > MAX_LINES {
            return Err(format!("more than {MAX_LINES} lines (FortiOS's limit)"));
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > 4096 {
            return Err(format!("line {n}: longer than 4 KB"));
        }
        let bad = || format!("line {n}: {line:?} is not an address, subnet or range");
        let line = line.trim();
        if let Some((a, b)) = line.split_once('-') {
            let a: IpAddr = a.trim().parse().map_err(|_| bad())?;
            let b: IpAddr = b.trim().parse().map_err(|_| bad())?;
            out.extend(
                crate::edl::range_nets(a, b)
                    .ok_or_else(bad)?
                    .into_iter()
                    .map(|net| (n, net)),
            );
        } else {
            let net: IpNet = line
                .parse()
                .or_else(|_| line.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| bad())?;
            out.push((n, net));
        }
    }
    Ok(out)
}

/// Writes the feed file.
pub fn export(
    section: &FortigateSection,
    entries: &[ExportEntry],
    now: i64,
) -> Result<Written, ExportError> {
    let (text, counts) = render(entries, now, section.max_entries);
    super::write_file(&section.path, &text)?;
    if counts.1 > 0 {
        tracing::warn!(
            left_out = counts.1,
            max = section.max_entries,
            "FortiGate feed: entries over blocklist.export.fortigate.max_entries left out"
        );
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader of FortiOS's documented IP-feed grammar: each line one address, `a-b` range or
    /// `a/len` subnet, IPv4 or IPv6, at most 4 KB; at most 131,072 lines, at most 10 MB.
    fn parse_feed(text: &str) -> Result<Vec<String>, String> {
        if text.len() > 10 * 1024 * 1024 {
            return Err("over 10 MB".into());
        }
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        if lines.len() > MAX_LINES {
            return Err("too many lines".into());
        }
        lines
            .iter()
            .map(|line| {
                if line.len() > 4096 || line.trim() != *line || line.is_empty() {
                    return Err(format!("bad line {line:?}"));
                }
                let ok = if let Some((a, b)) = line.split_once('-') {
                    let (a, b): (IpAddr, IpAddr) = (
                        a.parse().map_err(|_| line.to_string())?,
                        b.parse().map_err(|_| line.to_string())?,
                    );
                    a.is_ipv4() == b.is_ipv4() && a <= b
                } else if let Some((a, len)) = line.split_once('/') {
                    let a: IpAddr = a.parse().map_err(|_| line.to_string())?;
                    let len: u8 = len.parse().map_err(|_| line.to_string())?;
                    len <= if a.is_ipv4() { 32 } else { 128 }
                } else {
                    line.parse::<IpAddr>().is_ok()
                };
                if ok {
                    Ok(line.to_string())
                } else {
                    Err(format!("bad line {line:?}"))
                }
            })
            .collect()
    }

    fn e(net: &str, expires: Option<i64>, reason: &str) -> ExportEntry {
        ExportEntry {
            net: super::super::canonical(net.parse().unwrap()),
            expires,
            reason: reason.into(),
            severity: None,
            confidence: None,
        }
    }

    #[test]
    fn the_feed_follows_fortios_ip_grammar_with_v6_and_cidr() {
        let entries = [
            e("203.0.113.0/24", None, "config"),
            e("198.51.100.7/32", Some(2_000), "evil\n# not a comment"),
            e("2001:db8::/48", Some(2_000), "v6 net"),
            e("2001:db8:1::9/128", Some(2_000), "v6 host"),
            e("::ffff:192.0.2.1/128", Some(2_000), "mapped"),
            e("192.0.2.99/32", Some(500), "expired"),
            e("198.51.100.7/32", Some(3_000), "duplicate"),
        ];
        let (text, counts) = render(&entries, 1_000, MAX_LINES);
        let lines = parse_feed(&text).unwrap();
        assert_eq!(
            lines,
            [
                "203.0.113.0/24",
                "198.51.100.7",
                "2001:db8::/48",
                "2001:db8:1::9",
                "192.0.2.1"
            ]
        );
        assert_eq!(counts, (5, 0));
        // Reasons are outside text: none of it reaches the file.
        assert!(!text.contains("evil") && !text.contains('#'));
    }

    #[test]
    fn the_line_limit_is_kept_and_the_excess_counted() {
        let entries: Vec<ExportEntry> = (0..10u32)
            .map(|i| e(&format!("10.0.0.{i}/32"), None, "x"))
            .collect();
        let (text, counts) = render(&entries, 0, 4);
        assert_eq!(parse_feed(&text).unwrap().len(), 4);
        assert_eq!(counts, (4, 6));
        assert!(
            FortigateSection {
                max_entries: MAX_LINES + 1,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
