//! What goes in (observations) and what comes out (records with first/last seen and counts).

use std::net::IpAddr;

/// `rtype` of an IPv4 address answer.
pub const RTYPE_A: u16 = 1;
/// `rtype` of an alias answer.
pub const RTYPE_CNAME: u16 = 5;
/// `rtype` of an IPv6 address answer.
pub const RTYPE_AAAA: u16 = 28;

/// One DNS response as the sensor saw it: who asked, for what, and what came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub ts_unix_secs: i64,
    pub client: IpAddr,
    /// In the sensor's presentation form (`sensor_model::query::presentation_name`): lower case,
    /// no trailing dot (`www.example.com`; the root is `.`).
    pub name: String,
    /// May be empty (NXDOMAIN, NODATA): the client is still recorded as having asked.
    pub answers: Vec<Answer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// [`RTYPE_A`], [`RTYPE_AAAA`] or [`RTYPE_CNAME`].
    pub rtype: u16,
    pub data: AnswerData,
    pub ttl: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnswerData {
    Ip(IpAddr),
    /// A CNAME target, in the same presentation form as [`Observation::name`].
    Name(String),
}

impl std::fmt::Display for AnswerData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnswerData::Ip(ip) => ip.fmt(f),
            AnswerData::Name(n) => f.write_str(n),
        }
    }
}

/// The mnemonic of the answer types the store keeps.
pub fn rtype_name(rtype: u16) -> &'static str {
    match rtype {
        RTYPE_A => "A",
        RTYPE_AAAA => "AAAA",
        RTYPE_CNAME => "CNAME",
        _ => "?",
    }
}

/// When and how often, within the query's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Unix seconds. After a prune, a tuple seen before the retention window starts at the
    /// beginning of its first retained day.
    pub first_seen: i64,
    pub last_seen: i64,
    /// Sum of `per_day`.
    pub count: u64,
    /// Days (UTC) inside the query's window on which the tuple was seen, oldest first.
    pub per_day: Vec<DayCount>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayCount {
    /// Unix seconds of the day's 00:00 UTC.
    pub day: i64,
    pub count: u64,
}

/// A name resolved to an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerRecord {
    pub name: String,
    pub rtype: u16,
    pub data: AnswerData,
    /// The TTL of the latest sighting.
    pub ttl: u32,
    pub seen: Seen,
}

/// A client resolved a name. The store keeps which clients asked for a name and which answers
/// the name had, not which answer each client got: that third dimension would multiply the
/// rows by the answers per name (BENCHMARKS.md, "Passive DNS").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub name: String,
    pub client: IpAddr,
    pub seen: Seen,
}

/// What a query found, each list sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub answers: Vec<AnswerRecord>,
    pub clients: Vec<ClientRecord>,
}
