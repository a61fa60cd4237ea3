//! The real `sensor` binary run as a child process by live tests: started with a config file,
//! awaited until it reports that it is attached, stopped with SIGTERM by its PID.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

pub struct Daemon {
    child: Option<Child>,
    stdout_path: PathBuf,
    stderr_lines: mpsc::Receiver<String>,
    pub stderr_seen: Vec<String>,
}

impl Daemon {
    /// Starts `binary run --config config` and waits (up to 60 s) for "sensor attached".
    pub fn start(binary: &Path, config: &Path, workdir: &Path) -> Self {
        Self::spawn(Command::new(binary), config, workdir, false)
    }

    /// Like [`start`](Self::start), inside network namespace `ns` (`ip netns exec` execs the
    /// sensor in place, so the PID is the sensor's).
    pub fn start_in_netns(ns: &str, binary: &Path, config: &Path, workdir: &Path) -> Self {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(binary);
        Self::spawn(c, config, workdir, false)
    }

    /// [`Daemon::start`] with extra environment variables (e.g. systemd's
    /// `CREDENTIALS_DIRECTORY`).
    pub fn start_with_env(
        binary: &Path,
        config: &Path,
        workdir: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let mut c = Command::new(binary);
        c.envs(env.iter().copied());
        Self::spawn(c, config, workdir, false)
    }

    /// [`Self::start`], with stdout posing as the systemd journal: `JOURNAL_STREAM` names the
    /// stdout file's device and inode, as systemd does for a service logging to the journal.
    pub fn start_as_journal(binary: &Path, config: &Path, workdir: &Path) -> Self {
        Self::spawn(Command::new(binary), config, workdir, true)
    }

    fn spawn(mut cmd: Command, config: &Path, workdir: &Path, journal: bool) -> Self {
        use std::os::unix::fs::MetadataExt;
        let stdout_path = workdir.join("events.jsonl");
        let stdout = std::fs::File::create(&stdout_path).expect("stdout file");
        let meta = stdout.metadata().expect("stdout file metadata");
        cmd.args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("JOURNAL_STREAM");
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        let mut child = cmd
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sensor");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = Self {
            child: Some(child),
            stdout_path,
            stderr_lines: rx,
            stderr_seen: Vec::new(),
        };
        d.wait_for_log("sensor attached", Duration::from_secs(60));
        d
    }

    /// Waits for a stderr line containing `needle`; panics with what was seen on timeout or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "sensor did not log {needle:?}; stderr:\n{}",
                    self.stderr_seen.join("\n")
                ),
            }
        }
    }

    /// Kills the sensor with SIGKILL (no cleanup of any kind runs) and waits for it to be gone.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL the sensor");
        let status = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status}"
        );
    }

    /// Sends `signal` to the running sensor.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("signal the sensor");
    }

    /// The complete JSON lines written so far (a line still being written is left out).
    pub fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.stdout_path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(str::to_owned).collect()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGTERM, wait for exit (must be success), and return the JSON lines it wrote.
    pub fn stop(&mut self) -> Vec<String> {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal the sensor");
        let status = child.wait().expect("wait");
        // Collect the rest of stderr (the exit summary).
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr_seen.push(line);
        }
        assert!(
            status.success(),
            "sensor exited with {status}; stderr:\n{}",
            self.stderr_seen.join("\n")
        );
        std::fs::read_to_string(&self.stdout_path)
            .expect("events file")
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failed test still ends the sensor it started (by PID) so links and pins go away.
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

/// `binary stats --json --config config`: the running sensor's kernel counters, as a test reads
/// them (panics when the command fails).
pub fn stats_json(binary: &Path, config: &Path) -> serde_json::Value {
    let out = Command::new(binary)
        .args(["stats", "--json", "--config"])
        .arg(config)
        .output()
        .expect("run sensor stats");
    assert!(
        out.status.success(),
        "sensor stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("sensor stats prints JSON")
}
