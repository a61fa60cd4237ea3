//! Seeded frames for the kernel fuzz run: valid DNS queries (IPv4/IPv6, VLAN/QinQ, UDP/TCP,
//! IPv4 options, IPv6 extension headers, sources inside and outside the prefix lists), the same
//! mutated (bit flips, byte sets, truncations, insertions, deletions, length-field and
//! label-length edits, compression pointers, protocol swaps), valid headers before random
//! bytes, and fully random frames.
//!
//! Frame `i` of seed `s` depends only on `(s, i)`: a run can be resized or a single frame
//! regenerated from the seed and its index.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rand::{Rng as _, SeedableRng, rngs::Xoshiro256PlusPlus};

/// Largest frame produced (BPF_PROG_TEST_RUN takes up to a page minus XDP's head- and tailroom).
pub const MAX_FRAME: usize = 2048;
/// Smallest: BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// How a frame was made (for the run's histogram).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Valid,
    Mutated,
    RandomPayload,
    Random,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Valid,
        Kind::Mutated,
        Kind::RandomPayload,
        Kind::Random,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Mutated => "mutated",
            Kind::RandomPayload => "valid headers, random payload",
            Kind::Random => "random bytes",
        }
    }
}

/// A generated frame.
pub struct Frame {
    pub bytes: Vec<u8>,
    pub kind: Kind,
}

/// Where the interesting fields of a built frame are, for targeted mutations.
#[derive(Default)]
struct Layout {
    /// One- or two-byte fields whose value steers the parse: (offset, width).
    fields: Vec<(usize, usize)>,
    /// Offsets of the QNAME's length bytes (the root's included).
    labels: Vec<usize>,
    /// Offsets where a header starts (truncation points worth trying).
    boundaries: Vec<usize>,
    /// Offsets of ethertype / next-header / protocol bytes: (offset, width).
    protocols: Vec<(usize, usize)>,
    /// Offset of the DNS message.
    dns: usize,
}

/// The frame source of one run.
pub struct Generator {
    seed: u64,
    allow: Vec<IpNet>,
    block: Vec<IpNet>,
    ports: Vec<u16>,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The generator's PRNG: rand's Xoshiro256PlusPlus (a fixed algorithm, so a seed reproduces a
/// run), drawn from through a few plain methods, because rand's generic samplers cost an order
/// of magnitude more in the unoptimised test build and the run draws a few hundred numbers per
/// frame.
struct Rng(Xoshiro256PlusPlus);

/// The integer types the generator draws.
trait Int: Copy {
    fn to_u64(self) -> u64;
    fn from_u64(v: u64) -> Self;
}

macro_rules! int {
    ($($t:ty),*) => {$(
        impl Int for $t {
            fn to_u64(self) -> u64 {
                self as u64
            }
            fn from_u64(v: u64) -> Self {
                v as $t
            }
        }
    )*};
}
int!(u8, u16, u32, u64, usize);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(Xoshiro256PlusPlus::seed_from_u64(seed))
    }

    /// Uniform in `0..n` (multiply-shift; the bias, below n / 2^64, does not matter here).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.0.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..hi`.
    fn range<T: Int>(&mut self, lo: T, hi: T) -> T {
        let (lo, hi) = (lo.to_u64(), hi.to_u64());
        assert!(lo < hi, "empty range");
        T::from_u64(lo + self.below(hi - lo))
    }

    /// Uniform in `lo..=hi`.
    fn range_incl<T: Int>(&mut self, lo: T, hi: T) -> T {
        let (lo, hi) = (lo.to_u64(), hi.to_u64());
        T::from_u64(lo + self.below(hi - lo + 1))
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.0.next_u64() >> 11) as f64) < p * (1u64 << 53) as f64
    }

    fn random<T: Int>(&mut self) -> T {
        T::from_u64(self.0.next_u64())
    }

    fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill_bytes(buf);
    }
}

impl Generator {
    /// Sources are drawn from `allow` and `block` as well as at random; `ports` are the watched
    /// DNS ports.
    pub fn new(seed: u64, allow: &[IpNet], block: &[IpNet], ports: &[u16]) -> Self {
        Self {
            seed,
            allow: allow.to_vec(),
            block: block.to_vec(),
            ports: ports.to_vec(),
        }
    }

    /// Frame number `index`.
    pub fn frame(&self, index: u64) -> Frame {
        let mut rng = Rng::new(splitmix64(self.seed ^ splitmix64(index)));
        let roll = rng.range(0, 100u32);
        let (mut bytes, kind) = match roll {
            0..8 => (self.valid(&mut rng).0, Kind::Valid),
            8..80 => {
                let (mut f, layout) = self.valid(&mut rng);
                // One mutation half of the time, two a quarter, up to four.
                let n = 1 + (rng.random::<u8>().trailing_ones() as usize).min(3);
                for _ in 0..n {
                    mutate(&mut rng, &mut f, &layout);
                }
                (f, Kind::Mutated)
            }
            80..90 => {
                let (mut f, layout) = self.valid(&mut rng);
                f.truncate(layout.dns);
                let n = rng.range(0, 300usize);
                extend_random(&mut rng, &mut f, n);
                (f, Kind::RandomPayload)
            }
            _ => {
                let n = rng.range(MIN_FRAME, 600);
                let mut f = Vec::with_capacity(n);
                extend_random(&mut rng, &mut f, n);
                if rng.chance(0.5) {
                    let t: u16 = pick(&mut rng, &[0x0800, 0x86dd, 0x8100, 0x88a8]);
                    f[12..14].copy_from_slice(&t.to_be_bytes());
                }
                (f, Kind::Random)
            }
        };
        bytes.truncate(MAX_FRAME);
        if bytes.len() < MIN_FRAME {
            bytes.resize(MIN_FRAME, 0);
        }
        Frame { bytes, kind }
    }

    /// A source address: inside an allowlisted or blocklisted prefix, IPv4-mapped (for an IPv6
    /// packet), or random.
    fn source(&self, rng: &mut Rng, v6: bool) -> [u8; 16] {
        let roll = rng.range(0, 100u32);
        let lists: Vec<&IpNet> = match roll {
            0..15 => self.allow.iter().collect(),
            15..30 => self.block.iter().collect(),
            _ => Vec::new(),
        };
        let fits = |n: &&IpNet| match n {
            // Now and then an IPv6 packet from an IPv4-mapped address inside an IPv4 entry.
            IpNet::V4(_) => !v6 || roll.is_multiple_of(8),
            IpNet::V6(n) => v6 || n.network().to_ipv4_mapped().is_some(),
        };
        let candidates: Vec<&IpNet> = lists.into_iter().filter(fits).collect();
        let mut a = [0u8; 16];
        rng.fill(&mut a);
        if let Some(net) = candidates.get(rng.range(0, candidates.len().max(1))) {
            let (base, plen) = match net {
                IpNet::V4(n) => (
                    n.network().to_ipv6_mapped().octets(),
                    96 + u32::from(n.prefix_len()),
                ),
                IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
            };
            for bit in 0..plen as usize {
                let mask = 0x80u8 >> (bit % 8);
                a[bit / 8] = (a[bit / 8] & !mask) | (base[bit / 8] & mask);
            }
        } else if !v6 || roll == 99 {
            // IPv4, or now and then an IPv6 packet from a random IPv4-mapped address.
            a[..12].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        }
        a
    }

    /// A valid query frame and where its fields are.
    fn valid(&self, rng: &mut Rng) -> (Vec<u8>, Layout) {
        let mut l = Layout::default();
        let mut f = Vec::with_capacity(256);
        let v6 = rng.chance(0.45);

        // Ethernet, 0-3 tags.
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
        let tags = match rng.range(0, 100u32) {
            0..65 => 0,
            65..85 => 1,
            85..97 => 2,
            _ => 3,
        };
        for _ in 0..tags {
            l.protocols.push((f.len(), 2));
            let tpid: u16 = pick(rng, &[0x8100, 0x88a8]);
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&rng.random::<u16>().to_be_bytes());
        }
        l.protocols.push((f.len(), 2));
        f.extend_from_slice(&(if v6 { 0x86ddu16 } else { 0x0800 }).to_be_bytes());

        // Network header.
        let l3 = f.len();
        l.boundaries.push(l3);
        let src = self.source(rng, v6);
        let tcp = rng.chance(0.25);
        let proto = if tcp { 6u8 } else { 17 };
        if v6 {
            f.extend_from_slice(&[0x60, 0, 0, 0, 0, 0]);
            l.fields.push((l3 + 4, 2));
            let next_at = f.len();
            l.protocols.push((next_at, 1));
            f.extend_from_slice(&[0, 64]);
            f.extend_from_slice(&src);
            let mut dst = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53).octets();
            if rng.chance(0.5) {
                rng.fill(&mut dst);
            }
            f.extend_from_slice(&dst);
            let exts = if rng.chance(0.6) {
                0
            } else {
                rng.range_incl(1, 8usize)
            };
            let mut prev_next = next_at;
            for _ in 0..exts {
                let kind: u8 = match rng.range(0, 20u32) {
                    0..5 => 60,
                    5..9 => 0,
                    9..13 => 43,
                    13..17 => 51,
                    _ => 44,
                };
                f[prev_next] = kind;
                let at = f.len();
                l.boundaries.push(at);
                l.protocols.push((at, 1));
                l.fields.push((at + 1, 1));
                prev_next = at;
                match kind {
                    44 => {
                        f.extend_from_slice(&[0, 0]);
                        // Offset 0 (a first fragment) mostly; M flag random.
                        let off: u16 = if rng.chance(0.7) {
                            0
                        } else {
                            rng.range(1, 0x2000u16)
                        };
                        f.extend_from_slice(
                            &((off << 3) | u16::from(rng.chance(0.5))).to_be_bytes(),
                        );
                        f.extend_from_slice(&rng.random::<u32>().to_be_bytes());
                    }
                    51 => {
                        let len = rng.range(1, 4u8);
                        f.extend_from_slice(&[0, len]);
                        extend_random(rng, &mut f, (usize::from(len) + 2) * 4 - 2);
                    }
                    _ => {
                        let len = pick(rng, &[0u8, 0, 0, 1, 2]);
                        f.extend_from_slice(&[0, len]);
                        // PadN option filling the rest, so the header is well formed.
                        let body = (usize::from(len) + 1) * 8 - 2;
                        f.push(1);
                        f.push((body - 2) as u8);
                        f.extend_from_slice(&[0; 32][..body - 2]);
                    }
                }
            }
            f[prev_next] = proto;
        } else {
            let opts = if rng.chance(0.7) {
                0
            } else {
                rng.range_incl(1, 10usize)
            };
            l.fields.push((l3, 1));
            f.push(0x40 | (5 + opts) as u8);
            f.push(0);
            l.fields.push((l3 + 2, 2));
            f.extend_from_slice(&[0, 0, 0x12, 0x34]);
            // Fragment field: mostly 0; sometimes MF only (a first fragment); sometimes an offset.
            l.fields.push((l3 + 6, 2));
            let frag: u16 = match rng.range(0, 100u32) {
                0..88 => 0,
                88..94 => 0x2000,
                _ => rng.range(1, 0x2000u16) | (u16::from(rng.chance(0.5)) << 13),
            };
            f.extend_from_slice(&frag.to_be_bytes());
            f.push(64);
            l.protocols.push((f.len(), 1));
            f.push(proto);
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&src[12..]);
            let mut dst = Ipv4Addr::new(198, 51, 100, 53).octets();
            if rng.chance(0.5) {
                rng.fill(&mut dst);
            }
            f.extend_from_slice(&dst);
            // Random option bytes ending with End of List.
            extend_random(rng, &mut f, opts * 4);
            if opts > 0 {
                *f.last_mut().expect("options") = 0;
            }
        }

        // Transport.
        let l4 = f.len();
        l.boundaries.push(l4);
        // A third of the messages are responses, mostly from a watched port.
        let response = rng.chance(0.33);
        let mut dport: u16 = match rng.range(0, 100u32) {
            0..80 => self.ports[rng.range(0, self.ports.len())],
            _ => rng.random(),
        };
        let mut sport: u16 = rng.random();
        if response && rng.chance(0.85) {
            std::mem::swap(&mut sport, &mut dport);
        }
        let (msg, msg_fields, msg_labels) = self.dns_message(rng, response);
        if tcp {
            f.extend_from_slice(&sport.to_be_bytes());
            f.extend_from_slice(&dport.to_be_bytes());
            f.extend_from_slice(&rng.random::<u64>().to_be_bytes());
            let opts = if rng.chance(0.6) {
                0
            } else {
                rng.range_incl(1, 10usize)
            };
            l.fields.push((f.len(), 1));
            f.push(((5 + opts) as u8) << 4);
            f.extend_from_slice(&[0x18, 0xff, 0xff, 0, 0, 0, 0]);
            for _ in 0..opts {
                f.extend_from_slice(&[1, 1, 1, 1]);
            }
            l.boundaries.push(f.len());
            l.fields.push((f.len(), 2));
            f.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        } else {
            f.extend_from_slice(&sport.to_be_bytes());
            f.extend_from_slice(&dport.to_be_bytes());
            l.fields.push((f.len(), 2));
            f.extend_from_slice(&((8 + msg.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        let dns = f.len();
        l.dns = dns;
        l.boundaries.push(dns);
        l.fields
            .extend(msg_fields.into_iter().map(|(off, w)| (dns + off, w)));
        l.labels.extend(msg_labels.into_iter().map(|off| dns + off));
        f.extend_from_slice(&msg);
        // Pipelined TCP: more messages after the first, each with its prefix, sometimes more
        // than the program reads, sometimes the last one cut (continued in the next segment).
        if tcp && rng.chance(0.3) {
            for _ in 0..rng.range_incl(1, 5u32) {
                let (more, fields, labels) = self.dns_message(rng, response);
                l.fields.push((f.len(), 2));
                f.extend_from_slice(&(more.len() as u16).to_be_bytes());
                let at = f.len();
                l.boundaries.push(at);
                l.fields
                    .extend(fields.into_iter().map(|(off, w)| (at + off, w)));
                l.labels.extend(labels.into_iter().map(|off| at + off));
                f.extend_from_slice(&more);
            }
            if rng.chance(0.2) {
                let cut = rng.range_incl(1, 20usize);
                f.truncate(f.len().saturating_sub(cut).max(dns + msg.len()));
            }
        }

        // Length fields, now that the sizes are known.
        if v6 {
            let plen = (f.len() - l3 - 40) as u16;
            f[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
        } else {
            let tl = (f.len() - l3) as u16;
            f[l3 + 2..l3 + 4].copy_from_slice(&tl.to_be_bytes());
        }
        (f, l)
    }

    /// A query or response message, with its flag, QDCOUNT (and ANCOUNT, RDLENGTH) fields and
    /// its name length bytes (offsets in the message).
    fn dns_message(
        &self,
        rng: &mut Rng,
        response: bool,
    ) -> (Vec<u8>, Vec<(usize, usize)>, Vec<usize>) {
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(&rng.random::<u16>().to_be_bytes());
        // RD, sometimes CD/AD bits or nothing; responses: RA, AA, NXDOMAIN, SERVFAIL, TC.
        let flags: u16 = if response {
            pick(
                rng,
                &[0x8180, 0x8180, 0x8580, 0x8183, 0x8182, 0x8380, 0x81a0],
            )
        } else {
            pick(rng, &[0x0100, 0x0100, 0x0100, 0x0000, 0x0120, 0x0110])
        };
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        let mut fields = vec![(2, 2), (4, 2)];
        let edns = rng.chance(0.3);
        m.extend_from_slice(&[0, 0, 0, 0, 0, u8::from(edns)]);
        let labels = name(rng, &mut m);
        let qtype: u16 = if rng.chance(0.8) {
            pick(rng, &[1, 28, 5, 15, 16, 2, 6, 12, 33, 65, 255, 64])
        } else {
            rng.random()
        };
        let qclass: u16 = if rng.chance(0.9) {
            1
        } else {
            let any = rng.random();
            pick(rng, &[3, 4, 254, 255, any])
        };
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&qclass.to_be_bytes());
        let mut labels = labels;
        if response {
            let count = answers(rng, &mut m, &mut fields, &mut labels);
            fields.push((6, 2));
            // ANCOUNT: mostly right, sometimes more than there are.
            let claimed = if rng.chance(0.9) {
                count
            } else {
                count + rng.range_incl(1, 3u16)
            };
            m[6..8].copy_from_slice(&claimed.to_be_bytes());
        }
        if edns {
            // An OPT record: root name, TYPE 41, 1232-byte payload, no options.
            m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        (m, fields, labels)
    }
}

/// Appends a QNAME (a few ordinary labels, or a name near the 255-byte limit) and returns the
/// offsets of its length bytes, the root's included.
fn name(rng: &mut Rng, m: &mut Vec<u8>) -> Vec<usize> {
    let mut labels = Vec::new();
    {
        let start = m.len();
        let long = rng.chance(0.1);
        let target = if long {
            // Around the limit: 253..=257 bytes with the root.
            rng.range_incl(253, 257usize)
        } else {
            0
        };
        let count = if long { 64 } else { rng.range_incl(0, 6usize) };
        for _ in 0..count {
            let used = m.len() - start;
            let len = if long {
                let left = target.saturating_sub(used + 1);
                if left < 2 {
                    break;
                }
                (left - 1).min(rng.range_incl(1, 63usize))
            } else if rng.chance(0.05) {
                63
            } else {
                rng.range_incl(1, 20usize)
            };
            labels.push(m.len());
            m.push(len as u8);
            let printable = rng.chance(0.8);
            let at = m.len();
            extend_random(rng, m, len);
            if printable {
                const CHARS: &[u8; 64] =
                    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
                for b in &mut m[at..] {
                    *b = CHARS[usize::from(*b & 63)];
                }
            }
        }
    }
    labels.push(m.len());
    m.push(0);
    labels
}

/// Appends an answer section to a response whose question ends the message so far: 0 to 20
/// records, mostly A/AAAA behind a pointer to the question's name, with CNAMEs, other types,
/// uncompressed owners and pointers to other names (earlier, or forward: malformed). Records the
/// RDLENGTH fields and owner name bytes for mutation. Returns how many records it wrote.
fn answers(
    rng: &mut Rng,
    m: &mut Vec<u8>,
    fields: &mut Vec<(usize, usize)>,
    labels: &mut Vec<usize>,
) -> u16 {
    let count = match rng.range(0, 100u32) {
        0..10 => 0,
        10..85 => rng.range_incl(1, 6u16),
        _ => rng.range_incl(7, 20u16),
    };
    for _ in 0..count {
        let owner_at = m.len();
        match rng.range(0, 100u32) {
            0..80 => m.extend_from_slice(&[0xc0, 12]),
            80..90 => {
                labels.extend(name(rng, m));
            }
            90..95 => {
                // A pointer to an earlier offset inside the message (maybe mid-label).
                let target = rng.range(12, owner_at) as u16;
                m.extend_from_slice(&(0xc000 | target).to_be_bytes());
            }
            _ => {
                // Forward or to itself: malformed.
                let target = rng.range_incl(owner_at, owner_at + 40) as u16 & 0x3fff;
                m.extend_from_slice(&(0xc000 | target).to_be_bytes());
            }
        }
        labels.push(owner_at);
        let rtype: u16 = pick(rng, &[1, 1, 1, 28, 28, 5, 5, 16, 15, 2, 46]);
        let class: u16 = if rng.chance(0.95) { 1 } else { rng.random() };
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&class.to_be_bytes());
        m.extend_from_slice(&rng.random::<u32>().to_be_bytes());
        let rdlen = match rtype {
            1 => 4,
            28 => 16,
            5 | 2 => 0,
            _ => rng.range_incl(0, 40usize),
        };
        fields.push((m.len(), 2));
        let len_at = m.len();
        m.extend_from_slice(&[0, 0]);
        if rdlen == 0 && matches!(rtype, 5 | 2) {
            // A target name (sometimes ending in a pointer).
            name(rng, m);
            if rng.chance(0.3) {
                m.pop();
                m.extend_from_slice(&[0xc0, 12]);
            }
        } else {
            extend_random(rng, m, rdlen);
        }
        let written = (m.len() - len_at - 2) as u16;
        // RDLENGTH: mostly right, sometimes off (an A record of 5 bytes, a length past the end).
        let rdlength = if rng.chance(0.95) {
            written
        } else {
            written.wrapping_add(rng.range_incl(1, 8u16))
        };
        m[len_at..len_at + 2].copy_from_slice(&rdlength.to_be_bytes());
    }
    count
}

/// Appends `n` random bytes (one bulk fill: per-byte draws dominate the unoptimised test build).
fn extend_random(rng: &mut Rng, v: &mut Vec<u8>, mut n: usize) {
    // Through a stack buffer: `Vec::resize` writes byte by byte without optimisation.
    let mut buf = [0u8; 256];
    while n > 0 {
        let k = n.min(buf.len());
        rng.fill(&mut buf[..k]);
        v.extend_from_slice(&buf[..k]);
        n -= k;
    }
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.range(0, items.len())]
}

/// Values that sit on the edges the parser decides on.
const INTERESTING: [u8; 14] = [
    0, 1, 2, 5, 6, 0x0f, 0x3f, 0x40, 0x7f, 0x80, 0xbf, 0xc0, 0xfe, 0xff,
];

fn mutate(rng: &mut Rng, f: &mut Vec<u8>, l: &Layout) {
    if f.len() < MIN_FRAME {
        f.resize(MIN_FRAME, 0);
    }
    let len = f.len();
    // Most mutations aim at the headers and the question.
    let offset = |rng: &mut Rng| {
        if rng.chance(0.7) {
            rng.range(0, len.min(l.dns + 40).max(1))
        } else {
            rng.range(0, len)
        }
    };
    match rng.range(0, 100u32) {
        // Bit flip.
        0..20 => {
            let at = offset(rng);
            f[at] ^= 1 << rng.range(0, 8u32);
        }
        // Byte set.
        20..33 => {
            let at = offset(rng);
            f[at] = if rng.chance(0.6) {
                pick(rng, &INTERESTING)
            } else {
                rng.random()
            };
        }
        // Truncation, often at or next to a header boundary.
        33..45 => {
            let to = if rng.chance(0.6) && !l.boundaries.is_empty() {
                // From two bytes before a boundary to fourteen after it.
                (pick(rng, &l.boundaries) + rng.range_incl(0, 16usize)).saturating_sub(2)
            } else {
                rng.range_incl(MIN_FRAME, len)
            };
            f.truncate(to.max(MIN_FRAME));
        }
        // Insertion.
        45..52 => {
            let at = rng.range_incl(12, len);
            let n = rng.range_incl(1, 16usize);
            let mut bytes = Vec::with_capacity(n);
            extend_random(rng, &mut bytes, n);
            f.splice(at..at, bytes);
        }
        // Deletion.
        52..57 => {
            let at = rng.range(12, len);
            let end = (at + rng.range_incl(1, 16usize)).min(len);
            f.drain(at..end);
        }
        // Length-field edit.
        57..72 => {
            if let Some(&(at, width)) = l.fields.get(rng.range(0, l.fields.len().max(1)))
                && at + width <= len
            {
                let old = if width == 1 {
                    u16::from(f[at])
                } else {
                    u16::from_be_bytes([f[at], f[at + 1]])
                };
                let v: u16 = match rng.range(0, 6u32) {
                    0 => 0,
                    1 => old.wrapping_add(rng.range_incl(1, 8u16)),
                    2 => old.wrapping_sub(rng.range_incl(1, 8u16)),
                    3 => u16::from(pick(rng, &INTERESTING)),
                    4 => u16::MAX,
                    _ => rng.random(),
                };
                if width == 1 {
                    f[at] = v as u8;
                } else {
                    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
        // Label-length edit.
        72..86 => {
            if let Some(&at) = l.labels.get(rng.range(0, l.labels.len().max(1)))
                && at < len
            {
                f[at] = match rng.range(0, 4u32) {
                    0 => pick(rng, &[0, 1, 62, 63, 64, 65, 0x7f, 0x80, 0xbf, 0xc0, 0xff]),
                    1 => f[at].wrapping_add(1),
                    2 => f[at].wrapping_sub(1),
                    _ => rng.random(),
                };
            }
        }
        // Compression pointer in place of a label (to the header or somewhere else).
        86..94 => {
            if let Some(&at) = l.labels.get(rng.range(0, l.labels.len().max(1)))
                && at + 2 <= len
            {
                let target: u16 = if rng.chance(0.5) {
                    12
                } else {
                    rng.range(0, 0x3fffu16)
                };
                f[at..at + 2].copy_from_slice(&(0xc000 | target).to_be_bytes());
                if rng.chance(0.5) {
                    // A pointer ends the name: QTYPE and QCLASS follow it.
                    f.truncate(at + 2);
                    f.extend_from_slice(&[0, 1, 0, 1]);
                }
            }
        }
        // Protocol swap: ethertype, next header or IP protocol.
        _ => {
            if let Some(&(at, width)) = l.protocols.get(rng.range(0, l.protocols.len().max(1)))
                && at + width <= len
            {
                if width == 2 {
                    let t: u16 = pick(rng, &[0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806, 0x9100]);
                    f[at..at + 2].copy_from_slice(&t.to_be_bytes());
                } else {
                    f[at] = pick(rng, &[0, 6, 17, 43, 44, 50, 51, 58, 59, 60, 135, 1]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator(seed: u64) -> Generator {
        let nets = |v: &[&str]| -> Vec<IpNet> { v.iter().map(|s| s.parse().unwrap()).collect() };
        Generator::new(
            seed,
            &nets(&["10.53.0.0/16", "2001:db8:53::/64"]),
            &nets(&["203.0.113.0/24"]),
            &[53],
        )
    }

    #[test]
    fn a_frame_depends_only_on_the_seed_and_its_index() {
        let (a, b) = (generator(7), generator(7));
        for i in [0, 1, 99, 123_456_789] {
            assert_eq!(a.frame(i).bytes, b.frame(i).bytes);
        }
        let other = generator(8);
        let same = (0..100)
            .filter(|&i| a.frame(i).bytes == other.frame(i).bytes)
            .count();
        assert!(same < 5, "{same} of 100 frames equal under another seed");
    }

    #[test]
    fn frames_fit_test_run_and_every_kind_appears() {
        let g = generator(1);
        let mut kinds = std::collections::BTreeSet::new();
        for i in 0..5000 {
            let f = g.frame(i);
            assert!((MIN_FRAME..=MAX_FRAME).contains(&f.bytes.len()));
            kinds.insert(f.kind);
        }
        assert_eq!(kinds.len(), Kind::ALL.len());
    }
}
