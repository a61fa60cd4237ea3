//! Captures for replay: raw-IP captures get an Ethernet header so tcpreplay can send them
//! into a veth (tcprewrite cannot do this for raw IPv6).

use std::path::Path;

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
};

/// Reads a pcap and returns its frames as Ethernet frames (raw IPv4/IPv6 get a header with
/// the ethertype of their IP version).
pub fn ethernet_frames(path: &Path) -> Vec<Vec<u8>> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = PcapReader::new(file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let link = reader.header().datalink;
    let mut frames = Vec::new();
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let data = pkt.data.to_vec();
        frames.push(match link {
            DataLink::ETHERNET => data,
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => {
                let ethertype: u16 = if data.first().map(|b| b >> 4) == Some(6) {
                    0x86dd
                } else {
                    0x0800
                };
                super::packet::ether(&[], ethertype, &data)
            }
            other => panic!("{}: unsupported link type {other:?}", path.display()),
        });
    }
    frames
}

/// Writes Ethernet frames as a pcap.
pub fn write(path: &Path, frames: &[Vec<u8>]) {
    let file = std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..Default::default()
    };
    let mut w = PcapWriter::with_header(file, header).expect("pcap header");
    for (i, f) in frames.iter().enumerate() {
        let ts = std::time::Duration::from_micros(i as u64);
        w.write_packet(&PcapPacket::new(ts, f.len() as u32, f))
            .expect("pcap write");
    }
}
