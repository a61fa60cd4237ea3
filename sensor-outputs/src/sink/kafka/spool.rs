//! The on-disk spool: an append-only queue of (key, document) records in segment files, for
//! broker outages longer than the memory queues hold.
//!
//! Layout: `<path>/<seq, 20 digits>.seg` files, written in order, `<path>/cursor` ("seq
//! offset": where reading resumes) and `<path>/lock`, which an open spool holds with an
//! exclusive `flock`: a second sensor pointed at the same directory would append to and delete
//! the same segments, so it fails to start instead ([`OpenError::Locked`]). The kernel drops the
//! lock when the holder exits, even by `kill -9`, so a crash never leaves the directory locked. A record is `len: u32 LE` (of the body), `crc32: u32 LE` (of
//! the body), then the body: `key_len: u16 LE`, key, document.
//!
//! Reading hands a record to the producer and counts it outstanding in its segment until its
//! delivery report comes (`ack`): delivered, dropped, or appended again at the tail. A segment is
//! deleted when it has been read to its end and nothing of it is outstanding. The cursor is
//! written only when nothing read is outstanding, so it never points past a record whose fate is
//! unknown.
//!
//! What survives what (honestly):
//! - The sensor stops cleanly: everything. `close` flushes, fsyncs and writes the cursor after
//!   the producer has purged its queue into the spool.
//! - The process is killed (crash, OOM, `kill -9`): every appended record is in the kernel's
//!   page cache once the writer's buffer is flushed, which happens at least every
//!   [`Spool::sync`] (about once a second) and before reading; records still in the 64 KiB
//!   user-space buffer are lost. Records read since the last cursor write are replayed again
//!   (duplicates, at least once).
//! - Power loss or a kernel crash: records appended since the last fsync (about one second,
//!   plus the buffer) are lost; a record torn by the crash fails its length or CRC check at the
//!   next start and the segment is truncated there. A new segment's directory entry is fsynced
//!   before anything is written to it, and the directory is fsynced after each cursor rename, so
//!   neither a segment nor a written cursor is lost with the directory's metadata. Everything that
//!   was in the memory queues is lost in both crash cases.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

/// The smallest `max_bytes` accepted: room for a few segments of the smallest size.
pub const MIN_MAX_BYTES: u64 = 1 << 20;
const HEADER: u64 = 8;
/// The file an open spool holds its `flock` on.
const LOCK_FILE: &str = "lock";
/// A body longer than this is not a record we wrote: the length field is torn or corrupt.
const MAX_BODY: u32 = 64 << 20;

/// One record read from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number of its segment, for [`Spool::ack`].
    pub segment: u64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Why [`Spool::open`] failed. Both name the config key and the directory, so the one line the
/// sensor prints at start says what to change.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "kafka.spool.path {dir}: already in use by another sensor (it holds {dir}/{LOCK_FILE}); \
         give each sensor its own spool directory"
    )]
    Locked { dir: String },
    #[error("kafka.spool.path {dir}: {source}")]
    Io { dir: String, source: io::Error },
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the spool is full")]
    Full,
    #[error("the spool is closed (the sink has shut down)")]
    Closed,
    #[error("spool write failed: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Default)]
struct Segment {
    /// Bytes of valid records in the file.
    len: u64,
    /// Records read and not yet acknowledged.
    outstanding: u64,
}

/// The spool. Not thread-safe by itself: the sink keeps it in a mutex.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Held until [`Spool::close`] or drop; `None` once closed, after which the spool touches
    /// no file (another sensor may own the directory by then).
    lock: Option<Flock<File>>,
    max_bytes: u64,
    segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    /// The segment being appended to (the last in `segments`), with its buffered writer.
    writer: Option<(u64, BufWriter<File>)>,
    /// Unflushed or unsynced appends.
    dirty: bool,
    /// Where the next read starts.
    read_seq: u64,
    read_pos: u64,
    /// The reader's open file, for `read_seq`.
    read_file: Option<(u64, File)>,
    /// A record read but not yet taken (the producer's queue was full).
    peeked: Option<(Record, u64)>,
    pending: u64,
    total_bytes: u64,
    outstanding_total: u64,
    /// The cursor last written, to skip rewriting an unchanged one.
    saved_cursor: Option<(u64, u64)>,
}

/// What [`Spool::open`] found from an earlier run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub records: u64,
    pub bytes: u64,
    /// Bytes cut from segment tails that failed their length or CRC check.
    pub truncated_bytes: u64,
}

fn seg_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

impl Spool {
    /// Opens (creating) the spool at `dir`, recovering the segments an earlier run left. Fails
    /// with [`OpenError::Locked`] while another spool (in this or another process) has `dir`
    /// open.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Self, Recovered), OpenError> {
        let shown = || dir.display().to_string();
        fs::create_dir_all(dir).map_err(|source| OpenError::Io {
            dir: shown(),
            source,
        })?;
        let lock = lock_dir(dir)?;
        Self::open_locked(dir, max_bytes, lock).map_err(|source| OpenError::Io {
            dir: shown(),
            source,
        })
    }

    fn open_locked(dir: &Path, max_bytes: u64, lock: Flock<File>) -> io::Result<(Self, Recovered)> {
        let cursor = read_cursor(dir);
        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut spool = Self {
            dir: dir.to_path_buf(),
            lock: Some(lock),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 << 10, 64 << 20),
            segments: BTreeMap::new(),
            writer: None,
            dirty: false,
            read_seq: 0,
            read_pos: 0,
            read_file: None,
            peeked: None,
            pending: 0,
            total_bytes: 0,
            outstanding_total: 0,
            saved_cursor: cursor,
        };
        let mut recovered = Recovered::default();
        let mut first = true;
        for seq in seqs {
            let path = dir.join(seg_name(seq));
            let (cursor_seq, cursor_pos) = cursor.unwrap_or((0, 0));
            if seq < cursor_seq {
                // Read to its end and acknowledged before the cursor was written.
                fs::remove_file(&path)?;
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let (valid, records_from) =
                scan(&file, if seq == cursor_seq { cursor_pos } else { 0 })?;
            let file_len = file.metadata()?.len();
            if valid < file_len {
                file.set_len(valid)?;
                file.sync_all()?;
                recovered.truncated_bytes += file_len - valid;
            }
            let start = if seq == cursor_seq {
                cursor_pos.min(valid)
            } else {
                0
            };
            if records_from == 0 {
                fs::remove_file(&path)?;
                continue;
            }
            if first {
                spool.read_seq = seq;
                spool.read_pos = start;
                first = false;
            }
            spool.segments.insert(
                seq,
                Segment {
                    len: valid,
                    outstanding: 0,
                },
            );
            spool.total_bytes += valid;
            spool.pending += records_from;
        }
        recovered.records = spool.pending;
        recovered.bytes = spool.total_bytes;
        if spool.segments.is_empty() {
            spool.read_seq = cursor.map_or(0, |(s, _)| s + 1);
            spool.read_pos = 0;
        }
        Ok((spool, recovered))
    }

    /// Records appended and not yet read.
    pub fn pending(&self) -> u64 {
        self.pending + u64::from(self.peeked.is_some())
    }

    /// Bytes of all segment files.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Appends one record at the tail.
    pub fn append(&mut self, key: &[u8], payload: &[u8]) -> Result<(), AppendError> {
        if self.lock.is_none() {
            return Err(AppendError::Closed);
        }
        let key_len = u16::try_from(key.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "key longer than 65535 bytes")
        })?;
        let body_len = 2 + key.len() + payload.len();
        let body_len32 = u32::try_from(body_len)
            .ok()
            .filter(|&l| l <= MAX_BODY)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let rec_len = HEADER + body_len as u64;
        if self.total_bytes + rec_len > self.max_bytes {
            return Err(AppendError::Full);
        }
        let roll = match &self.writer {
            None => true,
            Some((seq, _)) => {
                let len = self.segments.get(seq).map_or(0, |s| s.len);
                len > 0 && len + rec_len > self.segment_bytes
            }
        };
        if roll {
            self.roll()?;
        }
        let Some((seq, w)) = self.writer.as_mut() else {
            return Err(io::Error::other("no segment open for writing").into());
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&key_len.to_le_bytes());
        crc.update(key);
        crc.update(payload);
        w.write_all(&body_len32.to_le_bytes())?;
        w.write_all(&crc.finalize().to_le_bytes())?;
        w.write_all(&key_len.to_le_bytes())?;
        w.write_all(key)?;
        w.write_all(payload)?;
        self.segments.entry(*seq).or_default().len += rec_len;
        self.total_bytes += rec_len;
        self.pending += 1;
        self.dirty = true;
        Ok(())
    }

    /// Seals the current segment (flushed and fsynced) and starts the next one.
    fn roll(&mut self) -> io::Result<()> {
        if let Some((_, mut w)) = self.writer.take() {
            w.flush()?;
            w.get_ref().sync_data()?;
        }
        let seq = self
            .segments
            .keys()
            .next_back()
            .map_or(self.read_seq, |s| s + 1)
            .max(self.read_seq);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(self.dir.join(seg_name(seq)))?;
        // The new file's directory entry survives a power loss only once the directory is
        // synced.
        sync_dir(&self.dir)?;
        self.segments.insert(seq, Segment::default());
        self.writer = Some((seq, BufWriter::with_capacity(64 << 10, file)));
        Ok(())
    }

    /// The next record, without taking it: the same record is returned until [`Spool::take`].
    pub fn peek(&mut self) -> io::Result<Option<&Record>> {
        if self.peeked.is_none() && self.lock.is_some() {
            self.peeked = self.read_next()?;
        }
        Ok(self.peeked.as_ref().map(|(r, _)| r))
    }

    /// Takes the peeked record: it is outstanding until [`Spool::ack`].
    pub fn take(&mut self) -> Option<Record> {
        let (r, _) = self.peeked.take()?;
        if let Some(s) = self.segments.get_mut(&r.segment) {
            s.outstanding += 1;
            self.outstanding_total += 1;
        }
        Some(r)
    }

    /// A taken record of `segment` has its final outcome (delivered, dropped, or appended
    /// again).
    pub fn ack(&mut self, segment: u64) {
        if let Some(s) = self.segments.get_mut(&segment)
            && s.outstanding > 0
        {
            s.outstanding -= 1;
            self.outstanding_total -= 1;
        }
        self.delete_finished();
    }

    fn read_next(&mut self) -> io::Result<Option<(Record, u64)>> {
        loop {
            let Some(seg) = self.segments.get(&self.read_seq) else {
                // Only possible before the first append of an empty spool.
                match self.segments.range(self.read_seq..).next() {
                    Some((&seq, _)) => {
                        self.read_seq = seq;
                        self.read_pos = 0;
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            let writing = self
                .writer
                .as_ref()
                .is_some_and(|(s, _)| *s == self.read_seq);
            if self.read_pos >= seg.len {
                if writing {
                    return Ok(None);
                }
                // Done with this segment: on to the next.
                let Some((&next, _)) = self.segments.range(self.read_seq + 1..).next() else {
                    return Ok(None);
                };
                self.read_seq = next;
                self.read_pos = 0;
                self.read_file = None;
                self.delete_finished();
                continue;
            }
            if writing
                && self.dirty
                && let Some((_, w)) = self.writer.as_mut()
            {
                w.flush()?;
            }
            if self
                .read_file
                .as_ref()
                .is_none_or(|(s, _)| *s != self.read_seq)
            {
                let f = File::open(self.dir.join(seg_name(self.read_seq)))?;
                self.read_file = Some((self.read_seq, f));
            }
            let Some((_, file)) = self.read_file.as_ref() else {
                return Err(io::Error::other("kafka spool: no segment open for reading"));
            };
            match read_record(file, self.read_pos)? {
                Some((key, payload, len)) => {
                    let rec = Record {
                        segment: self.read_seq,
                        key,
                        payload,
                    };
                    self.read_pos += len;
                    self.pending = self.pending.saturating_sub(1);
                    return Ok(Some((rec, len)));
                }
                None => {
                    // Corrupt in the middle of a segment we wrote (bad disk): skip its rest.
                    tracing::warn!(
                        segment = self.read_seq,
                        offset = self.read_pos,
                        "kafka spool: corrupt record, skipping the rest of the segment"
                    );
                    if let Some(seg) = self.segments.get_mut(&self.read_seq) {
                        seg.len = self.read_pos;
                    }
                    // Its unread records are gone; recount what is left.
                    self.pending = self.count_unread()?;
                }
            }
        }
    }

    fn count_unread(&self) -> io::Result<u64> {
        let mut n = 0;
        for (&seq, seg) in self.segments.range(self.read_seq..) {
            let f = File::open(self.dir.join(seg_name(seq)))?;
            let from = if seq == self.read_seq {
                self.read_pos
            } else {
                0
            };
            let (_, count) = scan_range(&f, from, seg.len)?;
            n += count;
        }
        Ok(n)
    }

    /// Deletes every segment read to its end with nothing outstanding; an idle, fully read
    /// current segment too (the next append starts a new one).
    fn delete_finished(&mut self) {
        if self.lock.is_none() {
            return;
        }
        let writer_seq = self.writer.as_ref().map(|(s, _)| *s);
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|&(&seq, seg)| {
                seg.outstanding == 0
                    && (seq < self.read_seq
                        || (seq == self.read_seq
                            && self.read_pos >= seg.len
                            && self.peeked.is_none()
                            && self.segments.range(seq + 1..).next().is_none()))
            })
            .map(|(&s, _)| s)
            .collect();
        for seq in done {
            if Some(seq) == writer_seq {
                self.writer = None;
            }
            if self.read_file.as_ref().is_some_and(|(s, _)| *s == seq) {
                self.read_file = None;
            }
            if let Some(seg) = self.segments.remove(&seq) {
                self.total_bytes -= seg.len;
            }
            if let Err(e) = fs::remove_file(self.dir.join(seg_name(seq))) {
                tracing::warn!(segment = seq, error = %e, "kafka spool: cannot delete a segment");
            }
            if seq == self.read_seq {
                self.read_seq += 1;
                self.read_pos = 0;
            }
        }
    }

    /// Flushes and fsyncs appends, and writes the cursor when nothing read is outstanding.
    /// Called about once a second and at shutdown.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.lock.is_none() {
            return Ok(());
        }
        if self.dirty {
            if let Some((_, w)) = &mut self.writer {
                w.flush()?;
                w.get_ref().sync_data()?;
            }
            self.dirty = false;
        }
        if self.outstanding_total == 0 {
            // A peeked record is not taken: reading resumes at it.
            let pos = self.read_pos - self.peeked.as_ref().map_or(0, |(_, len)| *len);
            let cursor = (self.read_seq, pos);
            if self.saved_cursor != Some(cursor) {
                write_cursor(&self.dir, cursor)?;
                self.saved_cursor = Some(cursor);
            }
        }
        Ok(())
    }
}

/// Takes the directory's lock without waiting: a holder is a running sensor, which keeps it for
/// as long as it runs.
fn lock_dir(dir: &Path) -> Result<Flock<File>, OpenError> {
    let io = |source| OpenError::Io {
        dir: dir.display().to_string(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(OpenError::Locked {
            dir: dir.display().to_string(),
        }),
        Err((_, e)) => Err(io(e.into())),
    }
}

impl Spool {
    /// Syncs (as [`Spool::sync`]) and unlocks the directory, so a new spool may open it at once
    /// (the sink's shutdown, while a delivery callback or health check may still hold this one
    /// for a few seconds). Afterwards appends fail with [`AppendError::Closed`] and nothing is
    /// read, written or deleted. The lock is released even when the sync fails.
    pub fn close(&mut self) -> io::Result<()> {
        let synced = self.sync();
        self.writer = None;
        self.read_file = None;
        self.lock = None;
        synced
    }
}

fn read_cursor(dir: &Path) -> Option<(u64, u64)> {
    let text = fs::read_to_string(dir.join("cursor")).ok()?;
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(seq)), Some(Ok(pos))) => Some((seq, pos)),
        _ => None,
    }
}

fn write_cursor(dir: &Path, (seq, pos): (u64, u64)) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    {
        let mut f = File::create(&tmp)?;
        // One write call (an unbuffered `writeln!` makes one per piece).
        f.write_all(format!("{seq} {pos}\n").as_bytes())?;
        f.sync_data()?;
    }
    // Atomic replace: a crash leaves the old cursor or the new one, never half of one.
    fs::rename(tmp, dir.join("cursor"))?;
    // The rename lives in the directory: until the directory is synced, a power loss can bring
    // back the old cursor (records replayed twice) or, on some file systems, neither name.
    sync_dir(dir)
}

/// fsyncs a directory, making the entries created, renamed or removed in it durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads the record at `pos`: (key, payload, bytes taken), or `None` when what is there is not a
/// whole valid record.
/// A record's key, document, and bytes taken in its file.
type RawRecord = (Vec<u8>, Vec<u8>, u64);

fn read_record(file: &File, pos: u64) -> io::Result<Option<RawRecord>> {
    let mut header = [0u8; HEADER as usize];
    if !read_full_at(file, &mut header, pos)? {
        return Ok(None);
    }
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if !(2..=MAX_BODY).contains(&len) {
        return Ok(None);
    }
    let mut body = vec![0u8; len as usize];
    if !read_full_at(file, &mut body, pos + HEADER)? || crc32fast::hash(&body) != crc {
        return Ok(None);
    }
    let key_len = usize::from(u16::from_le_bytes([body[0], body[1]]));
    let Some((key, payload)) = body[2..].split_at_checked(key_len) else {
        return Ok(None);
    };
    Ok(Some((
        key.to_vec(),
        payload.to_vec(),
        HEADER + u64::from(len),
    )))
}

/// `read_exact_at` that reports a short file as `false` instead of an error.
fn read_full_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<bool> {
    match file.read_exact_at(buf, pos) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Validates a whole segment: (bytes of valid records from the start, records at or after
/// `count_from`).
fn scan(file: &File, count_from: u64) -> io::Result<(u64, u64)> {
    let len = file.metadata()?.len();
    let mut pos = 0;
    let mut count = 0;
    while pos < len {
        match read_record(file, pos)? {
            Some((_, _, n)) => {
                if pos >= count_from {
                    count += 1;
                }
                pos += n;
            }
            None => break,
        }
    }
    Ok((pos, count))
}

/// Counts the valid records between `from` and `to`.
fn scan_range(file: &File, from: u64, to: u64) -> io::Result<(u64, u64)> {
    let mut pos = from;
    let mut count = 0;
    while pos < to {
        match read_record(file, pos)? {
            Some((_, _, n)) => {
                count += 1;
                pos += n;
            }
            None => break,
        }
    }
    Ok((pos, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Spool) -> Vec<Record> {
        let mut out = Vec::new();
        while s.peek().unwrap().is_some() {
            out.push(s.take().unwrap());
        }
        out
    }

    #[test]
    fn fifo_across_segments_and_deleted_when_acked() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, rec) = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
        assert_eq!(rec, Recovered::default());
        // 128 KiB segments: 300 records of ~1 KiB make several.
        let doc = vec![b'x'; 1000];
        for i in 0..300u32 {
            s.append(format!("k{i}").as_bytes(), &doc).unwrap();
        }
        assert_eq!(s.pending(), 300);
        assert!(s.segments.len() > 1, "{:?}", s.segments.keys());
        let got = drain(&mut s);
        assert_eq!(got.len(), 300);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.key, format!("k{i}").into_bytes());
            assert_eq!(r.payload, doc);
        }
        assert_eq!(s.pending(), 0);
        assert!(s.bytes() > 0, "outstanding records keep their segments");
        for r in &got {
            s.ack(r.segment);
        }
        assert_eq!(s.bytes(), 0);
        assert!(s.segments.is_empty());
        let files = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count();
        assert_eq!(files, 0);
        // Appends after that start a fresh segment and read in order.
        s.append(b"a", b"1").unwrap();
        assert_eq!(drain(&mut s)[0].payload, b"1");
    }

    #[test]
    fn full_beyond_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
        let doc = vec![b'y'; 10_000];
        let mut n = 0;
        loop {
            match s.append(b"k", &doc) {
                Ok(()) => n += 1,
                Err(AppendError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(n, MIN_MAX_BYTES / (10_000 + 8 + 2 + 1));
        assert!(s.bytes() <= MIN_MAX_BYTES);
    }

    #[test]
    fn reopen_resumes_at_the_cursor_and_truncates_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
            for i in 0..10u32 {
                s.append(b"k", format!("doc{i}").as_bytes()).unwrap();
            }
            for _ in 0..4 {
                s.peek().unwrap();
                let r = s.take().unwrap();
                s.ack(r.segment);
            }
            // Peeked but not taken: stays in the spool.
            s.peek().unwrap();
            s.sync().unwrap();
        }
        // A crash in the middle of an append: half a record at the tail.
        let seg = dir.path().join(seg_name(0));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let (mut s, rec) = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
        assert_eq!(rec.records, 6);
        assert_eq!(rec.truncated_bytes, 6);
        let got: Vec<Vec<u8>> = drain(&mut s).into_iter().map(|r| r.payload).collect();
        let want: Vec<Vec<u8>> = (4..10).map(|i| format!("doc{i}").into_bytes()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_second_open_of_the_same_directory_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let (mut first, _) = Spool::open(&path, MIN_MAX_BYTES).unwrap();
        first.append(b"k", b"kept").unwrap();
        first.sync().unwrap();

        let err = Spool::open(&path, MIN_MAX_BYTES).unwrap_err();
        assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("kafka.spool.path {}: ", path.display())),
            "{text}"
        );
        assert!(
            text.contains("another sensor") && !text.contains('\n'),
            "{text}"
        );
        // The refused open touched nothing: the first still reads what it wrote.
        assert_eq!(drain(&mut first)[0].payload, b"kept");

        drop(first);
        let (mut second, rec) = Spool::open(&path, MIN_MAX_BYTES).unwrap();
        assert_eq!(
            rec.records, 1,
            "no cursor was written after the read: replayed"
        );
        assert_eq!(drain(&mut second)[0].payload, b"kept");
    }

    #[test]
    fn a_closed_spool_unlocks_its_directory_and_touches_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let (mut first, _) = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
        first.append(b"k", b"before close").unwrap();
        first.close().unwrap();
        // Still alive (a late delivery callback holds it), but the directory is free.
        let (mut second, rec) = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
        assert_eq!(rec.records, 1, "close synced the append");
        assert!(matches!(
            first.append(b"k", b"late"),
            Err(AppendError::Closed)
        ));
        assert!(first.peek().unwrap().is_none());
        assert_eq!(drain(&mut second)[0].payload, b"before close");
    }

    #[test]
    fn without_a_cursor_everything_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
            for i in 0..5u32 {
                s.append(b"k", &[i as u8]).unwrap();
            }
            // Read but never acknowledged (the process died): no cursor is written.
            drain(&mut s);
            s.sync().unwrap();
        }
        let (mut s, rec) = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
        assert_eq!(rec.records, 5);
        assert_eq!(drain(&mut s).len(), 5);
    }
}
