//! The `sensor` command line: one module per subcommand; this one parses the arguments, sets
//! up logging and reports an error as one line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::config::Config;

mod blocklist;
mod check_config;
mod pdns;
mod replay;
mod run;
mod state_owner;
mod stats;

#[derive(Parser)]
#[command(
    name = "sensor",
    version,
    about = "Kernel-accelerated DNS security sensor"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Attach the XDP program and write one JSON line per DNS query.
    Run {
        /// Config file (TOML). Without it the embedded defaults apply: stdout, inline mode.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Interface to attach to (repeatable); replaces `capture.interfaces`.
        #[arg(long, short)]
        interface: Vec<String>,
    },
    /// Run capture files (pcap, pcapng) through the same XDP program (BPF_PROG_TEST_RUN) and
    /// the same stages as live traffic, with the capture's timestamps and today's intel. Needs
    /// root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN); attaches and pins nothing.
    Replay {
        /// Config file (TOML): lists, intel and sinks as the daemon would use them. Without it
        /// the embedded defaults apply: JSON lines on stdout.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the summary (on stderr) as one JSON object.
        #[arg(long)]
        json: bool,
        /// Capture files, replayed in this order as one stream.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the kernel counters of a running sensor.
    Stats {
        /// The running sensor's config (for its name and pin directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file without touching the kernel: parse it, then check what a start
    /// would need (interfaces, list files, inventory, secrets) and report every problem.
    CheckConfig {
        file: PathBuf,
        /// Do not require the capture interfaces to exist here (checking a file for another
        /// host).
        #[arg(long)]
        no_interfaces: bool,
    },
    /// The nightly blocklist.
    Blocklist {
        #[command(subcommand)]
        command: BlocklistCommand,
    },
    /// What the passive DNS store saw: a name's answers and clients, a domain and every name
    /// below it, the names behind an address, or what one client resolved. Reads `pdns.path`,
    /// also while the daemon writes it.
    Pdns {
        #[arg(value_enum)]
        by: pdns::PdnsBy,
        /// The name, domain or IP address.
        value: String,
        /// Only what was seen since: a duration back from now (2h, 7d), a UTC date
        /// (2026-12-01) or a time (2026-12-01T08:00:00Z). Default: the whole retention.
        #[arg(long)]
        since: Option<String>,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum BlocklistCommand {
    /// Print the running sensor's BLOCKLIST entries with their expiry and XDP hit counters.
    Show {
        /// The running sensor's config (for its name and pin directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The destinations blocked by resolution (each with the listed name whose answer carried
    /// it, the client, the TTL, when it lapses, packets dropped) and the listed names.
    Resolved {
        /// The running sensor's config (for its name and pin directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Take a name off blocking by resolution (its listing and the destinations blocked for
    /// it) now, and keep it off whichever source lists it (feed, verdict, config) for a while
    /// or until `relist`; audited.
    Unlist {
        /// The listed name (as `sensor blocklist resolved` shows it).
        name: String,
        /// How long it stays off (e.g. `2h`, `7days`); default: until `relist`.
        #[arg(long = "for")]
        for_: Option<String>,
        /// Why (recorded in the audit log with who and when).
        #[arg(long)]
        reason: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an `unlist`: the name is listed again if a source still lists it.
    Relist {
        name: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Take an address or range off every list now (kernel map, EDL, state) and keep it off
    /// for a while; works with the daemon running or not, and is audited.
    Unblock {
        /// An address or CIDR.
        net: String,
        /// How long it stays off (e.g. `2h`, `7days`); default: blocklist.policy.expiry_days.
        #[arg(long = "for")]
        for_: Option<String>,
        /// Why (recorded in the audit log with who and when).
        #[arg(long)]
        reason: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Never list an address or range, until revoked (takes it off every list now too).
    Allow {
        net: String,
        #[arg(long)]
        reason: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Remove the operator's allow or unblock of exactly this address or range.
    Revoke {
        net: String,
        #[arg(long)]
        reason: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// What is kept off the lists and why: operator decisions, protected addresses, allowlists.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run the nightly job once: the day's alerts → reputation → the list (store, EDL file,
    /// and the running sensor's BLOCKLIST).
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The alerts' calendar day, YYYY-MM-DD in the schedule's time zone; default: yesterday.
        #[arg(long)]
        date: Option<String>,
        /// Publish even when the list grows or shrinks more than the policy allows.
        #[arg(long)]
        force: bool,
    },
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::from_file(p)?,
        None => Config::from_toml("", "embedded defaults")?,
    })
}

/// The program: parse, log to stderr, run the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // check-config reports its findings itself; the loaders' own log lines (written for a
    // running daemon, e.g. "the previous list stays in force") would only confuse it.
    let default_filter = if matches!(cli.command, Command::CheckConfig { .. }) {
        "error"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, with the causes: what an operator reads in a journal.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, interface } => run::run(config, interface),
        Command::Replay {
            config,
            json,
            files,
        } => replay::replay(config, files, json),
        Command::Stats { config, json } => stats::stats(load_config(config.as_ref())?, json),
        Command::CheckConfig {
            file,
            no_interfaces,
        } => check_config::check_config(&file, no_interfaces),
        Command::Pdns {
            by,
            value,
            since,
            json,
            config,
        } => pdns::pdns(
            load_config(config.as_ref())?,
            by,
            &value,
            since.as_deref(),
            json,
        ),
        Command::Blocklist {
            command: BlocklistCommand::Show { config, json },
        } => blocklist::show(load_config(config.as_ref())?, json),
        Command::Blocklist {
            command: BlocklistCommand::Resolved { config, json },
        } => blocklist::resolved(load_config(config.as_ref())?, json),
        Command::Blocklist {
            command:
                BlocklistCommand::Unblock {
                    net,
                    for_,
                    reason,
                    config,
                    json,
                },
        } => {
            let config = load_config(config.as_ref())?;
            state_owner::become_owner(&config.blocklist.policy.state_dir)?;
            blocklist::unblock(config, &net, for_, &reason, json)
        }
        Command::Blocklist {
            command:
                BlocklistCommand::Unlist {
                    name,
                    for_,
                    reason,
                    config,
                    json,
                },
        } => {
            let config = load_config(config.as_ref())?;
            state_owner::become_owner(&config.blocklist.policy.state_dir)?;
            blocklist::unlist(config, &name, for_, &reason, json)
        }
        Command::Blocklist {
            command:
                BlocklistCommand::Relist {
                    name,
                    reason,
                    config,
                    json,
                },
        } => {
            let config = load_config(config.as_ref())?;
            state_owner::become_owner(&config.blocklist.policy.state_dir)?;
            blocklist::relist(config, &name, &reason, json)
        }
        Command::Blocklist {
            command:
                BlocklistCommand::Allow {
                    net,
                    reason,
                    config,
                    json,
                },
        } => {
            let config = load_config(config.as_ref())?;
            state_owner::become_owner(&config.blocklist.policy.state_dir)?;
            blocklist::allow(config, &net, &reason, json)
        }
        Command::Blocklist {
            command:
                BlocklistCommand::Revoke {
                    net,
                    reason,
                    config,
                    json,
                },
        } => {
            let config = load_config(config.as_ref())?;
            state_owner::become_owner(&config.blocklist.policy.state_dir)?;
            blocklist::revoke(config, &net, &reason, json)
        }
        Command::Blocklist {
            command: BlocklistCommand::List { config, json },
        } => blocklist::list(load_config(config.as_ref())?, json),
        Command::Blocklist {
            command:
                BlocklistCommand::Run {
                    config,
                    date,
                    force,
                },
        } => {
            let config = load_config(config.as_ref())?;
            state_owner::become_owner(&config.blocklist.policy.state_dir)?;
            blocklist::run(config, date, force)
        }
    }
}
