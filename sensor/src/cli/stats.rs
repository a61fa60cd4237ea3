//! `sensor stats`: the running sensor's kernel counters.

use crate::config::Config;

pub fn stats(config: Config, json: bool) -> anyhow::Result<()> {
    let counters = sensor_kernel::stats::read(&config.pin_dir())?;
    if json {
        println!("{}", sensor_kernel::stats::json(&counters));
    } else {
        print!("{}", sensor_kernel::stats::render(&counters));
    }
    Ok(())
}
