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

    /// The same window, with the bounds read again through volatile loads. LLVM may drop a
    /// bounds check it can prove from earlier ones (say, "QTYPE was inside, so the name before
    /// it is"); the verifier cannot follow such proofs and needs the check at the load. Loads
    /// through a window LLVM cannot relate to earlier checks keep theirs.
    #[inline(always)]
    pub fn opaque(ctx: &XdpContext) -> Self {
        // SAFETY: `ctx.ctx` is the program's context pointer, valid for the whole run; the
        // fields are plain u32s.
        unsafe {
            Self {
                start: core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
                end: core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
            }
        }
    }

    /// Reads a `T` at `off` with one load of its size (the packet is not aligned for `T`).
    #[inline(always)]
    pub fn load<T: Copy>(&self, off: usize) -> Option<T> {
        let p = self.start + off;
        if p + core::mem::size_of::<T>() > self.end {
            None
        } else {
            // SAFETY: the bytes lie inside [data, data_end); read_unaligned has no alignment
            // requirement, and T is plain data (integers) for every caller.
            Some(unsafe { core::ptr::read_unaligned(p as *const T) })
        }
    }
}
