//! The one bounds-checked window onto the packet. Every packet access goes through `Packet::at`,
//! which the verifier sees as "pointer + offset + size <= data_end" before each load.

use aya_ebpf::programs::XdpContext;

pub struct Packet {
    start: usize,
    end: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// A pointer to `N` bytes at `off`, or `None` when they are not all inside the packet.
    #[inline(always)]
    pub fn at<const N: usize>(&self, off: usize) -> Option<*const [u8; N]> {
        let p = self.start + off;
        if p + N > self.end {
            None
        } else {
            Some(p as *const [u8; N])
        }
    }

    /// Reads `N` bytes at `off`.
    #[inline(always)]
    pub fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // SAFETY: `at` proved the N bytes lie inside [data, data_end); [u8; N] has alignment 1.
        self.at::<N>(off).map(|p| unsafe { *p })
    }

    #[inline(always)]
    pub fn u8(&self, off: usize) -> Option<u8> {
        self.bytes::<1>(off).map(|b| b[0])
    }

    /// Reads a big-endian u16 at `off`.
    #[inline(always)]
    pub fn be16(&self, off: usize) -> Option<u16> {
        self.bytes::<2>(off).map(u16::from_be_bytes)
    }
}
