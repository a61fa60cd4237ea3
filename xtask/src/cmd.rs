//! Running child processes with errors that name the command, and the root check.

use std::{
    fmt,
    io::{ErrorKind, Write as _},
    os::{fd::AsFd as _, unix::process::ExitStatusExt as _},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// A spawned command ran and failed. Kept as a type so `main` can exit with the child's code
/// (e.g. `cargo test`'s 101) instead of a generic 1.
#[derive(Debug)]
pub struct CommandFailed {
    command: String,
    status: ExitStatus,
    /// The last line the command wrote to stderr, when we captured it.
    detail: Option<String>,
}

impl CommandFailed {
    /// The shell convention: the child's code, or 128 + signal if it was killed.
    pub fn exit_code(&self) -> u8 {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => u8::try_from(code).unwrap_or(1).max(1),
            (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
            (None, None) => 1,
        }
    }
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.command, self.status)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CommandFailed {}

/// `cmd` as a user would type it (program and arguments; env and cwd left out).
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The program of a command is not installed (not on PATH). A type, so setup can tell "missing"
/// from "installed but broken".
#[derive(Debug)]
pub struct ProgramNotFound {
    command: String,
    program: String,
}

impl fmt::Display for ProgramNotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` failed: {} not found on PATH",
            self.command, self.program
        )
    }
}

impl std::error::Error for ProgramNotFound {}

fn spawn_error(cmd: &Command, err: &std::io::Error) -> anyhow::Error {
    if err.kind() == ErrorKind::NotFound {
        ProgramNotFound {
            command: describe(cmd),
            program: cmd.get_program().to_string_lossy().into_owned(),
        }
        .into()
    } else {
        anyhow::anyhow!("`{}` could not start: {err}", describe(cmd))
    }
}

/// Run with inherited stdio (the user sees the output as it happens); fail if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().map_err(|e| spawn_error(cmd, &e))?;
    if status.success() {
        Ok(())
    } else {
        Err(CommandFailed {
            command: describe(cmd),
            status,
            detail: None,
        }
        .into())
    }
}

/// Like [`run`], but the command's stdout goes to our stderr. For everything setup spawns (apt,
/// rustup, cargo install, ...): xtask's stdout is kept for what a command is asked for (the
/// object path of `build-ebpf`, the sensor's JSON lines of `run`), never for progress.
pub fn run_to_stderr(cmd: &mut Command) -> Result<()> {
    run(cmd.stdout(stderr()?))
}

/// A handle on our stderr, to give a child as its stdout.
pub fn stderr() -> Result<Stdio> {
    let fd = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate stderr")?;
    Ok(Stdio::from(fd))
}

/// Run with stdout captured (stderr captured too, for the error message); return stdout.
pub fn output(cmd: &mut Command) -> Result<String> {
    output_with_stdin(cmd, None)
}

/// Like [`output`], feeding `stdin` to the command first.
pub fn output_with_stdin(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|e| spawn_error(cmd, &e))?;
    if let Some(input) = stdin {
        // Dropping the handle after writing closes the pipe, so the child sees EOF.
        let mut pipe = child.stdin.take().context("child stdin was not piped")?;
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("writing stdin of `{}`", describe(cmd)))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{}`", describe(cmd)))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::trim);
        return Err(CommandFailed {
            command: describe(cmd),
            status: out.status,
            detail: detail.map(str::to_owned),
        }
        .into());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", describe(cmd)))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail (POSIX).
    unsafe { libc::geteuid() == 0 }
}

/// Fail with one line when not root; `what` says who needs it and why.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root; run it again as root");
    }
    Ok(())
}
