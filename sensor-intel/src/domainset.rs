//! Domain-name sets with exact and suffix entries, and the list files they are read from.
//!
//! # Entry syntax (config values and list files alike)
//! | entry              | matches                                                          |
//! | ------------------ | ---------------------------------------------------------------- |
//! | `example.com`      | `example.com` and every name under it (`www.example.com`, …)     |
//! | `*.example.com`    | the same: lists mix both spellings and mean the apex too         |
//! | `.example.com`     | the same (squid's `dstdomain` spelling)                          |
//! | `=www.example.com` | `www.example.com` only                                           |
//!
//! Plain entries are suffixes because that is what people who write "trust `baidu.com`" or
//! "`evil.example` is malicious" expect; `notbaidu.com` is never covered, since matching is on
//! whole labels. Names are compared in lower case without the trailing dot; non-ASCII names are
//! stored as punycode (`bücher.example` → `xn--bcher-kva.example`), the form queries carry.
//!
//! # List files
//! One entry per line; `#` starts a comment (whole line or trailing); blank lines are skipped;
//! hosts-file lines (`0.0.0.0 ads.example.com other.example.com`, `127.0.0.1 x`, `::1 x`) give
//! their names, each read with the syntax above, and the usual loopback names (`localhost`,
//! `ip6-localhost`, …) on them are ignored. Errors name the file, the line and what is wrong.
//!
//! # Cost
//! A lookup probes one hash table once per label of the queried name (fewer when the name has
//! more labels than the longest entry), whatever the size of the set. Entries live in one string
//! arena; the table holds 8-byte handles into it, so a set costs its names' bytes plus about
//! 9 bytes of table per entry, with no allocation per entry.

use std::{
    fmt,
    hash::BuildHasher,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use hashbrown::{DefaultHashBuilder, HashTable};

/// Longest name in presentation form without the trailing dot (255 bytes on the wire).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;

/// Names on hosts-file lines that describe the host itself, not a domain to list.
const HOSTS_SELF_NAMES: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
];

/// Whether an entry covers the names below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// The name only (`=name`).
    Exact,
    /// The name and every name under it.
    Suffix,
}

/// Why an entry is not a usable domain name. The offending text is quoted (cut at 80 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("{name:?} is longer than {MAX_NAME_LEN} characters")]
    TooLong { name: String },
    #[error("{name:?} has an empty label")]
    EmptyLabel { name: String },
    #[error("{name:?} has a label longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong { name: String },
    #[error("{name:?}: a wildcard is only allowed as a leading `*.`")]
    Wildcard { name: String },
    #[error("{name:?} contains {ch:?}, which a domain name cannot hold")]
    BadChar { name: String, ch: char },
    #[error("{name:?} is not a valid internationalised name")]
    Idna { name: String },
}

/// The set's arena is addressed with `u32` offsets; a set holding more than 4 GiB of names
/// (some 17 million names of maximal length) is refused rather than truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the set's names exceed 4 GiB")]
pub struct SetFull;

/// What is wrong with one line of a list file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not UTF-8")]
    NotUtf8,
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{0:?} is an IP address or network, not a domain name")]
    Address(String),
    #[error("one entry per line expected, found {0:?} after it")]
    Extra(String),
    #[error("{0:?} is not an IP address or CIDR")]
    NotAnAddress(String),
    #[error("{text:?} has host bits set (did you mean {network}?)")]
    HostBits { text: String, network: ipnet::IpNet },
    #[error(transparent)]
    Full(#[from] SetFull),
}

/// A list file that cannot be used. One line, naming the file (and the line).
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("list {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("list {} line {line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: LineError,
    },
}

/// A parsed, normalised entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    /// Lower case, no trailing dot, no `=`/`*.` marker, punycode for non-ASCII labels.
    pub name: String,
    pub kind: EntryKind,
}

impl Pattern {
    /// Parses one entry in the syntax described in the module documentation.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let mut name = String::new();
        let kind = normalise_into(text, &mut name)?;
        Ok(Self { name, kind })
    }
}

impl FromStr for Pattern {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Match {
            name: &self.name,
            kind: self.kind,
        }
        .fmt(f)
    }
}

/// The entry that covered a looked-up name, for logs and findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'a> {
    pub name: &'a str,
    pub kind: EntryKind,
}

impl fmt::Display for Match<'_> {
    /// Written back in entry syntax: `=name` for an exact entry, `name` for a suffix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            EntryKind::Exact => write!(f, "={}", self.name),
            EntryKind::Suffix => f.write_str(self.name),
        }
    }
}

/// A handle into the arena. 8 bytes: the table's size per entry.
#[derive(Debug, Clone, Copy)]
struct Slot {
    start: u32,
    len: u8,
    exact: bool,
}

/// A set of exact and suffix entries; see the module documentation.
#[derive(Clone, Default)]
pub struct DomainSet {
    /// Every entry's name, back to back.
    arena: String,
    table: HashTable<Slot>,
    /// Randomly seeded per set: queried names come from the network, so their hashes must not
    /// be predictable.
    hasher: DefaultHashBuilder,
    /// Labels of the longest entry: longer suffixes of a queried name need no probe.
    max_labels: usize,
}

impl fmt::Debug for DomainSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainSet")
            .field("entries", &self.len())
            .field("max_labels", &self.max_labels)
            .finish()
    }
}

impl DomainSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct entries.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Labels of the longest entry (0 when empty).
    pub fn max_labels(&self) -> usize {
        self.max_labels
    }

    /// Heap memory held by the set, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.table.allocation_size()
    }

    fn slot_name(&self, slot: &Slot) -> &str {
        let start = slot.start as usize;
        &self.arena[start..start + slot.len as usize]
    }

    /// Adds an entry. A name listed both ways ends up a suffix entry, which covers the exact one.
    pub fn insert(&mut self, pattern: &Pattern) -> Result<(), SetFull> {
        self.insert_normalised(&pattern.name, pattern.kind)
    }

    fn insert_normalised(&mut self, name: &str, kind: EntryKind) -> Result<(), SetFull> {
        debug_assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN);
        let exact = kind == EntryKind::Exact;
        let hash = self.hasher.hash_one(name.as_bytes());
        let Self {
            arena,
            table,
            hasher,
            max_labels,
        } = self;
        let slot_name = |s: &Slot| &arena.as_bytes()[s.start as usize..][..s.len as usize];
        if let Some(slot) = table.find_mut(hash, |s| slot_name(s) == name.as_bytes()) {
            slot.exact &= exact;
            return Ok(());
        }
        let start = u32::try_from(arena.len()).map_err(|_| SetFull)?;
        let len = u8::try_from(name.len()).map_err(|_| SetFull)?;
        start.checked_add(u32::from(len)).ok_or(SetFull)?;
        arena.push_str(name);
        let arena = &*arena;
        table.insert_unique(hash, Slot { start, len, exact }, |s| {
            hasher.hash_one(&arena.as_bytes()[s.start as usize..][..s.len as usize])
        });
        *max_labels = (*max_labels).max(label_count(name.as_bytes()));
        Ok(())
    }

    /// Releases spare arena capacity left by growth (done once a set is built).
    pub fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = Match<'_>> {
        self.table.iter().map(|s| Match {
            name: self.slot_name(s),
            kind: if s.exact {
                EntryKind::Exact
            } else {
                EntryKind::Suffix
            },
        })
    }

    /// True if an entry covers `name` (any case, with or without the trailing dot).
    pub fn contains(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    /// The most specific entry covering `name`, if any. Does not allocate for names of up to
    /// 256 bytes (every name a DNS message can carry).
    pub fn lookup(&self, name: &str) -> Option<Match<'_>> {
        self.lookup_counting(name, &mut 0)
    }

    /// [`Self::lookup`], counting hash probes (the cost the module documentation promises).
    pub fn lookup_counting(&self, name: &str, probes: &mut usize) -> Option<Match<'_>> {
        if self.table.is_empty() {
            return None;
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut buf = [0u8; 256];
        let heap;
        let lower: &[u8] = match buf.get_mut(..name.len()) {
            Some(b) => {
                b.copy_from_slice(name.as_bytes());
                b.make_ascii_lowercase();
                b
            }
            None => {
                heap = name.to_ascii_lowercase();
                heap.as_bytes()
            }
        };
        // Suffixes with more labels than the longest entry cannot match: skip them.
        let mut start = 0;
        for _ in self.max_labels..label_count(lower) {
            start += lower[start..].iter().position(|&b| b == b'.')? + 1;
        }
        // From the longest candidate to the shortest, so the first hit is the most specific.
        loop {
            let candidate = &lower[start..];
            *probes += 1;
            let hash = self.hasher.hash_one(candidate);
            if let Some(slot) = self.table.find(hash, |s| {
                s.len as usize == candidate.len() && self.slot_name(s).as_bytes() == candidate
            }) && (start == 0 || !slot.exact)
            {
                return Some(Match {
                    name: self.slot_name(slot),
                    kind: if slot.exact {
                        EntryKind::Exact
                    } else {
                        EntryKind::Suffix
                    },
                });
            }
            start += candidate.iter().position(|&b| b == b'.')? + 1;
        }
    }

    /// Adds the entries of a list file's text; `origin` names it in errors. Returns the number
    /// of entries read (duplicates included). On error the set holds the lines before it, so
    /// callers build into a fresh set and discard it on error.
    pub fn parse_list(&mut self, text: &[u8], origin: &Path) -> Result<usize, ListError> {
        // One line is at most one entry, except on hosts lines: a good guess that saves the
        // rehashing of a growing table on million-line lists.
        let lines = text.iter().filter(|&&b| b == b'\n').count() + 1;
        self.table.reserve(lines, |s| {
            self.hasher
                .hash_one(&self.arena.as_bytes()[s.start as usize..][..s.len as usize])
        });
        self.arena.reserve(text.len());
        let mut read = 0;
        let mut name = String::new();
        for (line, content) in list_lines(text) {
            let at_line = |reason: LineError| ListError::Line {
                path: origin.to_owned(),
                line,
                reason,
            };
            let content = content.map_err(at_line)?;
            let mut tokens = content.split_ascii_whitespace();
            let first = tokens.next().unwrap_or_default();
            // `fe80::1%lo0 localhost`: a zone index is no part of the address.
            let address = first.split_once('%').map_or(first, |(a, _)| a);
            if address.parse::<IpAddr>().is_ok() {
                let mut names = tokens.peekable();
                if names.peek().is_none() {
                    return Err(at_line(LineError::Address(shown(first))));
                }
                for token in names {
                    if HOSTS_SELF_NAMES.contains(&token) || token.parse::<IpAddr>().is_ok() {
                        continue;
                    }
                    let kind = normalise_into(token, &mut name).map_err(|e| at_line(e.into()))?;
                    self.insert_normalised(&name, kind)
                        .map_err(|e| at_line(e.into()))?;
                    read += 1;
                }
            } else {
                if let Some(extra) = tokens.next() {
                    return Err(at_line(LineError::Extra(shown(extra))));
                }
                if first.parse::<ipnet::IpNet>().is_ok() {
                    return Err(at_line(LineError::Address(shown(first))));
                }
                let kind = normalise_into(first, &mut name).map_err(|e| at_line(e.into()))?;
                self.insert_normalised(&name, kind)
                    .map_err(|e| at_line(e.into()))?;
                read += 1;
            }
        }
        Ok(read)
    }

    /// Reads a list file into the set (see [`Self::parse_list`]).
    pub fn load_file(&mut self, path: &Path) -> Result<usize, ListError> {
        let text = std::fs::read(path).map_err(|source| ListError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.parse_list(&text, path)
    }
}

/// The lines of a list file that hold something: `(line number from 1, content)`, with comments
/// cut and whitespace trimmed. Comments are cut before decoding, so a Latin-1 comment in an old
/// hosts file does no harm; a UTF-8 byte order mark is skipped.
pub fn list_lines(text: &[u8]) -> impl Iterator<Item = (usize, Result<&str, LineError>)> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter_map(|(i, raw)| {
            let raw = raw.split(|&b| b == b'#').next().unwrap_or_default();
            let content = match std::str::from_utf8(raw) {
                Ok(s) => s.trim(),
                Err(_) => return Some((i + 1, Err(LineError::NotUtf8))),
            };
            (!content.is_empty()).then_some((i + 1, Ok(content)))
        })
}

fn label_count(name: &[u8]) -> usize {
    name.iter().filter(|&&b| b == b'.').count() + 1
}

/// Error text for user input: quoted by the error, cut so a binary file makes a short message.
fn shown(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Parses one entry into `out` (cleared first) and returns its kind.
fn normalise_into(text: &str, out: &mut String) -> Result<EntryKind, NameError> {
    let (kind, rest) = if let Some(rest) = text.strip_prefix('=') {
        (EntryKind::Exact, rest)
    } else if let Some(rest) = text.strip_prefix("*.") {
        (EntryKind::Suffix, rest)
    } else if let Some(rest) = text.strip_prefix('.') {
        (EntryKind::Suffix, rest)
    } else {
        (EntryKind::Suffix, text)
    };
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    out.clear();
    if rest.is_ascii() {
        out.push_str(rest);
        out.make_ascii_lowercase();
    } else {
        let ascii =
            idna::domain_to_ascii(rest).map_err(|_| NameError::Idna { name: shown(text) })?;
        out.push_str(&ascii);
    }
    if out.is_empty() {
        return Err(NameError::Empty);
    }
    if out.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { name: shown(text) });
    }
    for label in out.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel { name: shown(text) });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong { name: shown(text) });
        }
        // Letters, digits and hyphens, plus `_` for service labels (`_dmarc`, `_tcp`) that real
        // queries carry.
        if let Some(ch) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(if ch == '*' {
                NameError::Wildcard { name: shown(text) }
            } else {
                NameError::BadChar {
                    name: shown(text),
                    ch,
                }
            });
        }
    }
    Ok(kind)
}

impl From<ListError> for sensor_model::reload::ReloadError {
    fn from(e: ListError) -> Self {
        Self::List(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn set(entries: &[&str]) -> DomainSet {
        let mut s = DomainSet::new();
        for e in entries {
            s.insert(&Pattern::parse(e).unwrap()).unwrap();
        }
        s
    }

    fn parse(text: &str) -> Result<DomainSet, ListError> {
        let mut s = DomainSet::new();
        s.parse_list(text.as_bytes(), Path::new("/etc/lists/test.txt"))
            .map(|_| s)
    }

    fn matched(s: &DomainSet, name: &str) -> Option<String> {
        s.lookup(name).map(|m| m.to_string())
    }

    #[test]
    fn suffix_entries_cover_subdomains_on_label_boundaries() {
        let s = set(&["baidu.com"]);
        assert!(s.contains("baidu.com"));
        assert!(s.contains("www.baidu.com"));
        assert!(s.contains("a.b.c.baidu.com"));
        assert!(!s.contains("notbaidu.com"));
        assert!(!s.contains("baidu.com.cn"));
        assert!(!s.contains("com"));
        assert!(!s.contains("aidu.com"));
        assert_eq!(matched(&s, "www.baidu.com").as_deref(), Some("baidu.com"));
    }

    #[test]
    fn exact_entries_cover_only_themselves() {
        let s = set(&["=www.example.com"]);
        assert!(s.contains("www.example.com"));
        assert!(!s.contains("a.www.example.com"));
        assert!(!s.contains("example.com"));
        assert_eq!(
            matched(&s, "www.example.com").as_deref(),
            Some("=www.example.com")
        );
        // An exact parent does not cover a child, but a suffix further up still does.
        let s = set(&["=a.example.com", "example.com"]);
        assert_eq!(
            matched(&s, "x.a.example.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            matched(&s, "a.example.com").as_deref(),
            Some("=a.example.com")
        );
    }

    #[test]
    fn listed_both_ways_is_a_suffix() {
        for order in [
            ["=example.com", "example.com"],
            ["example.com", "=example.com"],
        ] {
            let s = set(&order);
            assert_eq!(s.len(), 1);
            assert!(s.contains("www.example.com"), "{order:?}");
        }
    }

    #[test]
    fn the_most_specific_entry_is_reported() {
        let s = set(&["example.com", "a.example.com", "com"]);
        assert_eq!(
            matched(&s, "x.a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(matched(&s, "b.example.com").as_deref(), Some("example.com"));
        assert_eq!(matched(&s, "other.com").as_deref(), Some("com"));
    }

    #[test]
    fn spellings_normalise() {
        for (text, name, kind) in [
            ("Example.COM.", "example.com", EntryKind::Suffix),
            ("*.example.com", "example.com", EntryKind::Suffix),
            (".example.com", "example.com", EntryKind::Suffix),
            ("=WWW.example.com.", "www.example.com", EntryKind::Exact),
            (
                "_dmarc.example.com",
                "_dmarc.example.com",
                EntryKind::Suffix,
            ),
            ("bücher.example", "xn--bcher-kva.example", EntryKind::Suffix),
            (
                "xn--bcher-kva.example",
                "xn--bcher-kva.example",
                EntryKind::Suffix,
            ),
        ] {
            let p = Pattern::parse(text).unwrap();
            assert_eq!((p.name.as_str(), p.kind), (name, kind), "{text}");
        }
        let s = set(&["*.example.com"]);
        assert!(
            s.contains("example.com"),
            "the wildcard spelling covers the apex"
        );
    }

    #[test]
    fn lookups_ignore_case_and_the_trailing_dot() {
        let s = set(&["baidu.com", "=exact.example"]);
        assert!(s.contains("WWW.Baidu.COM."));
        assert!(s.contains("EXACT.example."));
        assert!(!s.contains(""));
        assert!(!s.contains("."));
        assert!(!s.contains("a..baidu.cn"));
        // Longer than any wire name (escaped presentation form): still looked up correctly.
        let long = format!("{}.baidu.com", "a.".repeat(200));
        assert!(s.contains(&long));
        assert!(!set(&[]).contains("baidu.com"));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "empty name"),
            ("=", "empty name"),
            ("a..b", "empty label"),
            ("foo/bar.com", "'/'"),
            ("a.*.com", "wildcard"),
            ("=*.a.com", "wildcard"),
            ("exa$mple.com", "'$'"),
        ];
        for (text, want) in cases {
            let err = Pattern::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(matches!(
            Pattern::parse(&long_label),
            Err(NameError::LabelTooLong { .. })
        ));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(matches!(
            Pattern::parse(&long_name),
            Err(NameError::TooLong { .. })
        ));
        let max = format!("{}.com", vec!["a".repeat(63); 3].join("."));
        assert!(max.len() > 190 && Pattern::parse(&max).is_ok());
    }

    #[test]
    fn list_files_take_plain_and_hosts_lines_and_comments() {
        let text = "\u{feff}# a header comment\r\n\
                    \r\n\
                    baidu.com   # trailing comment\r\n\
                    =exact.example\n\
                    0.0.0.0 ads.example.com other.example.com\n\
                    127.0.0.1 x.test\n\
                    ::1 localhost ip6-localhost ip6-loopback\n\
                    fe80::1%lo0 localhost\n\
                    127.0.0.1\tlocalhost localhost.localdomain\n\
                    0.0.0.0 0.0.0.0\n\
                    255.255.255.255 broadcasthost\n\
                    \t   \n\
                    *.wild.example\n";
        let s = parse(text).unwrap();
        let mut got: Vec<String> = s.iter().map(|m| m.to_string()).collect();
        got.sort();
        assert_eq!(
            got,
            [
                "=exact.example",
                "ads.example.com",
                "baidu.com",
                "other.example.com",
                "wild.example",
                "x.test"
            ]
        );
    }

    #[test]
    fn bad_lines_are_named_by_file_and_number() {
        let cases: &[(&str, usize, &str)] = &[
            ("ok.com\n# c\n\nbad name.com\n", 4, "after it"),
            ("ok.com\n1.2.3.4\n", 2, "IP address"),
            ("10.0.0.0/8\n", 1, "IP address"),
            ("0.0.0.0 ok.com bad$.com\n", 1, "'$'"),
            ("a.com\nb.com\na..b\n", 3, "empty label"),
        ];
        for (text, line, want) in cases {
            let err = parse(text).unwrap_err();
            let shown = err.to_string();
            assert!(
                matches!(err, ListError::Line { line: l, .. } if l == *line),
                "{text:?}: {shown}"
            );
            assert!(
                shown.starts_with(&format!("list /etc/lists/test.txt line {line}: ")),
                "{shown}"
            );
            assert!(shown.contains(want), "{text:?}: {shown}");
            assert!(!shown.contains('\n'), "{shown}");
        }
        let mut s = DomainSet::new();
        let err = s
            .parse_list(b"ok.com\n\xff\xfe.com\n# caf\xe9\n", Path::new("l"))
            .unwrap_err();
        assert_eq!(err.to_string(), "list l line 2: not UTF-8");
        let err = DomainSet::new()
            .load_file(Path::new("/nonexistent/list.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("list /nonexistent/list.txt: "), "{err}");
    }

    /// One probe per label of the queried name, never more, whatever the set's size; the
    /// timings are printed for the record, not asserted (this machine is shared and noisy).
    #[test]
    fn a_million_entries_cost_probes_per_label_not_per_entry() {
        const N: usize = 1_000_000;
        let mut text = String::with_capacity(N * 32);
        for i in 0..N {
            use std::fmt::Write as _;
            // Two to four labels, like real lists.
            match i % 3 {
                0 => writeln!(text, "host{i}.example{}.com", i % 1000),
                1 => writeln!(text, "0.0.0.0 ad{i}.tracker{}.net", i % 97),
                _ => writeln!(text, "site{i}.org"),
            }
            .unwrap();
        }
        let started = Instant::now();
        let mut big = DomainSet::new();
        assert_eq!(
            big.parse_list(text.as_bytes(), Path::new("big")).unwrap(),
            N
        );
        big.shrink_to_fit();
        let build = started.elapsed();
        assert_eq!(big.len(), N);
        assert_eq!(big.max_labels(), 3);

        let small = set(&[
            "host3.example3.com",
            "site2.org",
            "a.b.c",
            "d.e.f",
            "g.h.i",
            "j.k.l",
            "m.n.o",
            "p.q.r",
            "s.t.u",
            "v.w.x",
        ]);
        assert_eq!(small.max_labels(), 3);
        let names = [
            "host3.example3.com",
            "www.host3.example3.com",
            "a.b.c.d.e.host999999.example999.com",
            "x.site2.org",
            "nothing.here.example",
            "a.b.c.d.e.f.g.h.i.j",
            "com",
        ];
        for name in names {
            let (mut p_big, mut p_small) = (0, 0);
            let hit_big = big.lookup_counting(name, &mut p_big).is_some();
            let hit_small = small.lookup_counting(name, &mut p_small).is_some();
            // At most one probe per label, and none for labels beyond the longest entry's.
            let bound = name.split('.').count().min(3);
            assert!(
                p_big <= bound && p_small <= bound,
                "{name}: {p_big}, {p_small}"
            );
            if !hit_big && !hit_small {
                assert_eq!((p_big, p_small), (bound, bound), "{name}");
            }
        }
        assert_eq!(
            big.lookup("a.b.c.d.e.host999999.example999.com")
                .map(|m| m.name),
            Some("host999999.example999.com")
        );
        assert!(big.contains("www.ad1.tracker1.net"));
        assert!(!big.contains("host1.example1.com"), "i = 1 is a tracker");
        assert!(!big.contains("notsite2.org"));

        let time = |s: &DomainSet| {
            let rounds = 200_000;
            let started = Instant::now();
            let mut hits = 0;
            for i in 0..rounds {
                hits += usize::from(s.contains(names[i % names.len()]));
            }
            (started.elapsed().as_nanos() / rounds as u128, hits)
        };
        let (ns_big, hits_big) = time(&big);
        let (ns_small, _) = time(&small);
        assert!(hits_big > 0);
        eprintln!(
            "1M entries: built in {build:?}, {} MiB heap, lookup {ns_big} ns (10 entries: \
             {ns_small} ns)",
            big.heap_bytes() >> 20
        );
    }
}
