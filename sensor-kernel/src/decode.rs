//! Turns a ring-buffer record into a [`Record`]: a query's [`Event`], or a response's header,
//! info and message bytes. [`Query::from_event`] and [`Response::from_parts`] make them owned.
//!
//! [`Query::from_event`]: sensor_model::query::Query::from_event
//! [`Response::from_parts`]: sensor_model::response::Response::from_parts

use std::mem::{MaybeUninit, offset_of};

use sensor_common::{
    Event, ResponseInfo,
    event::{HEADER_LEN, KIND_OFF, is_record_len, record_len},
    response::{INFO_OFF, MSG_OFF, RECORD_QUERY, RECORD_RESPONSE, is_response_len},
};
use sensor_model::query::DecodeError;

/// One ring-buffer record.
#[derive(Debug, Clone)]
pub enum Record {
    Query(Event),
    Response {
        /// The 64-byte header (its `qname` is not filled: the name is in `msg`). Boxed: a
        /// response is the larger variant, and queries are the common record.
        head: Box<Event>,
        info: ResponseInfo,
        /// The `info.copied` message bytes.
        msg: Vec<u8>,
    },
}

/// Reads a raw ring-buffer record by its `kind`. A record that breaks its kind's length rule
/// is an error, never a panic.
pub fn any(bytes: &[u8]) -> Result<Record, DecodeError> {
    match bytes.get(KIND_OFF) {
        Some(&RECORD_QUERY) | None => record(bytes).map(Record::Query),
        Some(&RECORD_RESPONSE) => response(bytes),
        Some(&k) => Err(DecodeError::Kind(k)),
    }
}

/// Reads a response record: header, [`ResponseInfo`], then `copied` message bytes.
fn response(bytes: &[u8]) -> Result<Record, DecodeError> {
    let len = bytes.len();
    if len < MSG_OFF {
        return Err(DecodeError::ResponseSize { len, copied: 0 });
    }
    let at = INFO_OFF + offset_of!(ResponseInfo, copied);
    let copied = u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
    if !is_response_len(len, usize::from(copied)) {
        return Err(DecodeError::ResponseSize { len, copied });
    }
    let mut head = MaybeUninit::<Event>::zeroed();
    let mut info = MaybeUninit::<ResponseInfo>::zeroed();
    // SAFETY: the record holds at least MSG_OFF bytes (checked): HEADER_LEN bytes of header
    // copied into the start of a zeroed Event (larger), and the ResponseInfo's bytes (MSG_OFF -
    // INFO_OFF, its size) into a ResponseInfo. Both are Pod (integers and byte arrays), so the
    // results are valid values; sources and destinations are distinct.
    let (head, info) = unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), head.as_mut_ptr().cast::<u8>(), HEADER_LEN);
        std::ptr::copy_nonoverlapping(
            bytes[INFO_OFF..].as_ptr(),
            info.as_mut_ptr().cast::<u8>(),
            size_of::<ResponseInfo>(),
        );
        (head.assume_init(), info.assume_init())
    };
    let msg = bytes[MSG_OFF..MSG_OFF + usize::from(copied)].to_vec();
    Ok(Record::Response {
        head: Box::new(head),
        info,
        msg,
    })
}

/// Reads a raw query record: the first bytes of an [`Event`], as long as its QNAME needs
/// (the variable-length rule in `sensor_common::event`). The bytes the record does not carry
/// read as zero. A record that breaks the rule is an error, never a panic.
pub fn record(bytes: &[u8]) -> Result<Event, DecodeError> {
    let len = bytes.len();
    if !len.is_multiple_of(8) || len < record_len(1) || len > size_of::<Event>() {
        return Err(DecodeError::Size(len));
    }
    let at = offset_of!(Event, qname_len);
    let qname_len = u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
    if !is_record_len(len, usize::from(qname_len)) {
        return Err(DecodeError::Truncated { len, qname_len });
    }
    let mut ev = MaybeUninit::<Event>::zeroed();
    // SAFETY: `len <= size_of::<Event>()` (checked above), so the copy stays inside `ev`; the
    // source is `len` bytes of the slice and cannot overlap a local. Event is Pod (integers and
    // byte arrays): the all-zero value with any prefix overwritten is a valid Event.
    Ok(unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), ev.as_mut_ptr().cast::<u8>(), len);
        ev.assume_init()
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use sensor_model::query::Query;

    use super::*;

    fn wire(labels: &[&[u8]]) -> Vec<u8> {
        let mut w = Vec::new();
        for l in labels {
            w.push(l.len() as u8);
            w.extend_from_slice(l);
        }
        w.push(0);
        w
    }

    /// A record as the XDP program writes it: `len` bytes of an Event for `name`.
    fn raw(name: &[u8], len: usize) -> Vec<u8> {
        // SAFETY: Event is Pod (integers and byte arrays): all zeros is a valid value.
        let mut ev: Event = unsafe { MaybeUninit::zeroed().assume_init() };
        ev.ts_mono_ns = 7;
        ev.ifindex = 3;
        ev.src_addr = sensor_common::ipv4_mapped([10, 0, 0, 1]);
        ev.dst_addr = sensor_common::ipv4_mapped([10, 0, 0, 53]);
        ev.src_port = 40000;
        ev.dst_port = 53;
        ev.dns_id = 9;
        ev.qtype = 1;
        ev.qclass = 1;
        ev.family = 4;
        ev.transport = 17;
        ev.qname_len = name.len() as u16;
        ev.qname[..name.len()].copy_from_slice(name);
        // Unspecified bytes after the name: not zero, to show they are not read.
        ev.qname[name.len()..].fill(0xee);
        // SAFETY: Event is repr(C) plain data without padding (size pinned in sensor-common).
        let all =
            unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<Event>()) };
        all[..len].to_vec()
    }

    #[test]
    fn records_of_every_consistent_length_decode() {
        let name = wire(&[b"www", b"example", b"com"]);
        assert_eq!(name.len(), 17);
        // 64 + 17 = 81, rounded up to 88; a short (128) and a full (320) record hold it too.
        for len in (88..=320).step_by(8) {
            let ev = record(&raw(&name, len)).unwrap_or_else(|e| panic!("{len}: {e}"));
            let q = Query::from_event(&ev).expect("decodes");
            assert_eq!(q.name, "www.example.com", "{len}");
            assert_eq!((q.src_port, q.dst_port, q.dns_id), (40000, 53, 9));
            assert_eq!(q.src, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
            // What the record did not carry reads as zero.
            assert!(ev.qname[len - 64..].iter().all(|&b| b == 0), "{len}");
        }
        // The shortest name (the root) in the shortest record; the longest in the full one.
        assert_eq!(
            Query::from_event(&record(&raw(&[0], 72)).unwrap())
                .unwrap()
                .name,
            "."
        );
        let long = wire(&[&[b'a'; 63], &[b'b'; 63], &[b'c'; 63], &[b'd'; 61]]);
        assert_eq!(long.len(), 255);
        let q = Query::from_event(&record(&raw(&long, 320)).unwrap()).unwrap();
        assert_eq!(q.name.len(), 253);
    }

    #[test]
    fn short_or_inconsistent_records_are_errors() {
        let name = wire(&[b"www", b"example", b"com"]);
        // Shorter than the name needs.
        assert_eq!(
            record(&raw(&name, 80)).err(),
            Some(DecodeError::Truncated {
                len: 80,
                qname_len: 17
            })
        );
        // Not a multiple of 8, or outside 72..=320.
        for len in [0, 8, 60, 64, 81, 87, 89, 321, 328, 1000] {
            let mut r = raw(&name, len.min(320));
            r.resize(len, 0);
            assert_eq!(record(&r).err(), Some(DecodeError::Size(len)), "{len}");
        }
        // A QNAME length beyond what any record holds.
        let mut r = raw(&name, 320);
        r[60..62].copy_from_slice(&300u16.to_ne_bytes());
        assert_eq!(
            record(&r).err(),
            Some(DecodeError::Truncated {
                len: 320,
                qname_len: 300
            })
        );
        // Every length and every QNAME length field: an answer or an error, never a panic.
        for len in 0..=336usize {
            for qlen in [0u16, 1, 17, 56, 57, 63, 64, 65, 255, 256, u16::MAX] {
                let mut r = vec![0x41u8; len];
                if len >= 62 {
                    r[60..62].copy_from_slice(&qlen.to_ne_bytes());
                }
                let res = record(&r).and_then(|ev| Query::from_event(&ev));
                let fits = len.is_multiple_of(8)
                    && (72..=320).contains(&len)
                    && len >= record_len(usize::from(qlen));
                assert_eq!(record(&r).is_ok(), fits, "{len} bytes, qname_len {qlen}");
                if !fits {
                    assert!(res.is_err());
                }
            }
        }
    }
}
