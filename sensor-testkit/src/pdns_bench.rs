//! `sensor-bench pdns`: the passive DNS store's ingest rate, a simulated day (or more) of a
//! 7,000 queries/s site with its size and a 30-day projection, and lookup latency by name.
//!
//! The traffic model (every number is a parameter in [`Model`]):
//! - 2,000 clients; how busy each is follows a Zipf law (s = 0.6): a few servers and busy
//!   desktops, a long tail of quiet ones.
//! - A universe of 1,000,000 recurring names whose popularity is Zipf (s = 1.0). Each client
//!   has a working set of 1,000 of them drawn by that popularity (so the hot names are in
//!   nearly every set), and picks among its set by Zipf (s = 1.0) again: a client re-asks
//!   its few usual names all day, as stub resolvers do once TTLs lapse. Each day 5% of every
//!   working set is replaced by fresh draws.
//! - A long tail of names never seen before: 0.025% of queries (about 150,000 a day at
//!   7,000/s), each under one of 5,000 parent zones (CDN shards, telemetry, DGA-like names).
//! - 1-4 answers per name (40/30/20/10%); one name in twenty starts with a CNAME, one in seven
//!   has AAAA answers; the 1,000 most popular names are CDN-like and rotate their addresses
//!   every hour. TTL 300.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Instant,
};

use sensor_pdns::{
    Answer, AnswerData, Batch, DAY_SECS, Observation, RTYPE_A, RTYPE_AAAA, RTYPE_CNAME, Retention,
    Store,
};

/// 2026-12-01T00:00:00Z: the first simulated day.
pub const DAY0: i64 = 1_796_083_200;

#[derive(Debug, Clone)]
pub struct Model {
    pub queries_per_second: u64,
    pub clients: usize,
    pub client_skew: f64,
    pub universe: usize,
    pub name_skew: f64,
    pub working_set: usize,
    pub set_skew: f64,
    pub daily_churn: f64,
    pub unique_fraction: f64,
    pub zones: u64,
    pub cdn_names: usize,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            queries_per_second: 7_000,
            clients: 2_000,
            client_skew: 0.6,
            universe: 1_000_000,
            name_skew: 1.0,
            working_set: 1_000,
            set_skew: 1.0,
            daily_churn: 0.05,
            unique_fraction: 0.000_25,
            zones: 5_000,
            cdn_names: 1_000,
        }
    }
}

/// xorshift64*: fast, seeded, the same stream on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Cumulative Zipf weights over `n` ranks; a draw is a binary search.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            acc += 1.0 / (k as f64).powf(s);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

fn draw(cdf: &[f64], rng: &mut Rng) -> usize {
    let u = rng.unit();
    cdf.partition_point(|&c| c < u).min(cdf.len() - 1)
}

/// The query stream of [`Model`].
pub struct Traffic {
    model: Model,
    rng: Rng,
    client_cdf: Vec<f64>,
    name_cdf: Vec<f64>,
    set_cdf: Vec<f64>,
    sets: Vec<Vec<u32>>,
    names: Vec<String>,
    unique_seq: u64,
    /// Reused for every observation (no allocation per query).
    obs: Observation,
}

impl Traffic {
    pub fn new(model: Model, seed: u64) -> Self {
        let mut rng = Rng(seed | 1);
        let client_cdf = zipf_cdf(model.clients, model.client_skew);
        let name_cdf = zipf_cdf(model.universe, model.name_skew);
        let set_cdf = zipf_cdf(model.working_set, model.set_skew);
        let sets = (0..model.clients)
            .map(|_| {
                (0..model.working_set)
                    .map(|_| draw(&name_cdf, &mut rng) as u32)
                    .collect()
            })
            .collect();
        let names = (0..model.universe)
            .map(|r| {
                let h = mix(r as u64);
                let tld = ["com", "net", "org", "cn", "io", "de"][(h % 6) as usize];
                match h % 3 {
                    0 => format!("www.site{r}.{tld}"),
                    1 => format!("api{}.svc{r}.{tld}", h % 4),
                    _ => format!("n{r}.example-{}.{tld}", h % 997),
                }
            })
            .collect();
        Self {
            model,
            rng,
            client_cdf,
            name_cdf,
            set_cdf,
            sets,
            names,
            unique_seq: 0,
            obs: Observation {
                ts_unix_secs: 0,
                client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                name: String::with_capacity(64),
                answers: Vec::with_capacity(4),
            },
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The name at popularity rank `r` (0 = most popular).
    pub fn name(&self, r: usize) -> &str {
        &self.names[r]
    }

    /// A popularity-weighted draw from the universe (what an analyst is likely to look up).
    pub fn popular_rank(&mut self) -> usize {
        draw(&self.name_cdf, &mut self.rng)
    }

    pub fn uniform_rank(&mut self) -> usize {
        (self.rng.next() % self.model.universe as u64) as usize
    }

    /// Replaces `daily_churn` of every working set (called between simulated days).
    pub fn churn(&mut self) {
        let per_set = (self.model.working_set as f64 * self.model.daily_churn) as usize;
        for c in 0..self.sets.len() {
            for _ in 0..per_set {
                let slot = (self.rng.next() % self.model.working_set as u64) as usize;
                self.sets[c][slot] = draw(&self.name_cdf, &mut self.rng) as u32;
            }
        }
    }

    /// The next query at `ts`.
    pub fn next(&mut self, ts: i64) -> &Observation {
        let c = draw(&self.client_cdf, &mut self.rng);
        self.obs.ts_unix_secs = ts;
        self.obs.client = IpAddr::V4(Ipv4Addr::new(10, 20, (c >> 8) as u8, c as u8));
        self.obs.name.clear();
        self.obs.answers.clear();
        if self.rng.unit() < self.model.unique_fraction {
            self.unique_seq += 1;
            let seq = self.unique_seq;
            let h = mix(seq ^ 0x5eed);
            use std::fmt::Write as _;
            let _ = write!(
                self.obs.name,
                "u{h:012x}.t{}.example-tail.net",
                seq % self.model.zones
            );
            self.obs.answers.push(Answer {
                rtype: RTYPE_A,
                data: AnswerData::Ip(IpAddr::V4(Ipv4Addr::from(h as u32))),
                ttl: 60,
            });
            return &self.obs;
        }
        let r = self.sets[c][draw(&self.set_cdf, &mut self.rng)] as usize;
        self.obs.name.push_str(&self.names[r]);
        let h = mix(r as u64 ^ 0xa115);
        let epoch = if r < self.model.cdn_names {
            (ts / 3600) as u64
        } else {
            0
        };
        if h.is_multiple_of(20) {
            self.obs.answers.push(Answer {
                rtype: RTYPE_CNAME,
                data: AnswerData::Name(format!("edge{}.cdn{}.example-cdn.net", h % 500, h % 7)),
                ttl: 300,
            });
        }
        let n = match h % 10 {
            0..=3 => 1,
            4..=6 => 2,
            7..=8 => 3,
            _ => 4,
        };
        for i in 0..n {
            let a = mix(h ^ (i << 56) ^ (epoch << 20));
            self.obs.answers.push(if h.is_multiple_of(7) {
                Answer {
                    rtype: RTYPE_AAAA,
                    data: AnswerData::Ip(IpAddr::V6(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        (a >> 48) as u16,
                        (a >> 32) as u16,
                        0,
                        0,
                        (a >> 16) as u16,
                        a as u16,
                    ))),
                    ttl: 300,
                }
            } else {
                Answer {
                    rtype: RTYPE_A,
                    data: AnswerData::Ip(IpAddr::V4(Ipv4Addr::from(a as u32))),
                    ttl: 300,
                }
            });
        }
        &self.obs
    }
}

/// CPU seconds of the calling thread.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and
    // CLOCK_THREAD_CPUTIME_ID is a clock every Linux kernel provides.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

pub struct IngestRate {
    pub batches: usize,
    pub batch_size: usize,
    pub observations: u64,
    pub answers: u64,
    pub rows: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
}

/// (a) `batches` batches of `batch_size` observations of the model's traffic (pre-generated,
/// so only the store is timed), ingested one durable commit each into a fresh store.
pub fn ingest_rate(dir: &Path, batches: usize, batch_size: usize) -> IngestRate {
    let mut traffic = Traffic::new(Model::default(), 42);
    let qps = traffic.model().queries_per_second;
    let mut q: u64 = 0;
    let input: Vec<Vec<Observation>> = (0..batches)
        .map(|_| {
            (0..batch_size)
                .map(|_| {
                    q += 1;
                    traffic.next(DAY0 + (q / qps) as i64).clone()
                })
                .collect()
        })
        .collect();
    let mut store = Store::open(&dir.join("rate.sqlite"), Retention::days(30).unwrap()).unwrap();
    let mut r = IngestRate {
        batches,
        batch_size,
        observations: 0,
        answers: 0,
        rows: 0,
        seconds: 0.0,
        cpu_seconds: 0.0,
    };
    let (t, cpu) = (Instant::now(), thread_cpu());
    for b in &input {
        let s = store.ingest(b).unwrap();
        r.observations += s.observations;
        r.answers += s.answers;
        r.rows += s.rows;
    }
    r.seconds = t.elapsed().as_secs_f64();
    r.cpu_seconds = thread_cpu() - cpu;
    r
}

pub struct DayResult {
    pub day: u32,
    pub queries: u64,
    pub answers: u64,
    pub commits: u64,
    pub seconds: f64,
    pub disk_bytes: u64,
    pub names: u64,
    pub seen_rows: u64,
    pub answer_rows: u64,
}

/// (b) `days` days of the model's traffic, each query at its time of day, committed every
/// `flush_seconds` of simulated time; the size after each day (WAL checkpointed).
pub fn simulate_days(
    path: &Path,
    days: u32,
    flush_seconds: u64,
    mut progress: impl FnMut(&DayResult),
) -> (Traffic, Vec<DayResult>) {
    let mut traffic = Traffic::new(Model::default(), 7);
    let qps = traffic.model().queries_per_second;
    let mut store = Store::open(path, Retention::days(30).unwrap()).unwrap();
    let mut out = Vec::new();
    for day in 0..days {
        if day > 0 {
            traffic.churn();
        }
        let t = Instant::now();
        let start = DAY0 + i64::from(day) * DAY_SECS;
        let mut r = DayResult {
            day: day + 1,
            queries: 0,
            answers: 0,
            commits: 0,
            seconds: 0.0,
            disk_bytes: 0,
            names: 0,
            seen_rows: 0,
            answer_rows: 0,
        };
        let mut batch = Batch::new();
        for sec in 0..DAY_SECS as u64 {
            let ts = start + sec as i64;
            for _ in 0..qps {
                let o = traffic.next(ts);
                r.answers += o.answers.len() as u64;
                batch.add(o).unwrap();
            }
            r.queries += qps;
            if (sec + 1).is_multiple_of(flush_seconds) {
                store.commit(&batch).unwrap();
                r.commits += 1;
                batch = Batch::new();
            }
        }
        store.commit(&batch).unwrap();
        store.prune(start + DAY_SECS - 1).unwrap();
        store.checkpoint().unwrap();
        r.seconds = t.elapsed().as_secs_f64();
        let s = store.stats().unwrap();
        r.disk_bytes = s.disk_bytes;
        r.names = s.names;
        r.seen_rows = s.seen_rows;
        r.answer_rows = s.answer_rows;
        progress(&r);
        out.push(r);
    }
    (traffic, out)
}

pub struct Latency {
    pub lookups: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_rows: f64,
}

/// (c) `by_name` through a read-only handle (what `sensor pdns name` opens), on names drawn
/// half by popularity (the hot names hold the most client rows) and half uniformly.
pub fn lookup_latency(path: &Path, traffic: &mut Traffic, lookups: usize) -> Latency {
    let store = Store::open_read_only(path).unwrap();
    let mut ms = Vec::with_capacity(lookups);
    let mut rows = 0usize;
    for i in 0..lookups {
        let r = if i % 2 == 0 {
            traffic.popular_rank()
        } else {
            traffic.uniform_rank()
        };
        let name = traffic.name(r).to_owned();
        let t = Instant::now();
        let rep = store.by_name(&name, 0).unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        rows += rep.answers.len() + rep.clients.len();
    }
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    Latency {
        lookups,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: ms[ms.len() - 1],
        mean_rows: rows as f64 / lookups as f64,
    }
}
