//! The nightly job's collection benchmark: N alert documents with K distinct source IPs in the
//! test Elasticsearch server, then the time to collect the distinct IPs (paged composite
//! aggregation) and run them through the never-block filter.

use std::{net::IpAddr, time::Instant};

use serde_json::json;
use time::macros::{date, datetime};

use sensor_blocklist::{
    collect::{AlertSource, ReadSection, Reader},
    neverblock::NeverBlock,
    schedule::ScheduleSection,
};

use crate::osmem::{Client, Osmem};

pub struct CollectBench {
    pub documents: usize,
    pub distinct: usize,
    pub seed_seconds: f64,
    /// One run per page size.
    pub runs: Vec<CollectRun>,
}

pub struct CollectRun {
    pub page_size: usize,
    pub collect_seconds: f64,
    pub filter_seconds: f64,
    pub collected: usize,
    pub blockable: usize,
    pub pages: u64,
}

/// Public-looking addresses, `k` distinct (a few private ones mixed in for the filter).
fn ip(i: usize, k: usize) -> IpAddr {
    let n = (i % k) as u32;
    if n.is_multiple_of(50) {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | n))
    } else {
        // 45.0.0.0 onwards, 37 apart: distinct for any k below 450,000.
        IpAddr::V4(std::net::Ipv4Addr::from(0x2d00_0000u32 + n * 37))
    }
}

pub fn run(
    documents: usize,
    distinct: usize,
    page_sizes: &[usize],
) -> anyhow::Result<CollectBench> {
    let server = Osmem::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let es = Client::new(&server.url());
        let (s, v) = es
            .request(
                reqwest::Method::PUT,
                "alerts-bench",
                Some(&json!({"mappings": {"properties": {
                    // keyword, not ip: the test server's composite `after` skips buckets on ip
                    // fields (it orders them one way and compares after_key another); real
                    // Elasticsearch and OpenSearch page ip fields correctly.
                    "source": {"properties": {"ip": {"type": "keyword"}}},
                    "@timestamp": {"type": "date"}}}})),
            )
            .await;
        anyhow::ensure!(s == 200, "create index: {v}");
        let day_start = datetime!(2026-11-22 16:00 UTC).unix_timestamp();
        let started = Instant::now();
        let http = reqwest::Client::new();
        for chunk in (0..documents).collect::<Vec<_>>().chunks(20_000) {
            let mut body = String::with_capacity(chunk.len() * 120);
            for &i in chunk {
                let ts =
                    time::OffsetDateTime::from_unix_timestamp(day_start + (i % 86_000) as i64)?;
                body.push_str("{\"index\":{}}\n");
                body.push_str(
                    &json!({
                        "@timestamp": ts.format(&time::format_description::well_known::Rfc3339)?,
                        "source": {"ip": ip(i, distinct).to_string()},
                    })
                    .to_string(),
                );
                body.push('\n');
            }
            let r = http
                .post(format!("{}/alerts-bench/_bulk", server.url()))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "bulk: {}", r.status());
        }
        es.refresh("alerts-bench").await;
        let seed_seconds = started.elapsed().as_secs_f64();

        let sched = ScheduleSection::default().parse()?;
        let (from, to) = sched.day_bounds(date!(2026 - 11 - 23));
        let sources = [AlertSource {
            index: "alerts-*".into(),
            field: "source.ip".into(),
            device: "NGFW".into(),
            timestamp_field: "@timestamp".into(),
        }];
        let mut runs = Vec::new();
        for &page_size in page_sizes {
            let reader = Reader::new(&ReadSection {
                url: server.url(),
                page_size,
                timeout_secs: 600,
                ..ReadSection::default()
            })?;
            let started = Instant::now();
            let collected = reader.collect(&sources, from, to).await?;
            let collect_seconds = started.elapsed().as_secs_f64();
            let started = Instant::now();
            let never = NeverBlock::new(&[], &[]);
            let blockable = collected
                .ips
                .keys()
                .filter(|ip| never.blockable(**ip))
                .count();
            runs.push(CollectRun {
                page_size,
                collect_seconds,
                filter_seconds: started.elapsed().as_secs_f64(),
                collected: collected.ips.len(),
                blockable,
                pages: collected.pages,
            });
        }
        Ok(CollectBench {
            documents,
            distinct,
            seed_seconds,
            runs,
        })
    })
}
