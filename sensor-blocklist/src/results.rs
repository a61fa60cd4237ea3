//! The night's results: one row per collected IP, as CSV (for people) and JSON lines (for
//! tools), in `<results_dir>/blocklist-YYYY-MM-DD.{csv,jsonl}`, written atomically.
//!
//! The CSV is opened by people in spreadsheets, and its text comes from outside (ThreatBook's
//! judgments, tags, carrier and location; device names from alert indices): a cell starting with
//! `=`, `+`, `-`, `@` (or a tab or carriage return) would be run as a formula. Such cells are
//! written with a leading `'` (OWASP's advice for CSV injection); the JSON lines keep the text as
//! it is.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Serialize;
use time::{Date, OffsetDateTime};

use crate::{collect::SeenIp, reputation::IpVerdict};

/// One IP's row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub ip: IpAddr,
    /// `listed`, `not_listed` (clean, or below the thresholds), `never_block:<reason>`.
    pub outcome: String,
    pub is_malicious: Option<bool>,
    pub confidence_level: Option<String>,
    pub severity: Option<String>,
    pub judgments: Vec<String>,
    pub tags: Vec<String>,
    pub carrier: Option<String>,
    pub location: Option<String>,
    pub asn: Option<u32>,
    pub alerts: u64,
    pub devices: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub first_alert: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_alert: OffsetDateTime,
}

impl Row {
    pub fn new(ip: IpAddr, seen: &SeenIp, verdict: Option<&IpVerdict>, outcome: String) -> Self {
        let lower = |s: String| s.to_ascii_lowercase();
        Self {
            ip,
            outcome,
            is_malicious: verdict.map(|v| v.is_malicious),
            confidence_level: verdict
                .and_then(|v| v.confidence_level)
                .map(|c| lower(format!("{c:?}"))),
            severity: verdict
                .and_then(|v| v.severity)
                .map(|s| lower(format!("{s:?}"))),
            judgments: verdict.map(|v| v.judgments.clone()).unwrap_or_default(),
            tags: verdict.map(|v| v.tags.clone()).unwrap_or_default(),
            carrier: verdict.and_then(|v| v.carrier.clone()),
            location: verdict.and_then(|v| v.location.clone()),
            asn: verdict.and_then(|v| v.asn),
            alerts: seen.alerts,
            devices: seen.devices.iter().cloned().collect(),
            first_alert: seen.first,
            last_alert: seen.last,
        }
    }
}

/// A CSV cell a spreadsheet will not run as a formula: a leading `'` when the text starts with
/// `=`, `+`, `-`, `@`, a tab or a carriage return.
pub fn neutralise(cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// Writes both files for `day`; returns their paths.
pub fn write(dir: &Path, day: Date, rows: &[Row]) -> std::io::Result<(PathBuf, PathBuf)> {
    let stem = format!(
        "blocklist-{:04}-{:02}-{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    );
    let csv_path = dir.join(format!("{stem}.csv"));
    let jsonl_path = dir.join(format!("{stem}.jsonl"));
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "ip",
        "outcome",
        "is_malicious",
        "confidence_level",
        "severity",
        "judgments",
        "tags",
        "carrier",
        "location",
        "asn",
        "alerts",
        "devices",
        "first_alert",
        "last_alert",
    ])
    .map_err(std::io::Error::other)?;
    let ts = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    for r in rows {
        w.write_record(
            [
                r.ip.to_string(),
                r.outcome.clone(),
                r.is_malicious.map(|b| b.to_string()).unwrap_or_default(),
                r.confidence_level.clone().unwrap_or_default(),
                r.severity.clone().unwrap_or_default(),
                r.judgments.join(";"),
                r.tags.join(";"),
                r.carrier.clone().unwrap_or_default(),
                r.location.clone().unwrap_or_default(),
                r.asn.map(|a| a.to_string()).unwrap_or_default(),
                r.alerts.to_string(),
                r.devices.join(";"),
                ts(r.first_alert),
                ts(r.last_alert),
            ]
            .map(neutralise),
        )
        .map_err(std::io::Error::other)?;
    }
    let csv = w
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut jsonl = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut jsonl, r).map_err(std::io::Error::other)?;
        jsonl.push(b'\n');
    }
    std::fs::create_dir_all(dir)?;
    sensor_model::files::write_atomic(&csv_path, &csv)?;
    sensor_model::files::write_atomic(&jsonl_path, &jsonl)?;
    Ok((csv_path, jsonl_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn formula_cells_are_neutralised_in_the_csv_only() {
        for (text, want) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+1+1", "'+1+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("C2", "C2"),
            ("China Telecom", "China Telecom"),
            ("", ""),
        ] {
            assert_eq!(neutralise(text.to_owned()), want, "{text:?}");
        }
        let t = OffsetDateTime::UNIX_EPOCH;
        let seen = SeenIp {
            alerts: 1,
            devices: BTreeSet::from(["=cmd|' /C calc'!A0".to_owned()]),
            first: t,
            last: t,
        };
        let verdict = IpVerdict {
            is_malicious: true,
            confidence_level: None,
            severity: None,
            judgments: vec!["=1+2".into()],
            tags: Vec::new(),
            carrier: Some("@evil".into()),
            location: None,
            asn: None,
            asn_info: None,
            checked: t,
        };
        let row = Row::new(
            "203.0.113.9".parse().unwrap(),
            &seen,
            Some(&verdict),
            "listed".into(),
        );
        let dir = tempfile::tempdir().unwrap();
        let day = time::macros::date!(2026 - 12 - 05);
        let (csv_path, jsonl_path) = write(dir.path(), day, &[row]).unwrap();
        let mut r = csv::Reader::from_path(&csv_path).unwrap();
        let rec = r.records().next().unwrap().unwrap();
        assert_eq!(&rec[5], "'=1+2");
        assert_eq!(&rec[7], "'@evil");
        assert_eq!(&rec[11], "'=cmd|' /C calc'!A0");
        assert_eq!(&rec[0], "203.0.113.9");
        let jsonl = std::fs::read_to_string(jsonl_path).unwrap();
        assert!(jsonl.contains("\"=1+2\""), "{jsonl}");
    }
}
