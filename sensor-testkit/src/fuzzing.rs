//! The bodies of the `cargo fuzz` targets (`fuzz/fuzz_targets/*.rs` call these), one per family
//! of decoders of untrusted bytes. Here rather than in `fuzz/` so that `tests/fuzz_corpus.rs`
//! runs every committed corpus file through the same code on stable, as a fast regression test.
//!
//! Each function takes arbitrary bytes, feeds them to the decoder the way the sensor does, and
//! panics when a documented property does not hold (not only on a crash): a decoded name writes
//! back to the wire bytes it came from, a parsed list holds only normalised entries, a state file
//! reads back as it was written, a key never shows in an error. [`seeds`] returns realistic
//! inputs for each target (the corpus's starting point).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use reqwest::StatusCode;
use serde_json::Value;
use time::OffsetDateTime;

use sensor_outputs::{
    alert::{SendError, wecom},
    sink::{
        elastic::{BulkAnswer, read_bulk_answer},
        kafka::spool::Spool,
    },
};

use sensor_blocklist::{
    collect,
    collect::Collected,
    reputation::{IpVerdict, ReputationCache},
    store::{Entry, Plan, Store, Summary},
};

use sensor::config::Config;

use sensor_model::{
    encode::Encoder,
    error::ConfigError,
    query::Query,
    verdict::{Confidence, Severity},
};

use sensor_kernel::decode;

use sensor_intel::{
    self, LookupError, domainset,
    domainset::{DomainSet, EntryKind, ListError, MAX_LABEL_LEN, MAX_NAME_LEN, Pattern},
    feeds::IpSet,
    inventory::{Inventory, InventoryError},
    threatbook,
};

/// A fuzz target: its name (the file under `fuzz/fuzz_targets/` and the corpus folder) and body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[Target] = &[
    ("ring_record", ring_record),
    ("dns_name", dns_name),
    ("list_file", list_file),
    ("inventory", inventory),
    ("state_files", state_files),
    ("threatbook", threatbook_answer),
    ("http_answers", http_answers),
    ("config", config),
];

// ---------------------------------------------------------------------------------------------
// Ring-buffer records and names

/// A ring-buffer record as the reader gets it: decoded, turned into a [`Query`], and written as
/// JSON by the fast encoder. The name must write back to the record's wire name (lower-cased),
/// and the encoder's line must be valid JSON equal to the serde [`decode::Document`] of the same
/// query (the encoder is a hand-written copy of it).
pub fn ring_record(data: &[u8]) {
    let Ok(ev) = decode::record(data) else {
        return;
    };
    let Ok(q) = Query::from_event(&ev) else {
        return;
    };
    let wire = &ev.qname[..usize::from(ev.qname_len)];
    assert_eq!(
        wire_name(&q.name).as_deref(),
        Some(wire.to_ascii_lowercase().as_slice()),
        "name {:?} does not write back to its wire form",
        q.name
    );
    let interfaces = HashMap::from([(ev.ifindex, "eth0".to_owned())]);
    let mut encoder = Encoder::new("fuzz-sensor", &interfaces);
    let unix_ns = i128::from(ev.ts_mono_ns);
    let mut line = Vec::new();
    encoder.encode(&q, None, unix_ns, &mut line);
    assert_eq!(line.last(), Some(&b'\n'), "a JSON line ends with a newline");
    let mut fast: Value = serde_json::from_slice(&line).expect("the encoder writes valid JSON");
    let mut slow = serde_json::to_value(q.document(String::new(), "fuzz-sensor", "eth0", None))
        .expect("documents serialise");
    // The timestamp is formatted by each path on its own (the document takes a string).
    for doc in [&mut fast, &mut slow] {
        doc.as_object_mut().expect("an object").remove("@timestamp");
    }
    assert_eq!(fast, slow, "the encoder and the serde document disagree");
}

/// DNS names in both directions: wire bytes to presentation form (which must write back), and
/// text as a list or config entry (which must come out normalised, parse to itself again, and be
/// found by a set holding it).
pub fn dns_name(data: &[u8]) {
    if let Ok(name) = sensor_model::query::presentation_name(data) {
        assert!(
            name.bytes().all(|b| (32..=126).contains(&b)),
            "presentation form {name:?} is printable ASCII"
        );
        assert_eq!(
            wire_name(&name).as_deref(),
            Some(data.to_ascii_lowercase().as_slice()),
            "name {name:?} does not write back to its wire form"
        );
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut probe = DomainSet::new();
    for entry in ["example.com", "=www.example.org", "xn--bcher-kva.example"] {
        probe
            .insert(&Pattern::parse(entry).expect("valid"))
            .expect("room");
    }
    if let Some(m) = probe.lookup(text) {
        // Any case, with or without one trailing dot.
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        assert!(
            name == m.name || name.ends_with(&format!(".{}", m.name)),
            "{text:?} matched {m}, which does not cover it"
        );
        assert!(m.kind == EntryKind::Suffix || name == m.name);
    }
    let Ok(pattern) = Pattern::parse(text) else {
        return;
    };
    assert_normalised(&pattern.name);
    assert_eq!(
        Pattern::parse(&pattern.to_string()).as_ref(),
        Ok(&pattern),
        "{text:?} does not parse to itself once written back"
    );
    let mut set = DomainSet::new();
    set.insert(&pattern).expect("room");
    let found = set
        .lookup(&pattern.name.to_ascii_uppercase())
        .expect("a set finds its own entry in any case");
    assert_eq!(found.name, pattern.name);
    let child = format!("a.{}", pattern.name);
    if child.len() <= MAX_NAME_LEN {
        assert_eq!(
            set.contains(&child),
            pattern.kind == EntryKind::Suffix,
            "{pattern} and {child}"
        );
    }
}

/// A name in [`decode::presentation_name`]'s form back in wire format, or `None` when it is not
/// in that form. Written from the documented escapes, independently of the decoder.
fn wire_name(name: &str) -> Option<Vec<u8>> {
    if name == "." {
        return Some(vec![0]);
    }
    let mut wire = Vec::new();
    let mut label = Vec::new();
    let mut chars = name.bytes();
    let end_label = |wire: &mut Vec<u8>, label: &mut Vec<u8>| -> Option<()> {
        if label.is_empty() {
            return None;
        }
        wire.push(u8::try_from(label.len()).ok()?);
        wire.append(label);
        Some(())
    };
    while let Some(b) = chars.next() {
        match b {
            b'.' => end_label(&mut wire, &mut label)?,
            b'\\' => match chars.next()? {
                b't' => label.push(b'\t'),
                b'r' => label.push(b'\r'),
                b'n' => label.push(b'\n'),
                c @ (b'\\' | b'"' | b'.') => label.push(c),
                d0 @ b'0'..=b'9' => {
                    let (d1, d2) = (chars.next()?, chars.next()?);
                    let digits = [d0, d1, d2];
                    let n: u8 = std::str::from_utf8(&digits).ok()?.parse().ok()?;
                    label.push(n);
                }
                _ => return None,
            },
            c => label.push(c),
        }
    }
    end_label(&mut wire, &mut label)?;
    wire.push(0);
    Some(wire)
}

/// The form every stored entry has: lower case, no trailing dot, labels of 1 to 63 letters,
/// digits, `-` or `_`, at most 253 characters.
fn assert_normalised(name: &str) {
    assert!(
        !name.is_empty() && name.len() <= MAX_NAME_LEN,
        "entry {name:?} has a bad length"
    );
    for label in name.split('.') {
        assert!(
            !label.is_empty() && label.len() <= MAX_LABEL_LEN,
            "entry {name:?} has a bad label"
        );
        assert!(
            label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
            "entry {name:?} is not normalised"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// List files

/// A list file: the first byte picks a domain list (trust lists, domain feeds) or an IP list
/// (IP feeds); the rest is the file. A list that loads holds only normalised entries, each
/// found by a lookup of itself; an error names a line of the file.
pub fn list_file(data: &[u8]) {
    let Some((&kind, text)) = data.split_first() else {
        return;
    };
    let origin = Path::new("/etc/sensor/fuzz.list");
    let result = if kind % 2 == 0 {
        let mut set = DomainSet::new();
        set.parse_list(text, origin).map(|read| {
            assert!(set.len() <= read, "{} entries from {read} read", set.len());
            for m in set.iter() {
                assert_normalised(m.name);
                let again = Pattern::parse(&m.to_string()).expect("an entry parses");
                assert_eq!((again.name.as_str(), again.kind), (m.name, m.kind));
                assert_eq!(set.lookup(m.name), Some(m), "an entry finds itself");
            }
        })
    } else {
        let mut set = IpSet::new();
        set.parse_list(text, origin).map(|read| {
            assert!(set.len() <= read, "{} entries from {read} read", set.len());
            // The list loaded, so every line holds one network, which the set must cover.
            for (_, line) in domainset::list_lines(text) {
                let line = line.expect("the list loaded");
                let token = line.split_ascii_whitespace().next().expect("one token");
                let net = token
                    .parse::<IpNet>()
                    .or_else(|_| token.parse::<IpAddr>().map(IpNet::from))
                    .expect("the list loaded");
                for ip in [net.network(), net.broadcast()] {
                    // IPv4-mapped addresses are looked up as IPv4: a shorter IPv6 network that
                    // spans them is not an IPv4 entry (by design, see `IpSet::insert`).
                    if matches!((net, ip.to_canonical()), (IpNet::V6(n), IpAddr::V4(_)) if n.prefix_len() < 96)
                    {
                        continue;
                    }
                    let hit = set.lookup(ip).expect("a listed network is found");
                    assert!(
                        hit.contains(&ip.to_canonical()) || hit.contains(&ip),
                        "{ip} found in {hit}"
                    );
                }
            }
        })
    };
    if let Err(e) = result {
        match e {
            ListError::Line { path, line, .. } => {
                assert_eq!(path, origin);
                assert!(line >= 1 && line <= lines_in(text), "line {line}");
            }
            ListError::Read { .. } => panic!("parsing text does not read files"),
        }
    }
}

/// Lines of a text as an editor numbers them.
fn lines_in(text: &[u8]) -> usize {
    text.iter().filter(|&&b| b == b'\n').count() + 1
}

/// The inventory CSV. Lookups of addresses taken from the input must return an entry that holds
/// them; an error names a line of the file.
pub fn inventory(data: &[u8]) {
    let origin = Path::new("/etc/sensor/inventory.csv");
    let inv = match Inventory::parse(data, origin) {
        Ok(inv) => inv,
        Err(InventoryError::Line { path, line, .. }) => {
            assert_eq!(path, origin);
            assert!(
                line >= 1 && line as usize <= lines_in(data),
                "error on line {line} of {}",
                lines_in(data)
            );
            return;
        }
        Err(_) => return,
    };
    let mut probes: Vec<IpAddr> = vec![
        Ipv4Addr::new(10, 1, 2, 34).into(),
        Ipv6Addr::LOCALHOST.into(),
        "::ffff:10.1.2.34".parse().expect("valid"),
    ];
    for chunk in data.chunks(16) {
        let mut b = [0u8; 16];
        b[..chunk.len()].copy_from_slice(chunk);
        probes.push(Ipv6Addr::from(b).into());
        probes.push(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into());
    }
    for ip in probes {
        if let Some(asset) = inv.lookup(ip) {
            let mapped = match ip {
                IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                v6 => v6,
            };
            assert!(
                asset.network.contains(&ip)
                    || asset.network.contains(&ip.to_canonical())
                    || asset.network.contains(&mapped),
                "{ip} looked up as {}",
                asset.network
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State files

/// Files the sensor wrote itself and reads back at start, which a crash, a full disk or an
/// operator's editor may have damaged: the first byte picks the blocklist state, the reputation
/// cache or a Kafka spool segment. What loads must write back and load again the same; a spool
/// hands out only records whose bytes (length, CRC, body) are in the file, and keeps working.
pub fn state_files(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let dir = scratch_dir();
    match kind % 3 {
        0 => blocklist_state(dir.path(), rest),
        1 => reputation_cache(dir.path(), rest),
        _ => kafka_spool(dir.path(), rest),
    }
}

/// A fresh directory for one input, removed when dropped; on tmpfs when there is one, since
/// the spool syncs its files.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix("sensor-fuzz-")
        .tempdir_in(base)
        .expect("a scratch directory")
}

fn blocklist_state(dir: &Path, bytes: &[u8]) {
    std::fs::write(dir.join("state.json"), bytes).expect("write");
    let Ok(mut store) = Store::load(dir) else {
        return;
    };
    let entries: Vec<Entry> = store.entries().cloned().collect();
    assert!(
        entries.windows(2).all(|w| w[0].ip < w[1].ip),
        "entries are sorted by address, one per address"
    );
    store
        .commit(&Plan {
            entries: entries.clone(),
            summary: Summary::default(),
            held: Vec::new(),
        })
        .expect("commit");
    let again = Store::load(dir).expect("a committed state loads");
    assert_eq!(again.entries().cloned().collect::<Vec<_>>(), entries);
}

fn reputation_cache(dir: &Path, bytes: &[u8]) {
    std::fs::write(dir.join("reputation.json"), bytes).expect("write");
    let Ok(cache) = ReputationCache::load(dir) else {
        return;
    };
    cache.save().expect("save");
    let saved = std::fs::read(dir.join("reputation.json")).expect("read");
    let again = ReputationCache::load(dir).expect("a saved cache loads");
    assert_eq!(again.len(), cache.len());
    again.save().expect("save");
    assert_eq!(
        std::fs::read(dir.join("reputation.json")).expect("read"),
        saved,
        "saving a loaded cache changes it"
    );
}

/// Segment file name for a sequence number, as the spool writes it.
fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// `bytes`: one flag byte (bit 0: a cursor; bit 1: two segments), the cursor's segment and
/// record index when there is one (2 bytes), the offset splitting the rest into two segments
/// when there are two (2 bytes), then the segments' contents. The cursor points at a record
/// boundary, as the spool writes it.
fn kafka_spool(dir: &Path, bytes: &[u8]) {
    let Some((&flags, mut rest)) = bytes.split_first() else {
        return;
    };
    let mut cursor = None;
    if flags & 1 != 0 {
        let [seq, index, tail @ ..] = rest else {
            return;
        };
        cursor = Some((usize::from(seq % 2), usize::from(*index)));
        rest = tail;
    }
    let segments: Vec<&[u8]> = if flags & 2 != 0 {
        let [a, b, tail @ ..] = rest else {
            return;
        };
        let (first, second) =
            tail.split_at(usize::from(u16::from_le_bytes([*a, *b])).min(tail.len()));
        vec![first, second]
    } else {
        vec![rest]
    };
    for (seq, content) in segments.iter().enumerate() {
        std::fs::write(segment_path(dir, seq as u64), content).expect("write");
    }
    // What the spool must hand out, from the documented format: each segment's valid records,
    // from the cursor on.
    let mut expected: Vec<(u64, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut cursor_pos = 0;
    for (seq, content) in segments.iter().enumerate() {
        let records = valid_records(content);
        let skip = match cursor {
            Some((cseq, _)) if seq < cseq => records.len(),
            Some((cseq, index)) if seq == cseq => {
                // Record `index` (or the end) as an offset in the file.
                let index = index.min(records.len());
                cursor_pos = records[..index]
                    .iter()
                    .map(|(_, k, p)| 8 + 2 + k.len() + p.len())
                    .sum();
                index
            }
            _ => 0,
        };
        expected.extend(
            records
                .into_iter()
                .skip(skip)
                .map(|(_, k, p)| (seq as u64, k, p)),
        );
    }
    if let Some((seq, _)) = cursor {
        std::fs::write(dir.join("cursor"), format!("{seq} {cursor_pos}\n")).expect("write");
    }
    let total: u64 = segments.iter().map(|s| s.len() as u64).sum();
    let (mut spool, recovered) =
        Spool::open(dir, sensor_outputs::sink::kafka::spool::MIN_MAX_BYTES).expect("open");
    assert!(recovered.bytes + recovered.truncated_bytes <= total);
    assert_eq!(recovered.records, expected.len() as u64);
    let mut read = Vec::new();
    for _ in 0..=expected.len() {
        let Some(rec) = spool.peek().expect("read").cloned() else {
            break;
        };
        let taken = spool.take().expect("peeked");
        assert_eq!(taken, rec);
        spool.ack(rec.segment);
        read.push((rec.segment, rec.key, rec.payload));
    }
    assert_eq!(read, expected, "the spool's records");
    assert!(spool.peek().expect("read").is_none(), "the spool ends");
    assert_eq!(spool.pending(), 0);
    // Whatever it recovered, the spool keeps working: a new record reads back.
    spool.append(b"key", b"{\"doc\":1}").expect("append");
    let rec = spool
        .peek()
        .expect("read")
        .cloned()
        .expect("the new record");
    assert_eq!(
        (rec.key.as_slice(), rec.payload.as_slice()),
        (&b"key"[..], &b"{\"doc\":1}"[..])
    );
}

/// The valid records at the start of a segment, `(offset, key, payload)`, read with the format
/// of the spool's module documentation: `len: u32 LE`, `crc32: u32 LE` of the body, then the
/// body (`key_len: u16 LE`, key, document), up to the first record that does not check out.
fn valid_records(content: &[u8]) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(header) = content.get(pos..pos + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4"));
        let Some(body) = content.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if !(2..=64 << 20).contains(&len) || crc32fast::hash(body) != crc {
            break;
        }
        let key_len = usize::from(u16::from_le_bytes([body[0], body[1]]));
        let Some((key, payload)) = body[2..].split_at_checked(key_len) else {
            break;
        };
        out.push((pos, key.to_vec(), payload.to_vec()));
        pos += 8 + len;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Answers from remote services

/// HTTP statuses an answer may come with.
const STATUSES: [u16; 8] = [200, 200, 200, 429, 500, 503, 401, 404];

/// A ThreatBook answer: the first byte picks the HTTP status and the scene (domain names or IP
/// reputation); the rest is the body. Findings are only for indicators asked about (asked: every
/// key the answer holds, plus one more), under their normalised form; messages taken from the
/// answer are cut to a bounded length.
pub fn threatbook_answer(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let status = StatusCode::from_u16(STATUSES[usize::from(sel) % STATUSES.len()]).expect("valid");
    let answer = match threatbook::classify(status, body) {
        Ok(answer) => answer,
        Err(e) => {
            let message = match &e {
                LookupError::Access { message, .. }
                | LookupError::Request { message, .. }
                | LookupError::RateLimited { message, .. }
                | LookupError::Server { message, .. } => message,
                _ => return,
            };
            // 200 characters and an ellipsis (threatbook::MAX_MESSAGE_CHARS).
            assert!(message.chars().count() <= 201, "message not cut: {e}");
            return;
        }
    };
    if sel & 0x80 == 0 {
        let keys: Vec<String> = answer["domains"]
            .as_object()
            .map(|o| {
                o.keys()
                    .map(|k| sensor_model::verdict::normalise(k))
                    .collect()
            })
            .unwrap_or_default();
        let asked: HashSet<&str> = keys
            .iter()
            .map(String::as_str)
            .chain(["asked-but-absent.example"])
            .collect();
        let Ok(answers) = threatbook::parse_domains(&answer, &asked) else {
            return;
        };
        for (name, finding) in &answers {
            assert!(asked.contains(name.as_str()), "{name} was not asked about");
            assert_eq!(*name, sensor_model::verdict::normalise(name));
            assert_eq!(finding.provider, "threatbook");
            assert!(finding.ip_context.is_none());
            assert!(finding.tags.iter().all(|t| !t.trim().is_empty()));
        }
    } else {
        let asked: HashSet<IpAddr> = answer
            .as_object()
            .map(|o| o.keys().filter_map(|k| k.parse().ok()).collect())
            .unwrap_or_default();
        let Ok(answers) = threatbook::parse_ips(&answer, &asked) else {
            return;
        };
        for (ip, finding) in &answers {
            assert!(asked.contains(ip), "{ip} was not asked about");
            assert!(finding.ip_context.is_some());
            assert!(finding.tags.iter().all(|t| !t.trim().is_empty()));
        }
    }
}

/// The key [`http_answers`] gives the WeCom reader, unless the input brings its own.
const DEFAULT_KEY: &str = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa";

/// Answers of the other HTTP services, the first byte picking which: the WeCom robot (its body
/// decides; the key never shows in what comes back), a generic webhook (its status decides),
/// an Elasticsearch `_bulk` answer (one result per item sent or a retry of all), and a page of
/// the blocklist job's composite aggregation (counts add up).
pub fn http_answers(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => wecom_answer(rest),
        1 => {
            let [a, b, ..] = *rest else {
                return;
            };
            let Ok(status) = StatusCode::from_u16(u16::from_le_bytes([a, b])) else {
                return;
            };
            // Metric labels are a fixed set: the statuses an operator tells apart by name,
            // the rest by class (the exact status stays in the detail).
            let code = status.as_u16();
            let reason = match code {
                400 | 401 | 403 | 404 | 408 | 413 | 429 => format!("http_{code}"),
                300..=399 => "http_3xx".to_owned(),
                400..=499 => "http_4xx".to_owned(),
                500..=599 => "http_5xx".to_owned(),
                _ => "http_other".to_owned(),
            };
            match SendError::from_status(status) {
                SendError::Throttled { reason: r } => {
                    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
                    assert_eq!(r, reason);
                }
                SendError::Retriable { reason: r, .. } => {
                    assert!(status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT);
                    assert_eq!(r, reason);
                }
                SendError::Final { reason: r, .. } => {
                    assert!(
                        !status.is_server_error()
                            && status != StatusCode::TOO_MANY_REQUESTS
                            && status != StatusCode::REQUEST_TIMEOUT
                    );
                    assert_eq!(r, reason);
                }
            }
        }
        2 => {
            let Some((&sent, body)) = rest.split_first() else {
                return;
            };
            let sent = usize::from(sent % 64);
            match read_bulk_answer(body, sent) {
                // `"errors": false` speaks for every item, however many were sent.
                BulkAnswer::AllIndexed => assert!(matches!(
                    read_bulk_answer(body, sent + 1),
                    BulkAnswer::AllIndexed
                )),
                // One result per item sent, and a count that does not match is refused.
                BulkAnswer::Items(items) => {
                    assert_eq!(items.len(), sent);
                    assert!(matches!(
                        read_bulk_answer(body, sent + 1),
                        BulkAnswer::Unreadable(_)
                    ));
                }
                BulkAnswer::Unreadable(_) => {}
            }
        }
        _ => {
            let Ok(page) = serde_json::from_slice::<Value>(rest) else {
                return;
            };
            let from = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid");
            let mut out = Collected::default();
            let after = collect::read_page(&page, "fw-1", from, &mut out);
            // The same page again (a server that repeats itself): counts add up.
            collect::read_page(&page, "fw-2", from, &mut out);
            assert_eq!(out.pages, 2);
            let buckets = page["aggregations"]["ips"]["buckets"]
                .as_array()
                .map_or(0, Vec::len);
            if buckets == 0 {
                assert!(after.is_none(), "no next page after an empty one");
            }
            let per_ip: u64 = out.ips.values().map(|s| s.alerts).sum();
            assert_eq!(per_ip + out.unparsable, out.alerts);
            for seen in out.ips.values() {
                assert!(seen.devices.len() == 2, "both pages' devices are kept");
            }
        }
    }
}

fn wecom_answer(data: &[u8]) {
    // A key of the input's own (a length byte, then the key) when it looks like one: at least
    // 8 letters and digits with both in it, so that it cannot be a word of our own messages.
    let (key, body) = match data.split_first() {
        Some((&n, rest)) if usize::from(n) <= rest.len() => {
            let (k, body) = rest.split_at(usize::from(n));
            match std::str::from_utf8(k) {
                Ok(k)
                    if k.len() >= 8
                        && k.bytes().all(|b| b.is_ascii_alphanumeric())
                        && k.bytes().any(|b| b.is_ascii_digit())
                        && k.bytes().any(|b| b.is_ascii_alphabetic()) =>
                {
                    (k, body)
                }
                _ => (DEFAULT_KEY, data),
            }
        }
        _ => (DEFAULT_KEY, data),
    };
    let outcome = wecom::read_answer(body, |text| text.replace(key, "***"));
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match outcome {
        // serde skips unknown fields without checking their escapes, so an accepted answer need
        // not be valid JSON as a whole; and it reads a struct from an array too (`[0]`).
        Ok(()) => {
            if let Some(v) = parsed {
                let code = v.get("errcode").or_else(|| v.get(0));
                assert_eq!(code.and_then(Value::as_i64), Some(0), "accepted {v}");
            }
        }
        Err(SendError::Throttled { reason }) => assert_eq!(reason, "errcode_45009"),
        Err(SendError::Retriable { reason, detail } | SendError::Final { reason, detail }) => {
            assert!(
                !reason.contains(key) && !detail.contains(key),
                "the key shows in {reason}: {detail}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The config

/// The TOML config. What loads yields the lists it promises; a parse error is one line.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, "/etc/sensor/fuzz.toml") {
        Ok(c) => {
            assert_eq!(c.client_allow().len(), c.filter.client_allow.len());
            assert_eq!(c.blocklist().len(), c.blocklist.entries.len());
            assert!(c.pin_dir().ends_with(&c.sensor.name));
            // Loading is a function of the text (Debug, since a float may be NaN).
            let again = Config::from_toml(text, "/etc/sensor/fuzz.toml").expect("loads again");
            assert_eq!(format!("{again:?}"), format!("{c:?}"));
        }
        Err(ConfigError::Parse { message, .. }) => {
            assert!(
                !message.contains('\n'),
                "a parse error is one line: {message}"
            );
        }
        Err(_) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds

/// Realistic inputs per target: `(target, name, bytes)`. `cargo xtask fuzz` starts from the
/// committed corpus, which began as these (`tests/fuzz_corpus.rs` writes them with `--ignored`).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, name.to_owned(), bytes));
    };

    // Ring records: what the XDP program writes for real queries (as tests/prog_test_run.rs
    // crafts them), whole and cut to the record length of their name.
    let records = [
        ("a-v4-udp", wire(&["www", "example", "com"]), 4, 17, 1, 0, 0),
        (
            "aaaa-v6-tcp",
            wire(&["WWW", "Example", "ORG"]),
            6,
            6,
            28,
            0,
            0,
        ),
        (
            "qinq",
            wire(&["_dmarc", "example", "com"]),
            4,
            17,
            16,
            100,
            200,
        ),
        ("root", vec![0], 4, 17, 2, 0, 0),
        (
            "escapes",
            wire(&["a.b", "c\\d\"\t\u{7f}", "com"]),
            6,
            17,
            65,
            0,
            0,
        ),
        ("longest", longest_name(), 4, 17, 255, 0, 0),
    ];
    for (name, qname, family, transport, qtype, vo, vi) in records {
        let rec = event_bytes(&qname, family, transport, qtype, vo, vi);
        // The header and the name, rounded up to 8 bytes: a record cut to what the name uses.
        let cut = ((64 + qname.len() + 7) & !7).min(rec.len());
        add("ring_record", name, rec.clone());
        add("ring_record", &format!("{name}-cut"), rec[..cut].to_vec());
    }

    for (name, bytes) in [
        ("wire-www", wire(&["www", "example", "com"])),
        ("wire-root", vec![0]),
        ("wire-escapes", wire(&["x\0\u{ff}", "q\"", "a.b"])),
        ("text-idn", "Bücher.example.".as_bytes().to_vec()),
        ("text-wild", b"*.Example.COM".to_vec()),
        ("text-exact", b"=www.example.com".to_vec()),
        ("text-squid", b".example.com".to_vec()),
        ("text-service", b"_dmarc.example.com".to_vec()),
    ] {
        add("dns_name", name, bytes);
    }

    let domain_list = "\u{feff}# trusted\nbaidu.com\n*.qq.com  # chat\n.taobao.com\n\
        =www.example.com\nbücher.example\n\n0.0.0.0 ads.example.net tracker.example.net\n\
        127.0.0.1 localhost\n::1 ip6-localhost ip6-loopback\nfe80::1%lo0 localhost\n";
    add("list_file", "domains", prefixed(0, domain_list.as_bytes()));
    add(
        "list_file",
        "hosts",
        prefixed(
            2,
            b"# hosts\r\n0.0.0.0 a.example\r\n0.0.0.0 b.example # x\r\n",
        ),
    );
    add(
        "list_file",
        "ips",
        prefixed(
            1,
            b"# feed\n192.0.2.1\n198.51.100.0/24\n2001:db8::/32\n::ffff:203.0.113.7\n10.0.0.0/8 # rfc1918\n",
        ),
    );
    add(
        "list_file",
        "bad-line",
        prefixed(1, b"192.0.2.1\n10.1.2.3/8\n"),
    );

    add(
        "inventory",
        "sample",
        "\u{feff}cidr_or_ip,owner,employee_id,hostname,department\n# offices\n\
         10.0.0.0/8,,,,Corporate\n10.1.0.0/16,,,,Finance\n\
         10.1.2.34, Zhang San ,12345,fin-pc-034,Finance\n2001:db8:1::/48,Li Si,23456,,R&D\n\
         2001:db8:1:2::7,\"Wang, Wu\",34567,lab-7,R&D\n::ffff:0:0/96,x,1,,\n"
            .as_bytes()
            .to_vec(),
    );
    add(
        "inventory",
        "crlf-comments",
        b"cidr_or_ip,owner,employee_id,hostname,department\r\n\r\n# a\r\n10.0.0.1,a,b,c,d\r\n"
            .to_vec(),
    );

    for (name, bytes) in state_seeds() {
        add("state_files", &name, bytes);
    }

    add("threatbook", "dns", prefixed(0, DNS_ANSWER.as_bytes()));
    add("threatbook", "ip", prefixed(0x80, IP_ANSWER.as_bytes()));
    add(
        "threatbook",
        "partial-limit",
        prefixed(
            0,
            br#"{"response_code": 1, "verbose_msg": "Beyond the daily limit", "data": {}}"#,
        ),
    );
    add(
        "threatbook",
        "no-data",
        prefixed(
            0,
            br#"{"response_code": 2, "verbose_msg": "No Data", "data": []}"#,
        ),
    );
    add(
        "threatbook",
        "invalid-key",
        prefixed(
            0,
            br#"{"response_code": -1, "verbose_msg": "Invalid API Key"}"#,
        ),
    );
    add(
        "threatbook",
        "html-502",
        prefixed(5, b"<html>Bad Gateway</html>"),
    );

    for (name, body) in [
        ("wecom-ok", &br#"{"errcode":0,"errmsg":"ok"}"#[..]),
        ("wecom-throttled", br#"{"errcode":45009,"errmsg":"api freq out of limit"}"#),
        ("wecom-invalid", br#"{"errcode":93000,"errmsg":"invalid webhook url, hint: [1700000000_123], from ip: 203.0.113.9"}"#),
        ("wecom-busy", br#"{"errcode":-1,"errmsg":"system busy"}"#),
    ] {
        add("http_answers", name, prefixed(0, body));
    }
    add(
        "http_answers",
        "webhook-429",
        prefixed(1, &429u16.to_le_bytes()),
    );
    add(
        "http_answers",
        "bulk-ok",
        prefixed(2, &prefixed(2, br#"{"took":3,"errors":false,"items":[{"create":{"_index":"dns-2026.11.24","_id":"a","status":201}},{"create":{"_index":"dns-2026.11.24","_id":"b","status":201}}]}"#)),
    );
    add(
        "http_answers",
        "bulk-mixed",
        prefixed(2, &prefixed(3, br#"{"took":3,"errors":true,"items":[{"create":{"status":201}},{"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"document already exists"}}},{"index":{"status":429,"error":{"type":"es_rejected_execution_exception"}}}]}"#)),
    );
    add(
        "http_answers",
        "composite-page",
        prefixed(3, br#"{"took":5,"timed_out":false,"hits":{"total":{"value":3,"relation":"eq"},"hits":[]},"aggregations":{"ips":{"after_key":{"ip":"198.51.100.7"},"buckets":[{"key":{"ip":"203.0.113.9"},"doc_count":2,"first":{"value":1.7000000e12,"value_as_string":"2023-11-14T22:13:20.000Z"},"last":{"value":1700000100000.0}},{"key":{"ip":"-"},"doc_count":1,"first":{"value":null},"last":{"value":null}},{"key":{"ip":"2001:db8::1"},"doc_count":1,"first":{"value":1700000000000},"last":{"value":1700000000000}}]}}}"#),
    );

    add(
        "config",
        "example",
        include_bytes!("../../config/sensor.example.toml").to_vec(),
    );
    add(
        "config",
        "small",
        b"[sensor]\nname = \"edge-1\"\n\n[capture]\ninterfaces = [\"eth0\"]\ndns_ports = [53, 5353]\n\n[filter]\nclient_allow = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n"
            .to_vec(),
    );
    out
}

fn prefixed(first: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend_from_slice(rest);
    v
}

/// A wire-format name from its labels.
fn wire(labels: &[&str]) -> Vec<u8> {
    let mut w = Vec::new();
    for l in labels {
        w.push(l.len() as u8);
        w.extend_from_slice(l.as_bytes());
    }
    w.push(0);
    w
}

/// A 255-byte wire name, as long as a name can be: labels of 63, 63, 63 and 61 bytes.
fn longest_name() -> Vec<u8> {
    let long = "a".repeat(63);
    let w = wire(&[&long, &long, &long, &"b".repeat(61)]);
    assert_eq!(w.len(), 255);
    w
}

/// An `Event` as the XDP program writes it, as bytes.
fn event_bytes(qname: &[u8], family: u8, transport: u8, qtype: u16, vo: u16, vi: u16) -> Vec<u8> {
    let mut b = vec![0u8; size_of::<sensor_common::Event>()];
    b[0..8].copy_from_slice(&1_234_567_890_123u64.to_ne_bytes());
    b[8..12].copy_from_slice(&1u32.to_ne_bytes());
    b[12..14].copy_from_slice(&vo.to_ne_bytes());
    b[14..16].copy_from_slice(&vi.to_ne_bytes());
    let (src, dst): ([u8; 16], [u8; 16]) = if family == 4 {
        (
            Ipv4Addr::new(10, 1, 2, 34).to_ipv6_mapped().octets(),
            Ipv4Addr::new(192, 0, 2, 53).to_ipv6_mapped().octets(),
        )
    } else {
        (
            "2001:db8::34".parse::<Ipv6Addr>().expect("valid").octets(),
            "2001:db8::53".parse::<Ipv6Addr>().expect("valid").octets(),
        )
    };
    b[16..32].copy_from_slice(&src);
    b[32..48].copy_from_slice(&dst);
    b[48..50].copy_from_slice(&40_000u16.to_ne_bytes());
    b[50..52].copy_from_slice(&53u16.to_ne_bytes());
    b[52..54].copy_from_slice(&0x1234u16.to_ne_bytes());
    b[54..56].copy_from_slice(&qtype.to_ne_bytes());
    b[56..58].copy_from_slice(&1u16.to_ne_bytes());
    b[58] = family;
    b[59] = transport;
    b[60..62].copy_from_slice(&(qname.len() as u16).to_ne_bytes());
    b[64..64 + qname.len()].copy_from_slice(qname);
    b
}

/// State files as the sensor writes them: a blocklist state and a reputation cache saved by
/// their own code, and a spool segment with records appended by the spool.
fn state_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let dir = scratch_dir();
    let mut store = Store::load(dir.path()).expect("empty store");
    let entry = |ip: &str, sev, conf| Entry {
        ip: ip.parse().expect("valid"),
        first_listed: 1_700_000_000,
        last_malicious: 1_700_086_400,
        expires: 1_700_691_200,
        severity: sev,
        confidence: conf,
    };
    store
        .commit(&Plan {
            entries: vec![
                entry("198.51.100.7", Some(Severity::High), Some(Confidence::High)),
                entry("203.0.113.9", None, None),
                entry(
                    "2001:db8::1",
                    Some(Severity::Critical),
                    Some(Confidence::Low),
                ),
            ],
            summary: Summary::default(),
            held: Vec::new(),
        })
        .expect("commit");
    out.push((
        "blocklist-state".to_owned(),
        prefixed(
            0,
            &std::fs::read(dir.path().join("state.json")).expect("read"),
        ),
    ));

    let checked = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid");
    let verdicts: BTreeMap<IpAddr, IpVerdict> = BTreeMap::from([
        (
            "159.203.93.255".parse().expect("valid"),
            IpVerdict {
                is_malicious: true,
                confidence_level: Some(Confidence::Low),
                severity: Some(Severity::Low),
                judgments: vec!["Zombie".into(), "IDC".into()],
                tags: vec!["gangs:SilverFox".into()],
                carrier: Some("DigitalOcean, LLC".into()),
                location: Some("United States / New Jersey / Clifton".into()),
                asn: Some(14061),
                asn_info: Some("DIGITALOCEAN-ASN, US".into()),
                checked,
            },
        ),
        (
            "2001:db8::2".parse().expect("valid"),
            IpVerdict {
                is_malicious: false,
                confidence_level: None,
                severity: None,
                judgments: Vec::new(),
                tags: Vec::new(),
                carrier: None,
                location: None,
                asn: None,
                asn_info: None,
                checked,
            },
        ),
    ]);
    out.push((
        "reputation-cache".to_owned(),
        prefixed(1, &serde_json::to_vec(&verdicts).expect("serialises")),
    ));

    let spool_dir = scratch_dir();
    {
        let (mut spool, _) = Spool::open(
            spool_dir.path(),
            sensor_outputs::sink::kafka::spool::MIN_MAX_BYTES,
        )
        .expect("open");
        for i in 0..3 {
            spool
                .append(
                    format!("10.1.2.{i}").as_bytes(),
                    format!("{{\"@timestamp\":\"2026-11-24T00:00:0{i}Z\",\"dns\":{{\"id\":{i}}}}}")
                        .as_bytes(),
                )
                .expect("append");
        }
        spool.sync().expect("sync");
    }
    let segment = std::fs::read(segment_path(spool_dir.path(), 0)).expect("a segment");
    out.push((
        "spool-segment".to_owned(),
        prefixed(2, &prefixed(0, &segment)),
    ));
    let mut torn = segment.clone();
    torn.truncate(segment.len() - 5);
    out.push(("spool-torn".to_owned(), prefixed(2, &prefixed(0, &torn))));
    // Cursor at segment 0, record 1.
    let mut with_cursor = vec![1u8, 0, 1];
    with_cursor.extend_from_slice(&segment);
    out.push(("spool-cursor".to_owned(), prefixed(2, &with_cursor)));
    // Two segments, split after the first record.
    let first = valid_records(&segment)[1].0;
    let mut two = vec![2u8];
    two.extend_from_slice(&(first as u16).to_le_bytes());
    two.extend_from_slice(&segment);
    out.push(("spool-two-segments".to_owned(), prefixed(2, &two)));
    out
}

/// A `/v3/scene/dns` answer shaped like the documented one (as in threatbook.rs's tests).
const DNS_ANSWER: &str = include_str!("../../tests/fixtures/threatbook/dns_answer.json");

/// The captured `/v3/scene/ip_reputation` answer (as in threatbook.rs's tests).
const IP_ANSWER: &str = include_str!("../../tests/fixtures/threatbook/ip_reputation_answer.json");
