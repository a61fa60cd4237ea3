//! The `sensor` command.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sensor::config::Config;

#[derive(Parser)]
#[command(
    name = "sensor",
    version,
    about = "Kernel-accelerated DNS security sensor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the XDP program and write one JSON line per DNS query.
    Run {
        /// Config file (TOML). Without it the embedded defaults apply: stdout, inline mode.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Interface to attach to (repeatable); replaces `capture.interfaces`.
        #[arg(long, short)]
        interface: Vec<String>,
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
}

#[derive(Subcommand)]
enum BlocklistCommand {
    /// Print the running sensor's BLOCKLIST entries with their expiry and XDP hit counters.
    Show {
        /// The running sensor's config (for its name and pin directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print one JSON array instead of a table.
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

fn main() -> ExitCode {
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
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, with the causes: what an operator reads in a journal.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, interface } => {
            let config_path = config.clone();
            let mut config = load_config(config.as_ref())?;
            if !interface.is_empty() {
                config.capture.interfaces = interface;
                config.validate()?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(sensor::run::run(config, config_path))
        }
        Command::Stats { config, json } => {
            let config = load_config(config.as_ref())?;
            let counters = sensor::stats::read(&config.pin_dir())?;
            if json {
                println!("{}", sensor::stats::json(&counters));
            } else {
                print!("{}", sensor::stats::render(&counters));
            }
            Ok(())
        }
        Command::Blocklist {
            command: BlocklistCommand::Show { config, json },
        } => {
            let config = load_config(config.as_ref())?;
            let entries = sensor::blocklist::kernel::show(&config.pin_dir())?;
            if json {
                println!("{}", sensor::blocklist::kernel::json(&entries));
            } else {
                print!("{}", sensor::blocklist::kernel::render(&entries));
            }
            Ok(())
        }
        Command::Blocklist {
            command:
                BlocklistCommand::Run {
                    config,
                    date,
                    force,
                },
        } => {
            let config = load_config(config.as_ref())?;
            let day = date
                .map(|d| {
                    time::Date::parse(
                        &d,
                        time::macros::format_description!("[year]-[month]-[day]"),
                    )
                    .map_err(|_| anyhow::anyhow!("--date {d:?}: expected YYYY-MM-DD"))
                })
                .transpose()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let report = rt.block_on(sensor::blocklist::job::run_once(
                &config,
                day,
                force,
                time::OffsetDateTime::now_utc(),
                None,
            ))?;
            println!("{}", serde_json::to_string_pretty(&report.json())?);
            Ok(())
        }
        Command::CheckConfig {
            file,
            no_interfaces,
        } => {
            let config = Config::from_file(&file)?;
            let problems = sensor::check::check(&config, !no_interfaces);
            if problems.is_empty() {
                println!("{}: ok", file.display());
                return Ok(());
            }
            for p in &problems {
                eprintln!("{}: {p}", file.display());
            }
            anyhow::bail!(
                "{}: {} problem(s); the sensor would not start with this config",
                file.display(),
                problems.len()
            )
        }
    }
}
