//! Running `nft` and `ipset`: the script on stdin, stdout and stderr read at the same time (so
//! neither side can fill a pipe and wait on the other), and a deadline, so a hung tool cannot
//! hold the nightly run or a SIGHUP reload forever. Killing the tool is safe: `nft -f` commits
//! nothing unless it finishes, and the ipset swap is the last thing `ipset restore` does.

use std::{
    io::{Read as _, Write as _},
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use super::ExportError;

/// Longest a tool may run (100,000 entries take about half a second).
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `program args` with `input` on stdin; returns its output whatever its exit status, or
/// an error when it cannot start, cannot be waited for, or runs past `deadline` (then killed).
pub fn run(
    name: &'static str,
    program: &Path,
    args: &[&str],
    input: Option<&str>,
    deadline: Duration,
) -> Result<Output, ExportError> {
    let spawn_error = |source| ExportError::Spawn {
        program: name,
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    std::thread::scope(|s| {
        // A write error (EPIPE when the tool stops early) shows in its exit status.
        s.spawn(move || {
            if let (Some(text), Some(mut pipe)) = (input, stdin) {
                let _ = pipe.write_all(text.as_bytes());
            }
        });
        let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            s.spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = read(stdout.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
        let err = read(stderr.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
        let until = Instant::now() + deadline;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() >= until => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(ExportError::Refused {
                        program: name,
                        message: format!("killed after {} s without finishing", deadline.as_secs()),
                    });
                }
                // Polling: std has no wait with a timeout.
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => break Err(spawn_error(e)),
            }
        }?;
        Ok(Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_output_and_the_deadline() {
        let out = run("cat", Path::new("cat"), &[], Some("x\n"), DEADLINE).unwrap();
        assert_eq!(out.stdout, b"x\n");
        // A large input through a tool that writes as much back: no pipe deadlock.
        let big = "y".repeat(4 << 20);
        let out = run("cat", Path::new("cat"), &[], Some(&big), DEADLINE).unwrap();
        assert_eq!(out.stdout.len(), big.len());
        let started = Instant::now();
        let e = run(
            "sleep",
            Path::new("sleep"),
            &["30"],
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.to_string().contains("killed after"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let e = run("nope", Path::new("/nonexistent/tool"), &[], None, DEADLINE).unwrap_err();
        assert!(e.to_string().contains("running nope"), "{e}");
    }
}
