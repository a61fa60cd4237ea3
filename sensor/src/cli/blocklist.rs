//! `sensor blocklist show|resolved|run|unblock|allow|revoke|list`: the running sensor's BLOCKLIST and its
//! firewalls' EDL fetches, one run of the nightly job, and the operator's decisions.

use ipnet::IpNet;
use sensor_blocklist::operator::{self, Outcome, Target};
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
    if json {
        let names: Vec<_> = names
            .iter()
            .map(|(name, expires, hits)| {
                serde_json::json!({"name": name, "expires_unix": expires, "hits": hits})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"blocked": blocked, "names": names})
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
        "{:<40}  {:<20}  {:>9}",
        "listed name", "expires", "responses"
    );
    for (name, expires, hits) in &names {
        println!("{name:<40}  {:<20}  {hits:>9}", t(*expires));
    }
    println!("# {} listed names", names.len());
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
    let for_ = for_
        .map(|f| {
            humantime::parse_duration(&f)
                .map_err(|e| anyhow::anyhow!("--for {f:?}: {e} (e.g. 2h, 30m, 7days)"))
        })
        .transpose()?;
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
