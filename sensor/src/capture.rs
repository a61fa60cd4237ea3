//! Reading a capture file for `sensor replay`: pcap (microsecond or nanosecond) and pcapng, each
//! frame as the Ethernet frame the XDP program expects, with its capture time in Unix
//! nanoseconds.
//!
//! Link types: Ethernet as it is; raw IP (101, and 228/229) and Linux cooked captures (SLL 113,
//! SLL2 276, what `tcpdump -i any` writes) get a synthesised Ethernet header carrying the
//! packet's ethertype (the addresses are zero: the program never reads them). Any other link
//! type is reported per frame ([`Item::Unsupported`]), never guessed at.

use std::{
    borrow::Cow,
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{
        Block, PcapNgReader,
        blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
    },
};

/// The first four bytes of a pcapng file (a Section Header Block's type).
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

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

enum Reader {
    Pcap {
        reader: PcapReader<BufReader<File>>,
        link: DataLink,
    },
    PcapNg {
        reader: PcapNgReader<BufReader<File>>,
        /// The current section's interfaces: link type and timestamp unit.
        interfaces: Vec<Interface>,
    },
}

/// What a pcapng packet needs of its Interface Description Block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Interface {
    link: DataLink,
    /// Timestamp units per second (`if_tsresol`).
    per_sec: u128,
    /// `if_tsoffset`, seconds.
    offset_s: u128,
}

impl Interface {
    fn of(idb: &InterfaceDescriptionBlock<'_>) -> Self {
        let mut per_sec: u128 = 1_000_000;
        let mut offset_s: u128 = 0;
        for o in &idb.options {
            match o {
                InterfaceDescriptionOption::IfTsResol(r) if r & 0x80 == 0 => {
                    per_sec = 10u128.checked_pow(u32::from(*r)).unwrap_or(u128::MAX);
                }
                InterfaceDescriptionOption::IfTsResol(r) => {
                    per_sec = 1u128.checked_shl(u32::from(r & 0x7f)).unwrap_or(u128::MAX);
                }
                InterfaceDescriptionOption::IfTsOffset(s) => offset_s = u128::from(*s),
                _ => {}
            }
        }
        Self {
            link: idb.linktype,
            per_sec: per_sec.max(1),
            offset_s,
        }
    }

    /// A timestamp of `raw` units in Unix nanoseconds; seconds and the fraction apart, so a
    /// fine resolution cannot overflow the product.
    fn time_ns(&self, raw: u128) -> u64 {
        let ns = (raw / self.per_sec) * 1_000_000_000
            + (raw % self.per_sec) * 1_000_000_000 / self.per_sec
            + self.offset_s * 1_000_000_000;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

/// An open capture file.
pub struct Capture {
    path: PathBuf,
    reader: Reader,
    /// Records read so far (for the error message of a malformed one).
    index: u64,
    /// The last frame's time: a pcapng Simple Packet Block carries none, and gets this.
    last_ts_ns: u64,
    /// Set after a malformed record: the reader's position is unknown, so it stops.
    failed: bool,
}

impl Capture {
    /// Opens `path`, telling pcap from pcapng by its first bytes.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let file = File::open(path).map_err(|source| CaptureError::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut buf = BufReader::with_capacity(1 << 16, file);
        let head = buf.fill_buf().map_err(|source| CaptureError::Open {
            path: path.to_owned(),
            source,
        })?;
        let header_error = |e: pcap_file::PcapError| CaptureError::Header {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let reader = if head.starts_with(&PCAPNG_MAGIC) {
            Reader::PcapNg {
                reader: PcapNgReader::new(buf).map_err(header_error)?,
                interfaces: Vec::new(),
            }
        } else {
            let reader = PcapReader::new(buf).map_err(header_error)?;
            let link = reader.header().datalink;
            Reader::Pcap { reader, link }
        };
        Ok(Self {
            path: path.to_owned(),
            reader,
            index: 0,
            last_ts_ns: 0,
            failed: false,
        })
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
            let (link, ts_ns, data, orig_len) = match &mut self.reader {
                Reader::Pcap { reader, link } => {
                    let link = *link;
                    match reader.next_packet()? {
                        Ok(p) => {
                            let ts = u64::try_from(p.timestamp.as_nanos()).unwrap_or(u64::MAX);
                            (link, ts, p.data.into_owned(), p.orig_len)
                        }
                        Err(e) => return Some(Err(self.malformed(e.to_string()))),
                    }
                }
                Reader::PcapNg { reader, interfaces } => {
                    let block = match reader.next_block()? {
                        Ok(b) => b,
                        Err(e) => return Some(Err(self.malformed(e.to_string()))),
                    };
                    let packet = match block {
                        // A new section starts its own list of interfaces.
                        Block::SectionHeader(_) => {
                            interfaces.clear();
                            None
                        }
                        Block::InterfaceDescription(idb) => {
                            interfaces.push(Interface::of(&idb));
                            None
                        }
                        Block::EnhancedPacket(p) => {
                            match interfaces.get(p.interface_id as usize) {
                                // pcap-file hands over the block's raw 64-bit count as if it
                                // were nanoseconds; its unit is the interface's `if_tsresol`.
                                Some(i) => Some(Ok((
                                    i.link,
                                    i.time_ns(p.timestamp.as_nanos()),
                                    p.data.into_owned(),
                                    p.original_len,
                                ))),
                                None => Some(Err(format!(
                                    "packet of interface {}, which no Interface Description \
                                     Block declares",
                                    p.interface_id
                                ))),
                            }
                        }
                        // No timestamp of its own: it gets the previous frame's.
                        Block::SimplePacket(p) => match interfaces.first() {
                            Some(i) => {
                                let len = u32::try_from(p.data.len()).unwrap_or(u32::MAX);
                                Some(Ok((
                                    i.link,
                                    self.last_ts_ns,
                                    p.data.into_owned(),
                                    p.original_len.max(len),
                                )))
                            }
                            None => Some(Err(
                                "simple packet before any Interface Description Block".into(),
                            )),
                        },
                        // Statistics, name resolution, journal entries: no frame.
                        _ => None,
                    };
                    match packet {
                        Some(Ok(p)) => p,
                        Some(Err(reason)) => return Some(Err(self.malformed(reason))),
                        None => {
                            self.index -= 1;
                            continue;
                        }
                    }
                }
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
                None => Item::Unsupported {
                    link: u32::from(link),
                },
            }));
        }
    }
}

/// `data` of link type `link` as an Ethernet frame; `None` for a link type this does not
/// translate, or a cooked header too short to carry its protocol.
fn ethernet(link: DataLink, data: &[u8]) -> Option<Cow<'_, [u8]>> {
    let with_header = |ethertype: u16, payload: &[u8]| {
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&[0; 12]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        Cow::Owned(f)
    };
    match link {
        DataLink::ETHERNET => Some(Cow::Borrowed(data)),
        DataLink::RAW => {
            // Raw IP says its version in its first nibble; anything else goes in as IPv4 and
            // the program counts it (`not_ip` or malformed), as it would live.
            let ethertype = if data.first().map(|b| b >> 4) == Some(6) {
                ETHERTYPE_IPV6
            } else {
                ETHERTYPE_IPV4
            };
            Some(with_header(ethertype, data))
        }
        DataLink::IPV4 => Some(with_header(ETHERTYPE_IPV4, data)),
        DataLink::IPV6 => Some(with_header(ETHERTYPE_IPV6, data)),
        // SLL: packet type, ARPHRD type, address length, 8 address bytes, then the protocol.
        DataLink::LINUX_SLL => {
            let proto = u16::from_be_bytes([*data.get(14)?, *data.get(15)?]);
            Some(with_header(proto, &data[16..]))
        }
        // SLL2: the protocol first, then reserved, interface index, ARPHRD type, packet type,
        // address length and 8 address bytes: 20 bytes.
        DataLink::LINUX_SLL2 => {
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
        let eth = ethernet(DataLink::RAW, &ip4).unwrap();
        assert_eq!(&eth[12..14], &[0x08, 0x00]);
        assert_eq!(&eth[14..], &ip4);
        let ip6 = [0x60u8, 0, 0, 0];
        assert_eq!(
            &ethernet(DataLink::RAW, &ip6).unwrap()[12..14],
            &[0x86, 0xdd]
        );

        let mut sll = vec![0u8; 16];
        sll[14..16].copy_from_slice(&[0x86, 0xdd]);
        sll.extend_from_slice(&ip6);
        let eth = ethernet(DataLink::LINUX_SLL, &sll).unwrap();
        assert_eq!((&eth[12..14], &eth[14..]), (&[0x86, 0xdd][..], &ip6[..]));

        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0; 18]);
        sll2.extend_from_slice(&ip4);
        let eth = ethernet(DataLink::LINUX_SLL2, &sll2).unwrap();
        assert_eq!((&eth[12..14], &eth[14..]), (&[0x08, 0x00][..], &ip4[..]));

        // Too short to hold the protocol, or a link type it does not translate.
        assert!(ethernet(DataLink::LINUX_SLL, &[0; 15]).is_none());
        assert!(ethernet(DataLink::LINUX_SLL2, &[0x08, 0x00, 0]).is_none());
        assert!(ethernet(DataLink::IEEE802_11, &ip4).is_none());
        assert!(matches!(
            ethernet(DataLink::ETHERNET, &ip4),
            Some(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn pcapng_resolutions_and_offsets() {
        let idb = |options| InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options,
        };
        // Default: microseconds.
        assert_eq!(
            Interface::of(&idb(vec![])).time_ns(1_500_000),
            1_500_000_000
        );
        // Nanoseconds (10^-9).
        let ns = idb(vec![InterfaceDescriptionOption::IfTsResol(9)]);
        assert_eq!(
            Interface::of(&ns).time_ns(1_700_000_000_123_456_789),
            1_700_000_000_123_456_789
        );
        // 2^-10 s, and an offset of 100 s.
        let bin = idb(vec![
            InterfaceDescriptionOption::IfTsResol(0x80 | 10),
            InterfaceDescriptionOption::IfTsOffset(100),
        ]);
        assert_eq!(Interface::of(&bin).time_ns(1024 + 512), 101_500_000_000);
    }
}
