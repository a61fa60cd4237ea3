//! Names as the sensor writes them and as the store orders them.
//!
//! The sensor's documents carry names in ECS presentation form (`sensor_model::query::
//! presentation_name`): lower case, labels joined by dots without the root's trailing dot
//! (`www.example.com`; the root itself is `.`), a dot or backslash inside a label escaped with a
//! backslash, other unprintable bytes as `\DDD`. The store keys a name by its labels in reverse
//! order, each followed by a dot (`com.example.www.`), so a domain and all of its subdomains
//! are one contiguous key range that starts with the domain's own key (`com.example.`), and a
//! sibling such as `notexample.com` (`com.notexample.`) falls outside it.

use crate::error::InputError;

/// The longest presentation name: 255 wire bytes hold at most 253 bytes of label text, each
/// of which may take four characters (`\DDD`), plus the separating dots.
pub const MAX_NAME_CHARS: usize = 4 * 253 + 127;

/// Checks a name in the sensor's presentation form and returns its store key.
pub(crate) fn key(name: &str) -> Result<String, InputError> {
    let bad = |reason: &'static str| InputError::Name {
        name: name.chars().take(80).collect(),
        reason,
    };
    if name == "." {
        return Ok(String::new());
    }
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.len() > MAX_NAME_CHARS {
        return Err(bad("is longer than a DNS name can be"));
    }
    let mut labels: Vec<&str> = Vec::with_capacity(8);
    let bytes = name.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                // An escape covers the next character (`\.`, `\\`, `\t`, or the first digit of
                // `\DDD`, whose other digits are not dots either).
                if i + 1 >= bytes.len() {
                    return Err(bad("ends inside an escape"));
                }
                i += 2;
                continue;
            }
            b'.' => {
                if i == start {
                    return Err(bad(
                        "has an empty label (the sensor's form has no trailing dot)",
                    ));
                }
                labels.push(&name[start..i]);
                start = i + 1;
            }
            b'A'..=b'Z' => return Err(bad("is not lower case")),
            0x20..=0x7e => {}
            _ => return Err(bad("has a character the presentation form escapes")),
        }
        i += 1;
    }
    if start == bytes.len() {
        return Err(bad(
            "has an empty label (the sensor's form has no trailing dot)",
        ));
    }
    labels.push(&name[start..]);
    let mut key = String::with_capacity(name.len() + 1);
    for label in labels.iter().rev() {
        key.push_str(label);
        key.push('.');
    }
    Ok(key)
}

/// The presentation name of a store key (the inverse of [`key`]).
pub(crate) fn from_key(key: &str) -> String {
    if key.is_empty() {
        return ".".into();
    }
    let body = key.strip_suffix('.').unwrap_or(key);
    let mut labels = split_labels(body);
    labels.reverse();
    labels.join(".")
}

/// Splits at the dots that separate labels (not at escaped ones).
fn split_labels(s: &str) -> Vec<&str> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'.' => {
                out.push(&s[start..i]);
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    out.push(&s[start.min(s.len())..]);
    out
}

/// The key range of a domain and its subdomains: `[low, high)`, `high` absent for the root
/// (every name). A non-root key ends with `.`; every key inside the range continues with a
/// label after that dot, and `/` is the byte after `.`, so `high` ends the range.
pub(crate) fn domain_range(domain_key: &str) -> (String, Option<String>) {
    match domain_key.strip_suffix('.') {
        Some(stem) => (domain_key.to_owned(), Some(format!("{stem}/"))),
        None => (String::new(), None),
    }
}

/// A name typed by a person: lower-cased, one trailing dot dropped, then checked.
pub(crate) fn key_lenient(name: &str) -> Result<String, InputError> {
    let lower = name.trim().to_ascii_lowercase();
    let trimmed = match lower.strip_suffix('.') {
        Some(rest) if !rest.is_empty() && !rest.ends_with('\\') => rest,
        _ => &lower,
    };
    key(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_reverse_labels_and_round_trip() {
        assert_eq!(key("www.example.com").unwrap(), "com.example.www.");
        assert_eq!(key("com").unwrap(), "com.");
        assert_eq!(key(".").unwrap(), "");
        assert_eq!(key("a\\.b.c\\\\d").unwrap(), "c\\\\d.a\\.b.");
        for n in [
            "www.example.com",
            ".",
            "a\\.b.c\\\\d",
            "x\\000\\255\\t.q\\\"",
            "sp ace",
        ] {
            assert_eq!(from_key(&key(n).unwrap()), n);
        }
    }

    #[test]
    fn domain_range_covers_subdomains_only() {
        let (low, high) = domain_range(&key("evil.example").unwrap());
        let high = high.unwrap();
        let inside = |n: &str| {
            let k = key(n).unwrap();
            k >= low && k < high
        };
        assert!(inside("evil.example"));
        assert!(inside("a.b.evil.example"));
        assert!(!inside("notevil.example"));
        assert!(!inside("evil-x.example"));
        assert!(!inside("evil\\.x.example"));
        assert!(!inside("example"));
        assert_eq!(domain_range(""), (String::new(), None));
    }

    #[test]
    fn malformed_names_are_refused_with_a_reason() {
        for (n, why) in [
            ("", "empty"),
            ("example.com.", "trailing dot"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("Example.com", "lower case"),
            ("a\\", "escape"),
            ("caf\u{e9}.fr", "escapes"),
            ("tab\there", "escapes"),
        ] {
            let e = key(n).unwrap_err().to_string();
            assert!(e.contains(why), "{n:?}: {e}");
        }
        assert!(key(&"a.".repeat(600)).is_err());
    }

    #[test]
    fn typed_names_are_forgiven_case_and_a_trailing_dot() {
        assert_eq!(key_lenient("Evil.Example.").unwrap(), "example.evil.");
        assert_eq!(key_lenient(".").unwrap(), "");
        assert!(key_lenient("a..").is_err());
    }
}
