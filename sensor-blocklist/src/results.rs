//! The night's results: one row per collected IP, as CSV (for people) and JSON lines (for
//! tools), in `<results_dir>/blocklist-YYYY-MM-DD.{csv,jsonl}`, written atomically.

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
        w.write_record([
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
        ])
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
