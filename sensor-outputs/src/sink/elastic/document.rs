//! The indexed document, its `_id`, and the index it goes to.
//!
//! The document is the sensor's ECS event ([`sensor_model::document::Document`], the same fields the
//! JSON-lines output and Packetbeat write) plus:
//! - `threat.indicator.*` for a malicious name: `type: "domain-name"`, `name` and `url.domain`
//!   (the queried name), `provider` (every provider that called it malicious), `confidence`
//!   (ECS's `Low`/`Medium`/`High`, the highest of the providers');
//! - `intel.findings[]`: each provider's own finding (provider, severity, confidence,
//!   judgments, tags, permalink) next to the flattened `intel.*` lists;
//! - the asset owner from the inventory (longest-prefix match on `source.ip`): `user.name`
//!   (owner), `user.id` (employee number), `user.group.name` (department), `host.hostname`.
//!
//! `dns.question.registered_domain` is left out: deriving it correctly needs the public suffix
//! list (`example.com.cn` is registered under `com.cn`), which the sensor does not carry.

use std::{collections::HashMap, fmt::Write as _, io::Write as _, net::IpAddr, sync::Arc};

use serde::Serialize;
use time::{Date, OffsetDateTime, format_description::FormatItem, macros::format_description};

use sensor_model::{
    clock::WallClock,
    document::Document,
    enriched::Enriched,
    verdict::{Confidence, Finding, IntelDoc, Verdict},
};

use sensor_intel::inventory::Inventory;

/// One piece of an index name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Year,
    Month,
    Day,
}

/// An index name pattern (`security_check_url-%Y.%m.%d`), see `ElasticSection::index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPattern {
    parts: Vec<Part>,
}

impl IndexPattern {
    /// Parses and checks a pattern against Elasticsearch's index name rules (lower case, none of
    /// `\ / * ? " < > | , # :` or space, not starting with `-`, `_` or `+`, at most 255 bytes).
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let part = match chars.next() {
                Some('%') => {
                    lit.push('%');
                    continue;
                }
                Some('Y') => Part::Year,
                Some('m') => Part::Month,
                Some('d') => Part::Day,
                Some(other) => {
                    return Err(format!(
                        "{pattern:?}: `%{other}` is not one of %Y, %m, %d, %%"
                    ));
                }
                None => return Err(format!("{pattern:?} ends with a lone `%`")),
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(part);
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        let prefix = match parts.first() {
            Some(Part::Lit(p)) => p.as_str(),
            _ => {
                return Err(format!(
                    "{pattern:?} must start with a fixed name (the template matches `<name>*`)"
                ));
            }
        };
        if prefix.starts_with(['-', '_', '+']) || prefix == "." || prefix == ".." {
            return Err(format!(
                "{pattern:?} must not start with `-`, `_`, `+` or be `.`"
            ));
        }
        let all_lit: String = parts
            .iter()
            .filter_map(|p| match p {
                Part::Lit(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        if let Some(bad) = all_lit
            .chars()
            .find(|c| c.is_ascii_uppercase() || c.is_whitespace() || "\\/*?\"<>|,#:".contains(*c))
        {
            return Err(format!(
                "{pattern:?}: index names must be lower case without spaces or any of \
                 \\ / * ? \" < > | , # : (found {bad:?})"
            ));
        }
        let this = Self { parts };
        if this.format(Date::MIN).len() > 255 {
            return Err(format!("{pattern:?} gives names longer than 255 bytes"));
        }
        Ok(this)
    }

    /// The index name for events of `date` (UTC).
    pub fn format(&self, date: Date) -> String {
        let mut out = String::new();
        for p in &self.parts {
            let _ = match p {
                Part::Lit(s) => {
                    out.push_str(s);
                    Ok(())
                }
                Part::Year => write!(out, "{:04}", date.year()),
                Part::Month => write!(out, "{:02}", u8::from(date.month())),
                Part::Day => write!(out, "{:02}", date.day()),
            };
        }
        out
    }

    /// The template's index pattern: the fixed prefix then `*`, or the name itself when the
    /// pattern has no date.
    pub fn template_pattern(&self) -> String {
        match self.parts.as_slice() {
            [Part::Lit(name)] => name.clone(),
            [Part::Lit(prefix), ..] => format!("{prefix}*"),
            _ => "*".into(),
        }
    }
}

const TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// FNV-1a, 128 bits: stable across Rust versions and processes (unlike std's `Hasher`s), so a
/// document's `_id` depends only on the event.
struct Fnv128(u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;

    fn new() -> Self {
        Self(Self::OFFSET)
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.0 ^= u128::from(x);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
        self
    }

    /// Length-prefixed, so field boundaries cannot shift between events.
    fn field(&mut self, b: &[u8]) -> &mut Self {
        self.bytes(&(b.len() as u32).to_le_bytes()).bytes(b)
    }
}

/// The document's `_id`: 32 hex digits of a 128-bit hash of what identifies one query packet
/// (sensor name, kernel timestamp, interface, client address and port, DNS id, type, name).
/// Retries and a second offer of the same event give the same `_id`, so `create` can refuse
/// the copy.
pub fn doc_id(observer: &str, e: &Enriched) -> String {
    let q = &e.query;
    let ip = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let mut h = Fnv128::new();
    h.field(observer.as_bytes())
        .field(&q.ts_mono_ns.to_le_bytes())
        .field(&q.ifindex.to_le_bytes())
        .field(&ip(q.src))
        .field(&q.src_port.to_le_bytes())
        .field(&ip(q.dst))
        .field(&q.dns_id.to_le_bytes())
        .field(&q.qtype.to_le_bytes())
        .field(q.name.as_bytes());
    format!("{:032x}", h.0)
}

#[derive(Serialize)]
struct Doc<'a> {
    #[serde(flatten)]
    base: Document<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threat: Option<Threat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    intel: Option<IntelOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<Host<'a>>,
}

#[derive(Serialize)]
struct IntelOut<'a> {
    #[serde(flatten)]
    summary: IntelDoc<'a>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    findings: &'a [Finding],
}

#[derive(Serialize)]
struct Threat<'a> {
    indicator: Indicator<'a>,
}

#[derive(Serialize)]
struct Indicator<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    url: UrlDomain<'a>,
    provider: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    confidence: Option<&'static str>,
}

#[derive(Serialize)]
struct UrlDomain<'a> {
    domain: &'a str,
}

#[derive(Serialize)]
struct User<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<Group<'a>>,
}

#[derive(Serialize)]
struct Group<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Host<'a> {
    hostname: &'a str,
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// ECS `threat.indicator.confidence` values.
fn ecs_confidence(c: Confidence) -> &'static str {
    match c {
        Confidence::Low => "Low",
        Confidence::Medium => "Medium",
        Confidence::High => "High",
    }
}

/// Turns events into bulk `create` items (action line and document line).
pub struct Builder {
    observer: String,
    interfaces: HashMap<u32, String>,
    pattern: IndexPattern,
    inventory: Arc<arc_swap::ArcSwap<Inventory>>,
    clock: WallClock,
    /// The last index name and the UTC day it was made for.
    day: Option<(Date, String)>,
}

impl Builder {
    pub fn new(
        observer: &str,
        interfaces: &HashMap<u32, String>,
        pattern: IndexPattern,
        inventory: Arc<arc_swap::ArcSwap<Inventory>>,
    ) -> Self {
        Self {
            observer: observer.to_owned(),
            interfaces: interfaces.clone(),
            pattern,
            inventory,
            clock: WallClock::new(),
            day: None,
        }
    }

    /// Re-reads the wall-clock offset (call it now and then, e.g. per batch).
    pub fn resync(&mut self) {
        self.clock.resync();
    }

    /// Appends the item for `e` (two NDJSON lines) to `out`.
    pub fn item(&mut self, e: &Enriched, out: &mut Vec<u8>) {
        let q = &e.query;
        let unix_ns = self.clock.unix_ns(q.ts_mono_ns);
        let at = OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let date = at.date();
        let index = match &self.day {
            Some((d, name)) if *d == date => name,
            _ => &self.day.insert((date, self.pattern.format(date))).1,
        };
        // The index name holds no character JSON would escape (checked by `IndexPattern`), and
        // the id is hex.
        let _ = writeln!(
            out,
            "{{\"create\":{{\"_index\":\"{index}\",\"_id\":\"{}\"}}}}",
            doc_id(&self.observer, e)
        );
        let timestamp = at
            .format(TIMESTAMP)
            .unwrap_or_else(|_| "1970-01-01T00:00:00.000000000Z".into());
        let interface = self
            .interfaces
            .get(&q.ifindex)
            .map_or("unknown", String::as_str);
        let intel = e.intel.as_deref();
        let malicious = intel.filter(|a| a.verdict == Verdict::Malicious);
        let inventory = self.inventory.load();
        let asset = inventory.lookup(q.src);
        let mut base = q.document(timestamp, &self.observer, interface, intel);
        // `intel` is written below with the per-provider findings added.
        base.intel = None;
        let doc = Doc {
            base,
            threat: malicious.map(|a| {
                let mut provider: Vec<&str> = Vec::new();
                for f in &a.findings {
                    if !provider.contains(&f.provider.as_str()) {
                        provider.push(&f.provider);
                    }
                }
                Threat {
                    indicator: Indicator {
                        kind: "domain-name",
                        name: &q.name,
                        url: UrlDomain { domain: &q.name },
                        provider,
                        confidence: a.confidence().map(ecs_confidence),
                    },
                }
            }),
            intel: intel.map(|a| IntelOut {
                summary: a.document(),
                findings: &a.findings,
            }),
            user: asset.and_then(|a| {
                let user = User {
                    name: nonempty(&a.owner),
                    id: nonempty(&a.employee_id),
                    group: nonempty(&a.department).map(|name| Group { name }),
                };
                (user.name.is_some() || user.id.is_some() || user.group.is_some()).then_some(user)
            }),
            host: asset
                .and_then(|a| a.hostname.as_deref())
                .filter(|h| !h.is_empty())
                .map(|hostname| Host { hostname }),
        };
        // Serialising plain structs of strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &doc);
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = IndexPattern::parse("security_check_url-%Y.%m.%d").unwrap();
        let d = Date::from_calendar_date(2026, time::Month::March, 7).unwrap();
        assert_eq!(p.format(d), "security_check_url-2026.03.07");
        assert_eq!(p.template_pattern(), "security_check_url-*");
        let fixed = IndexPattern::parse("dns-hits").unwrap();
        assert_eq!(fixed.format(d), "dns-hits");
        assert_eq!(fixed.template_pattern(), "dns-hits");
        assert_eq!(
            IndexPattern::parse("a%%b-%Y%m").unwrap().format(d),
            "a%b-202603"
        );
        for bad in [
            "%Y-x", "Upper-%Y", "a b", "x-%H", "x-%", "_x", "a*", "a:b", "",
        ] {
            assert!(IndexPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fnv_known_answer() {
        // FNV-1a 128 of "a" (the reference vectors of the FNV authors).
        let mut h = Fnv128::new();
        h.bytes(b"a");
        assert_eq!(h.0, 0xd228cb696f1a8caf78912b704e4a8964);
    }
}
