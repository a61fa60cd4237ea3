//! One transaction's worth of observations, aggregated in memory before it touches the disk:
//! a name asked a thousand times by one client in a batch becomes one row update, not a
//! thousand.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::{
    days::DAY_SECS,
    error::InputError,
    model::{Answer, AnswerData, Observation, RTYPE_A, RTYPE_AAAA, RTYPE_CNAME},
    name,
};

/// The latest timestamp accepted: 9999-12-31T23:59:59Z.
const MAX_TS: i64 = 253_402_300_799;

/// Sightings of one tuple on one day.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Agg {
    pub first: i64,
    pub last: i64,
    pub count: u64,
    /// The TTL at `last` (answers only).
    pub ttl: u32,
}

impl Agg {
    fn new(ts: i64, ttl: u32) -> Self {
        Self {
            first: ts,
            last: ts,
            count: 1,
            ttl,
        }
    }

    fn add(&mut self, ts: i64, ttl: u32) {
        self.first = self.first.min(ts);
        if ts >= self.last {
            self.last = ts;
            self.ttl = ttl;
        }
        self.count += 1;
    }
}

/// An answer's data with names replaced by their index in the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Data {
    V4([u8; 4]),
    V6([u8; 16]),
    /// Index into [`Batch::targets`].
    Target(u32),
}

/// Observations aggregated per (name, client, day) and (name, answer, day), ready for
/// [`crate::Store::commit`]. Build it with [`Batch::add`] as observations arrive, or let
/// [`crate::Store::ingest`] build it from a slice.
#[derive(Debug, Default)]
pub struct Batch {
    /// Presentation name → index into `name_keys`.
    names: HashMap<String, u32>,
    pub(crate) name_keys: Vec<String>,
    /// The latest day each name was seen in this batch.
    pub(crate) name_last_day: Vec<u32>,
    pub(crate) clients: Vec<IpAddr>,
    pub(crate) client_last_day: Vec<u32>,
    client_index: HashMap<IpAddr, u32>,
    /// CNAME targets, in presentation form.
    pub(crate) targets: Vec<String>,
    target_index: HashMap<String, u32>,
    /// (name, client, day).
    pub(crate) seen: HashMap<(u32, u32, u32), Agg>,
    /// (name, rtype, data, day).
    pub(crate) answers: HashMap<(u32, u16, Data, u32), Agg>,
    observations: u64,
    answer_count: u64,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Observations added.
    pub fn len(&self) -> u64 {
        self.observations
    }

    pub fn is_empty(&self) -> bool {
        self.observations == 0
    }

    /// Answers added (over all observations).
    pub fn answer_count(&self) -> u64 {
        self.answer_count
    }

    /// Checks an observation and adds it; a refused one leaves the batch as it was.
    pub fn add(&mut self, o: &Observation) -> Result<(), InputError> {
        if !(0..=MAX_TS).contains(&o.ts_unix_secs) {
            return Err(InputError::Time(o.ts_unix_secs));
        }
        let ts = o.ts_unix_secs;
        let day = u32::try_from(ts.div_euclid(DAY_SECS)).map_err(|_| InputError::Time(ts))?;
        // Everything is checked before anything is added.
        enum Slot {
            Known(u32),
            New(String),
        }
        let slot = match self.names.get(o.name.as_str()) {
            Some(&n) => Slot::Known(n),
            None => Slot::New(name::key(&o.name)?),
        };
        for (index, a) in o.answers.iter().enumerate() {
            check_answer(index, a)?;
            if let AnswerData::Name(t) = &a.data
                && !self.target_index.contains_key(t.as_str())
            {
                name::key(t).map_err(|e| InputError::Target {
                    index,
                    cause: Box::new(e),
                })?;
            }
        }

        let n = match slot {
            Slot::Known(n) => n,
            Slot::New(key) => {
                let n = self.name_keys.len() as u32;
                self.names.insert(o.name.clone(), n);
                self.name_keys.push(key);
                self.name_last_day.push(day);
                n
            }
        };
        let last = &mut self.name_last_day[n as usize];
        *last = (*last).max(day);
        let client = o.client.to_canonical();
        let c = match self.client_index.get(&client) {
            Some(&c) => c,
            None => {
                let c = self.clients.len() as u32;
                self.client_index.insert(client, c);
                self.clients.push(client);
                self.client_last_day.push(day);
                c
            }
        };
        let last = &mut self.client_last_day[c as usize];
        *last = (*last).max(day);
        self.seen
            .entry((n, c, day))
            .and_modify(|a| a.add(ts, 0))
            .or_insert_with(|| Agg::new(ts, 0));
        for a in &o.answers {
            let data = match &a.data {
                AnswerData::Ip(IpAddr::V4(v4)) => Data::V4(v4.octets()),
                AnswerData::Ip(IpAddr::V6(v6)) => Data::V6(v6.octets()),
                AnswerData::Name(t) => Data::Target(self.target(t)),
            };
            self.answers
                .entry((n, a.rtype, data, day))
                .and_modify(|g| g.add(ts, a.ttl))
                .or_insert_with(|| Agg::new(ts, a.ttl));
        }
        self.observations += 1;
        self.answer_count += o.answers.len() as u64;
        Ok(())
    }

    fn target(&mut self, t: &str) -> u32 {
        if let Some(&i) = self.target_index.get(t) {
            return i;
        }
        let i = self.targets.len() as u32;
        self.target_index.insert(t.to_owned(), i);
        self.targets.push(t.to_owned());
        i
    }
}

fn check_answer(index: usize, a: &Answer) -> Result<(), InputError> {
    let bad = |reason| InputError::Answer {
        index,
        rtype: a.rtype,
        reason,
    };
    match (a.rtype, &a.data) {
        (RTYPE_A, AnswerData::Ip(IpAddr::V4(_))) => Ok(()),
        (RTYPE_AAAA, AnswerData::Ip(IpAddr::V6(_))) => Ok(()),
        (RTYPE_CNAME, AnswerData::Name(_)) => Ok(()),
        (RTYPE_A, _) => Err(bad("(A) needs an IPv4 address")),
        (RTYPE_AAAA, _) => Err(bad("(AAAA) needs an IPv6 address")),
        (RTYPE_CNAME, _) => Err(bad("(CNAME) needs a name")),
        _ => Err(bad("is not kept (only A, AAAA and CNAME)")),
    }
}

/// The address of a stored blob (4 or 16 bytes).
pub(crate) fn ip_from_blob(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|o| Ipv4Addr::from(o).into()),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|o| Ipv6Addr::from(o).into()),
        _ => None,
    }
}

pub(crate) fn ip_blob(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}
