//! `sensor-bench firewall-export`: seconds to apply the blocklist to this host's packet filter
//! through the product's own export code (`sensor_blocklist::export::{nft, ipset}`) and the
//! real `nft`/`ipset`, in a namespace of its own (the root namespace's ruleset is never
//! touched). Each apply is timed whole: rendering the script, the program, the kernel.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use ipnet::IpNet;
use sensor_blocklist::export::{
    ExportEntry,
    ipset::{self, IpsetSection},
    nft::{self, NftSection},
};

use crate::{fwns::in_ns, netns::sh};

/// One timed apply.
#[derive(Debug, Clone)]
pub struct Run {
    pub target: &'static str,
    /// `empty → N` or `N → N (10% churn)`.
    pub step: &'static str,
    pub elements: usize,
    pub seconds: f64,
}

/// `n` entries as a nightly list holds them: hosts with a timeout and a reason, plus one /24 in
/// a hundred entries; `shift` moves the window (the next night's churn).
pub fn list(n: u32, shift: u32, now: i64) -> Vec<ExportEntry> {
    (shift..shift + n)
        .map(|i| {
            let net = if i % 100 == 0 {
                IpNet::new(IpAddr::V4(Ipv4Addr::from(0x6000_0000 + (i << 8))), 24)
                    .unwrap()
                    .trunc()
            } else {
                IpNet::from(IpAddr::V4(Ipv4Addr::from(0x5100_0000 + i * 3)))
            };
            ExportEntry {
                net,
                expires: Some(now + 30 * 86_400 + i64::from(i % 7) * 86_400),
                reason: "nightly intel severity high confidence high since 2026-12-01".into(),
                severity: None,
                confidence: None,
            }
        })
        .collect()
}

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

/// Runs `rounds` rounds of: empty → `n` entries, then `n` → the next night's `n` (10% churn),
/// for nft and for ipset, each round in a fresh namespace.
pub fn run(n: u32, rounds: u32) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let night1 = list(n, 0, now);
    let night2 = list(n, n / 10, now);
    for _ in 0..rounds {
        for target in ["nft", "ipset"] {
            let ns = Ns(crate::netns::unique("dsbench"));
            sh("ip", &["netns", "add", &ns.0]);
            for (step, entries) in [("empty -> N", &night1), ("N -> N, 10% churn", &night2)] {
                let entries = entries.clone();
                let (elements, seconds) = in_ns(&ns.0, move || {
                    let t = Instant::now();
                    let (elements, _) = match target {
                        "nft" => nft::apply(&NftSection::default(), &entries, now),
                        _ => ipset::apply(&IpsetSection::default(), &entries, now),
                    }
                    .map_err(|e| anyhow::anyhow!("{target}: {e}"))?;
                    Ok::<_, anyhow::Error>((elements, t.elapsed().as_secs_f64()))
                })?;
                runs.push(Run {
                    target,
                    step,
                    elements,
                    seconds,
                });
            }
        }
    }
    Ok(runs)
}
