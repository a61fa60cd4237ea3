//! The store's errors: one line each, naming the store's path or the offending input. The
//! underlying cause is part of the message (not a separate `source`), so a log line or the
//! CLI's one-line report shows it exactly once.

use std::path::PathBuf;

/// An observation or a query argument the store refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("name {name:?} {reason}")]
    Name { name: String, reason: &'static str },
    #[error("timestamp {0} is outside 1970-01-01..9999-12-31 (unix seconds)")]
    Time(i64),
    #[error("answer {index}: type {rtype} {reason}")]
    Answer {
        index: usize,
        rtype: u16,
        reason: &'static str,
    },
    #[error("answer {index}: CNAME target: {cause}")]
    Target {
        index: usize,
        cause: Box<InputError>,
    },
}

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum PdnsError {
    /// The store cannot be opened or created (missing, unreadable, not a database, corrupt).
    #[error("passive DNS store {}: {cause}", path.display())]
    Open {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    /// Its directory cannot be created.
    #[error("passive DNS store {}: {cause}", path.display())]
    Dir {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A SQLite database, but not one this crate wrote.
    #[error("passive DNS store {}: not a passive DNS store (SQLite application id {found:#x})", path.display())]
    Foreign { path: PathBuf, found: i64 },
    /// Written by a newer schema than this build reads.
    #[error("passive DNS store {}: schema version {found}, this build reads {expected}", path.display())]
    Version {
        path: PathBuf,
        found: i64,
        expected: i64,
    },
    /// Reading or writing failed after the open (disk full, I/O error, a damaged page).
    #[error("passive DNS store {}: {cause}", path.display())]
    Sql {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    /// A row that does not decode: the file was damaged or written by something else.
    #[error("passive DNS store {}: corrupt row in {table}", path.display())]
    Corrupt { path: PathBuf, table: &'static str },
    /// An observation in an ingest batch is malformed; nothing of the batch was written.
    #[error("observation {index}: {cause}")]
    Observation { index: usize, cause: InputError },
    /// A query argument is malformed.
    #[error(transparent)]
    Query(#[from] InputError),
    /// A write on a store opened with [`crate::Store::open_read_only`].
    #[error("passive DNS store {} is open read-only", path.display())]
    ReadOnly { path: PathBuf },
}
