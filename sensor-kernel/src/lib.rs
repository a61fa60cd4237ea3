//! The kernel program seen from userspace: the [`loader`] (load, pin, attach, take over), the
//! one module that writes the kernel's [`lists`] (`BLOCKLIST`, `CLIENT_ALLOW` and their prefix
//! filters), the ring-buffer [`reader`], its record [`decode`]r and the response [`pairing`],
//! the program's own
//! diagnostics ([`klog`], aya-log), the [`stats`] counters, the [`privileges`] a start needs and
//! [`bpffs`].
//!
//! Depends on `sensor-common` (the types that cross the kernel boundary) and `sensor-model`;
//! never on intel, outputs or the nightly job. Its build script embeds the XDP object built by
//! `sensor-build`.

pub mod bpffs;
pub mod capdrop;
pub mod config;
pub mod decode;
pub mod klog;
pub mod lists;
pub mod loader;
pub mod pairing;
pub mod privileges;
pub mod reader;
pub mod stats;
