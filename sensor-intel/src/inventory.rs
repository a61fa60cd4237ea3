//! Asset inventory: who owns a client address, so an alert can name the person to call (the
//! seed's WeCom alert named the owner's employee number).
//!
//! The file is CSV, UTF-8, with this exact header line:
//!
//! ```text
//! cidr_or_ip,owner,employee_id,hostname,department
//! 10.1.0.0/16,,,,Finance
//! 10.1.2.34,Zhang San,12345,fin-pc-034,Finance
//! 2001:db8:1::/48,Li Si,23456,,R&D
//! ```
//!
//! - `cidr_or_ip`: an address (a host route) or a CIDR without host bits; IPv4 or IPv6.
//! - `owner`, `employee_id`, `hostname`, `department`: free text, may be empty.
//! - Lines starting with `#` are comments; fields are trimmed; a UTF-8 byte-order mark (as Excel's
//!   "CSV UTF-8" writes) is accepted.
//! - The most specific entry wins (longest prefix), so a host line can refine its subnet's line.
//!   An IPv4-mapped IPv6 client (`::ffff:10.1.2.34`) matches IPv4 entries.
//! - The same network twice is an error, since one of the two owners would be silently ignored.
//!
//! An [`Inventory`] is immutable and cheap to share: the alert stage holds it in an `ArcSwap`
//! and a reload builds a new one with [`Inventory::load`] and swaps it in.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use sensor_model::reload::{Reload, ReloadError};

/// The header the file must start with.
pub const HEADER: [&str; 5] = [
    "cidr_or_ip",
    "owner",
    "employee_id",
    "hostname",
    "department",
];

/// Errors from reading an inventory file. Each names the file, and the line when there is one.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("inventory {path}: the first line must be `{expected}`, found `{found}`")]
    Header {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("inventory {path} line {line}: {message}")]
    Line {
        path: PathBuf,
        line: u64,
        message: String,
    },
}

/// One inventory line: a network and who owns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Asset {
    /// The entry's network (a /32 or /128 for a single address).
    pub network: IpNet,
    pub owner: Option<String>,
    pub employee_id: Option<String>,
    pub hostname: Option<String>,
    pub department: Option<String>,
}

/// Networks in one 128-bit space (IPv4 as `::ffff:a.b.c.d`, prefix + 96), indexed by prefix
/// length: a lookup probes each length present, longest first, so its cost is bounded by the
/// number of distinct lengths (a handful in a real inventory), not the number of entries.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    /// Prefix lengths present, longest first.
    lengths: Vec<u8>,
    by_prefix: HashMap<(u8, u128), Arc<Asset>>,
}

/// The address in the 128-bit space: IPv4 and IPv4-mapped IPv6 both become `::ffff:a.b.c.d`.
fn key_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// A network as (prefix length in the 128-bit space, masked address).
fn prefix_of(net: &IpNet) -> (u8, u128) {
    let len = match net {
        IpNet::V4(n) => n.prefix_len() + 96,
        IpNet::V6(n) => n.prefix_len(),
    };
    (len, key_of(net.network()) & mask(len))
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl Inventory {
    /// Reads and indexes an inventory file (format in the module documentation).
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let bytes = std::fs::read(path).map_err(|source| InventoryError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&bytes, path)
    }

    /// Parses inventory text; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, InventoryError> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .comment(Some(b'#'))
            .trim(csv::Trim::All)
            // Rows with the wrong number of fields get our own message, naming the line.
            .flexible(true)
            .from_reader(bytes);
        // csv's own line numbers skip blank lines; count newlines so the number is the one an
        // editor shows. Counted on from the previous record (records come in file order):
        // counting from the start for each record made parsing quadratic, and a 100,000-line
        // file did not load in ten minutes.
        let mut counted = (0usize, 1u64);
        let mut line_at = |pos: Option<&csv::Position>| {
            pos.map_or(0, |p| {
                // A record's position is where the parser started looking, before any blank or
                // comment lines it skipped.
                let mut at = (p.byte() as usize).min(bytes.len());
                loop {
                    match bytes.get(at) {
                        Some(b'\n' | b'\r') => at += 1,
                        Some(b'#') => {
                            at = bytes[at..]
                                .iter()
                                .position(|b| *b == b'\n')
                                .map_or(bytes.len(), |n| at + n + 1);
                        }
                        _ => break,
                    }
                }
                if at < counted.0 {
                    counted = (0, 1);
                }
                counted.1 += bytes[counted.0..at].iter().filter(|b| **b == b'\n').count() as u64;
                counted.0 = at;
                counted.1
            })
        };
        let line_error = |line: u64, message: String| InventoryError::Line {
            path: path.to_owned(),
            line,
            message,
        };
        let mut records = reader.byte_records();
        let header = match records.next() {
            None => Vec::new(),
            Some(Err(e)) => return Err(line_error(1, e.to_string())),
            Some(Ok(r)) => r
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect(),
        };
        if header != HEADER {
            return Err(InventoryError::Header {
                path: path.to_owned(),
                expected: HEADER.join(","),
                found: header.join(","),
            });
        }

        let mut inventory = Inventory::default();
        // Where each network was defined, to name both lines of a duplicate.
        let mut first_line: HashMap<(u8, u128), u64> = HashMap::new();
        for record in records {
            let record = record.map_err(|e| line_error(line_at(e.position()), e.to_string()))?;
            let line = line_at(record.position());
            if record.len() != HEADER.len() {
                return Err(line_error(
                    line,
                    format!("expected {} fields, found {}", HEADER.len(), record.len()),
                ));
            }
            let mut fields = Vec::with_capacity(HEADER.len());
            for (i, raw) in record.iter().enumerate() {
                let text = std::str::from_utf8(raw).map_err(|_| {
                    line_error(
                        line,
                        format!(
                            "field `{}` is not UTF-8 (save the file as \"CSV UTF-8\")",
                            HEADER[i]
                        ),
                    )
                })?;
                fields.push(text);
            }
            let network = parse_network(fields[0]).map_err(|m| line_error(line, m))?;
            let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            let asset = Asset {
                network,
                owner: text(fields[1]),
                employee_id: text(fields[2]),
                hostname: text(fields[3]),
                department: text(fields[4]),
            };
            let prefix = prefix_of(&network);
            if let Some(first) = first_line.insert(prefix, line) {
                return Err(line_error(
                    line,
                    format!("{network} is already listed on line {first}"),
                ));
            }
            inventory.by_prefix.insert(prefix, Arc::new(asset));
        }
        let mut lengths: Vec<u8> = inventory.by_prefix.keys().map(|(len, _)| *len).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        inventory.lengths = lengths;
        Ok(inventory)
    }

    /// The most specific entry containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Asset> {
        self.lookup_shared(ip).map(|a| &**a)
    }

    /// Like [`Inventory::lookup`], as a handle that outlives this inventory (an alert keeps the
    /// owner it was raised with after a reload).
    pub fn lookup_shared(&self, ip: IpAddr) -> Option<&Arc<Asset>> {
        let key = key_of(ip);
        self.lengths
            .iter()
            .find_map(|&len| self.by_prefix.get(&(len, key & mask(len))))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.by_prefix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

/// An address (as a host route) or a CIDR; host bits set are an error, as in the config, since
/// `10.1.2.3/16` is more likely a typo than a wish to own 10.1/16.
fn parse_network(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net = s
        .parse::<IpNet>()
        .map_err(|_| format!("`cidr_or_ip` {s:?} is not an IP address or CIDR"))?;
    if net.trunc() != net {
        return Err(format!(
            "`cidr_or_ip` {s:?} has host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Inventory, InventoryError> {
        Inventory::parse(text.as_bytes(), Path::new("inv.csv"))
    }

    const SAMPLE: &str = "\u{feff}cidr_or_ip,owner,employee_id,hostname,department\n\
        # offices\n\
        10.0.0.0/8,,,,Corporate\n\
        10.1.0.0/16,,,,Finance\n\
        10.1.2.34, Zhang San ,12345,fin-pc-034,Finance\n\
        2001:db8:1::/48,Li Si,23456,,R&D\n\
        2001:db8:1:2::7,\"Wang, Wu\",34567,lab-7,R&D\n";

    #[test]
    fn longest_prefix_wins_for_v4_and_v6() {
        let inv = parse(SAMPLE).unwrap();
        assert_eq!(inv.len(), 5);
        let host = inv.lookup("10.1.2.34".parse().unwrap()).unwrap();
        assert_eq!(host.owner.as_deref(), Some("Zhang San"));
        assert_eq!(host.employee_id.as_deref(), Some("12345"));
        assert_eq!(host.hostname.as_deref(), Some("fin-pc-034"));
        let subnet = inv.lookup("10.1.9.9".parse().unwrap()).unwrap();
        assert_eq!(subnet.department.as_deref(), Some("Finance"));
        assert_eq!(subnet.owner, None);
        let wide = inv.lookup("10.200.0.1".parse().unwrap()).unwrap();
        assert_eq!(wide.department.as_deref(), Some("Corporate"));
        assert!(inv.lookup("192.168.1.1".parse().unwrap()).is_none());

        let v6 = inv.lookup("2001:db8:1:2::7".parse().unwrap()).unwrap();
        assert_eq!(v6.owner.as_deref(), Some("Wang, Wu"));
        let v6net = inv.lookup("2001:db8:1:ffff::1".parse().unwrap()).unwrap();
        assert_eq!(v6net.owner.as_deref(), Some("Li Si"));
        assert!(inv.lookup("2001:db8:2::1".parse().unwrap()).is_none());
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_entries() {
        let inv = parse(SAMPLE).unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.34".parse().unwrap();
        assert_eq!(
            inv.lookup(mapped).unwrap().employee_id.as_deref(),
            Some("12345")
        );
        // A v6 entry spanning all of IPv4-mapped space matches plain IPv4 clients too.
        let inv = parse("cidr_or_ip,owner,employee_id,hostname,department\n::ffff:0:0/96,x,1,,\n")
            .unwrap();
        assert!(inv.lookup("192.0.2.1".parse().unwrap()).is_some());
        assert!(inv.lookup("2001:db8::1".parse().unwrap()).is_none());
    }

    #[test]
    fn default_route_matches_everything_of_its_family() {
        let inv =
            parse("cidr_or_ip,owner,employee_id,hostname,department\n0.0.0.0/0,,,,any\n").unwrap();
        assert!(inv.lookup("8.8.8.8".parse().unwrap()).is_some());
        assert!(inv.lookup("2001:db8::1".parse().unwrap()).is_none());
    }

    #[test]
    fn errors_name_file_and_line() {
        let err = parse("ip,owner\n").unwrap_err().to_string();
        assert!(err.contains("inv.csv") && err.contains("cidr_or_ip,owner,employee_id"));

        let err = parse("cidr_or_ip,owner,employee_id,hostname,department\n\n10.0.0.300,a,b,c,d\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("inv.csv line 3") && err.contains("10.0.0.300"),
            "{err}"
        );
        let err = parse("cidr_or_ip,owner,employee_id,hostname,department\n# note\n10.0.0.1,a,b,c,d\nbad,a,b,c,d\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("inv.csv line 4"), "{err}");

        let err = parse("cidr_or_ip,owner,employee_id,hostname,department\n10.1.2.3/16,a,b,c,d\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("10.1.0.0/16"),
            "{err}"
        );

        let err = parse("cidr_or_ip,owner,employee_id,hostname,department\n10.0.0.1,a,b\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("expected 5 fields"),
            "{err}"
        );

        let err = parse(
            "cidr_or_ip,owner,employee_id,hostname,department\n10.0.0.0/24,a,,,\n10.0.0.0/24,b,,,\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 3") && err.contains("line 2"), "{err}");

        // GBK, as a spreadsheet saved as plain "CSV" in a Chinese locale writes it.
        let mut gbk = b"cidr_or_ip,owner,employee_id,hostname,department\n10.0.0.1,".to_vec();
        gbk.extend_from_slice(&[0xd5, 0xc5, 0xc8, 0xfd]);
        gbk.extend_from_slice(b",1,,\n");
        let err = Inventory::parse(&gbk, Path::new("inv.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("UTF-8"), "{err}");

        let err = Inventory::load(Path::new("/nonexistent/inv.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/inv.csv"), "{err}");
    }

    /// Found through the `inventory` fuzz target, the slowest of all: line numbers were
    /// counted from the start of the file for every record.
    #[test]
    fn large_files_load_in_linear_time_with_exact_line_numbers() {
        let mut text = String::from("cidr_or_ip,owner,employee_id,hostname,department\n");
        for i in 0..100_000u32 {
            let [_, a, b, c] = i.to_be_bytes();
            text.push_str(&format!("10.{a}.{b}.{c},Owner {i},{i},host-{i},Dept\n"));
            if i % 1000 == 0 {
                text.push_str("# a comment\n\n");
            }
        }
        let started = std::time::Instant::now();
        let inv = parse(&text).unwrap();
        // Quadratic counting took minutes here; linear takes well under a second.
        assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
        assert_eq!(inv.len(), 100_000);
        assert_eq!(
            inv.lookup("10.1.134.159".parse().unwrap())
                .unwrap()
                .owner
                .as_deref(),
            Some("Owner 99999")
        );
        let lines = text.lines().count();
        text.push_str("bad,a,b,c,d\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(&format!("line {}:", lines + 1)), "{err}");
    }

    #[test]
    fn empty_file_with_header_is_an_empty_inventory() {
        let inv = parse("cidr_or_ip,owner,employee_id,hostname,department\n").unwrap();
        assert!(inv.is_empty());
        assert!(inv.lookup("10.0.0.1".parse().unwrap()).is_none());
    }
}

/// Reloads the asset inventory into the alert stage's `ArcSwap`.
#[derive(Debug)]
pub struct InventoryReload {
    pub path: PathBuf,
    pub current: Arc<arc_swap::ArcSwap<Inventory>>,
    pub counters: sensor_model::reload::ReloadCounters,
}

impl Reload for InventoryReload {
    fn name(&self) -> &str {
        "inventory"
    }
    fn files(&self) -> &[PathBuf] {
        std::slice::from_ref(&self.path)
    }
    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(2))
    }
    fn reload(&self) -> Result<usize, ReloadError> {
        let started = std::time::Instant::now();
        let result = Inventory::load(&self.path).map(|inv| {
            let n = inv.len();
            self.current.store(Arc::new(inv));
            n
        });
        self.counters.record("inventory", started, &result);
        result.map_err(|e| ReloadError::Other(Box::new(e)))
    }
}
