//! What the messages say: WeCom markdown (one alert in detail, or a compact digest of many) and
//! the generic webhook's JSON.
//!
//! WeCom markdown messages carry at most 4096 bytes of UTF-8 content (群机器人配置说明,
//! markdown类型: "content: markdown内容,最长不超过4096个字节,必须是utf8编码"; a longer one is
//! refused with errcode 40058 "markdown.content exceed max length 4096"). Every message built
//! here is at most [`MAX_MARKDOWN_BYTES`], split on line boundaries.
//!
//! Text from outside (DNS names come from any client on the network; owners from a CSV) is
//! neutralised before it enters markdown: a name must not open a link, a `<font>` tag or a
//! `<@userid>` mention in the security team's chat.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt::Write as _,
    sync::Arc,
};

use serde_json::{Value, json};
use time::{
    OffsetDateTime, UtcOffset, format_description::BorrowedFormatItem, macros::format_description,
};

use super::{Alert, AlertKind};
use sensor_model::verdict::Severity;

/// WeCom's limit on `markdown.content`, in bytes.
pub const MAX_MARKDOWN_BYTES: usize = 4096;

/// Cap on one piece of outside text in a message (owner, hostname, a tag): one odd inventory
/// line must not crowd out the other alerts of a digest.
const MAX_FIELD_BYTES: usize = 96;
/// DNS names are at most 253 characters in presentation form; anything longer is not a name.
const MAX_NAME_BYTES: usize = 255;
/// Room kept in a digest for its header, the "more queued" footer and the overflow line.
const DIGEST_RESERVE: usize = 700;
/// A backlog up to this many alerts may still go out in detail; beyond it, or when the details
/// do not fit one message, a digest is sent.
const MAX_DETAILED: usize = 4;

/// Times as the messages show them: in the configured offset, which the message names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeFmt {
    pub(crate) offset: UtcOffset,
}

const FULL: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
const CLOCK: &[BorrowedFormatItem<'static>] = format_description!("[hour]:[minute]:[second]");
const DATE: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

impl TimeFmt {
    fn full(&self, t: OffsetDateTime) -> String {
        t.to_offset(self.offset)
            .format(FULL)
            .unwrap_or_else(|_| t.unix_timestamp().to_string())
    }

    fn clock(&self, t: OffsetDateTime) -> String {
        t.to_offset(self.offset)
            .format(CLOCK)
            .unwrap_or_else(|_| t.unix_timestamp().to_string())
    }

    fn date(&self, t: OffsetDateTime) -> String {
        t.to_offset(self.offset).format(DATE).unwrap_or_default()
    }

    /// `UTC` or `UTC+08:00`.
    pub(crate) fn label(&self) -> String {
        if self.offset.is_utc() {
            "UTC".into()
        } else {
            let (h, m, _) = self.offset.as_hms();
            let sign = if self.offset.is_negative() { '-' } else { '+' };
            format!("UTC{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
        }
    }
}

/// Parses `UTC`, `Z` or `±HH:MM`.
pub(crate) fn parse_offset(s: &str) -> Option<UtcOffset> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return Some(UtcOffset::UTC);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1i8, &s[1..]),
        b'-' => (-1i8, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    if h > 14 || m > 59 {
        return None;
    }
    UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

/// Outside text made inert for WeCom markdown, on one line, at most `max` bytes: for callers
/// outside the alert formatter (the nightly job's failure notice quotes an Elasticsearch or
/// provider message).
pub fn markdown_text(s: &str, max: usize) -> String {
    md(s, max)
}

/// Outside text made inert for WeCom markdown, on one line, at most `max` bytes.
fn md(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = match c {
            // Tags (`<font>`, `<@userid>` mentions) and links need these.
            '<' => '‹',
            '>' => '›',
            '[' => '(',
            ']' => ')',
            // Emphasis and code spans.
            '*' => '∗',
            '`' => '\'',
            c if c.is_control() => ' ',
            c => c,
        };
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

/// A link target we are willing to put in a message: http(s), no characters that would end the
/// markdown link early.
fn safe_url(url: &str) -> Option<&str> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 512
        && !url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "()[]<>`\"".contains(c));
    ok.then_some(url)
}

/// What one message shows of a pair: the numbers at the time of rendering. Rendering marks the
/// count as shown, so the end of the window reports only repeats no message has carried.
struct Shown {
    first: OffsetDateTime,
    last: OffsetDateTime,
    count: u64,
    before: u64,
}

fn peek(alert: &Alert) -> Shown {
    let stats = super::suppress::lock(&alert.stats);
    Shown {
        first: stats.first_seen,
        last: stats.last_seen,
        count: stats.count,
        before: stats.shown,
    }
}

fn mark(alert: &Alert, count: u64) {
    let mut stats = super::suppress::lock(&alert.stats);
    stats.shown = stats.shown.max(count);
}

fn show(alert: &Alert) -> Shown {
    let seen = peek(alert);
    mark(alert, seen.count);
    seen
}

fn severity_str(s: Option<Severity>) -> &'static str {
    match s {
        Some(Severity::Info) => "info",
        Some(Severity::Low) => "low",
        Some(Severity::Medium) => "medium",
        Some(Severity::High) => "high",
        Some(Severity::Critical) => "critical",
        None => "unknown",
    }
}

fn confidence_str(alert: &Alert) -> &'static str {
    match alert.assessment.confidence() {
        Some(sensor_model::verdict::Confidence::Low) => "low",
        Some(sensor_model::verdict::Confidence::Medium) => "medium",
        Some(sensor_model::verdict::Confidence::High) => "high",
        None => "unknown",
    }
}

/// Judgments (or tags) of every finding, first occurrence kept.
fn union<'a>(
    alert: &'a Alert,
    pick: impl Fn(&'a sensor_model::verdict::Finding) -> &'a [String],
) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for f in &alert.assessment.findings {
        for j in pick(f) {
            if !seen.contains(&j.as_str()) {
                seen.push(j.as_str());
            }
        }
    }
    seen
}

fn list(items: &[&str], max_items: usize) -> String {
    let mut s = items
        .iter()
        .take(max_items)
        .map(|i| md(i, MAX_FIELD_BYTES))
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max_items {
        let _ = write!(s, " (+{})", items.len() - max_items);
    }
    s
}

fn owner_line(alert: &Alert) -> String {
    let Some(asset) = &alert.owner else {
        return "not in inventory 未登记".into();
    };
    let field = |v: &Option<String>| v.as_deref().map(|s| md(s, MAX_FIELD_BYTES));
    let mut parts = Vec::new();
    if let Some(o) = field(&asset.owner) {
        parts.push(o);
    }
    if let Some(e) = field(&asset.employee_id) {
        parts.push(format!("工号 Employee ID **{e}**"));
    }
    if let Some(h) = field(&asset.hostname) {
        parts.push(format!("host {h}"));
    }
    if let Some(d) = field(&asset.department) {
        parts.push(d);
    }
    if parts.is_empty() {
        parts.push(format!("inventory entry {}", asset.network));
    }
    parts.join(" · ")
}

/// One alert in full.
fn detail(alert: &Alert, tf: &TimeFmt) -> String {
    let shown = show(alert);
    let severity = alert.assessment.severity();
    let color = if severity >= Some(Severity::High) {
        "warning"
    } else {
        "comment"
    };
    let title = match alert.kind {
        AlertKind::First => "DNS 告警 · malicious domain",
        AlertKind::StillActive => "DNS 告警 · still active 持续访问",
    };
    let mut s = String::new();
    let _ = writeln!(s, "### {title}");
    let _ = writeln!(
        s,
        "> **Name 域名**: `{}` ({})",
        md(&alert.name, MAX_NAME_BYTES),
        md(&alert.qtype, 16)
    );
    let _ = writeln!(s, "> **Client 客户端**: {}", alert.client);
    let _ = writeln!(s, "> **Owner 责任人**: {}", owner_line(alert));
    let _ = writeln!(
        s,
        "> **Severity 等级**: <font color=\"{color}\">{}</font> · **Confidence 置信度**: {}",
        severity_str(severity),
        confidence_str(alert)
    );
    let judgments = union(alert, |f| &f.judgments);
    if !judgments.is_empty() {
        let _ = writeln!(s, "> **Judgments 判定**: {}", list(&judgments, 16));
    }
    let tags = union(alert, |f| &f.tags);
    if !tags.is_empty() {
        let _ = writeln!(s, "> **Tags 标签**: {}", list(&tags, 16));
    }
    let _ = writeln!(
        s,
        "> **First seen 首次**: {} · **Last seen 最近**: {} ({})",
        tf.full(shown.first),
        tf.full(shown.last),
        tf.label()
    );
    let since = match alert.kind {
        AlertKind::StillActive if shown.before > 0 => {
            format!(" ({} since the last message)", shown.count - shown.before)
        }
        _ => String::new(),
    };
    let _ = writeln!(s, "> **Count 次数**: {}{since}", shown.count);
    let _ = writeln!(s, "> **Sensor**: {}", md(&alert.sensor, MAX_FIELD_BYTES));
    let links: Vec<String> = alert
        .assessment
        .findings
        .iter()
        .filter_map(|f| {
            let url = safe_url(f.permalink.as_deref()?)?;
            Some(format!("[{}]({url})", md(&f.provider, 32)))
        })
        .collect();
    // One per line, so splitting a long alert never cuts a link.
    for link in links {
        let _ = writeln!(s, "{link}");
    }
    s
}

/// One message's worth taken from a backlog.
#[derive(Debug)]
pub(crate) struct Composed {
    /// The message contents, in order; more than one only when one alert's detail is longer
    /// than a message.
    pub(crate) messages: Vec<String>,
    /// How many alerts these messages carry.
    pub(crate) alerts: usize,
    pub(crate) digest: bool,
}

/// What could not be listed, reported as counts in the next message: alerts over the backlog
/// limit, and hits dropped before suppression because the submit queue was full.
#[derive(Debug, Default)]
pub(crate) struct Overflow {
    pub(crate) alerts: u64,
    /// Per name, for the largest few (bounded, so a flood cannot grow it).
    pub(crate) names: HashMap<String, u64>,
    pub(crate) dropped_hits: u64,
}

const OVERFLOW_NAMES: usize = 1000;

impl Overflow {
    pub(crate) fn add(&mut self, name: &str) {
        self.alerts += 1;
        if let Some(n) = self.names.get_mut(name) {
            *n += 1;
        } else if self.names.len() < OVERFLOW_NAMES {
            self.names.insert(name.to_owned(), 1);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.alerts == 0 && self.dropped_hits == 0
    }

    fn line(&mut self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut lines = Vec::new();
        if self.dropped_hits > 0 {
            lines.push(format!(
                "⚠ {} hits were dropped before alerting (the alert queue was full); see the event store.",
                self.dropped_hits
            ));
        }
        if self.alerts == 0 {
            *self = Overflow::default();
            return Some(lines.join("\n"));
        }
        let mut top: Vec<(&String, &u64)> = self.names.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let names = top
            .iter()
            .take(5)
            .map(|(n, c)| format!("`{}` ×{c}", md(n, 64)))
            .collect::<Vec<_>>()
            .join(", ");
        lines.push(format!(
            "⚠ {} more alerts came while the backlog was full and are only counted here (top: {names}); see the event store for each one.",
            self.alerts
        ));
        *self = Overflow::default();
        Some(lines.join("\n"))
    }
}

/// The mention line (`<@userid>` per id; ids were checked at config time).
fn mentions_line(mentions: &[String]) -> Option<String> {
    (!mentions.is_empty()).then(|| {
        mentions
            .iter()
            .map(|m| format!("<@{m}>"))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// Builds the next message(s) from the front of `pending`, removing the alerts it carries.
/// A short backlog goes out in detail; a longer one as a digest grouped by name, as many alerts
/// as fit one message. Nothing is dropped: what does not fit stays in `pending`.
pub(crate) fn compose_markdown(
    pending: &mut VecDeque<Arc<Alert>>,
    overflow: &mut Overflow,
    tf: &TimeFmt,
    mentions: &[String],
) -> Composed {
    let mention = mentions_line(mentions);
    let mention_len = mention.as_ref().map_or(0, |m| m.len() + 1);
    if overflow.is_empty()
        && !pending.is_empty()
        && pending.len() <= MAX_DETAILED
        && let Some(composed) = try_detailed(pending, tf, mention.as_deref(), mention_len)
    {
        return composed;
    }
    digest(pending, overflow, tf, mention.as_deref(), mention_len)
}

/// Every pending alert in detail in one message, or a lone alert split over several; `None`
/// when several do not fit one message (then a digest is better than several messages).
fn try_detailed(
    pending: &mut VecDeque<Arc<Alert>>,
    tf: &TimeFmt,
    mention: Option<&str>,
    mention_len: usize,
) -> Option<Composed> {
    // Measure without marking anything shown.
    let lens: usize = pending
        .iter()
        .map(|a| detail_len_estimate(a, tf))
        .sum::<usize>()
        + pending.len() * 2
        + mention_len;
    if pending.len() > 1 && lens > MAX_MARKDOWN_BYTES {
        return None;
    }
    let alerts = pending.len();
    let mut text = pending
        .drain(..)
        .map(|a| detail(&a, tf))
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(m) = mention {
        text.push_str(m);
        text.push('\n');
    }
    Some(Composed {
        messages: split_lines(&text, MAX_MARKDOWN_BYTES),
        alerts,
        digest: false,
    })
}

/// The detail's length, rendered on a copy of the numbers so nothing is marked shown (a count
/// growing meanwhile adds a digit or two: the slack covers it, and splitting is the guarantee).
fn detail_len_estimate(alert: &Alert, tf: &TimeFmt) -> usize {
    let probe = Alert {
        stats: Arc::new(std::sync::Mutex::new(*super::suppress::lock(&alert.stats))),
        ..alert.clone()
    };
    detail(&probe, tf).len() + 8
}

fn digest(
    pending: &mut VecDeque<Arc<Alert>>,
    overflow: &mut Overflow,
    tf: &TimeFmt,
    mention: Option<&str>,
    mention_len: usize,
) -> Composed {
    let overflow_line = overflow.line();
    let room = MAX_MARKDOWN_BYTES
        .saturating_sub(DIGEST_RESERVE)
        .saturating_sub(mention_len);

    // Group by (kind, name, qtype) in arrival order of each group's first alert.
    let all: Vec<Arc<Alert>> = pending.drain(..).collect();
    let mut groups: Vec<((AlertKind, String, String), Vec<usize>)> = Vec::new();
    let mut index: HashMap<(AlertKind, String, String), usize> = HashMap::new();
    for (i, a) in all.iter().enumerate() {
        let key = (
            a.kind,
            sensor_model::verdict::normalise(&a.name),
            a.qtype.clone(),
        );
        let g = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }

    let mut taken = vec![false; all.len()];
    // The dates the entries' times fall on, for the header (entries show only the time).
    let mut dates: Option<(OffsetDateTime, OffsetDateTime)> = None;
    let mut lines: Vec<String> = Vec::new();
    let mut used = 0usize;
    let mut carried = 0usize;
    'groups: for ((kind, _, _), members) in &groups {
        let first = &all[members[0]];
        let judgments = union(first, |f| &f.judgments);
        let prefix = format!(
            "- {}`{}` {} · {}/{}{}: ",
            if *kind == AlertKind::StillActive {
                "(still active) "
            } else {
                ""
            },
            md(&first.name, MAX_NAME_BYTES),
            md(&first.qtype, 16),
            severity_str(first.assessment.severity()),
            confidence_str(first),
            if judgments.is_empty() {
                String::new()
            } else {
                format!(" · {}", list(&judgments, 3))
            }
        );
        let mut line = String::new();
        for &i in members {
            let seen = peek(&all[i]);
            let entry = format!("{}{}", digest_entry(&all[i]), digest_count(&seen, tf));
            let sep = if line.is_empty() { prefix.len() } else { 2 };
            if used + sep + entry.len() + 1 > room {
                if !line.is_empty() {
                    lines.push(line);
                }
                break 'groups;
            }
            if line.is_empty() {
                line.push_str(&prefix);
            } else {
                line.push_str("; ");
            }
            used += sep + entry.len();
            line.push_str(&entry);
            // Marked shown only now that it is in the message.
            mark(&all[i], seen.count);
            dates = Some(dates.map_or((seen.first, seen.last), |(a, b)| {
                (a.min(seen.first), b.max(seen.last))
            }));
            taken[i] = true;
            carried += 1;
        }
        if !line.is_empty() {
            used += 1;
            lines.push(line);
        }
    }
    for (i, a) in all.into_iter().enumerate() {
        if !taken[i] {
            pending.push_back(a);
        }
    }

    let days = match dates {
        Some((a, b)) if tf.date(a) != tf.date(b) => format!("{} – {}", tf.date(a), tf.date(b)),
        Some((a, _)) => tf.date(a),
        None => String::new(),
    };
    let mut text = format!(
        "### DNS 告警汇总 · digest of {carried} alerts ({days}, times {})\n",
        tf.label()
    );
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    if !pending.is_empty() {
        let _ = writeln!(
            text,
            "_{} more alerts are queued for the next message (20 messages a minute per robot)._",
            pending.len()
        );
    }
    if let Some(o) = overflow_line {
        text.push_str(&o);
        text.push('\n');
    }
    if let Some(m) = mention {
        text.push_str(m);
        text.push('\n');
    }
    Composed {
        // The reserve makes this one message; splitting is the guarantee, should it not.
        messages: split_lines(&text, MAX_MARKDOWN_BYTES),
        alerts: carried,
        digest: true,
    }
}

/// `10.1.2.3 (Zhang San 12345)` for a digest line; the count follows from [`digest_count`].
fn digest_entry(alert: &Alert) -> String {
    let mut s = alert.client.to_string();
    if let Some(asset) = &alert.owner {
        let who: Vec<String> = [&asset.owner, &asset.employee_id]
            .into_iter()
            .filter_map(|v| v.as_deref().map(|v| md(v, 32)))
            .collect();
        if !who.is_empty() {
            let _ = write!(s, " ({})", who.join(" "));
        }
    }
    s
}

/// ` ×3 08:01:02–08:05:00` or ` 08:01:02`: the count, and when the client asked (the header
/// gives the date).
fn digest_count(shown: &Shown, tf: &TimeFmt) -> String {
    if shown.count > 1 {
        format!(
            " ×{} {}–{}",
            shown.count,
            tf.clock(shown.first),
            tf.clock(shown.last)
        )
    } else {
        format!(" {}", tf.clock(shown.first))
    }
}

/// Splits text into pieces of at most `limit` bytes, on line boundaries when lines fit and on
/// character boundaries inside a longer line (never inside a UTF-8 sequence).
pub(crate) fn split_lines(text: &str, limit: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in text.split_inclusive('\n') {
        let mut line = line;
        if cur.len() + line.len() <= limit {
            cur.push_str(line);
            continue;
        }
        if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        while line.len() > limit {
            let mut cut = limit;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push(line[..cut].to_owned());
            line = &line[cut..];
        }
        cur.push_str(line);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One alert as the generic webhook's JSON (documented in [`super::WebhookSink`]).
fn alert_json(alert: &Alert) -> Value {
    let shown = show(alert);
    let rfc3339 = |t: OffsetDateTime| {
        t.to_offset(UtcOffset::UTC)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let owner = alert.owner.as_ref().map(|a| {
        json!({
            "network": a.network.to_string(),
            "owner": a.owner,
            "employee_id": a.employee_id,
            "hostname": a.hostname,
            "department": a.department,
        })
    });
    let findings: Vec<Value> = alert
        .assessment
        .findings
        .iter()
        .map(|f| {
            json!({
                "provider": f.provider,
                "severity": f.severity,
                "confidence": f.confidence,
                "judgments": f.judgments,
                "tags": f.tags,
                "permalink": f.permalink,
            })
        })
        .collect();
    json!({
        "kind": match alert.kind { AlertKind::First => "first", AlertKind::StillActive => "still_active" },
        "client": alert.client.to_string(),
        "name": alert.name,
        "qtype": alert.qtype,
        "severity": alert.assessment.severity(),
        "confidence": alert.assessment.confidence(),
        "judgments": union(alert, |f| &f.judgments),
        "tags": union(alert, |f| &f.tags),
        "first_seen": rfc3339(shown.first),
        "last_seen": rfc3339(shown.last),
        "count": shown.count,
        "owner": owner,
        "sensor": alert.sensor,
        "findings": findings,
    })
}

/// The next webhook body: up to `max_batch` alerts from the front of `pending`.
pub(crate) fn compose_json(
    pending: &mut VecDeque<Arc<Alert>>,
    overflow: &mut Overflow,
    max_batch: usize,
) -> (Value, usize) {
    let n = pending.len().min(max_batch.max(1));
    let alerts: Vec<Value> = pending.drain(..n).map(|a| alert_json(&a)).collect();
    let mut body = json!({ "source": "dns-sensor", "alerts": alerts });
    if !overflow.is_empty() {
        let names: BTreeMap<&String, &u64> = overflow.names.iter().collect();
        body["overflow"] = json!({
            "alerts": overflow.alerts,
            "names": names,
            "dropped_hits": overflow.dropped_hits,
        });
        *overflow = Overflow::default();
    }
    (body, n)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::alert::PairStats;
    use sensor_intel::inventory::Asset;
    use sensor_model::verdict::{Assessment, Confidence, Finding, Verdict};

    fn assessment() -> Arc<Assessment> {
        Arc::new(Assessment {
            verdict: Verdict::Malicious,
            findings: vec![Finding {
                provider: "threatbook".into(),
                malicious: true,
                severity: Some(Severity::High),
                confidence: Some(Confidence::Medium),
                judgments: vec!["C2".into(), "Botnet".into()],
                tags: vec!["APT:OceanLotus".into()],
                permalink: Some("https://x.threatbook.com/v5/domain/evil.example".into()),
                ip_context: None,
            }],
            errors: vec![],
        })
    }

    fn alert(client: &str, name: &str, count: u64) -> Arc<Alert> {
        let t = OffsetDateTime::from_unix_timestamp(1_764_000_000).unwrap();
        Arc::new(Alert {
            kind: AlertKind::First,
            client: client.parse().unwrap(),
            name: name.into(),
            qtype: "A".into(),
            sensor: "edge-1".into(),
            assessment: assessment(),
            owner: Some(Arc::new(Asset {
                network: "10.1.2.34/32".parse().unwrap(),
                owner: Some("张三".into()),
                employee_id: Some("12345".into()),
                hostname: Some("fin-pc-034".into()),
                department: Some("财务部".into()),
            })),
            stats: Arc::new(Mutex::new(PairStats {
                first_seen: t,
                last_seen: t + time::Duration::minutes(5),
                count,
                shown: 0,
            })),
        })
    }

    const CN: TimeFmt = TimeFmt {
        offset: match UtcOffset::from_hms(8, 0, 0) {
            Ok(o) => o,
            Err(_) => panic!(),
        },
    };

    #[test]
    fn detail_names_everything_the_team_needs() {
        let a = alert("10.1.2.34", "evil.example", 3);
        let mut pending = VecDeque::from([Arc::clone(&a)]);
        let c = compose_markdown(&mut pending, &mut Overflow::default(), &CN, &[]);
        assert!(pending.is_empty());
        assert_eq!((c.alerts, c.digest, c.messages.len()), (1, false, 1));
        let m = &c.messages[0];
        for want in [
            "`evil.example` (A)",
            "10.1.2.34",
            "张三",
            "12345",
            "fin-pc-034",
            "财务部",
            ">high<",
            "Confidence 置信度**: medium",
            "C2, Botnet",
            "APT:OceanLotus",
            // 1_764_000_000 is 2025-11-24 16:00:00 UTC.
            "2025-11-25 00:00:00",
            "2025-11-25 00:05:00",
            "UTC+08:00",
            "**Count 次数**: 3",
            "edge-1",
            "[threatbook](https://x.threatbook.com/v5/domain/evil.example)",
        ] {
            assert!(m.contains(want), "{want:?} missing from:\n{m}");
        }
        // Showing it records the count shown.
        assert_eq!(super::super::suppress::lock(&a.stats).shown, 3);
    }

    #[test]
    fn outside_text_cannot_inject_markdown() {
        let a = alert(
            "10.0.0.1",
            "x<@all>[click](http://evil)`*<font color=\"warning\">",
            1,
        );
        let mut pending = VecDeque::from([a]);
        let m = compose_markdown(&mut pending, &mut Overflow::default(), &CN, &[])
            .messages
            .concat();
        assert!(!m.contains("<@all>") && !m.contains("[click]") && !m.contains("](http://evil"));
        assert!(!m.contains("<font color=\"warning\">\u{2039}") && m.matches("<font").count() == 1);
        // Mentions from the config are written as WeCom documents them.
        let a = alert("10.0.0.1", "evil.example", 1);
        let mut pending = VecDeque::from([a]);
        let m = compose_markdown(
            &mut pending,
            &mut Overflow::default(),
            &CN,
            &["zhangsan".into()],
        )
        .messages
        .concat();
        assert!(m.ends_with("<@zhangsan>\n"), "{m}");
    }

    #[test]
    fn a_backlog_becomes_digests_that_carry_every_alert_once() {
        let mut pending: VecDeque<Arc<Alert>> = (0..1000)
            .map(|i| {
                alert(
                    &format!("10.9.{}.{}", i / 200, i % 200),
                    &format!("n{}.evil.example", i % 37),
                    1,
                )
            })
            .collect();
        let all: Vec<Arc<Alert>> = pending.iter().cloned().collect();
        let mut messages = Vec::new();
        let mut carried = 0;
        while !pending.is_empty() {
            let c = compose_markdown(&mut pending, &mut Overflow::default(), &CN, &[]);
            assert!(c.digest);
            assert!(c.alerts > 0, "progress");
            carried += c.alerts;
            assert_eq!(c.messages.len(), 1);
            messages.extend(c.messages);
        }
        assert_eq!(carried, 1000);
        assert!(messages.len() <= 40, "{} messages", messages.len());
        for m in &messages {
            assert!(m.len() <= MAX_MARKDOWN_BYTES);
        }
        for a in &all {
            assert_eq!(super::super::suppress::lock(&a.stats).shown, 1);
            let name = format!("`{}`", a.name);
            let client = format!(" {} (张三 12345)", a.client);
            let hits = messages
                .iter()
                .filter(|m| {
                    m.lines().any(|l| {
                        l.contains(&name)
                            && (l.contains(&client) || l.contains(&format!(": {}", &client[1..])))
                    })
                })
                .count();
            assert_eq!(hits, 1, "{} {}", a.client, a.name);
        }
    }

    #[test]
    fn overflow_is_reported_in_the_next_digest() {
        let mut overflow = Overflow::default();
        for _ in 0..7 {
            overflow.add("flood.example");
        }
        let mut pending = VecDeque::from([alert("10.0.0.1", "evil.example", 1)]);
        let c = compose_markdown(&mut pending, &mut overflow, &CN, &[]);
        assert!(c.digest);
        assert!(
            c.messages[0].contains("7 more alerts") && c.messages[0].contains("`flood.example` ×7")
        );
        assert_eq!(overflow.alerts, 0);
    }

    #[test]
    fn split_keeps_lines_and_utf8_whole() {
        let text = "标题\n".to_owned()
            + &"告警行 alert line\n".repeat(400)
            + &"长".repeat(3000)
            + "\nend\n";
        let parts = split_lines(&text, MAX_MARKDOWN_BYTES);
        assert!(parts.len() > 2);
        assert_eq!(parts.concat(), text);
        for p in &parts {
            assert!(p.len() <= MAX_MARKDOWN_BYTES);
        }
        // Only the over-long line (9000 bytes) is cut inside, twice; every other piece ends at a
        // line end.
        assert_eq!(parts.iter().filter(|p| !p.ends_with('\n')).count(), 2);
        // A lone alert longer than a message is split over several.
        let mut big = (*alert("10.0.0.1", "evil.example", 1)).clone();
        let mut a = (*big.assessment).clone();
        a.findings[0].tags = (0..16).map(|i| format!("{i}{}", "标".repeat(40))).collect();
        a.findings[0].judgments = (0..16).map(|i| format!("{i}{}", "判".repeat(40))).collect();
        let first = a.findings[0].clone();
        for i in 0..8 {
            a.findings.push(Finding {
                provider: format!("feed:{i}"),
                permalink: Some(format!("https://feed.example/{}", "x".repeat(480))),
                ..first.clone()
            });
        }
        big.assessment = Arc::new(a);
        let mut pending = VecDeque::from([Arc::new(big)]);
        let c = compose_markdown(&mut pending, &mut Overflow::default(), &CN, &[]);
        assert!(c.messages.len() >= 2, "{}", c.messages.len());
        assert!(c.messages.iter().all(|m| m.len() <= MAX_MARKDOWN_BYTES));
    }

    #[test]
    fn offsets_parse_and_label() {
        assert_eq!(parse_offset("UTC"), Some(UtcOffset::UTC));
        assert_eq!(parse_offset("+08:00"), UtcOffset::from_hms(8, 0, 0).ok());
        assert_eq!(parse_offset("-05:30"), UtcOffset::from_hms(-5, -30, 0).ok());
        for bad in ["8", "+8:00", "+24:00", "Asia/Shanghai", ""] {
            assert_eq!(parse_offset(bad), None, "{bad}");
        }
        assert_eq!(CN.label(), "UTC+08:00");
        let minus = TimeFmt {
            offset: parse_offset("-05:30").unwrap(),
        };
        assert_eq!(minus.label(), "UTC-05:30");
    }

    #[test]
    fn json_carries_the_documented_fields() {
        let mut pending: VecDeque<Arc<Alert>> = (0..5)
            .map(|i| alert(&format!("10.0.0.{i}"), "evil.example", 2))
            .collect();
        let mut overflow = Overflow::default();
        overflow.add("x.example");
        let (body, n) = compose_json(&mut pending, &mut overflow, 3);
        assert_eq!(n, 3);
        assert_eq!(pending.len(), 2);
        let a = &body["alerts"][0];
        assert_eq!(a["kind"], "first");
        assert_eq!(a["client"], "10.0.0.0");
        assert_eq!(a["name"], "evil.example");
        assert_eq!(a["severity"], "high");
        assert_eq!(a["confidence"], "medium");
        assert_eq!(a["count"], 2);
        assert_eq!(a["first_seen"], "2025-11-24T16:00:00Z");
        assert_eq!(a["owner"]["employee_id"], "12345");
        assert_eq!(
            a["findings"][0]["permalink"],
            "https://x.threatbook.com/v5/domain/evil.example"
        );
        assert_eq!(body["overflow"]["alerts"], 1);
    }
}
