//! `sensor blocklist show|resolved|unlist|relist|run|unblock|allow|revoke|list`: the running sensor's BLOCKLIST and its
//! firewalls' EDL fetches, one run of the nightly job, and the operator's decisions.

use ipnet::IpNet;
use sensor_blocklist::{
    operator::{self, Outcome, Target},
    resolved::unlisted::{self, UnlistedFileAt},
};
use sensor_kernel::lists::blocklist as kernel;

use crate::config::Config;

pub fn resolved(config: Config, json: bool) -> anyhow::Result<()> {
    use sensor_kernel::lists::resolved::ResolvedMaps;
    let pin_dir = config.pin_dir();
    if !pin_dir.join(sensor_common::map_names::DEST_BLOCK).exists() {
        anyhow::bail!(
            "no running sensor pinned its maps at {} (is the sensor running, and its name right?)",
            pin_dir.display()
        );
    }
    let maps = ResolvedMaps::open_pinned(&pin_dir)?;
    let blocked = maps.blocked()?;
    let names = maps.names()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let unlisted: Vec<_> = UnlistedFileAt::new(&config.blocklist.policy.state_dir)
        .load()?
        .into_iter()
        .filter(|u| u.active(now))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({"blocked": blocked, "names": names, "unlisted": unlisted})
        );
        return Ok(());
    }
    let t = |u: u64| sensor_kernel::lists::blocklist::expiry_text(u);
    println!(
        "{:<39}  {:<24}  {:<39}  {:>6}  {:<20}  {:>9}",
        "address", "name", "client", "ttl", "expires", "packets"
    );
    for b in &blocked {
        println!(
            "{:<39}  {:<24}  {:<39}  {:>6}  {:<20}  {:>9}",
            b.address.to_string(),
            b.name,
            b.client.to_string(),
            b.ttl,
            t(b.expires_unix),
            b.packets
        );
    }
    println!("# {} blocked destinations\n", blocked.len());
    println!(
        "{:<42}  {:<16}  {:<20}  {:>9}",
        "listed name", "source", "expires", "responses"
    );
    for n in &names {
        let shown = if n.exact {
            format!("={}", n.name)
        } else {
            n.name.clone()
        };
        println!(
            "{shown:<42}  {:<16}  {:<20}  {:>9}",
            n.sources.join(","),
            t(n.expires_unix),
            n.hits
        );
    }
    println!("# {} listed names", names.len());
    if !unlisted.is_empty() {
        println!(
            "\n{:<42}  {:<20}  {:<12}  reason",
            "unlisted name", "until", "by"
        );
        for u in &unlisted {
            println!(
                "{:<42}  {:<20}  {:<12}  {}",
                u.name,
                t(u.until.map_or(0, |x| x.max(0) as u64)),
                u.by,
                u.reason
            );
        }
    }
    Ok(())
}

pub fn unlist(
    config: Config,
    name: &str,
    for_: Option<String>,
    reason: &str,
    json: bool,
) -> anyhow::Result<()> {
    let for_ = parse_for(for_)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let until = for_.map(|d| now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
    let o = unlisted::unlist(
        &config.blocklist.policy.state_dir,
        &config.pin_dir(),
        name,
        until,
        reason,
        &who(),
        now,
    )?;
    print_name(&o, json)
}

pub fn relist(config: Config, name: &str, reason: &str, json: bool) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let o = unlisted::relist(
        &config.blocklist.policy.state_dir,
        name,
        reason,
        &who(),
        now,
    )?;
    print_name(&o, json)
}

fn print_name(o: &unlisted::NameOutcome, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(o)?);
    } else {
        println!(
            "{} {} by {}: {} listing and {} blocked destination(s) removed now",
            o.action, o.name, o.by, o.names_removed, o.destinations_removed
        );
    }
    Ok(())
}

pub fn show(config: Config, json: bool) -> anyhow::Result<()> {
    let entries = kernel::show(&config.pin_dir())?;
    // What the running daemon last wrote about the firewalls' fetches (every 15 s).
    let fetch_file = sensor_blocklist::fetches::state_file(&config.blocklist.edl.path);
    let fetches = sensor_blocklist::fetches::load(&fetch_file).map_err(anyhow::Error::msg)?;
    if json {
        // One object: the kernel's entries, and each firewall's fetch records (the same as the
        // text form's table; empty when no EDL server ran here).
        let out = serde_json::json!({
            "kernel": kernel::json(&entries),
            "fetches": fetches,
        });
        println!("{out}");
    } else {
        print!("{}", kernel::render(&entries));
        if !fetches.is_empty() {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            println!("\nEDL fetches ({}):", fetch_file.display());
            print!("{}", sensor_blocklist::fetches::render(&fetches, now));
        }
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

fn parse_net(text: &str) -> anyhow::Result<IpNet> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = t
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?} is not an IP address or CIDR"))?;
    if net.trunc() != net {
        anyhow::bail!("{text:?} has host bits set (did you mean {}?)", net.trunc());
    }
    Ok(net)
}

/// `--for DURATION` (`2h`, `30m`, `7days`).
fn parse_for(for_: Option<String>) -> anyhow::Result<Option<std::time::Duration>> {
    for_.map(|f| {
        humantime::parse_duration(&f)
            .map_err(|e| anyhow::anyhow!("--for {f:?}: {e} (e.g. 2h, 30m, 7days)"))
    })
    .transpose()
}

/// Who typed the command (taken before a switch to the state directory's owner).
fn who() -> String {
    super::state_owner::invoker()
}

fn print(outcome: &Outcome, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(outcome)?);
        return Ok(());
    }
    let kernel = match &outcome.published.kernel {
        Some(k) => format!("kernel: {} removed, {} entries left", k.removed, k.total),
        None => "kernel: no running sensor pinned its map".into(),
    };
    println!(
        "{} {}{} by {}: {}; {} stored entr{} removed; EDL {}",
        outcome.action,
        outcome.net,
        outcome
            .until
            .as_ref()
            .map(|u| format!(" until {u}"))
            .unwrap_or_default(),
        outcome.by,
        kernel,
        outcome.removed_from_store,
        if outcome.removed_from_store == 1 {
            "y"
        } else {
            "ies"
        },
        if outcome.published.edl_changed {
            "rewritten"
        } else {
            "unchanged"
        },
    );
    Ok(())
}

/// Runs an operator command against this config's state, pins and rules.
fn with_target<T>(
    config: &Config,
    f: impl FnOnce(&Target<'_>) -> Result<T, operator::OperatorError>,
) -> anyhow::Result<T> {
    let (inputs, pin_dir) = (config.rule_inputs(), config.pin_dir());
    Ok(f(&Target {
        section: &config.blocklist,
        inputs: &inputs,
        pin_dir: &pin_dir,
    })?)
}

pub fn unblock(
    config: Config,
    net: &str,
    for_: Option<String>,
    reason: &str,
    json: bool,
) -> anyhow::Result<()> {
    let for_ = parse_for(for_)?;
    let net = parse_net(net)?;
    let now = time::OffsetDateTime::now_utc();
    let o = with_target(&config, |t| {
        operator::unblock(t, net, for_, reason, &who(), now)
    })?;
    print(&o, json)
}

pub fn allow(config: Config, net: &str, reason: &str, json: bool) -> anyhow::Result<()> {
    let net = parse_net(net)?;
    let now = time::OffsetDateTime::now_utc();
    let o = with_target(&config, |t| operator::allow(t, net, reason, &who(), now))?;
    print(&o, json)
}

pub fn revoke(config: Config, net: &str, reason: &str, json: bool) -> anyhow::Result<()> {
    let net = parse_net(net)?;
    let now = time::OffsetDateTime::now_utc();
    let o = with_target(&config, |t| operator::revoke(t, net, reason, &who(), now))?;
    print(&o, json)
}

pub fn list(config: Config, json: bool) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let items = with_target(&config, |t| operator::list(t, now))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        print!("{}", operator::render_list(&items));
    }
    Ok(())
}
