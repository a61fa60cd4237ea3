//! Reading a capture file for `sensor replay`: pcap (microsecond or nanosecond, either byte
//! order) and pcapng, each frame as the Ethernet frame the XDP program expects, with its capture
//! time in Unix nanoseconds.
//!
//! Link types: Ethernet as it is; raw IP (101, and 228/229) and Linux cooked captures (SLL 113,
//! SLL2 276, what `tcpdump -i any` writes) get a synthesised Ethernet header carrying the
//! packet's ethertype (the addresses are zero: the program never reads them). Any other link
//! type is reported per frame ([`Item::Unsupported`]), never guessed at.
//!
//! Read here rather than with a crate: the formats are a few fixed headers (the pcap file
//! format and pcapng drafts of the IETF OPSAWG), the one maintained crate (pcap-file 2) hands a
//! pcapng packet's timestamp over in the wrong unit (the raw count, not `if_tsresol`'s) so the
//! interface options had to be read here anyway, and the shipped binary then carries no crate
//! that only the test kit needs. Every length is checked against the file before it is used.

use std::{
    borrow::Cow,
    fs::File,
    io::{BufReader, Read},
    path::{Path, PathBuf},
};

/// The first four bytes of a pcapng file (a Section Header Block's type).
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
/// pcapng's byte-order magic, in the section's byte order.
const PCAPNG_BOM: u32 = 0x1a2b_3c4d;
/// pcap's magic: microsecond and nanosecond timestamps.
const PCAP_MAGIC_US: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NS: u32 = 0xa1b2_3c4d;
/// Largest record or block accepted (far above any frame; a larger length is a damaged file,
/// not a reason to allocate it).
const MAX_RECORD: usize = 1 << 20;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Link types (tcpdump.org's LINKTYPE_ values) this reader translates.
const LINK_ETHERNET: u32 = 1;
const LINK_RAW: u32 = 101;
const LINK_LINUX_SLL: u32 = 113;
const LINK_IPV4: u32 = 228;
const LINK_IPV6: u32 = 229;
const LINK_LINUX_SLL2: u32 = 276;

/// Why a capture could not be read (further).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a pcap or pcapng file: {reason}")]
    Header { path: PathBuf, reason: String },
    /// A record that does not parse (a truncated file, garbage after good records). The
    /// records before it were read; nothing after it can be trusted to start where it seems to.
    #[error("{path}: record {index} is malformed: {reason}")]
    Record {
        path: PathBuf,
        index: u64,
        reason: String,
    },
}

/// One frame of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Capture time, Unix nanoseconds.
    pub ts_ns: u64,
    /// As an Ethernet frame.
    pub data: Vec<u8>,
    /// Shorter than it was on the wire (the capture's snap length): replayed as captured.
    pub truncated: bool,
}

/// What a capture yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    /// A frame of a link type the program cannot be given (or a cooked header too short to
    /// hold its protocol field): counted, not replayed.
    Unsupported {
        link: u32,
    },
}

/// Byte order of the file (pcap) or the current section (pcapng).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    Little,
    Big,
}

impl Order {
    fn u16(self, b: &[u8], at: usize) -> Option<u16> {
        let v: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(match self {
            Order::Little => u16::from_le_bytes(v),
            Order::Big => u16::from_be_bytes(v),
        })
    }
    fn u32(self, b: &[u8], at: usize) -> Option<u32> {
        let v: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(match self {
            Order::Little => u32::from_le_bytes(v),
            Order::Big => u32::from_be_bytes(v),
        })
    }
    fn i64(self, b: &[u8], at: usize) -> Option<i64> {
        let v: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
        Some(match self {
            Order::Little => i64::from_le_bytes(v),
            Order::Big => i64::from_be_bytes(v),
        })
    }
}

enum Format {
    Pcap {
        order: Order,
        link: u32,
        /// Timestamp fraction units per second (10^6 or 10^9).
        per_sec: u128,
    },
    PcapNg {
        order: Order,
        /// The current section's interfaces: link type and timestamp unit.
        interfaces: Vec<Interface>,
    },
}

/// What a pcapng packet needs of its Interface Description Block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Interface {
    link: u32,
    /// Timestamp units per second (`if_tsresol`).
    per_sec: u128,
    /// `if_tsoffset`, seconds.
    offset_s: i128,
}

impl Interface {
    /// From an Interface Description Block's body: link type, reserved, snap length, options.
    fn of(body: &[u8], order: Order) -> Option<Self> {
        let link = u32::from(order.u16(body, 0)?);
        let mut per_sec: u128 = 1_000_000;
        let mut offset_s: i128 = 0;
        let mut at = 8;
        // Options: code, length, value padded to 4 bytes; code 0 ends them.
        while let (Some(code), Some(len)) = (order.u16(body, at), order.u16(body, at + 2)) {
            let len = usize::from(len);
            let value = body.get(at + 4..at + 4 + len)?;
            match (code, len) {
                (0, _) => break,
                // if_tsresol: a power of ten, or of two when the top bit is set.
                (9, 1) if value[0] & 0x80 == 0 => {
                    per_sec = 10u128.checked_pow(u32::from(value[0])).unwrap_or(u128::MAX);
                }
                (9, 1) => {
                    per_sec = 1u128
                        .checked_shl(u32::from(value[0] & 0x7f))
                        .unwrap_or(u128::MAX)
                }
                // if_tsoffset: seconds added to every timestamp.
                (14, 8) => offset_s = i128::from(order.i64(value, 0)?),
                _ => {}
            }
            at += 4 + len.div_ceil(4) * 4;
        }
        Some(Self {
            link,
            per_sec: per_sec.max(1),
            offset_s,
        })
    }

    /// A timestamp of `raw` units in Unix nanoseconds; seconds and the fraction apart, so a
    /// fine resolution cannot overflow the product.
    fn time_ns(&self, raw: u128) -> u64 {
        let ns = (raw / self.per_sec) * 1_000_000_000
            + (raw % self.per_sec) * 1_000_000_000 / self.per_sec;
        let ns = ns as i128 + self.offset_s * 1_000_000_000;
        u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
    }
}

/// An open capture file.
pub struct Capture {
    path: PathBuf,
    input: BufReader<File>,
    format: Format,
    /// Records read so far (for the error message of a malformed one).
    index: u64,
    /// The last frame's time: a pcapng Simple Packet Block carries none, and gets this.
    last_ts_ns: u64,
    /// Set after a malformed record: the reader's position is unknown, so it stops.
    failed: bool,
}

/// Fills `buf` from `input`: `Ok(false)` at the end of the file before any byte, an error when
/// it ends inside.
fn read_exact_or_end(input: &mut impl Read, buf: &mut [u8]) -> Result<bool, String> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(format!(
                    "the file ends {} bytes into a {}-byte header",
                    got,
                    buf.len()
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(true)
}

/// Reads `len` bytes (a record's body).
fn read_body(input: &mut impl Read, len: usize) -> Result<Vec<u8>, String> {
    if len > MAX_RECORD {
        return Err(format!("a length of {len} bytes (at most {MAX_RECORD})"));
    }
    let mut body = vec![0; len];
    input
        .read_exact(&mut body)
        .map_err(|e| format!("the file ends inside a {len}-byte record ({e})"))?;
    Ok(body)
}

impl Capture {
    /// Opens `path`, telling pcap from pcapng by its first bytes.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let file = File::open(path).map_err(|source| CaptureError::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut input = BufReader::with_capacity(1 << 16, file);
        let header = |reason: String| CaptureError::Header {
            path: path.to_owned(),
            reason,
        };
        let mut first = [0u8; 4];
        if !read_exact_or_end(&mut input, &mut first).map_err(header)? {
            return Err(header("the file is empty".into()));
        }
        let format = if first == PCAPNG_MAGIC {
            // The section header is read as the first block, from its length on.
            Format::PcapNg {
                order: Order::Little,
                interfaces: Vec::new(),
            }
        } else {
            let mut rest = [0u8; 20];
            if !read_exact_or_end(&mut input, &mut rest).map_err(header)? {
                return Err(header("shorter than a pcap header".into()));
            }
            let (order, per_sec) = match (u32::from_le_bytes(first), u32::from_be_bytes(first)) {
                (PCAP_MAGIC_US, _) => (Order::Little, 1_000_000),
                (PCAP_MAGIC_NS, _) => (Order::Little, 1_000_000_000),
                (_, PCAP_MAGIC_US) => (Order::Big, 1_000_000),
                (_, PCAP_MAGIC_NS) => (Order::Big, 1_000_000_000),
                _ => return Err(header(format!("unknown magic number {first:02x?}"))),
            };
            // The link type is the low 16 bits; the upper ones may say how many FCS bytes
            // frames carry.
            let link = order.u32(&rest, 16).map_or(0, |l| l & 0xffff);
            Format::Pcap {
                order,
                link,
                per_sec,
            }
        };
        let mut c = Self {
            path: path.to_owned(),
            input,
            format,
            index: 0,
            last_ts_ns: 0,
            failed: false,
        };
        if matches!(c.format, Format::PcapNg { .. }) {
            // The first block must be a well-formed section header.
            c.section_header().map_err(header)?;
        }
        Ok(c)
    }

    /// A pcapng Section Header Block whose type (4 bytes) was just read: its byte order, then
    /// the rest of the block. A new section starts its own list of interfaces.
    fn section_header(&mut self) -> Result<(), String> {
        let mut fixed = [0u8; 8];
        if !read_exact_or_end(&mut self.input, &mut fixed)? {
            return Err("the file ends after a section header's type".into());
        }
        let order = match (
            u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
            u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        ) {
            (PCAPNG_BOM, _) => Order::Little,
            (_, PCAPNG_BOM) => Order::Big,
            _ => return Err("a section header without the byte-order magic".into()),
        };
        let total = order.u32(&fixed, 0).unwrap_or(0) as usize;
        if total < 28 || !total.is_multiple_of(4) {
            return Err(format!("a section header of {total} bytes"));
        }
        let rest = read_body(&mut self.input, total - 12)?;
        if order.u32(&rest, rest.len() - 4) != Some(total as u32) {
            return Err("a section header whose trailing length differs".into());
        }
        self.format = Format::PcapNg {
            order,
            interfaces: Vec::new(),
        };
        Ok(())
    }

    fn malformed(&mut self, reason: String) -> CaptureError {
        self.failed = true;
        CaptureError::Record {
            path: self.path.clone(),
            index: self.index,
            reason,
        }
    }

    /// The next frame; `None` at the end, or after a malformed record (which is returned once,
    /// as an error).
    pub fn next_item(&mut self) -> Option<Result<Item, CaptureError>> {
        if self.failed {
            return None;
        }
        loop {
            self.index += 1;
            let read = match self.format {
                Format::Pcap { .. } => self.pcap_record().map(|r| r.map(Some)),
                Format::PcapNg { .. } => self.pcapng_block(),
            };
            let (link, ts_ns, data, orig_len) = match read {
                Ok(None) => return None,
                Ok(Some(Some(p))) => p,
                // A block that is not a packet.
                Ok(Some(None)) => {
                    self.index -= 1;
                    continue;
                }
                Err(reason) => return Some(Err(self.malformed(reason))),
            };
            self.last_ts_ns = ts_ns;
            let truncated = u64::from(orig_len) > data.len() as u64;
            // `Some(None)`: already Ethernet, the bytes are used as they are.
            let converted = ethernet(link, &data).map(|f| match f {
                Cow::Borrowed(_) => None,
                Cow::Owned(f) => Some(f),
            });
            return Some(Ok(match converted {
                Some(f) => Item::Frame(Frame {
                    ts_ns,
                    data: f.unwrap_or(data),
                    truncated,
                }),
                None => Item::Unsupported { link },
            }));
        }
    }

    /// One pcap record: (link, time, data, length on the wire); `None` at the end.
    fn pcap_record(&mut self) -> Result<Option<Packet>, String> {
        let Format::Pcap {
            order,
            link,
            per_sec,
        } = self.format
        else {
            return Ok(None);
        };
        let mut h = [0u8; 16];
        if !read_exact_or_end(&mut self.input, &mut h)? {
            return Ok(None);
        }
        let field = |at| order.u32(&h, at).unwrap_or(0);
        let (secs, frac, incl, orig) = (field(0), field(4), field(8), field(12));
        if u128::from(frac) >= per_sec {
            return Err(format!(
                "a timestamp fraction of {frac} (at most {})",
                per_sec - 1
            ));
        }
        let data = read_body(&mut self.input, incl as usize)?;
        let ts = u128::from(secs) * 1_000_000_000 + u128::from(frac) * 1_000_000_000 / per_sec;
        Ok(Some((
            link,
            u64::try_from(ts).unwrap_or(u64::MAX),
            data,
            orig,
        )))
    }

    /// One pcapng block: `Some(Some(packet))` for a packet, `Some(None)` for another block,
    /// `None` at the end.
    fn pcapng_block(&mut self) -> Result<Option<Option<Packet>>, String> {
        let mut kind = [0u8; 4];
        if !read_exact_or_end(&mut self.input, &mut kind)? {
            return Ok(None);
        }
        if kind == PCAPNG_MAGIC {
            self.section_header()?;
            return Ok(Some(None));
        }
        let last_ts_ns = self.last_ts_ns;
        let Format::PcapNg { order, interfaces } = &mut self.format else {
            return Ok(None);
        };
        let order = *order;
        let mut len = [0u8; 4];
        if !read_exact_or_end(&mut self.input, &mut len)? {
            return Err("the file ends after a block's type".into());
        }
        let total = order.u32(&len, 0).unwrap_or(0) as usize;
        if total < 12 || !total.is_multiple_of(4) {
            return Err(format!("a block of {total} bytes"));
        }
        let rest = read_body(&mut self.input, total - 8)?;
        let body = &rest[..rest.len() - 4];
        if order.u32(&rest, rest.len() - 4) != Some(total as u32) {
            return Err("a block whose trailing length differs".into());
        }
        let short = |what: &str| format!("a {what} block too short for its fields");
        Ok(Some(match order.u32(&kind, 0).unwrap_or(0) {
            // Interface Description.
            1 => {
                interfaces.push(
                    Interface::of(body, order).ok_or_else(|| short("interface description"))?,
                );
                None
            }
            // Enhanced Packet: interface, timestamp (high, low), captured and original length.
            6 => {
                let f = |at| order.u32(body, at).ok_or_else(|| short("packet"));
                let (id, high, low, cap, orig) = (f(0)?, f(4)?, f(8)?, f(12)?, f(16)?);
                let i = interfaces.get(id as usize).ok_or_else(|| {
                    format!(
                        "packet of interface {id}, which no Interface Description Block declares"
                    )
                })?;
                let data = body
                    .get(20..20 + cap as usize)
                    .ok_or_else(|| short("packet"))?
                    .to_vec();
                let raw = (u128::from(high) << 32) | u128::from(low);
                Some((i.link, i.time_ns(raw), data, orig))
            }
            // Simple Packet: no timestamp of its own (it gets the previous frame's), no
            // interface (the first one's).
            3 => {
                let i = interfaces
                    .first()
                    .ok_or("simple packet before any Interface Description Block")?;
                let orig = order.u32(body, 0).ok_or_else(|| short("simple packet"))?;
                let data = body.get(4..).unwrap_or_default();
                let data = data[..data.len().min(orig as usize)].to_vec();
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                Some((i.link, last_ts_ns, data, orig.max(len)))
            }
            // Statistics, name resolution, journal entries: no frame.
            _ => None,
        }))
    }
}

/// A packet as read: link type, capture time (Unix ns), bytes, length on the wire.
type Packet = (u32, u64, Vec<u8>, u32);

/// `data` of link type `link` as an Ethernet frame; `None` for a link type this does not
/// translate, or a cooked header too short to carry its protocol.
fn ethernet(link: u32, data: &[u8]) -> Option<Cow<'_, [u8]>> {
    let with_header = |ethertype: u16, payload: &[u8]| {
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&[0; 12]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        Cow::Owned(f)
    };
    match link {
        LINK_ETHERNET => Some(Cow::Borrowed(data)),
        LINK_RAW => {
            // Raw IP says its version in its first nibble; anything else goes in as IPv4 and
            // the program counts it (`not_ip` or malformed), as it would live.
            let ethertype = if data.first().map(|b| b >> 4) == Some(6) {
                ETHERTYPE_IPV6
            } else {
                ETHERTYPE_IPV4
            };
            Some(with_header(ethertype, data))
        }
        LINK_IPV4 => Some(with_header(ETHERTYPE_IPV4, data)),
        LINK_IPV6 => Some(with_header(ETHERTYPE_IPV6, data)),
        // SLL: packet type, ARPHRD type, address length, 8 address bytes, then the protocol.
        LINK_LINUX_SLL => {
            let proto = u16::from_be_bytes([*data.get(14)?, *data.get(15)?]);
            Some(with_header(proto, &data[16..]))
        }
        // SLL2: the protocol first, then reserved, interface index, ARPHRD type, packet type,
        // address length and 8 address bytes: 20 bytes.
        LINK_LINUX_SLL2 => {
            let proto = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
            Some(with_header(proto, data.get(20..)?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooked_and_raw_frames_get_an_ethernet_header() {
        let ip4 = [0x45u8, 0, 0, 20];
        let eth = ethernet(LINK_RAW, &ip4).unwrap();
        assert_eq!(&eth[12..14], &[0x08, 0x00]);
        assert_eq!(&eth[14..], &ip4);
        let ip6 = [0x60u8, 0, 0, 0];
        assert_eq!(&ethernet(LINK_RAW, &ip6).unwrap()[12..14], &[0x86, 0xdd]);

        let mut sll = vec![0u8; 16];
        sll[14..16].copy_from_slice(&[0x86, 0xdd]);
        sll.extend_from_slice(&ip6);
        let eth = ethernet(LINK_LINUX_SLL, &sll).unwrap();
        assert_eq!((&eth[12..14], &eth[14..]), (&[0x86, 0xdd][..], &ip6[..]));

        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0; 18]);
        sll2.extend_from_slice(&ip4);
        let eth = ethernet(LINK_LINUX_SLL2, &sll2).unwrap();
        assert_eq!((&eth[12..14], &eth[14..]), (&[0x08, 0x00][..], &ip4[..]));

        // Too short to hold the protocol, or a link type it does not translate.
        assert!(ethernet(LINK_LINUX_SLL, &[0; 15]).is_none());
        assert!(ethernet(LINK_LINUX_SLL2, &[0x08, 0x00, 0]).is_none());
        assert!(ethernet(105, &ip4).is_none());
        assert!(matches!(
            ethernet(LINK_ETHERNET, &ip4),
            Some(Cow::Borrowed(_))
        ));
    }

    /// An Interface Description Block's body (little-endian): Ethernet, options as given.
    fn idb(options: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = vec![1, 0, 0, 0, 0, 0, 0, 0];
        for (code, value) in options {
            b.extend_from_slice(&code.to_le_bytes());
            b.extend_from_slice(&(value.len() as u16).to_le_bytes());
            b.extend_from_slice(value);
            b.resize(b.len().div_ceil(4) * 4, 0);
        }
        b.extend_from_slice(&[0; 4]);
        b
    }

    #[test]
    fn pcapng_resolutions_and_offsets() {
        let of = |o: &[(u16, &[u8])]| Interface::of(&idb(o), Order::Little).unwrap();
        // Default: microseconds.
        assert_eq!(of(&[]).time_ns(1_500_000), 1_500_000_000);
        assert_eq!(of(&[]).link, LINK_ETHERNET);
        // Nanoseconds (10^-9), after an option this reader does not use (a comment).
        let ns = of(&[(1, b"eth0 capture"), (9, &[9])]);
        assert_eq!(
            ns.time_ns(1_700_000_000_123_456_789),
            1_700_000_000_123_456_789
        );
        // 2^-10 s, and an offset of 100 s.
        let bin = of(&[(9, &[0x80 | 10]), (14, &100i64.to_le_bytes())]);
        assert_eq!(bin.time_ns(1024 + 512), 101_500_000_000);
        // An option longer than the block is a malformed block, not a read past it.
        let mut cut = idb(&[(9, &[9])]);
        cut[10] = 200;
        assert_eq!(Interface::of(&cut, Order::Little), None);
    }

    #[test]
    fn pcap_in_either_byte_order_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let frame = [0xaau8; 60];
        for (name, big) in [("le.pcap", false), ("be.pcap", true)] {
            let w32 = |v: u32| {
                if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let w16 = |v: u16| {
                if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let mut f = Vec::new();
            f.extend_from_slice(&w32(PCAP_MAGIC_NS));
            f.extend_from_slice(&w16(2));
            f.extend_from_slice(&w16(4));
            f.extend_from_slice(&[0; 8]);
            f.extend_from_slice(&w32(65_535));
            f.extend_from_slice(&w32(LINK_ETHERNET));
            for v in [1_700_000_000, 123, 60, 1500] {
                f.extend_from_slice(&w32(v));
            }
            f.extend_from_slice(&frame);
            let path = dir.path().join(name);
            std::fs::write(&path, &f).unwrap();
            let mut c = Capture::open(&path).unwrap();
            let Some(Ok(Item::Frame(got))) = c.next_item() else {
                panic!("{name}: no frame");
            };
            assert_eq!(got.ts_ns, 1_700_000_000_000_000_123, "{name}");
            assert_eq!((got.data.as_slice(), got.truncated), (&frame[..], true));
            assert!(c.next_item().is_none(), "{name}: the end");
            // Cut inside the record: the record is malformed, once.
            std::fs::write(&path, &f[..f.len() - 1]).unwrap();
            let mut c = Capture::open(&path).unwrap();
            assert!(matches!(
                c.next_item(),
                Some(Err(CaptureError::Record { index: 1, .. }))
            ));
            assert!(c.next_item().is_none());
        }
        let path = dir.path().join("garbage");
        std::fs::write(&path, b"this is not a capture file at all").unwrap();
        assert!(matches!(
            Capture::open(&path),
            Err(CaptureError::Header { .. })
        ));
    }
}
