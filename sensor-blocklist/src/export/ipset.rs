//! ipset on the sensor host: the list as two `hash:net` sets (family `inet` and `inet6`),
//! rebuilt under temporary names and swapped in.
//!
//! One `ipset restore` builds `<set>-new` for both families from scratch, then `swap`s each with
//! the live set and destroys the old content. `ipset restore` is not a transaction: it stops at
//! the first bad line with what came before applied. That is why everything before the swaps
//! only touches the temporary sets: a bad element or a killed `ipset` leaves the live sets as
//! they were (the temporary ones are destroyed before the next try). The swap itself is atomic
//! for the packet path (iptables rules reference the set by name).
//!
//! `hash:net` takes overlapping networks (a /24 and a /32 inside it), each with its own timeout
//! and comment, and matches a packet if any of them does, so entries go in as listed, each with
//! its expiry as the element timeout (the kernel drops it on time) and its reason as the
//! comment. ipset takes timeouts up to 2,147,483 s (24 days 20 h): a longer expiry is written
//! as that, and the next publication renews it.
//!
//! What the sensor creates and what the operator owns: with `create = true` (default) the sensor
//! creates the live sets when they are missing; the iptables (or ip6tables) rules that use them
//! are the operator's, e.g. `iptables -I INPUT -m set --match-set dns-sensor-v4 src -j DROP`.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use super::{ExportEntry, ExportError, Written, plain_comment};
use sensor_model::error::ConfigError;

/// ipset's longest timeout.
pub const MAX_TIMEOUT_SECS: u64 = 2_147_483;
const MAX_COMMENT: usize = 200;
/// Suffix of the temporary sets.
const NEW: &str = "-new";

/// `[blocklist.export.ipset]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IpsetSection {
    /// The IPv4 set (`hash:net family inet`).
    pub set_v4: String,
    /// The IPv6 set (`hash:net family inet6`).
    pub set_v6: String,
    /// Create the live sets when they are missing.
    pub create: bool,
    /// Most elements per set (ipset's `maxelem`); a longer list is refused, the sets stay.
    pub maxelem: usize,
    /// The `ipset` program.
    pub program: PathBuf,
}

impl Default for IpsetSection {
    fn default() -> Self {
        Self {
            set_v4: "dns-sensor-v4".into(),
            set_v6: "dns-sensor-v6".into(),
            create: true,
            maxelem: 262_144,
            program: PathBuf::from("ipset"),
        }
    }
}

fn set_name(s: &str) -> bool {
    // IPSET_MAXNAMELEN is 32 with the NUL; the temporary name adds 4.
    !s.is_empty()
        && s.len() + NEW.len() <= 31
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl IpsetSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, name) in [
            ("blocklist.export.ipset.set_v4", &self.set_v4),
            ("blocklist.export.ipset.set_v6", &self.set_v6),
        ] {
            if !set_name(name) {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!(
                        "{name:?}: 1 to {} letters, digits, '-', '_' or '.'",
                        31 - NEW.len()
                    ),
                });
            }
        }
        if self.set_v4 == self.set_v6 {
            return Err(ConfigError::Invalid {
                key: "blocklist.export.ipset.set_v6",
                message: "must differ from set_v4".into(),
            });
        }
        if self.maxelem == 0 || self.maxelem > u32::MAX as usize {
            return Err(ConfigError::Invalid {
                key: "blocklist.export.ipset.maxelem",
                message: "must be 1 to 4294967295".into(),
            });
        }
        Ok(())
    }
}

fn create_line(name: &str, v6: bool, n: usize, maxelem: usize) -> String {
    // A hash sized for the list up front, so the restore does not grow it step by step.
    let hashsize = (n / 2).next_power_of_two().clamp(1024, 1 << 20);
    format!(
        "create {name} hash:net family {} hashsize {hashsize} maxelem {maxelem} timeout 0 comment\n",
        if v6 { "inet6" } else { "inet" }
    )
}

/// The `ipset restore` script: build both temporary sets, swap, destroy. Returns the script and
/// the element count, or an error when a family has more elements than `maxelem`.
pub fn script(
    section: &IpsetSection,
    entries: &[ExportEntry],
    now: i64,
) -> Result<(String, usize), ExportError> {
    let mut out = String::with_capacity(entries.len() * 90 + 512);
    let mut count = 0;
    for (v6, live) in [(false, &section.set_v4), (true, &section.set_v6)] {
        // One element per network, the longest-lasting entry if listed twice.
        let mut best: std::collections::BTreeMap<IpNet, &ExportEntry> = Default::default();
        for e in entries
            .iter()
            .filter(|e| matches!(e.net, IpNet::V6(_)) == v6 && e.remaining(now) != Some(0))
        {
            let slot = best.entry(e.net).or_insert(e);
            let longer = match (e.expires, slot.expires) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a > b,
            };
            if longer {
                *slot = e;
            }
        }
        if best.len() > section.maxelem {
            return Err(ExportError::Invalid(format!(
                "{} entries for {live}, over blocklist.export.ipset.maxelem = {}",
                best.len(),
                section.maxelem
            )));
        }
        let tmp = format!("{live}{NEW}");
        out.push_str(&create_line(&tmp, v6, best.len(), section.maxelem));
        for (net, e) in &best {
            out.push_str("add ");
            out.push_str(&tmp);
            out.push(' ');
            out.push_str(&net.to_string());
            // timeout 0 = permanent in a set created with `timeout`.
            let timeout = e.remaining(now).map_or(0, |s| s.clamp(1, MAX_TIMEOUT_SECS));
            out.push_str(&format!(" timeout {timeout} comment \""));
            out.push_str(&plain_comment(&e.reason, MAX_COMMENT));
            out.push_str("\"\n");
        }
        count += best.len();
    }
    for live in [&section.set_v4, &section.set_v6] {
        out.push_str(&format!("swap {live}{NEW} {live}\ndestroy {live}{NEW}\n"));
    }
    Ok((out, count))
}

fn ipset(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, ExportError> {
    let out = super::tool::run("ipset", program, args, stdin, super::tool::DEADLINE)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(ExportError::Refused {
            program: "ipset",
            message: format!(
                "{} {}: {} ({})",
                program.display(),
                args.join(" "),
                stderr.trim().chars().take(600).collect::<String>(),
                out.status
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces both live sets' content with `entries`.
pub fn apply(
    section: &IpsetSection,
    entries: &[ExportEntry],
    now: i64,
) -> Result<Written, ExportError> {
    let (text, n) = script(section, entries, now)?;
    install(section, &text)?;
    Ok((n, 0))
}

/// Creates the live sets if missing (and allowed), removes temporary sets an interrupted run
/// left, then runs `script` through `ipset restore`. On failure the temporary sets are
/// destroyed and the live sets are as they were.
pub fn install(section: &IpsetSection, script: &str) -> Result<(), ExportError> {
    let p = &section.program;
    let existing = ipset(p, &["list", "-n"], None)?;
    let names: std::collections::HashSet<&str> = existing.lines().collect();
    for (v6, live) in [(false, &section.set_v4), (true, &section.set_v6)] {
        if !names.contains(live.as_str()) {
            if !section.create {
                return Err(ExportError::Invalid(format!(
                    "ipset {live} does not exist (create it, or set blocklist.export.ipset.create = true)"
                )));
            }
            let line = create_line(live, v6, 0, section.maxelem);
            let args: Vec<&str> = line.split_whitespace().collect();
            ipset(p, &args, None)?;
        }
        let tmp = format!("{live}{NEW}");
        if names.contains(tmp.as_str()) {
            ipset(p, &["destroy", &tmp], None)?;
        }
    }
    if let Err(e) = ipset(p, &["restore"], Some(script)) {
        for live in [&section.set_v4, &section.set_v6] {
            // Best effort: the live sets are untouched either way.
            let _ = ipset(p, &["destroy", &format!("{live}{NEW}")], None);
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_script_builds_aside_then_swaps() {
        let entries = [
            e("203.0.113.0/24", None, "config"),
            e(
                "203.0.113.9/32",
                Some(1_000 + 60),
                "inside the /24, own timeout",
            ),
            e("2001:db8::/48", Some(1_000 + 99_999_999), "v6 \"q\"\n"),
            e("192.0.2.1/32", Some(10), "expired"),
        ];
        let (text, n) = script(&IpsetSection::default(), &entries, 1_000).unwrap();
        assert_eq!(n, 3);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("create dns-sensor-v4-new hash:net family inet "));
        assert!(text.contains("add dns-sensor-v4-new 203.0.113.0/24 timeout 0 comment \"config\""));
        assert!(text.contains("add dns-sensor-v4-new 203.0.113.9/32 timeout 60 "));
        assert!(
            text.contains(
                "add dns-sensor-v6-new 2001:db8::/48 timeout 2147483 comment \"v6 _q__\""
            )
        );
        assert!(!text.contains("192.0.2.1"));
        // Swaps come after every add.
        let first_swap = lines.iter().position(|l| l.starts_with("swap")).unwrap();
        assert!(lines[first_swap..].iter().all(|l| !l.starts_with("add")));
        let small = IpsetSection {
            maxelem: 1,
            ..Default::default()
        };
        assert!(script(&small, &entries, 1_000).is_err());
        assert!(
            IpsetSection {
                set_v4: "x".repeat(28),
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .to_string()
            .contains("blocklist.export.ipset.set_v4")
        );
    }
}
