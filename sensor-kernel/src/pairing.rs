//! Pairs each response with the query it answers, in the reader: the reader is the one place
//! that sees both kinds of record in the order the kernel wrote them, so pairing needs no
//! locks and adds no stage.
//!
//! A query is remembered by (client, client port, server, DNS id) with its timestamp, QTYPE and
//! a hash of its name; a response with the same four and the same question takes it (the
//! response time is the difference of the kernel timestamps). Queries nobody answered within
//! the timeout are counted (`queries_unanswered`), responses to queries the sensor did not see
//! are reported without a duration (`responses_unpaired`). The table is bounded: past
//! `capacity` pending queries a query is not remembered (`pairing_full`), never a reader stall.

use std::{
    collections::{HashMap, VecDeque},
    hash::BuildHasher,
    net::IpAddr,
};

use sensor_model::query::Query;

/// Pending queries remembered at most: at 100,000 queries/s and a 5 s timeout, a table this size
/// holds every unanswered one (about 100 bytes each, 50 MB at the worst).
pub const DEFAULT_CAPACITY: usize = 500_000;

/// The four fields that identify a transaction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key {
    client: IpAddr,
    server: IpAddr,
    client_port: u16,
    id: u16,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    ts_mono_ns: u64,
    qtype: u16,
    name_hash: u64,
}

/// What pairing decided for a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paired {
    /// The query was seen: nanoseconds from it to the response.
    Answered(u64),
    /// No remembered query matches.
    Unpaired,
}

/// Counts of what pairing did since the last call to [`Pairing::take_counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairingCounts {
    pub paired: u64,
    pub unpaired: u64,
    pub unanswered: u64,
    pub full: u64,
}

pub struct Pairing {
    pending: HashMap<Key, Pending>,
    /// Remembered queries in arrival order, for expiry.
    order: VecDeque<(u64, Key)>,
    timeout_ns: u64,
    capacity: usize,
    hasher: std::collections::hash_map::RandomState,
    counts: PairingCounts,
}

impl Pairing {
    pub fn new(timeout: std::time::Duration, capacity: usize) -> Self {
        Self {
            pending: HashMap::new(),
            order: VecDeque::new(),
            timeout_ns: u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
            capacity,
            hasher: Default::default(),
            counts: PairingCounts::default(),
        }
    }

    fn name_hash(&self, name: &str) -> u64 {
        self.hasher.hash_one(name)
    }

    /// Remembers a query (`q.src` is the client).
    pub fn query(&mut self, q: &Query) {
        let key = Key {
            client: q.src,
            server: q.dst,
            client_port: q.src_port,
            id: q.dns_id,
        };
        let pending = Pending {
            ts_mono_ns: q.ts_mono_ns,
            qtype: q.qtype,
            name_hash: self.name_hash(&q.name),
        };
        if self.pending.len() >= self.capacity && !self.pending.contains_key(&key) {
            self.counts.full += 1;
            return;
        }
        // A retransmission replaces the earlier one (the response answers either; timing it
        // from the last is what the client waited for last).
        self.pending.insert(key, pending);
        self.order.push_back((q.ts_mono_ns, key));
    }

    /// Pairs a response, given as the client-side view (`r.src` the client, as
    /// `Response::into_query` makes it).
    pub fn response(&mut self, r: &Query) -> Paired {
        let key = Key {
            client: r.src,
            server: r.dst,
            client_port: r.src_port,
            id: r.dns_id,
        };
        let name_hash = self.name_hash(&r.name);
        match self.pending.get(&key) {
            Some(p) if p.qtype == r.qtype && p.name_hash == name_hash => {
                let took = r.ts_mono_ns.saturating_sub(p.ts_mono_ns);
                self.pending.remove(&key);
                self.counts.paired += 1;
                Paired::Answered(took)
            }
            _ => {
                self.counts.unpaired += 1;
                Paired::Unpaired
            }
        }
    }

    /// Forgets queries older than the timeout at `now_mono_ns`, counting them unanswered.
    pub fn expire(&mut self, now_mono_ns: u64) {
        while let Some(&(ts, key)) = self.order.front() {
            if ts.saturating_add(self.timeout_ns) > now_mono_ns {
                break;
            }
            self.order.pop_front();
            // Only if this entry is the one remembered (not answered, not replaced by a later
            // retransmission still within the timeout).
            if self.pending.get(&key).is_some_and(|p| p.ts_mono_ns == ts) {
                self.pending.remove(&key);
                self.counts.unanswered += 1;
            }
        }
        // Entries whose queries were answered leave `order` only when they expire; keep it from
        // growing past what the table could hold.
        if self.order.len() > self.capacity.saturating_mul(2) {
            let drop = self.order.len() - self.capacity;
            for (ts, key) in self.order.drain(..drop) {
                if self.pending.get(&key).is_some_and(|p| p.ts_mono_ns == ts) {
                    self.pending.remove(&key);
                    self.counts.unanswered += 1;
                }
            }
        }
    }

    /// Queries waiting for an answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The counts since the last call, and resets them.
    pub fn take_counts(&mut self) -> PairingCounts {
        std::mem::take(&mut self.counts)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sensor_common::Transport;

    use super::*;

    fn q(ts: u64, id: u16, name: &str) -> Query {
        Query {
            ts_mono_ns: ts,
            ifindex: 1,
            vlan_outer: 0,
            vlan_inner: 0,
            src: "192.0.2.1".parse().unwrap(),
            dst: "192.0.2.53".parse().unwrap(),
            src_port: 40000,
            dst_port: 53,
            transport: Transport::Udp,
            dns_id: id,
            qtype: 1,
            qclass: 1,
            name: name.into(),
            answer: None,
        }
    }

    #[test]
    fn a_response_takes_its_query_once_and_others_are_unpaired() {
        let mut p = Pairing::new(Duration::from_secs(5), 100);
        p.query(&q(1_000, 7, "a.example"));
        assert_eq!(
            p.response(&q(4_000, 7, "a.example")),
            Paired::Answered(3_000)
        );
        // The same response again: its query is gone.
        assert_eq!(p.response(&q(5_000, 7, "a.example")), Paired::Unpaired);
        // Another name or id does not match.
        p.query(&q(6_000, 8, "b.example"));
        assert_eq!(p.response(&q(7_000, 8, "c.example")), Paired::Unpaired);
        assert_eq!(p.response(&q(7_000, 9, "b.example")), Paired::Unpaired);
        let c = p.take_counts();
        assert_eq!((c.paired, c.unpaired), (1, 3));
    }

    #[test]
    fn unanswered_queries_expire_and_the_table_is_bounded() {
        let mut p = Pairing::new(Duration::from_nanos(1_000), 2);
        p.query(&q(0, 1, "a"));
        p.query(&q(500, 2, "b"));
        p.query(&q(600, 3, "c"));
        assert_eq!(p.take_counts().full, 1);
        p.expire(1_200);
        assert_eq!(p.pending(), 1);
        assert_eq!(p.take_counts().unanswered, 1);
        assert_eq!(p.response(&q(1_300, 2, "b")), Paired::Answered(800));
        p.expire(10_000);
        assert_eq!(p.take_counts().unanswered, 0);
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn a_retransmission_is_timed_from_the_last_and_not_counted_twice() {
        let mut p = Pairing::new(Duration::from_nanos(1_000), 10);
        p.query(&q(0, 1, "a"));
        p.query(&q(900, 1, "a"));
        p.expire(1_100);
        assert_eq!(
            p.take_counts().unanswered,
            0,
            "the retransmission is still pending"
        );
        assert_eq!(p.response(&q(1_500, 1, "a")), Paired::Answered(600));
    }
}
