//! The state directory's lock: one writer at a time across the daemon (nightly run, expiry
//! sweep, SIGHUP) and the operator commands (`sensor blocklist run|unblock|allow|revoke`), so an
//! unblock typed during the nightly run is never overwritten by the run's older plan.
//!
//! An advisory `flock` on `<state_dir>/.lock`: released by the kernel when the holder exits,
//! even by `kill -9`, so a crash never leaves the directory locked.

use std::{fs::File, os::unix::fs::OpenOptionsExt as _, path::Path, time::Duration};

use nix::fcntl::{Flock, FlockArg};

const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("blocklist state lock {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "blocklist state lock {path}: still held by another process after {secs} s (a nightly run or another operator command)"
    )]
    Busy { path: String, secs: u64 },
}

/// Held while the state directory is being changed; dropping it unlocks.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    /// Takes the lock of `state_dir` (created if missing), waiting up to `wait` for a holder to
    /// finish.
    pub fn acquire(state_dir: &Path, wait: Duration) -> Result<Self, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let shown = path.display().to_string();
        let io = |source| LockError::Io {
            path: shown.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            // Never through a symlink: the directory may be writable by the service user.
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io)?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Self { _lock: lock }),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(LockError::Busy {
                            path: shown,
                            secs: wait.as_secs(),
                        });
                    }
                    // flock has no timed wait; a holder keeps it for one publish (milliseconds)
                    // or one nightly run, so polling at 20 ms costs nothing.
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((_, e)) => return Err(io(e.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_and_gets_it_after_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path(), Duration::ZERO).unwrap();
        let err = StateLock::acquire(dir.path(), Duration::from_millis(50)).unwrap_err();
        assert!(err.to_string().contains("still held"), "{err}");
        drop(first);
        StateLock::acquire(dir.path(), Duration::ZERO).unwrap();
    }
}
