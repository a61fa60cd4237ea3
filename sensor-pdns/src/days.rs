//! Per-day counts of one row, packed into a small blob.
//!
//! A tuple seen on many days keeps one row whose blob grows by two or three bytes a day, rather
//! than one row per day (about 35 bytes each in SQLite with its index): most of a month's rows
//! are hot names re-seen daily, so this is what keeps 30 days within the size goal
//! (BENCHMARKS.md, "Passive DNS"). Entries are (day, count) in ascending day order: the first
//! day as a LEB128 varint of days since 1970-01-01 (UTC), each following day as the varint
//! difference to the previous one, each count as a varint.

/// Seconds in a UTC day.
pub const DAY_SECS: i64 = 86_400;

/// A blob that does not decode: the store was written by something else or damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("per-day counts do not decode")]
pub struct BadDays;

/// (day since 1970-01-01, count), ascending by day, no zero counts.
pub type Days = Vec<(u32, u64)>;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(input: &mut &[u8]) -> Result<u64, BadDays> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first().ok_or(BadDays)?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(BadDays)
}

pub fn encode(days: &[(u32, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(days.len() * 3 + 2);
    let mut prev = 0u32;
    for (i, &(day, count)) in days.iter().enumerate() {
        put_varint(&mut out, u64::from(if i == 0 { day } else { day - prev }));
        put_varint(&mut out, count);
        prev = day;
    }
    out
}

pub fn decode(mut blob: &[u8]) -> Result<Days, BadDays> {
    let mut out = Vec::with_capacity(blob.len() / 2);
    let mut day: u64 = 0;
    while !blob.is_empty() {
        let delta = get_varint(&mut blob)?;
        if !out.is_empty() && delta == 0 {
            return Err(BadDays);
        }
        day = day.checked_add(delta).ok_or(BadDays)?;
        let count = get_varint(&mut blob)?;
        out.push((u32::try_from(day).map_err(|_| BadDays)?, count));
    }
    Ok(out)
}

/// The counts of both blobs, summed per day.
pub fn merge(a: &[u8], b: &[u8]) -> Result<Vec<u8>, BadDays> {
    let (a, b) = (decode(a)?, decode(b)?);
    let mut out: Days = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) if x.0 == y.0 => {
                i += 1;
                j += 1;
                (x.0, x.1.saturating_add(y.1))
            }
            (Some(&x), Some(&y)) if x.0 < y.0 => {
                i += 1;
                x
            }
            (Some(_), Some(&y)) | (None, Some(&y)) => {
                j += 1;
                y
            }
            (Some(&x), None) => {
                i += 1;
                x
            }
            (None, None) => break,
        };
        out.push(next);
    }
    Ok(encode(&out))
}

/// The entries from `first_day` on (empty when none is left).
pub fn keep_from(blob: &[u8], first_day: u32) -> Result<Vec<u8>, BadDays> {
    let days = decode(blob)?;
    let keep: Days = days.into_iter().filter(|&(d, _)| d >= first_day).collect();
    Ok(encode(&keep))
}

/// The earliest day, if any.
pub fn first_day(blob: &[u8]) -> Result<Option<u32>, BadDays> {
    let mut b = blob;
    if b.is_empty() {
        return Ok(None);
    }
    let day = get_varint(&mut b)?;
    Ok(Some(u32::try_from(day).map_err(|_| BadDays)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let days = vec![(20_000, 1), (20_001, 300), (20_030, 70_000)];
        let blob = encode(&days);
        assert_eq!(decode(&blob).unwrap(), days);
        // A month of daily entries with counts below 128 takes two bytes a day.
        let month: Days = (0..30).map(|d| (20_000 + d, 100)).collect();
        assert_eq!(encode(&month).len(), 4 + 29 * 2);
    }

    #[test]
    fn merge_sums_equal_days_and_keeps_order() {
        let a = encode(&[(10, 1), (12, 2)]);
        let b = encode(&[(11, 5), (12, 3), (20, 1)]);
        assert_eq!(
            decode(&merge(&a, &b).unwrap()).unwrap(),
            vec![(10, 1), (11, 5), (12, 5), (20, 1)]
        );
        assert_eq!(
            decode(&merge(&[], &a).unwrap()).unwrap(),
            vec![(10, 1), (12, 2)]
        );
    }

    #[test]
    fn keep_from_drops_older_days() {
        let a = encode(&[(10, 1), (12, 2), (15, 4)]);
        assert_eq!(
            decode(&keep_from(&a, 12).unwrap()).unwrap(),
            vec![(12, 2), (15, 4)]
        );
        assert_eq!(first_day(&keep_from(&a, 13).unwrap()).unwrap(), Some(15));
        assert!(keep_from(&a, 16).unwrap().is_empty());
        assert_eq!(first_day(&[]).unwrap(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode(&[0x80]), Err(BadDays));
        assert_eq!(decode(&[5]), Err(BadDays));
        assert_eq!(decode(&[5, 1, 0, 1]), Err(BadDays));
        assert_eq!(decode(&[0xff; 12]), Err(BadDays));
    }
}
