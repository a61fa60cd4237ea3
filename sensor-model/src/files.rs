//! Files that readers must see whole: state, results and served lists.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` so that a reader sees the old file or the new one, whole: a
/// temporary file in the same directory, fsync, rename over `path`, fsync of the directory (so
/// the rename survives a crash).
///
/// The temporary file is created new (`O_EXCL`) and never through a symlink (`O_NOFOLLOW`):
/// in a directory another user can write to, a planted link or file at the temporary name
/// makes the write fail instead of writing through it. The rename replaces a symlink at
/// `path` itself, never its target.
pub fn write_atomic(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = create_new(&tmp)?;
        f.write_all(bytes.as_ref())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = &result
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        // Ours to remove: created by this call (an existing file at the name is not).
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A new file for writing: fails if anything (a file, a symlink) is at `path`.
pub fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Opens `path` for appending (created when missing), refusing a symlink at `path`.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_whole_files_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("edl.txt");
        write_atomic(&p, "a\n").unwrap();
        write_atomic(&p, "b\nc\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b\nc\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left");
        assert!(write_atomic(&dir.path().join("missing/x"), "x").is_err());
    }

    #[test]
    fn no_symlink_is_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("audit.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open_append(&link).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert!(create_new(&link).is_err());
        // A link at the destination is replaced, its target untouched.
        write_atomic(&link, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
    }
}
