//! The kernel program seen from userspace: the [`loader`] (load, pin, attach, take over), the
//! one module that writes the kernel's [`lists`] (`BLOCKLIST`, `CLIENT_ALLOW` and their prefix
//! filters), the ring-buffer [`reader`] and its record [`decode`]r, the [`stats`] counters, the
//! [`privileges`] a start needs and [`bpffs`].
//!
//! Depends on `sensor-common` (the types that cross the kernel boundary) and `sensor-model`;
//! never on intel, outputs or the nightly job. Its build script embeds the XDP object built by
//! `sensor-build`.

pub mod bpffs;
pub mod config;
pub mod decode;
pub mod lists;
pub mod loader;
pub mod privileges;
pub mod reader;
pub mod stats;
