//! The nightly job's collection benchmark: N alert documents with K distinct source IPs in the
//! test Elasticsearch server, then the time to collect the distinct IPs (paged composite
//! aggregation) and run them through the never-block filter.

use std::{net::IpAddr, time::Instant};

use serde_json::json;
use time::macros::{date, datetime};

use crate::{
    blocklist::{
        collect::{AlertSource, ReadSection, Reader},
        neverblock::NeverBlock,
        schedule::ScheduleSection,
    },
    testkit::osmem::{Client, Osmem},
};

pub struct CollectBench {
    pub documents: usize,
    pub distinct: usize,
    pub seed_seconds: f64,
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
        IpAddr::V4(std::net::Ipv4Addr::from(
            0x2d00_0000u32.wrapping_add(n.wrapping_mul(2_654_435_761) >> 8),
        ))
    }
}

pub fn run(documents: usize, distinct: usize, page_size: usize) -> anyhow::Result<CollectBench> {
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
                    "source": {"properties": {"ip": {"type": "ip"}}},
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

        let reader = Reader::new(&ReadSection {
            url: server.url(),
            page_size,
            ..ReadSection::default()
        })?;
        let sched = ScheduleSection::default().parse()?;
        let (from, to) = sched.day_bounds(date!(2026 - 11 - 23));
        let sources = [AlertSource {
            index: "alerts-*".into(),
            field: "source.ip".into(),
            device: "NGFW".into(),
            timestamp_field: "@timestamp".into(),
        }];
        eprintln!("seeded in {seed_seconds:.1} s; collecting with pages of {page_size}");
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
        let filter_seconds = started.elapsed().as_secs_f64();
        Ok(CollectBench {
            documents,
            distinct,
            seed_seconds,
            collect_seconds,
            filter_seconds,
            collected: collected.ips.len(),
            blockable,
            pages: collected.pages,
        })
    })
}
