//! MikroTik RouterOS: a script that brings a firewall address list up to date, for
//! `/tool fetch url=… dst-path=dns-sensor.rsc` then `/import file-name=dns-sensor.rsc`.
//!
//! Grammar (RouterOS manual, "Scripting" and "IP / Firewall / Address-lists"): commands under
//! the menus `/ip firewall address-list` and `/ipv6 firewall address-list`,
//! `add list=<name> address=<address|prefix> timeout=<time> comment=<string>`; strings in double
//! quotes with the escapes `\"`, `\\`, `\$` (a bare `$` would substitute a variable), `\?` and
//! `\XX` (a byte in hex); times as `[Nd]HH:MM:SS`, at most 35w3d13:13:56 (2,147,483,647
//! centiseconds). An entry with a timeout is dynamic: RouterOS removes it when it lapses (and on
//! reboot, so the script should be re-imported at boot as well).
//!
//! Make before break, so the list is never empty during an import: each entry is added (or, if
//! the address is already listed, updated) with a comment that starts with this publication's
//! tag `dns-sensor:<unix time>`; then the entries of earlier publications (comment starting with
//! `dns-sensor:` but another tag) are removed. Entries the operator added by hand (no such
//! comment) are never touched.

use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use super::{ExportEntry, ExportError, Written};
use sensor_model::error::ConfigError;

/// RouterOS's longest timeout, 35w3d13:13:56, in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 21_474_836;
/// Comment prefix that marks the entries this export owns.
pub const TAG: &str = "dns-sensor:";
const MAX_REASON: usize = 200;

/// `[blocklist.export.mikrotik]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MikrotikSection {
    /// The script file, replaced atomically; the router fetches and imports it.
    pub path: PathBuf,
    /// Serve the script on the EDL server (`[blocklist.edl] listen`) at this URL path, with the
    /// EDL's authentication and limits; absent = not served.
    pub url_path: Option<String>,
    /// The address list's name (IPv4 and IPv6 lists use the same name).
    pub list: String,
}

impl Default for MikrotikSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/dns-sensor/export/mikrotik.rsc"),
            list: "dns-sensor-block".into(),
            url_path: None,
        }
    }
}

impl MikrotikSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.list.is_empty()
            || self.list.len() > 63
            || !self
                .list
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError::Invalid {
                key: "blocklist.export.mikrotik.list",
                message: "1 to 63 letters, digits, '-', '_' or '.'".into(),
            });
        }
        Ok(())
    }
}

/// `text` as a RouterOS double-quoted string.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for b in text.bytes() {
        match b {
            b'"' | b'\\' | b'$' | b'?' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:02X}")),
        }
    }
    out.push('"');
    out
}

/// Seconds as a RouterOS time, `[Nd]HH:MM:SS`, capped at RouterOS's maximum.
pub fn duration(secs: u64) -> String {
    let s = secs.clamp(1, MAX_TIMEOUT_SECS);
    let (d, rest) = (s / 86_400, s % 86_400);
    let (h, m, sec) = (rest / 3600, rest % 3600 / 60, rest % 60);
    if d > 0 {
        format!("{d}d{h:02}:{m:02}:{sec:02}")
    } else {
        format!("{h:02}:{m:02}:{sec:02}")
    }
}

fn address(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// The script. Entries expired at `now` are left out (they are no longer blocked); duplicates
/// keep their first occurrence.
pub fn render(section: &MikrotikSection, entries: &[ExportEntry], now: i64) -> (String, Written) {
    let tag = format!("{TAG}{now}");
    let list = quote(&section.list);
    let mut out = String::with_capacity(entries.len() * 200);
    out.push_str(&format!(
        "# dns-sensor blocklist, publication {now}: /import this file on the router\n"
    ));
    let mut seen = std::collections::HashSet::new();
    let mut written = 0;
    for v6 in [false, true] {
        out.push_str(if v6 {
            "/ipv6 firewall address-list\n"
        } else {
            "/ip firewall address-list\n"
        });
        for e in entries {
            if matches!(e.net, IpNet::V6(_)) != v6
                || e.remaining(now) == Some(0)
                || !seen.insert(e.net)
            {
                continue;
            }
            let addr = address(&e.net);
            let mut comment = format!("{tag} ");
            comment.extend(e.reason.chars().take(MAX_REASON));
            let timeout = e
                .remaining(now)
                .map(|s| format!(" timeout={}", duration(s)))
                .unwrap_or_default();
            let comment = quote(&comment);
            out.push_str(&format!(
                ":do {{ add list={list} address={addr}{timeout} comment={comment} }} \
                 on-error={{ :do {{ set [find list={list} address={addr}]{timeout} \
                 comment={comment} }} on-error={{}} }}\n"
            ));
            written += 1;
        }
        out.push_str(&format!(
            "remove [find where list={list} and comment~{} and !(comment~{})]\n",
            quote(&format!("^{TAG}")),
            quote(&format!("^{tag} "))
        ));
    }
    (out, (written, 0))
}

/// Reads a script file before it is served (an operator may have edited it). The router runs
/// what it imports, so only the lines this export writes are accepted, token for token outside
/// quoted strings: `#` comments, the two address-list menus, one add-or-set per entry and the
/// `remove` of each menu (anything else, e.g. a `;` and a second command, is refused). Returns
/// the entries' networks with their line numbers.
pub fn parse(text: &str) -> Result<Vec<(usize, IpNet)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line == "/ip firewall address-list"
            || line == "/ipv6 firewall address-list"
        {
            continue;
        }
        let shape = skeleton(line).ok_or_else(|| format!("line {n}: unbalanced quotes"))?;
        if shape == r#"remove [find where list="" and comment~"" and !(comment~"")]"# {
            continue;
        }
        let not_ours = || {
            format!(
                "line {n}: not a line this export writes (comment, address-list menu, add-or-set, remove)"
            )
        };
        let addr = shape
            .strip_prefix(r#":do { add list="" address="#)
            .and_then(|a| a.split(' ').next())
            .ok_or_else(not_ours)?;
        let timeout = shape
            .split_once(" timeout=")
            .and_then(|(_, t)| t.split(' ').next())
            .map(|t| format!(" timeout={t}"))
            .unwrap_or_default();
        let expected = format!(
            r#":do {{ add list="" address={addr}{timeout} comment="" }} on-error={{ :do {{ set [find list="" address={addr}]{timeout} comment="" }} on-error={{}} }}"#
        );
        if shape != expected
            || !timeout
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " =:".contains(c))
        {
            return Err(not_ours());
        }
        let net: IpNet = addr
            .parse()
            .or_else(|_| addr.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| format!("line {n}: {addr:?} is not an address or prefix"))?;
        out.push((n, net));
    }
    Ok(out)
}

/// `line` with every double-quoted string emptied (escapes inside skipped); `None` when a
/// string is not closed.
fn skeleton(line: &str) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            loop {
                match chars.next()? {
                    '\\' => {
                        chars.next()?;
                    }
                    '"' => break,
                    _ => {}
                }
            }
            out.push('"');
        }
    }
    Some(out)
}

/// Writes the script file.
pub fn export(
    section: &MikrotikSection,
    entries: &[ExportEntry],
    now: i64,
) -> Result<Written, ExportError> {
    let (text, counts) = render(section, entries, now);
    super::write_file(&section.path, &text)?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// RouterOS words: bare words end at a space or `;`, `{`/`}`/`[`/`]` are their own tokens,
    /// quoted strings take the documented escapes only (anything else is an error). Returns the
    /// tokens with strings decoded (marked by a leading `\u{0}`).
    fn tokens(line: &str) -> Result<Vec<String>, String> {
        let b = line.as_bytes();
        let (mut i, mut out) = (0, Vec::new());
        while i < b.len() {
            match b[i] {
                b' ' => i += 1,
                b'{' | b'}' | b'[' | b']' => {
                    out.push((b[i] as char).to_string());
                    i += 1;
                }
                b'"' => return Err(format!("a string must follow `=` or `~` in {line:?}")),
                _ => {
                    let mut word = Vec::new();
                    while i < b.len() && !matches!(b[i], b' ' | b'{' | b'}' | b'[' | b']') {
                        if b[i] == b'$' {
                            return Err(format!("bare `$` (variable) in {line:?}"));
                        }
                        if b[i] == b'"' {
                            // key="string" or key~"string"
                            i += 1;
                            let mut s = vec![0u8];
                            loop {
                                let c = *b.get(i).ok_or("unclosed string")?;
                                i += 1;
                                match c {
                                    b'"' => break,
                                    b'$' => return Err("unescaped $ in a string".into()),
                                    b'\\' => {
                                        let e = *b.get(i).ok_or("dangling escape")?;
                                        i += 1;
                                        match e {
                                            b'"' | b'\\' | b'$' | b'?' => s.push(e),
                                            h if h.is_ascii_hexdigit() => {
                                                let l = *b.get(i).ok_or("short hex")?;
                                                i += 1;
                                                let hex = [h, l];
                                                let hex = std::str::from_utf8(&hex).unwrap();
                                                s.push(
                                                    u8::from_str_radix(hex, 16)
                                                        .map_err(|e| e.to_string())?,
                                                );
                                            }
                                            _ => return Err(format!("escape \\{}", e as char)),
                                        }
                                    }
                                    0x20..=0x7e => s.push(c),
                                    _ => return Err("raw control byte in a string".into()),
                                }
                            }
                            word.extend_from_slice(&s);
                            continue;
                        }
                        word.push(b[i]);
                        i += 1;
                    }
                    out.push(String::from_utf8(word).map_err(|e| e.to_string())?);
                }
            }
        }
        Ok(out)
    }

    fn is_duration(s: &str) -> bool {
        let (d, hms) = match s.split_once('d') {
            Some((d, hms)) => (Some(d), hms),
            None => (None, s),
        };
        let parts: Vec<&str> = hms.split(':').collect();
        d.is_none_or(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
            && parts.len() == 3
            && parts
                .iter()
                .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_digit()))
            && parts[1] < "60"
            && parts[2] < "60"
    }

    /// `key=value` pairs of an `add`, checked against the address-list grammar for `menu`.
    fn args(words: &[String], v6: bool) -> Result<BTreeMap<String, String>, String> {
        let mut m = BTreeMap::new();
        for w in words {
            let (k, v) = w.split_once('=').ok_or(format!("not key=value: {w:?}"))?;
            let v = v.trim_start_matches('\0').to_string();
            match k {
                "list" | "comment" => {}
                "address" => {
                    let net: IpNet = v
                        .parse()
                        .or_else(|_| v.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| format!("address {v:?}"))?;
                    if matches!(net, IpNet::V6(_)) != v6 {
                        return Err(format!("{v} in the wrong menu"));
                    }
                }
                "timeout" if is_duration(&v) => {}
                _ => return Err(format!("bad argument {w:?}")),
            }
            m.insert(k.to_string(), v);
        }
        Ok(m)
    }

    /// One `add`: whether it is under the IPv6 menu, and its decoded `key=value` arguments.
    type Add = (bool, BTreeMap<String, String>);

    /// Reads the script as RouterOS would: returns the entries added per family, with their
    /// decoded comment and timeout, and checks every line's grammar.
    fn parse_script(text: &str) -> Result<Vec<Add>, String> {
        let mut v6 = None;
        let mut adds = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            match line {
                "/ip firewall address-list" => v6 = Some(false),
                "/ipv6 firewall address-list" => v6 = Some(true),
                _ => {
                    let v6 = v6.ok_or("command outside a menu")?;
                    let t = tokens(line)?;
                    let t: Vec<&str> = t.iter().map(String::as_str).collect();
                    if t.first() == Some(&"remove") {
                        // remove [ find where list=L and comment~R and !(comment~R) ]
                        if t.len() != 10
                            || t[1..4] != ["[", "find", "where"]
                            || t[5] != "and"
                            || t[7] != "and"
                            || !t[8].starts_with("!(comment~")
                            || t[9] != "]"
                        {
                            return Err(format!("remove {t:?}"));
                        }
                        continue;
                    }
                    // :do { add ... } on-error={ :do { set [find ...] ... } on-error={} }
                    let close = t.iter().position(|w| *w == "}").ok_or("no }")?;
                    if t[..3] != [":do", "{", "add"] || t.get(close + 1) != Some(&"on-error=") {
                        return Err(format!("line {line:?}"));
                    }
                    let owned: Vec<String> = t[3..close].iter().map(|s| s.to_string()).collect();
                    let m = args(&owned, v6)?;
                    if !m.contains_key("list") || !m.contains_key("address") {
                        return Err(format!("add without list/address: {line:?}"));
                    }
                    adds.push((v6, m));
                }
            }
        }
        Ok(adds)
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
    fn the_script_follows_the_routeros_grammar_and_keeps_reasons_and_expiries() {
        let hostile = "C2 \"evil\" $(:put hi) [/system reboot]; a\\b?\nnext line é";
        let entries = [
            e("203.0.113.0/24", None, "config blocklist.entries"),
            e("198.51.100.7/32", Some(1_000 + 90_061), hostile),
            e("2001:db8::/48", Some(1_000 + 30), "v6 net"),
            e("2001:db8::1/128", Some(1_000 + 999_999_999), "long"),
            e("192.0.2.9/32", Some(999), "expired"),
        ];
        let (text, counts) = render(&MikrotikSection::default(), &entries, 1_000);
        let adds = parse_script(&text).unwrap();
        assert_eq!(counts, (4, 0));
        let got: Vec<(bool, &str, Option<&str>)> = adds
            .iter()
            .map(|(v6, m)| {
                (
                    *v6,
                    m["address"].as_str(),
                    m.get("timeout").map(String::as_str),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (false, "203.0.113.0/24", None),
                (false, "198.51.100.7", Some("1d01:01:01")),
                (true, "2001:db8::/48", Some("00:00:30")),
                (true, "2001:db8::1", Some("248d13:13:56")),
            ]
        );
        // The hostile reason comes back byte for byte after RouterOS's unescaping.
        assert_eq!(adds[1].1["comment"], format!("dns-sensor:1000 {hostile}"));
        assert!(adds.iter().all(|(_, m)| m["list"] == "dns-sensor-block"));
        // Old publications are removed after the new one is in, per family.
        let removes: Vec<&str> = text.lines().filter(|l| l.starts_with("remove")).collect();
        assert_eq!(removes.len(), 2);
        assert!(text.find("remove").unwrap() > text.find("198.51.100.7").unwrap());
    }

    #[test]
    fn durations_and_names() {
        assert_eq!(duration(59), "00:00:59");
        assert_eq!(duration(86_400 * 30 + 1), "30d00:00:01");
        assert_eq!(duration(u64::MAX), "248d13:13:56");
        assert!(
            MikrotikSection {
                list: "a b".into(),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
