//! Check Point Custom Intelligence Feed ("IoC feed"): a CSV file in the Check Point format
//! that the gateway fetches over HTTP(S) (`ioc_feeds add --feed_name … --transport …
//! --resource …`) and enforces in the Anti-Bot blade.
//!
//! Grammar (sk132193 "What is the Custom Intelligence Feeds feature", and the R81.x Threat
//! Prevention admin guide, "Supported Indicator Files"): fields separated by `,`, records by
//! `\n`, every record with the same number of fields, quoted fields accepted, lines beginning
//! with `#` are comments; the header is `# UNIQ-NAME,VALUE,TYPE,CONFIDENCE,SEVERITY,PRODUCT,
//! COMMENT`. Observable types used here: `IP` (a standard IPv4 address) and `IP Range` (two IPv4
//! addresses separated by a hyphen). The format has no IPv6 observable, so IPv6 entries are left
//! out and counted (use the FortiGate or EDL formats for them). Confidence is `low|medium|high`,
//! severity `low|medium|high|critical`; an empty optional field takes the gateway's default.
//!
//! The reason and expiry go into COMMENT. Reasons are outside text: control characters become
//! spaces, the cell is quoted by the CSV writer when it holds `,` or `"`, and a cell starting with
//! `=`, `+`, `-`, `@` (which a spreadsheet would run as a formula) gets a leading `'`.

use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use super::{ExportEntry, ExportError, Written};
use sensor_model::{
    error::ConfigError,
    verdict::{Confidence, Severity},
};

pub const HEADER: &str = "# UNIQ-NAME,VALUE,TYPE,CONFIDENCE,SEVERITY,PRODUCT,COMMENT";

/// `[blocklist.export.checkpoint]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// The feed file, replaced atomically.
    pub path: PathBuf,
    /// Serve the feed on the EDL server (`[blocklist.edl] listen`) at this URL path, with the
    /// EDL's authentication and limits; absent = not served.
    pub url_path: Option<String>,
    /// The blade that enforces it: `AB` (Anti-Bot, blocks connections to and from the IPs) or
    /// `AV` (Anti-Virus).
    pub product: String,
    /// Prefix of each record's UNIQ-NAME (`<prefix>_<value>`).
    pub name_prefix: String,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/dns-sensor/export/checkpoint.csv"),
            product: "AB".into(),
            name_prefix: "dns-sensor".into(),
            url_path: None,
        }
    }
}

impl CheckpointSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.product.as_str(), "AB" | "AV") {
            return Err(ConfigError::Invalid {
                key: "blocklist.export.checkpoint.product",
                message: format!("{:?}: must be \"AB\" or \"AV\"", self.product),
            });
        }
        if self.name_prefix.is_empty()
            || !self
                .name_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            return Err(ConfigError::Invalid {
                key: "blocklist.export.checkpoint.name_prefix",
                message: "letters, digits, - and _ only, not empty".into(),
            });
        }
        Ok(())
    }
}

/// A cell of outside text, safe for the gateway's reader and for a spreadsheet: control
/// characters become spaces; a leading `= + - @` gets a `'` in front.
pub fn safe_cell(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cleaned.starts_with(['=', '+', '-', '@']) {
        format!("'{cleaned}")
    } else {
        cleaned
    }
}

fn confidence(c: Option<Confidence>) -> &'static str {
    match c {
        Some(Confidence::Low) => "low",
        Some(Confidence::Medium) => "medium",
        Some(Confidence::High) => "high",
        None => "",
    }
}

fn severity(s: Option<Severity>) -> &'static str {
    match s {
        // The Check Point scale starts at `low`.
        Some(Severity::Info | Severity::Low) => "low",
        Some(Severity::Medium) => "medium",
        Some(Severity::High) => "high",
        Some(Severity::Critical) => "critical",
        None => "",
    }
}

/// The CSV text; entries expired at `now` are left out silently (they are not blocked any
/// more), IPv6 entries are left out and counted.
pub fn render(
    section: &CheckpointSection,
    entries: &[ExportEntry],
    now: i64,
) -> Result<(String, Written), ExportError> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(Vec::with_capacity(entries.len() * 80));
    let (mut written, mut left_out) = (0, 0);
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        if e.remaining(now) == Some(0) || !seen.insert(e.net) {
            continue;
        }
        let IpNet::V4(n) = e.net else {
            left_out += 1;
            continue;
        };
        let (value, kind) = if n.prefix_len() == 32 {
            (n.addr().to_string(), "IP")
        } else {
            (format!("{}-{}", n.network(), n.broadcast()), "IP Range")
        };
        let mut comment = e.reason.clone();
        if let Some(t) = e
            .expires
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        {
            comment.push_str(&format!("; expires {}", t.date()));
        }
        let name = format!("{}_{}", section.name_prefix, value);
        w.write_record([
            name.as_str(),
            value.as_str(),
            kind,
            confidence(e.confidence),
            severity(e.severity),
            section.product.as_str(),
            safe_cell(&comment).as_str(),
        ])
        .map_err(|e| ExportError::Invalid(e.to_string()))?;
        written += 1;
    }
    let body = w
        .into_inner()
        .map_err(|e| ExportError::Invalid(e.to_string()))?;
    let mut text = String::with_capacity(body.len() + HEADER.len() + 1);
    text.push_str(HEADER);
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&body));
    Ok((text, (written, left_out)))
}

/// Reads a feed file (an operator may have edited it): CSV records of seven fields, `#` lines
/// are comments; the observables must be those this export writes, `IP` (an IPv4 address) or
/// `IP Range` (`a-b`, IPv4), so that a served file blocks only addresses the protected-address
/// check has seen. Returns the networks with their line numbers.
pub fn parse(text: &str) -> Result<Vec<(usize, IpNet)>, String> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .comment(Some(b'#'))
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    for record in r.records() {
        let record = record.map_err(|e| e.to_string())?;
        let n = record.position().map_or(0, |p| p.line() as usize);
        if record.len() != 7 {
            return Err(format!(
                "line {n}: {} fields, the format has 7 ({})",
                record.len(),
                HEADER.trim_start_matches("# ")
            ));
        }
        let (value, kind) = (record[1].trim(), record[2].trim());
        let bad = || format!("line {n}: {value:?} is not a valid {kind:?} observable");
        match kind {
            "IP" => {
                let a: std::net::Ipv4Addr = value.parse().map_err(|_| bad())?;
                out.push((n, IpNet::from(std::net::IpAddr::V4(a))));
            }
            "IP Range" => {
                let (a, b) = value.split_once('-').ok_or_else(bad)?;
                let a: std::net::Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
                let b: std::net::Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
                out.extend(
                    crate::edl::range_nets(a.into(), b.into())
                        .ok_or_else(bad)?
                        .into_iter()
                        .map(|net| (n, net)),
                );
            }
            other => {
                return Err(format!(
                    "line {n}: type {other:?}: this export serves only IP and IP Range observables"
                ));
            }
        }
    }
    Ok(out)
}

/// Writes the feed file.
pub fn export(
    section: &CheckpointSection,
    entries: &[ExportEntry],
    now: i64,
) -> Result<Written, ExportError> {
    let (text, counts) = render(section, entries, now)?;
    super::write_file(&section.path, &text)?;
    if counts.1 > 0 {
        tracing::info!(
            left_out = counts.1,
            "Check Point feed: IPv6 entries left out (the format has no IPv6 observable)"
        );
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// A reader of the Check Point CSV grammar (sk132193), written from the description rather
    /// than from our writer: records split on `\n`, fields on `,` outside double quotes, `""`
    /// inside quotes is one `"`, `#` lines are comments, every record has the header's seven
    /// fields, VALUE/TYPE follow the observable rules, CONFIDENCE/SEVERITY from their sets.
    fn parse_feed(text: &str) -> Result<Vec<Vec<String>>, String> {
        let mut records = Vec::new();
        let mut lines = text.split_terminator('\n');
        let header = lines.next().ok_or("empty")?;
        if header.trim_start_matches('#').trim().split(',').count() != 7 {
            return Err(format!("header {header:?}"));
        }
        for line in lines {
            if line.starts_with('#') {
                continue;
            }
            let mut fields = vec![String::new()];
            let mut chars = line.chars().peekable();
            let mut quoted = false;
            let mut at_start = true;
            while let Some(c) = chars.next() {
                match (quoted, c) {
                    (false, '"') if at_start => quoted = true,
                    (false, '"') => return Err(format!("stray quote in {line:?}")),
                    (true, '"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        fields.last_mut().unwrap().push('"');
                    }
                    (true, '"') => {
                        quoted = false;
                        if !matches!(chars.peek(), None | Some(',')) {
                            return Err(format!("text after a closing quote in {line:?}"));
                        }
                    }
                    (false, ',') => {
                        fields.push(String::new());
                        at_start = true;
                        continue;
                    }
                    (_, c) if c.is_control() => return Err(format!("control char in {line:?}")),
                    (_, c) => fields.last_mut().unwrap().push(c),
                }
                at_start = false;
            }
            if quoted {
                return Err(format!("unclosed quote in {line:?}"));
            }
            if fields.len() != 7 {
                return Err(format!("{} fields in {line:?}", fields.len()));
            }
            let ok_value = match fields[2].as_str() {
                "IP" => fields[1].parse::<Ipv4Addr>().is_ok(),
                "IP Range" => fields[1].split_once('-').is_some_and(|(a, b)| {
                    matches!((a.parse::<Ipv4Addr>(), b.parse::<Ipv4Addr>()), (Ok(a), Ok(b)) if a <= b)
                }),
                _ => false,
            };
            if !ok_value
                || fields[0].is_empty()
                || !["", "low", "medium", "high"].contains(&fields[3].as_str())
                || !["", "low", "medium", "high", "critical"].contains(&fields[4].as_str())
                || !["AB", "AV"].contains(&fields[5].as_str())
            {
                return Err(format!("bad record {fields:?}"));
            }
            records.push(fields);
        }
        Ok(records)
    }

    fn e(net: &str, reason: &str) -> ExportEntry {
        ExportEntry {
            net: super::super::canonical(net.parse().unwrap()),
            expires: Some(1_767_225_600), // 2026-01-01
            reason: reason.into(),
            severity: Some(Severity::High),
            confidence: Some(Confidence::Medium),
        }
    }

    #[test]
    fn the_feed_follows_the_check_point_csv_grammar() {
        let entries = [
            e("203.0.113.0/24", "net"),
            e("198.51.100.7/32", "=HYPERLINK(\"http://x\"),\"a\"\nb;c"),
            e("192.0.2.1/32", "+1"),
            e("192.0.2.2/32", "-cmd"),
            e("192.0.2.3/32", "@SUM(1)"),
            e("2001:db8::/48", "v6 net"),
            e("2001:db8::1/128", "v6 host"),
        ];
        let (text, counts) = render(&CheckpointSection::default(), &entries, 0).unwrap();
        let records = parse_feed(&text).unwrap();
        assert_eq!(counts, (5, 2), "IPv6 left out and counted");
        assert_eq!(records.len(), 5);
        assert_eq!(
            records[0][..6],
            [
                "dns-sensor_203.0.113.0-203.0.113.255",
                "203.0.113.0-203.0.113.255",
                "IP Range",
                "medium",
                "high",
                "AB"
            ]
        );
        assert_eq!(records[1][1], "198.51.100.7");
        assert_eq!(records[1][2], "IP");
        // The hostile reason is one cell, neutralised, newline gone, quotes kept as text.
        assert_eq!(
            records[1][6],
            "'=HYPERLINK(\"http://x\"),\"a\" b;c; expires 2026-01-01"
        );
        for r in &records {
            assert!(!r[6].starts_with(['=', '+', '-', '@']), "{:?}", r[6]);
        }
        assert!(records[2][6].starts_with("'+1"));
    }

    #[test]
    fn bad_settings_name_their_key() {
        let e = CheckpointSection {
            product: "FW".into(),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("blocklist.export.checkpoint.product")
        );
    }
}
