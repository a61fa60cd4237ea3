//! The store: one SQLite file in WAL mode.
//!
//! Tables (integers are SQLite varints, so small ids and counts take one to three bytes):
//! - `names(id, key, last_day)`: every name by its reversed-label key (see [`crate::name`]), so
//!   a domain and its subdomains are one range of the `key` index;
//! - `clients(id, ip, last_day)`: client addresses (4 or 16 bytes);
//! - `seen(name_id, client_id, first, last, days)`: a client resolved a name;
//! - `answers(name_id, rtype, data, ttl, first, last, days)`: a name resolved to an address
//!   (`data` a 4- or 16-byte blob) or a CNAME target (`data` text);
//! - indexes `seen(client_id)` for [`Store::by_client`] and `answers(data)` for
//!   [`Store::by_ip`].
//!
//! `days` holds the per-day counts ([`crate::days`]); `first`/`last` are unix seconds. A
//! commit is one SQLite transaction with `synchronous = FULL`: when [`Store::commit`] returns,
//! the batch is in the write-ahead log and synced, and a crash at any point leaves either all of
//! it or none of it. Readers in other processes ([`Store::open_read_only`]) see the last commit
//! and never block the writer.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{
    Connection, OpenFlags, OptionalExtension as _, TransactionBehavior,
    functions::FunctionFlags,
    types::{ToSqlOutput, Value, ValueRef},
};

use crate::{
    batch::{Batch, Data, ip_blob, ip_from_blob},
    days::{self, DAY_SECS},
    error::PdnsError,
    model::{AnswerData, AnswerRecord, ClientRecord, DayCount, Observation, Report, Seen},
    name,
};

/// `PRAGMA application_id` of a passive DNS store ("pdns").
const APPLICATION_ID: i64 = 0x7064_6e73;
/// `PRAGMA user_version`: the schema below.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE names(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, last_day INTEGER NOT NULL);
CREATE TABLE clients(id INTEGER PRIMARY KEY, ip BLOB NOT NULL UNIQUE, last_day INTEGER NOT NULL);
CREATE TABLE seen(
    name_id INTEGER NOT NULL, client_id INTEGER NOT NULL,
    first INTEGER NOT NULL, last INTEGER NOT NULL, days BLOB NOT NULL,
    PRIMARY KEY(name_id, client_id)) WITHOUT ROWID;
CREATE INDEX seen_by_client ON seen(client_id);
CREATE TABLE answers(
    name_id INTEGER NOT NULL, rtype INTEGER NOT NULL, data NOT NULL, ttl INTEGER NOT NULL,
    first INTEGER NOT NULL, last INTEGER NOT NULL, days BLOB NOT NULL,
    PRIMARY KEY(name_id, rtype, data)) WITHOUT ROWID;
CREATE INDEX answers_by_data ON answers(data);
";

/// Page cache of the writer. The hot part of a day (today's names and pairs) stays cached; a
/// month's store is far larger and mostly cold.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// Ids of this many names are remembered between batches (hot names skip their lookup); the
/// map is emptied when it grows past this.
const NAME_CACHE_MAX: usize = 200_000;
/// How long a statement waits for another connection's lock (a reader's checkpoint).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What retro-hunt needs of one client's resolutions of one name: (client, name, first seen,
/// last seen, count), times in unix seconds, the count within the query's window.
pub type Resolved = (IpAddr, String, i64, i64, u64);

/// How many days the store keeps, today included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(u32);

impl Retention {
    /// Ten years: beyond that the per-day blobs and prune scans are not what this store is for.
    pub const MAX_DAYS: u32 = 3650;

    /// `None` unless `1 <= days <= MAX_DAYS`.
    pub fn days(days: u32) -> Option<Self> {
        (1..=Self::MAX_DAYS).contains(&days).then_some(Self(days))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// What a commit wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub observations: u64,
    pub answers: u64,
    /// Row upserts (seen + answers): what the disk work scales with.
    pub rows: u64,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStats {
    /// The first day kept (unix seconds of its 00:00 UTC).
    pub kept_from: i64,
    pub rows_deleted: u64,
    pub rows_trimmed: u64,
    pub names_deleted: u64,
}

/// Row counts and bytes on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub names: u64,
    pub clients: u64,
    pub seen_rows: u64,
    pub answer_rows: u64,
    /// The database file plus its write-ahead log.
    pub disk_bytes: u64,
}

/// The passive DNS store. One writer (the daemon) holds it open with [`Store::open`]; any
/// number of processes may read it at the same time with [`Store::open_read_only`].
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// `None` when read-only.
    retention: Option<Retention>,
    /// Name key → (id, last day recorded), as committed.
    name_ids: HashMap<String, (i64, u32)>,
    /// Client → (id, last day recorded), as committed.
    client_ids: HashMap<IpAddr, (i64, u32)>,
}

// The daemon moves the store into the thread that writes it (commits block on the disk).
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Store>();
    send::<Batch>();
};

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// How a row's time range and per-day counts look from `since` on.
fn seen(first: i64, last: i64, blob: &[u8], since: i64) -> Result<Seen, days::BadDays> {
    let since_day = since.max(0).div_euclid(DAY_SECS);
    let per_day: Vec<DayCount> = days::decode(blob)?
        .into_iter()
        .filter(|&(d, _)| i64::from(d) >= since_day)
        .map(|(d, count)| DayCount {
            day: i64::from(d) * DAY_SECS,
            count,
        })
        .collect();
    Ok(Seen {
        first_seen: first,
        last_seen: last,
        count: per_day.iter().map(|d| d.count).sum(),
        per_day,
    })
}

/// Which names a query covers.
enum Names {
    Exact(String),
    /// `[low, high)`; no `high` for the root (every name).
    Range(String, Option<String>),
}

impl Names {
    /// The SQL condition on `n.key` and its parameters (numbered from 2; `?1` is `since`).
    fn condition(&self) -> (&'static str, Vec<Value>) {
        match self {
            Names::Exact(k) => ("n.key = ?2", vec![Value::Text(k.clone())]),
            Names::Range(low, Some(high)) => (
                "n.key >= ?2 AND n.key < ?3",
                vec![Value::Text(low.clone()), Value::Text(high.clone())],
            ),
            Names::Range(_, None) => ("1", vec![]),
        }
    }
}

impl Store {
    /// Opens the store for writing, creating the file (and its directory) if missing.
    pub fn open(path: &Path, retention: Retention) -> Result<Self, PdnsError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|cause| PdnsError::Dir {
                path: path.to_owned(),
                cause,
            })?;
        }
        let open_err = |cause| PdnsError::Open {
            path: path.to_owned(),
            cause,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Reading the header is the first access to the file: a file that is not a database
        // fails here, with the path in the message.
        let (app, version) = header(&conn).map_err(open_err)?;
        let fresh = app == 0 && version == 0 && {
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(open_err)?;
            tables == 0
        };
        if !fresh {
            check_header(path, app, version)?;
        }
        // WAL: a commit appends to the log and syncs it (one fsync, no page rewrites in
        // place), and readers in other processes see the last commit without blocking it.
        // FULL syncs the log at every commit, so a committed batch survives power loss too.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(rusqlite::Error::InvalidQuery));
        }
        conn.execute_batch(&format!(
            "PRAGMA synchronous = FULL; PRAGMA cache_size = -{WRITER_CACHE_KIB};
             PRAGMA journal_size_limit = 67108864;"
        ))
        .map_err(open_err)?;
        if fresh {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA}
                 PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};
                 COMMIT;"
            ))
            .map_err(open_err)?;
        }
        register_functions(&conn).map_err(open_err)?;
        tracing::debug!(path = %path.display(), fresh, "passive DNS store open");
        Ok(Self {
            conn,
            path: path.to_owned(),
            retention: Some(retention),
            name_ids: HashMap::new(),
            client_ids: HashMap::new(),
        })
    }

    /// Opens an existing store for queries only, beside a writer in another process.
    ///
    /// SQLite's WAL lets a reader run while the daemon commits: it reads the last committed
    /// state and does not block the writer. The reader needs read access to the file and to
    /// its `-wal` and `-shm` files (the daemon keeps them while it runs).
    pub fn open_read_only(path: &Path) -> Result<Self, PdnsError> {
        let open_err = |cause| PdnsError::Open {
            path: path.to_owned(),
            cause,
        };
        if !path.exists() {
            return Err(open_err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some("no such file".into()),
            )));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let (app, version) = header(&conn).map_err(open_err)?;
        check_header(path, app, version)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            retention: None,
            name_ids: HashMap::new(),
            client_ids: HashMap::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql_err(&self) -> impl Fn(rusqlite::Error) -> PdnsError + '_ {
        |cause| PdnsError::Sql {
            path: self.path.clone(),
            cause,
        }
    }

    fn corrupt(&self, table: &'static str) -> PdnsError {
        PdnsError::Corrupt {
            path: self.path.clone(),
            table,
        }
    }

    /// Checks and aggregates `batch`, then writes it as one durable transaction. A malformed
    /// observation refuses the whole batch before anything is written.
    pub fn ingest(&mut self, batch: &[Observation]) -> Result<CommitStats, PdnsError> {
        let mut b = Batch::new();
        for (index, o) in batch.iter().enumerate() {
            b.add(o)
                .map_err(|cause| PdnsError::Observation { index, cause })?;
        }
        self.commit(&b)
    }

    /// Writes an aggregated batch as one durable transaction.
    pub fn commit(&mut self, batch: &Batch) -> Result<CommitStats, PdnsError> {
        if self.retention.is_none() {
            return Err(PdnsError::ReadOnly {
                path: self.path.clone(),
            });
        }
        if batch.is_empty() {
            return Ok(CommitStats::default());
        }
        let path = self.path.clone();
        let err = |cause| PdnsError::Sql {
            path: path.clone(),
            cause,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        // Ids of this batch's names and clients; the caches learn them only after the commit,
        // so a rolled-back transaction leaves no id behind that the file does not have.
        let mut name_ids = Vec::with_capacity(batch.name_keys.len());
        let mut name_learned = Vec::new();
        let mut client_ids = Vec::with_capacity(batch.clients.len());
        let mut client_learned = Vec::new();
        {
            let mut get = tx
                .prepare_cached("SELECT id, last_day FROM names WHERE key = ?1")
                .map_err(err)?;
            let mut put = tx
                .prepare_cached("INSERT INTO names(key, last_day) VALUES (?1, ?2)")
                .map_err(err)?;
            let mut touch = tx
                .prepare_cached("UPDATE names SET last_day = ?2 WHERE id = ?1")
                .map_err(err)?;
            for (key, &day) in batch.name_keys.iter().zip(&batch.name_last_day) {
                let known = match self.name_ids.get(key) {
                    Some(&v) => Some(v),
                    None => get
                        .query_row([key], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?)))
                        .optional()
                        .map_err(err)?,
                };
                let id = match known {
                    Some((id, last)) if last >= day => {
                        if !self.name_ids.contains_key(key) {
                            name_learned.push((key.clone(), (id, last)));
                        }
                        id
                    }
                    Some((id, _)) => {
                        touch.execute((id, day)).map_err(err)?;
                        name_learned.push((key.clone(), (id, day)));
                        id
                    }
                    None => {
                        put.execute((key, day)).map_err(err)?;
                        let id = tx.last_insert_rowid();
                        name_learned.push((key.clone(), (id, day)));
                        id
                    }
                };
                name_ids.push(id);
            }
            let mut get = tx
                .prepare_cached("SELECT id, last_day FROM clients WHERE ip = ?1")
                .map_err(err)?;
            let mut put = tx
                .prepare_cached("INSERT INTO clients(ip, last_day) VALUES (?1, ?2)")
                .map_err(err)?;
            let mut touch = tx
                .prepare_cached("UPDATE clients SET last_day = ?2 WHERE id = ?1")
                .map_err(err)?;
            for (&ip, &day) in batch.clients.iter().zip(&batch.client_last_day) {
                let blob = ip_blob(ip);
                let known = match self.client_ids.get(&ip) {
                    Some(&v) => Some(v),
                    None => get
                        .query_row([&blob], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?)))
                        .optional()
                        .map_err(err)?,
                };
                let id = match known {
                    Some((id, last)) if last >= day => {
                        client_learned.push((ip, (id, last)));
                        id
                    }
                    Some((id, _)) => {
                        touch.execute((id, day)).map_err(err)?;
                        client_learned.push((ip, (id, day)));
                        id
                    }
                    None => {
                        put.execute((&blob, day)).map_err(err)?;
                        let id = tx.last_insert_rowid();
                        client_learned.push((ip, (id, day)));
                        id
                    }
                };
                client_ids.push(id);
            }

            // Rows in key order: neighbouring upserts touch the same B-tree pages.
            let mut seen: Vec<_> = batch
                .seen
                .iter()
                .map(|(&(n, c, day), agg)| {
                    (name_ids[n as usize], client_ids[c as usize], day, *agg)
                })
                .collect();
            seen.sort_unstable_by_key(|r| (r.0, r.1, r.2));
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO seen(name_id, client_id, first, last, days)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(name_id, client_id) DO UPDATE SET
                       first = min(first, excluded.first), last = max(last, excluded.last),
                       days = pdns_merge(days, excluded.days)",
                )
                .map_err(err)?;
            for (n, c, day, agg) in &seen {
                let blob = days::encode(&[(*day, agg.count)]);
                up.execute((n, c, agg.first, agg.last, blob)).map_err(err)?;
            }

            let mut answers: Vec<_> = batch
                .answers
                .iter()
                .map(|(&(n, rtype, data, day), agg)| (name_ids[n as usize], rtype, data, day, *agg))
                .collect();
            answers.sort_unstable_by_key(|r| (r.0, r.1, r.2, r.3));
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO answers(name_id, rtype, data, ttl, first, last, days)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT(name_id, rtype, data) DO UPDATE SET
                       ttl = CASE WHEN excluded.last >= last THEN excluded.ttl ELSE ttl END,
                       first = min(first, excluded.first), last = max(last, excluded.last),
                       days = pdns_merge(days, excluded.days)",
                )
                .map_err(err)?;
            for (n, rtype, data, day, agg) in &answers {
                let data = ToSqlOutput::Borrowed(match data {
                    Data::V4(o) => ValueRef::Blob(o),
                    Data::V6(o) => ValueRef::Blob(o),
                    Data::Target(t) => ValueRef::Text(batch.targets[*t as usize].as_bytes()),
                });
                let blob = days::encode(&[(*day, agg.count)]);
                up.execute((n, rtype, data, agg.ttl, agg.first, agg.last, blob))
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;

        if self.name_ids.len() + name_learned.len() > NAME_CACHE_MAX {
            self.name_ids.clear();
        }
        self.name_ids.extend(name_learned);
        self.client_ids.extend(client_learned);
        let stats = CommitStats {
            observations: batch.len(),
            answers: batch.answer_count(),
            rows: (batch.seen.len() + batch.answers.len()) as u64,
        };
        tracing::debug!(
            observations = stats.observations,
            rows = stats.rows,
            "passive DNS batch committed"
        );
        Ok(stats)
    }

    /// Drops every day before the retention window that ends today (`now`'s UTC day): rows
    /// last seen before it go, rows seen before and within it keep their days within it and
    /// start at their first retained day. One transaction.
    pub fn prune(&mut self, now: i64) -> Result<PruneStats, PdnsError> {
        let Some(retention) = self.retention else {
            return Err(PdnsError::ReadOnly {
                path: self.path.clone(),
            });
        };
        let today = now.max(0).div_euclid(DAY_SECS);
        let cut_day = (today - i64::from(retention.get()) + 1).max(0);
        let cut_ts = cut_day * DAY_SECS;
        let path = self.path.clone();
        let err = |cause| PdnsError::Sql {
            path: path.clone(),
            cause,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut stats = PruneStats {
            kept_from: cut_ts,
            ..Default::default()
        };
        for table in ["seen", "answers"] {
            stats.rows_deleted += tx
                .execute(&format!("DELETE FROM {table} WHERE last < ?1"), [cut_ts])
                .map_err(err)? as u64;
            stats.rows_trimmed += tx
                .execute(
                    &format!(
                        "UPDATE {table} SET days = pdns_keep_from(days, ?1),
                           first = pdns_first_day(pdns_keep_from(days, ?1)) * {DAY_SECS}
                         WHERE first < ?2"
                    ),
                    (cut_day, cut_ts),
                )
                .map_err(err)? as u64;
        }
        stats.names_deleted = tx
            .execute("DELETE FROM names WHERE last_day < ?1", [cut_day])
            .map_err(err)? as u64;
        tx.execute("DELETE FROM clients WHERE last_day < ?1", [cut_day])
            .map_err(err)?;
        tx.commit().map_err(err)?;
        // Deleted names may come back with new ids.
        self.name_ids.clear();
        self.client_ids.clear();
        tracing::info!(
            path = %self.path.display(),
            kept_from = cut_ts,
            rows_deleted = stats.rows_deleted,
            rows_trimmed = stats.rows_trimmed,
            names_deleted = stats.names_deleted,
            "passive DNS store pruned"
        );
        Ok(stats)
    }

    /// Moves the write-ahead log into the database file and truncates the log (SQLite also
    /// does this by itself every 1,000 pages); for a clean shutdown or a size measurement.
    pub fn checkpoint(&self) -> Result<(), PdnsError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(self.sql_err())
    }

    pub fn stats(&self) -> Result<StoreStats, PdnsError> {
        let count = |table: &str| -> Result<u64, PdnsError> {
            self.conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n as u64)
                .map_err(self.sql_err())
        };
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        Ok(StoreStats {
            names: count("names")?,
            clients: count("clients")?,
            seen_rows: count("seen")?,
            answer_rows: count("answers")?,
            disk_bytes: size(&self.path) + size(Path::new(&wal)),
        })
    }

    /// The answers and clients of exactly this name, seen at or after `since` (unix seconds).
    pub fn by_name(&self, name: &str, since: i64) -> Result<Report, PdnsError> {
        let key = name::key_lenient(name)?;
        self.report(&Names::Exact(key), since)
    }

    /// The answers and clients of a domain and every name below it (`evil.example` covers
    /// `a.b.evil.example`, not `notevil.example`), seen at or after `since`.
    pub fn by_domain(&self, domain: &str, since: i64) -> Result<Report, PdnsError> {
        let key = name::key_lenient(domain)?;
        let (low, high) = name::domain_range(&key);
        self.report(&Names::Range(low, high), since)
    }

    /// The names that resolved to this address (A or AAAA) at or after `since`, and the
    /// clients that resolved those names.
    pub fn by_ip(&self, ip: IpAddr, since: i64) -> Result<Report, PdnsError> {
        let blob = ip_blob(ip);
        let answers = self.answer_rows(
            "FROM answers a JOIN names n ON n.id = a.name_id
             WHERE a.data = ?2 AND a.rtype IN (1, 28) AND a.last >= ?1",
            vec![Value::Blob(blob.clone())],
            since,
        )?;
        let clients = self.client_rows(
            "FROM seen s JOIN names n ON n.id = s.name_id JOIN clients c ON c.id = s.client_id
             WHERE s.name_id IN (SELECT name_id FROM answers
                                 WHERE data = ?2 AND rtype IN (1, 28) AND last >= ?1)
               AND s.last >= ?1",
            vec![Value::Blob(blob)],
            since,
        )?;
        Ok(Report { answers, clients })
    }

    /// The names this client resolved at or after `since` (the answers of a name are one
    /// [`Store::by_name`] away).
    pub fn by_client(&self, client: IpAddr, since: i64) -> Result<Report, PdnsError> {
        let clients = self.client_rows(
            "FROM clients c JOIN seen s ON s.client_id = c.id JOIN names n ON n.id = s.name_id
             WHERE c.ip = ?2 AND s.last >= ?1",
            vec![Value::Blob(ip_blob(client.to_canonical()))],
            since,
        )?;
        Ok(Report {
            answers: Vec::new(),
            clients,
        })
    }

    /// Retro-hunt: every (client, name, first seen, last seen, count) under `domain` (the
    /// domain and its subdomains) seen at or after `since`; the count is within that window.
    pub fn clients_of(&self, domain: &str, since: i64) -> Result<Vec<Resolved>, PdnsError> {
        let key = name::key_lenient(domain)?;
        let (low, high) = name::domain_range(&key);
        let (cond, params) = Names::Range(low, high).condition();
        Ok(self
            .client_rows(
                &format!(
                    "FROM names n JOIN seen s ON s.name_id = n.id
                     JOIN clients c ON c.id = s.client_id WHERE {cond} AND s.last >= ?1"
                ),
                params,
                since,
            )?
            .into_iter()
            .map(|r| {
                (
                    r.client,
                    r.name,
                    r.seen.first_seen,
                    r.seen.last_seen,
                    r.seen.count,
                )
            })
            .collect())
    }

    fn report(&self, names: &Names, since: i64) -> Result<Report, PdnsError> {
        let (cond, params) = names.condition();
        let answers = self.answer_rows(
            &format!(
                "FROM names n JOIN answers a ON a.name_id = n.id WHERE {cond} AND a.last >= ?1"
            ),
            params.clone(),
            since,
        )?;
        let clients = self.client_rows(
            &format!(
                "FROM names n JOIN seen s ON s.name_id = n.id
                 JOIN clients c ON c.id = s.client_id WHERE {cond} AND s.last >= ?1"
            ),
            params,
            since,
        )?;
        Ok(Report { answers, clients })
    }

    /// `tail`: FROM ... WHERE ... over `n` (names) and `a` (answers); `?1` is `since`.
    fn answer_rows(
        &self,
        tail: &str,
        params: Vec<Value>,
        since: i64,
    ) -> Result<Vec<AnswerRecord>, PdnsError> {
        let sql = format!(
            "SELECT n.key, a.rtype, a.data, a.ttl, a.first, a.last, a.days {tail}
             ORDER BY n.key, a.rtype, a.data"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.sql_err())?;
        let mut all = vec![Value::Integer(since)];
        all.extend(params);
        let mut rows = stmt
            .query(rusqlite::params_from_iter(all))
            .map_err(self.sql_err())?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(self.sql_err())? {
            let key: String = r.get(0).map_err(self.sql_err())?;
            let rtype: u16 = r.get(1).map_err(self.sql_err())?;
            let data = match r.get_ref(2).map_err(self.sql_err())? {
                ValueRef::Blob(b) => {
                    AnswerData::Ip(ip_from_blob(b).ok_or_else(|| self.corrupt("answers"))?)
                }
                ValueRef::Text(t) => AnswerData::Name(
                    std::str::from_utf8(t)
                        .map_err(|_| self.corrupt("answers"))?
                        .to_owned(),
                ),
                _ => return Err(self.corrupt("answers")),
            };
            let days: Vec<u8> = r.get(6).map_err(self.sql_err())?;
            out.push(AnswerRecord {
                name: name::from_key(&key),
                rtype,
                data,
                ttl: r.get(3).map_err(self.sql_err())?,
                seen: seen(
                    r.get(4).map_err(self.sql_err())?,
                    r.get(5).map_err(self.sql_err())?,
                    &days,
                    since,
                )
                .map_err(|_| self.corrupt("answers"))?,
            });
        }
        Ok(out)
    }

    /// `tail`: FROM ... WHERE ... over `n` (names), `s` (seen) and `c` (clients).
    fn client_rows(
        &self,
        tail: &str,
        params: Vec<Value>,
        since: i64,
    ) -> Result<Vec<ClientRecord>, PdnsError> {
        let sql =
            format!("SELECT n.key, c.ip, s.first, s.last, s.days {tail} ORDER BY n.key, c.ip");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.sql_err())?;
        let mut all = vec![Value::Integer(since)];
        all.extend(params);
        let mut rows = stmt
            .query(rusqlite::params_from_iter(all))
            .map_err(self.sql_err())?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(self.sql_err())? {
            let key: String = r.get(0).map_err(self.sql_err())?;
            let ip: Vec<u8> = r.get(1).map_err(self.sql_err())?;
            let days: Vec<u8> = r.get(4).map_err(self.sql_err())?;
            out.push(ClientRecord {
                name: name::from_key(&key),
                client: ip_from_blob(&ip).ok_or_else(|| self.corrupt("clients"))?,
                seen: seen(
                    r.get(2).map_err(self.sql_err())?,
                    r.get(3).map_err(self.sql_err())?,
                    &days,
                    since,
                )
                .map_err(|_| self.corrupt("seen"))?,
            });
        }
        Ok(out)
    }
}

fn header(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    let app = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    Ok((app, version))
}

fn check_header(path: &Path, app: i64, version: i64) -> Result<(), PdnsError> {
    if app != APPLICATION_ID {
        return Err(PdnsError::Foreign {
            path: path.to_owned(),
            found: app,
        });
    }
    if version != SCHEMA_VERSION {
        return Err(PdnsError::Version {
            path: path.to_owned(),
            found: version,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// The per-day blob operations the upserts and the prune run inside SQLite.
fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let user = |e: days::BadDays| rusqlite::Error::UserFunctionError(Box::new(e));
    conn.create_scalar_function("pdns_merge", 2, flags, move |ctx| {
        let a = ctx.get_raw(0).as_blob()?;
        let b = ctx.get_raw(1).as_blob()?;
        days::merge(a, b).map_err(user)
    })?;
    conn.create_scalar_function("pdns_keep_from", 2, flags, move |ctx| {
        let a = ctx.get_raw(0).as_blob()?;
        let day = u32::try_from(ctx.get::<i64>(1)?.max(0)).unwrap_or(u32::MAX);
        days::keep_from(a, day).map_err(user)
    })?;
    conn.create_scalar_function("pdns_first_day", 1, flags, move |ctx| {
        let a = ctx.get_raw(0).as_blob()?;
        days::first_day(a).map(|d| d.map(i64::from)).map_err(user)
    })?;
    Ok(())
}
