//! The one bounds-checked window onto the packet. Every packet access goes through `Packet::at`,
//! which the verifier sees as "pointer + offset + size <= data_end" before each load.
//!
//! The parser runs in two program types: XDP (ingress, the one that may drop) and TC egress
//! (observe only). [`Ctx`] is what it needs from either context: the packet's data pointers, the
//! interface, and the byte-copy helper of its program type (`bpf_xdp_load_bytes` or
//! `bpf_skb_load_bytes`; the verifier refuses the other type's helper).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};

/// The program context the parser runs on.
pub trait Ctx: EbpfContext {
    /// True when the program may drop packets (XDP): only then are the source blocklist and
    /// the destination block consulted. The TC egress program observes and never drops.
    const ENFORCES: bool;

    /// `data` and `data_end` of the context (start and end of the directly readable bytes).
    fn bounds(&self) -> (usize, usize);

    /// The same, read through volatile loads (see [`Packet::opaque`]).
    fn bounds_opaque(&self) -> (usize, usize);

    /// The interface the packet arrived on (XDP) or leaves by (TC egress).
    fn ifindex(&self) -> u32;

    /// Copies `len` packet bytes at `off` to `dst`; 0 on success.
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes of writes (the helper's contract; the verifier checks
    /// it too).
    unsafe fn load_bytes(&self, off: u32, dst: *mut u8, len: u32) -> i64;
}

impl Ctx for XdpContext {
    const ENFORCES: bool = true;

    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }

    #[inline(always)]
    fn bounds_opaque(&self) -> (usize, usize) {
        // SAFETY: `self.ctx` is the program's context pointer, valid for the whole run; the
        // fields are plain u32s.
        unsafe {
            (
                core::ptr::read_volatile(&(*self.ctx).data) as usize,
                core::ptr::read_volatile(&(*self.ctx).data_end) as usize,
            )
        }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    #[inline(always)]
    unsafe fn load_bytes(&self, off: u32, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: the caller's contract (`dst` valid for `len` bytes); `self.ctx` is the
        // program's context.
        unsafe { bpf_xdp_load_bytes(self.ctx, off, dst.cast(), len) }
    }
}

impl Ctx for TcContext {
    const ENFORCES: bool = false;

    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }

    #[inline(always)]
    fn bounds_opaque(&self) -> (usize, usize) {
        // SAFETY: `self.skb.skb` is the program's context pointer (`__sk_buff`), valid for the
        // whole run; `data` and `data_end` are u32 fields the verifier rewrites into the real
        // pointers.
        unsafe {
            (
                core::ptr::read_volatile(&(*self.skb.skb).data) as usize,
                core::ptr::read_volatile(&(*self.skb.skb).data_end) as usize,
            )
        }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: as above; a plain u32 field of the context (on egress, the device the packet
        // is sent by).
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    unsafe fn load_bytes(&self, off: u32, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: the caller's contract (`dst` valid for `len` bytes); `self.skb.skb` is the
        // program's context.
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), off, dst.cast(), len) }
    }
}

pub struct Packet {
    start: usize,
    end: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new<C: Ctx>(ctx: &C) -> Self {
        let (start, end) = ctx.bounds();
        Self { start, end }
    }

    /// The number of directly readable bytes (for TC, the skb's linear part).
    #[inline(always)]
    pub fn readable(&self) -> usize {
        self.end - self.start
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
    pub fn opaque<C: Ctx>(ctx: &C) -> Self {
        let (start, end) = ctx.bounds_opaque();
        Self { start, end }
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

    /// Writes a `T` at `off` with one store of its size; false when it is not all inside the
    /// packet. Only the XDP program writes (the NXDOMAIN rewrite, see `rewrite`): the TC
    /// egress program observes.
    #[inline(always)]
    pub fn store<T: Copy>(&self, off: usize, v: T) -> bool {
        let p = self.start + off;
        if p + core::mem::size_of::<T>() > self.end {
            false
        } else {
            // SAFETY: the bytes lie inside [data, data_end), which XDP may write;
            // write_unaligned has no alignment requirement, and T is plain data.
            unsafe { core::ptr::write_unaligned(p as *mut T, v) };
            true
        }
    }
}
