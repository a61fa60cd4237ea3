//! `sensor pdns name|domain|ip|client VALUE [--since DURATION|DATE] [--json]`: what the passive
//! DNS store saw, read from `pdns.path` beside a running daemon (SQLite WAL: the reader sees the
//! last commit and never blocks the writer).

use std::net::IpAddr;

use anyhow::Context as _;
use clap::ValueEnum;
use sensor_pdns::{AnswerRecord, ClientRecord, Report, Seen, Store, rtype_name};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PdnsBy {
    /// Exactly this name: its answers and the clients that resolved it.
    Name,
    /// The name and every name below it (`evil.example` covers `a.b.evil.example`).
    Domain,
    /// The names that resolved to this address, and their clients.
    Ip,
    /// The names this client resolved.
    Client,
}

impl PdnsBy {
    fn as_str(self) -> &'static str {
        match self {
            PdnsBy::Name => "name",
            PdnsBy::Domain => "domain",
            PdnsBy::Ip => "ip",
            PdnsBy::Client => "client",
        }
    }
}

pub fn pdns(
    config: Config,
    by: PdnsBy,
    value: &str,
    since: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let since = since.map(|s| parse_since(s, now)).transpose()?;
    let section = &config.pdns;
    if !section.path.exists() {
        anyhow::bail!(
            "no passive DNS store at {} ({})",
            section.path.display(),
            if section.enabled {
                "the daemon creates it when it runs with [pdns] enabled; see pdns.path"
            } else {
                "pdns.enabled is false in this config"
            }
        );
    }
    let store = Store::open_read_only(&section.path)?;
    let from = since.unwrap_or(0);
    let ip = || -> anyhow::Result<IpAddr> {
        value
            .trim()
            .parse()
            .with_context(|| format!("{value:?} is not an IP address"))
    };
    let report = match by {
        PdnsBy::Name => store.by_name(value, from)?,
        PdnsBy::Domain => store.by_domain(value, from)?,
        PdnsBy::Ip => store.by_ip(ip()?, from)?,
        PdnsBy::Client => store.by_client(ip()?, from)?,
    };
    if json {
        println!("{}", to_json(&report, by, value, since));
    } else {
        print!("{}", render(&report, by, value, since));
    }
    Ok(())
}

/// `--since`: a duration back from now (`2h`, `7d`, `30min`), a UTC date (`2026-12-01`) or an
/// RFC 3339 time (`2026-12-01T08:00:00Z`); unix seconds.
pub fn parse_since(text: &str, now: i64) -> anyhow::Result<i64> {
    let t = text.trim();
    if let Ok(d) = humantime::parse_duration(t) {
        return Ok(now.saturating_sub(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
    }
    if let Ok(date) =
        time::Date::parse(t, time::macros::format_description!("[year]-[month]-[day]"))
    {
        return Ok(date.midnight().assume_utc().unix_timestamp());
    }
    if let Ok(at) = OffsetDateTime::parse(t, &Rfc3339) {
        return Ok(at.unix_timestamp());
    }
    anyhow::bail!(
        "--since {text:?}: expected a duration back from now (2h, 7d), a date (2026-12-01) or a time (2026-12-01T08:00:00Z)"
    )
}

fn utc(ts: i64, rfc3339: bool) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp(ts) else {
        return ts.to_string();
    };
    let formatted = if rfc3339 {
        t.format(&Rfc3339)
    } else {
        t.format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
    };
    formatted.unwrap_or_else(|_| ts.to_string())
}

fn date(ts: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!("[year]-[month]-[day]"))
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

fn seen_json(s: &Seen) -> serde_json::Value {
    serde_json::json!({
        "first_seen": utc(s.first_seen, true),
        "last_seen": utc(s.last_seen, true),
        "count": s.count,
        "per_day": s.per_day.iter().map(|d| serde_json::json!({
            "date": date(d.day),
            "count": d.count,
        })).collect::<Vec<_>>(),
    })
}

fn answer_json(a: &AnswerRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "name": a.name,
        "type": rtype_name(a.rtype),
        "data": a.data.to_string(),
        "ttl": a.ttl,
    });
    merge(&mut v, seen_json(&a.seen));
    v
}

fn client_json(c: &ClientRecord) -> serde_json::Value {
    let mut v = serde_json::json!({ "name": c.name, "client": c.client.to_string() });
    merge(&mut v, seen_json(&c.seen));
    v
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

/// One JSON object: the query, then the answers and clients, times in RFC 3339 (UTC).
pub fn to_json(r: &Report, by: PdnsBy, value: &str, since: Option<i64>) -> serde_json::Value {
    serde_json::json!({
        "query": {
            "by": by.as_str(),
            "value": value,
            "since": since.map(|s| utc(s, true)),
        },
        "answers": r.answers.iter().map(answer_json).collect::<Vec<_>>(),
        "clients": r.clients.iter().map(client_json).collect::<Vec<_>>(),
    })
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(&format!("{cell:<w$}"));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// The text form: the answers, then the clients; days = the days with sightings in the window
/// (`--json` has the count of each).
pub fn render(r: &Report, by: PdnsBy, value: &str, since: Option<i64>) -> String {
    let window = since.map_or_else(String::new, |s| format!(" since {} UTC", utc(s, false)));
    if r.answers.is_empty() && r.clients.is_empty() {
        return format!("nothing seen for {} {value}{window}\n", by.as_str());
    }
    let mut out = String::new();
    if by != PdnsBy::Client {
        out.push_str(&format!("answers ({}){window}:\n", r.answers.len()));
        let rows: Vec<Vec<String>> = r
            .answers
            .iter()
            .map(|a| {
                vec![
                    a.name.clone(),
                    rtype_name(a.rtype).into(),
                    a.data.to_string(),
                    a.ttl.to_string(),
                    utc(a.seen.first_seen, false),
                    utc(a.seen.last_seen, false),
                    a.seen.count.to_string(),
                    a.seen.per_day.len().to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "NAME",
                "TYPE",
                "DATA",
                "TTL",
                "FIRST SEEN (UTC)",
                "LAST SEEN (UTC)",
                "COUNT",
                "DAYS",
            ],
            &rows,
        ));
        out.push('\n');
    }
    out.push_str(&format!("clients ({}){window}:\n", r.clients.len()));
    let rows: Vec<Vec<String>> = r
        .clients
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.client.to_string(),
                utc(c.seen.first_seen, false),
                utc(c.seen.last_seen, false),
                c.seen.count.to_string(),
                c.seen.per_day.len().to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NAME",
            "CLIENT",
            "FIRST SEEN (UTC)",
            "LAST SEEN (UTC)",
            "COUNT",
            "DAYS",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use sensor_pdns::{AnswerData, DayCount, RTYPE_A};

    use super::*;

    /// 2026-12-01T00:00:00Z.
    const DAY0: i64 = 1_796_083_200;

    fn seen(first: i64, last: i64, days: &[(i64, u64)]) -> Seen {
        Seen {
            first_seen: first,
            last_seen: last,
            count: days.iter().map(|d| d.1).sum(),
            per_day: days
                .iter()
                .map(|&(day, count)| DayCount { day, count })
                .collect(),
        }
    }

    fn report() -> Report {
        Report {
            answers: vec![AnswerRecord {
                name: "evil.example".into(),
                rtype: RTYPE_A,
                data: AnswerData::Ip("192.0.2.1".parse().unwrap()),
                ttl: 300,
                seen: seen(
                    DAY0 + 61,
                    DAY0 + 86_400 + 3_600,
                    &[(DAY0, 2), (DAY0 + 86_400, 5)],
                ),
            }],
            clients: vec![ClientRecord {
                name: "a.evil.example".into(),
                client: "10.0.0.7".parse().unwrap(),
                seen: seen(DAY0 + 61, DAY0 + 61, &[(DAY0, 1)]),
            }],
        }
    }

    #[test]
    fn since_takes_durations_dates_and_times() {
        let now = DAY0 + 10 * 86_400;
        assert_eq!(parse_since("7d", now).unwrap(), DAY0 + 3 * 86_400);
        assert_eq!(parse_since("2h", now).unwrap(), now - 7_200);
        assert_eq!(parse_since("2026-12-01", now).unwrap(), DAY0);
        assert_eq!(
            parse_since("2026-12-01T08:00:00Z", now).unwrap(),
            DAY0 + 8 * 3_600
        );
        let e = parse_since("last tuesday", now).unwrap_err().to_string();
        assert!(e.contains("--since") && e.contains("2026-12-01"), "{e}");
    }

    #[test]
    fn text_lists_answers_then_clients_with_utc_times() {
        let text = render(&report(), PdnsBy::Domain, "evil.example", Some(DAY0));
        let want = "\
answers (1) since 2026-12-01 00:00:00 UTC:
NAME          TYPE  DATA       TTL  FIRST SEEN (UTC)     LAST SEEN (UTC)      COUNT  DAYS
evil.example  A     192.0.2.1  300  2026-12-01 00:01:01  2026-12-02 01:00:00  7      2

clients (1) since 2026-12-01 00:00:00 UTC:
NAME            CLIENT    FIRST SEEN (UTC)     LAST SEEN (UTC)      COUNT  DAYS
a.evil.example  10.0.0.7  2026-12-01 00:01:01  2026-12-01 00:01:01  1      1
";
        assert_eq!(text, want);
        assert_eq!(
            render(&Report::default(), PdnsBy::Ip, "192.0.2.9", None),
            "nothing seen for ip 192.0.2.9\n"
        );
        // A client's view lists only the names it resolved.
        assert!(!render(&report(), PdnsBy::Client, "10.0.0.7", None).contains("answers"));
    }

    #[test]
    fn json_has_the_query_and_per_day_counts() {
        let v = to_json(&report(), PdnsBy::Name, "evil.example", None);
        assert_eq!(v["query"]["by"], "name");
        assert!(v["query"]["since"].is_null());
        let a = &v["answers"][0];
        assert_eq!(a["type"], "A");
        assert_eq!(a["data"], "192.0.2.1");
        assert_eq!(a["first_seen"], "2026-12-01T00:01:01Z");
        assert_eq!(a["count"], 7);
        assert_eq!(
            a["per_day"],
            serde_json::json!([
                {"date": "2026-12-01", "count": 2},
                {"date": "2026-12-02", "count": 5}
            ])
        );
        assert_eq!(v["clients"][0]["client"], "10.0.0.7");
    }
}
