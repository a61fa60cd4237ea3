//! `sensor check-config`: parse a config file, then check what a start would need.

use std::path::Path;

use crate::config::Config;

pub fn check_config(file: &Path, no_interfaces: bool) -> anyhow::Result<()> {
    let config = Config::from_file(file)?;
    let problems = crate::check::check(&config, !no_interfaces);
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
