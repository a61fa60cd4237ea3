//! Passive DNS: which names resolved to which addresses, and which clients resolved them, with
//! first seen, last seen and counts per day, kept for a retention period.
//!
//! An embedded store (no server): [`Store`] over one SQLite file in WAL mode (why SQLite:
//! this crate's `Cargo.toml`). The daemon feeds it [`Observation`]s in batches
//! ([`Store::ingest`], or a [`Batch`] filled as responses arrive and [`Store::commit`]ted),
//! prunes it daily ([`Store::prune`]); `sensor pdns` and the retro-hunt read it
//! ([`Store::by_name`], [`Store::by_domain`], [`Store::by_ip`], [`Store::by_client`],
//! [`Store::clients_of`]), from another process too ([`Store::open_read_only`]).
//!
//! A library layer beside the intel and outputs crates: depends on the model crate only; only
//! the `sensor` binary depends on it.

mod batch;
pub mod config;
mod days;
mod error;
mod model;
mod name;
mod store;

pub use batch::Batch;
pub use days::DAY_SECS;
pub use error::{InputError, PdnsError};
pub use model::{
    Answer, AnswerData, AnswerRecord, ClientRecord, DayCount, Observation, RTYPE_A, RTYPE_AAAA,
    RTYPE_CNAME, Report, Seen, rtype_name,
};
pub use name::MAX_NAME_CHARS;
pub use store::{CommitStats, PruneStats, Resolved, Retention, Store, StoreStats};
