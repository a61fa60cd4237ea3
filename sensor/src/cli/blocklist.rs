//! `sensor blocklist show|run`: the running sensor's BLOCKLIST, and one run of the nightly job.

use sensor_kernel::lists::blocklist as kernel;

use crate::config::Config;

pub fn show(config: Config, json: bool) -> anyhow::Result<()> {
    let entries = kernel::show(&config.pin_dir())?;
    if json {
        println!("{}", kernel::json(&entries));
    } else {
        print!("{}", kernel::render(&entries));
    }
    Ok(())
}

pub fn run(config: Config, date: Option<String>, force: bool) -> anyhow::Result<()> {
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
    let report = rt.block_on(sensor_blocklist::job::run_once(
        &config.job_context(),
        day,
        force,
        time::OffsetDateTime::now_utc(),
        None,
    ))?;
    println!("{}", serde_json::to_string_pretty(&report.json())?);
    Ok(())
}
