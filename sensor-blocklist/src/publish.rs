//! Publishing: the one path by which a list reaches the state file, the EDL file (and the
//! daemon's served copy) and the kernel's `BLOCKLIST`, used by the nightly run, the daemon's
//! start, SIGHUP and expiry sweep, and the operator commands.
//!
//! Every publication applies the rules as they are *now*: the protected addresses found at
//! this moment, the operator's overrides in force, today's never-block set and the entries'
//! expiries ([`replan`]). So a restart never re-installs an address allowed since the list was
//! made, and an entry whose time has passed leaves the served lists even when nightly runs keep
//! failing. Static `blocklist.entries` ranges get holes punched for protected addresses and the
//! operator's decisions ([`subtract`]): nothing the operator protected is ever blocked.

use std::{net::IpAddr, path::Path, time::Duration};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use time::OffsetDateTime;

use sensor_common::BlockValue;
use sensor_kernel::lists::{PrefixMap, blocklist as kernel, canonical_net};

use crate::{
    config::BlocklistSection,
    edl::{self, EdlList},
    lock::{LockError, StateLock},
    neverblock::NeverBlock,
    overrides::{Overrides, OverridesError},
    protect::{ProtectInputs, Protected},
    store::{Plan, Store, StoreError, Summary},
};

/// How long a publisher waits for the state lock: a nightly run holds it only while it
/// publishes (well under a second), so a longer wait means something is stuck.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Overrides(#[from] OverridesError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Edl(#[from] edl::EdlError),
    #[error("installing into the kernel: {0}")]
    Kernel(#[from] kernel::KernelError),
    #[error("blocking by resolution: {0}")]
    Resolved(#[from] sensor_kernel::lists::resolved::ResolvedError),
}

/// What the rules need besides the `[blocklist]` section; the composition root fills it.
#[derive(Debug, Clone, Default)]
pub struct RuleInputs {
    /// `filter.client_allow`.
    pub client_allow: Vec<IpNet>,
    /// Every configured endpoint (URLs or host:port): protected.
    pub endpoints: Vec<String>,
}

/// The rules in force at one moment.
#[derive(Debug, Clone)]
pub struct Rules {
    pub never: NeverBlock,
    pub protected: Protected,
    pub overrides: Overrides,
    pub now: i64,
}

impl Rules {
    /// Reads the overrides and discovers the protected addresses now.
    pub fn current(
        section: &BlocklistSection,
        inputs: &RuleInputs,
        now: i64,
    ) -> Result<Self, PublishError> {
        let overrides = Overrides::load(&section.policy.state_dir)?;
        let protected = Protected::discover(&ProtectInputs {
            protect: section.protect_nets(),
            endpoints: inputs.endpoints.clone(),
            edl_clients: sensor_model::error::parse_nets(
                "blocklist.edl.allowed_clients",
                &section.edl.allowed_clients,
            )
            .unwrap_or_default()
            .into_iter()
            // The firewalls that fetch the list: blocking one would stop its enforcement.
            .chain(section.edl.firewalls.iter().map(|f| IpNet::from(f.address)))
            .collect(),
        });
        for host in &protected.unresolved {
            tracing::warn!(endpoint = %host, "configured endpoint not resolved: it cannot be protected by address this time");
        }
        let never = NeverBlock::new(&inputs.client_allow, &section.policy.allow_nets())
            .with_rules(&protected, &overrides, now);
        Ok(Self {
            never,
            protected,
            overrides,
            now,
        })
    }
}

/// Where the kernel list goes.
pub enum KernelTarget<'a> {
    /// The pinned map of a running (or keep-blocking) sensor, if it is there.
    Pinned(&'a Path),
    /// The daemon's own map handle.
    Map(&'a mut PrefixMap<BlockValue>),
}

/// What one publication did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Published {
    pub edl_changed: bool,
    /// `None`: no sensor pinned its map (nothing to install into).
    pub kernel: Option<kernel::InstallReport>,
    /// Blocked destinations (by resolution) removed: protected or unblocked since, or lapsed.
    /// `None` when no sensor pinned those maps.
    pub resolved: Option<sensor_kernel::lists::resolved::Removed>,
    /// Static entries cut around protected or operator-decided addresses.
    pub static_holes: usize,
    /// The other firewalls and this host's sets (`[blocklist.export]`); `None` when none is
    /// configured or nothing changed.
    #[serde(skip)]
    pub exports: Option<crate::export::ExportReport>,
}

/// `blocklist.entries` with holes for every protected or operator-decided network.
pub fn static_entries(section: &BlocklistSection, never: &NeverBlock) -> (Vec<IpNet>, usize) {
    let holes = never.hard_holes();
    let mut out = Vec::new();
    let mut cut = 0;
    for net in section.static_entries() {
        let parts = subtract(&canonical_net(&net.trunc()), &holes);
        if parts.len() != 1 || parts[0] != canonical_net(&net.trunc()) {
            cut += 1;
            tracing::warn!(entry = %net, "blocklist.entries: protected or operator-allowed addresses inside are left out");
        }
        out.extend(parts);
    }
    (out, cut)
}

/// Writes `plan` everywhere: the state file, the EDL (file, and the daemon's served copy when
/// given), then the kernel. The caller holds the state lock.
/// `refresh_exports`: run `[blocklist.export]` even when the list did not change (start and
/// SIGHUP, so a host's sets are filled after a reboot); otherwise they follow changes only.
/// `rewrite_edl`: write the EDL from the plan even when the stored list did not change (the
/// nightly run); otherwise an existing EDL file is left as it is (an operator may have edited
/// it, and the daemon checks such a file before serving it) unless the store changed.
#[expect(
    clippy::too_many_arguments,
    reason = "one publication's inputs; a struct for them would only be built right here"
)]
pub fn publish(
    section: &BlocklistSection,
    store: &mut Store,
    plan: &Plan,
    rules: &Rules,
    edl_list: Option<&EdlList>,
    target: KernelTarget<'_>,
    refresh_exports: bool,
    rewrite_edl: bool,
) -> Result<Published, PublishError> {
    // Files are written only when their content changes: a sweep every minute must not wear
    // the disk, and a sensor that never had a list creates no state.
    let store_changed = !store.entries().eq(plan.entries.iter());
    if store_changed {
        store.commit(plan)?;
    }
    let text = edl::render(&plan.entries);
    let edl_changed = match edl_list {
        // A missing file is made from the store (a new install, a deleted file).
        _ if !(store_changed || rewrite_edl || !section.edl.path.exists()) => false,
        Some(list) => list.publish(&text)?,
        None if text.is_empty() && !section.edl.path.exists() => false,
        None => edl::write_file(&section.edl.path, &text)?,
    };
    let (always, static_holes) = static_entries(section, &rules.never);
    let entries = plan.kernel_entries();
    let target_pin = match &target {
        KernelTarget::Pinned(dir) => Some(dir.to_path_buf()),
        KernelTarget::Map(_) => None,
    };
    let target_pin = target_pin.as_deref();
    let kernel = match target {
        KernelTarget::Pinned(pin_dir) => {
            if pin_dir.join(sensor_common::map_names::BLOCKLIST).exists() {
                Some(kernel::install(pin_dir, &entries, &always)?)
            } else {
                None
            }
        }
        KernelTarget::Map(map) => Some(kernel::install_into(map, &entries, &always)?),
    };
    // Blocking by resolution leaves alone what every list leaves alone, operator decisions
    // included (the daemon's sweep publishes through the pins too, so this runs every sweep).
    let resolved = match target_pin {
        Some(dir) => {
            crate::resolved::sync(dir, &rules.never.hard_holes(), rules.now.max(0) as u64)?
        }
        None => None,
    };
    let kernel_changed = kernel
        .as_ref()
        .is_some_and(|k| k.added + k.removed + k.updated > 0);
    // The other firewalls and this host's packet filter get the same list, holes included. An
    // export that fails is reported; it does not undo what is published above.
    let exports = (section.export.any()
        && (refresh_exports || store_changed || edl_changed || kernel_changed))
        .then(|| {
            let list = crate::export::entries(&always, &plan.entries, rules.now);
            crate::export::publish(&section.export, &list, rules.now)
        });
    Ok(Published {
        edl_changed,
        kernel,
        resolved,
        static_holes,
        exports,
    })
}

/// Re-plans the stored list with the rules in force now (no new verdicts: expiries, the
/// never-block set, protected addresses and overrides), and publishes it. Takes the state lock.
/// An unreadable or corrupt state file is an error naming it: nothing is installed from a list
/// that cannot be read.
pub fn replan(
    section: &BlocklistSection,
    inputs: &RuleInputs,
    now: OffsetDateTime,
    edl_list: Option<&EdlList>,
    target: KernelTarget<'_>,
    refresh_exports: bool,
) -> Result<(Summary, Published), PublishError> {
    // No state directory: no list was ever made here and nothing will be written (the static
    // entries still get their holes), so there is nothing to lock and nothing to create.
    let _lock = if section.policy.state_dir.exists() {
        Some(StateLock::acquire(&section.policy.state_dir, LOCK_WAIT)?)
    } else {
        None
    };
    replan_locked(section, inputs, now, edl_list, target, refresh_exports)
}

/// [`replan`] for a caller that already holds the state lock.
pub fn replan_locked(
    section: &BlocklistSection,
    inputs: &RuleInputs,
    now: OffsetDateTime,
    edl_list: Option<&EdlList>,
    target: KernelTarget<'_>,
    refresh_exports: bool,
) -> Result<(Summary, Published), PublishError> {
    let rules = Rules::current(section, inputs, now.unix_timestamp())?;
    let mut store = Store::load(&section.policy.state_dir)?;
    let plan = store
        .plan(now, &[], &rules.never, &section.policy, true)
        .unwrap_or_else(|_| unreachable_refusal(&store));
    let published = publish(
        section,
        &mut store,
        &plan,
        &rules,
        edl_list,
        target,
        refresh_exports,
        false,
    )?;
    Ok((plan.summary, published))
}

/// `plan` with `force` never refuses; this keeps the stored list if that ever changed.
fn unreachable_refusal(store: &Store) -> Plan {
    Plan {
        entries: store.entries().cloned().collect(),
        summary: Summary::default(),
        held: Vec::new(),
    }
}

/// `net` minus every network of `holes`, as the fewest prefixes (at most one per bit of
/// prefix length per hole). IPv4 and IPv6 are subtracted within their family.
pub fn subtract(net: &IpNet, holes: &[IpNet]) -> Vec<IpNet> {
    let mut parts = vec![*net];
    for hole in holes {
        let hole = canonical_net(&hole.trunc());
        let mut next = Vec::with_capacity(parts.len() + 1);
        for p in parts {
            next.extend(minus(&p, &hole));
        }
        parts = next;
    }
    parts
}

/// `a` minus `b`: `a` itself when they do not overlap, nothing when `b` covers `a`, otherwise
/// the sibling halves along the path from `a` down to `b`.
fn minus(a: &IpNet, b: &IpNet) -> Vec<IpNet> {
    if b.contains(a) {
        return Vec::new();
    }
    if !a.contains(b) {
        return vec![*a];
    }
    let mut out = Vec::new();
    let mut cur = *a;
    while cur.prefix_len() < b.prefix_len() {
        let Some((lo, hi)) = halves(&cur) else {
            break;
        };
        if lo.contains(b) {
            out.push(hi);
            cur = lo;
        } else {
            out.push(lo);
            cur = hi;
        }
    }
    out
}

fn halves(n: &IpNet) -> Option<(IpNet, IpNet)> {
    match n {
        IpNet::V4(n) => {
            let len = n.prefix_len() + 1;
            let lo = Ipv4Net::new(n.network(), len).ok()?;
            let hi_addr = u32::from(n.network()) | (1u32 << (32 - len));
            let hi = Ipv4Net::new(hi_addr.into(), len).ok()?;
            Some((IpNet::V4(lo), IpNet::V4(hi)))
        }
        IpNet::V6(n) => {
            let len = n.prefix_len() + 1;
            let lo = Ipv6Net::new(n.network(), len).ok()?;
            let hi_addr = u128::from(n.network()) | (1u128 << (128 - u32::from(len)));
            let hi = Ipv6Net::new(hi_addr.into(), len).ok()?;
            Some((IpNet::V6(lo), IpNet::V6(hi)))
        }
    }
}

/// True when `ip` falls in one of `nets`.
pub fn covered(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn addrs(nets: &[IpNet]) -> u64 {
        nets.iter()
            .map(|n| 1u64 << (n.max_prefix_len() - n.prefix_len()).min(63))
            .sum()
    }

    #[test]
    fn a_nightly_plan_never_puts_back_what_the_operator_unblocked_or_what_is_protected() {
        use crate::{
            overrides::{Kind, Override},
            store::{PolicySection, Verdict},
        };
        use sensor_model::verdict::{Confidence, Severity};
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let mut ov = Overrides::load(dir.path()).unwrap();
        ov.add(Override {
            net: n("45.33.32.156/32"),
            kind: Kind::Unblock,
            until: Some(now.unix_timestamp() + 3600),
            reason: "ticket".into(),
            by: "alice".into(),
            at: now.unix_timestamp(),
        })
        .unwrap();
        let protected = Protected::discover(&ProtectInputs {
            protect: vec![n("45.33.32.0/30")],
            ..Default::default()
        });
        let never = NeverBlock::new(&[], &[]).with_rules(&protected, &ov, now.unix_timestamp());
        let store = Store::load(dir.path()).unwrap();
        let bad = |ip: &str| Verdict {
            ip: ip.parse().unwrap(),
            malicious: true,
            confidence: Some(Confidence::High),
            severity: Some(Severity::High),
        };
        let plan = store
            .plan(
                now,
                &[bad("45.33.32.156"), bad("45.33.32.1"), bad("45.33.32.200")],
                &never,
                &PolicySection::default(),
                false,
            )
            .unwrap();
        let listed: Vec<String> = plan.entries.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(listed, ["45.33.32.200"]);
        assert_eq!(plan.summary.never_blocked, 2);
        // Once the unblock lapses, intel may list it again.
        let later = now.unix_timestamp() + 7200;
        let never = NeverBlock::new(&[], &[]).with_rules(&protected, &ov, later);
        assert!(never.blockable("45.33.32.156".parse().unwrap()));
        assert!(!never.blockable("45.33.32.1".parse().unwrap()));
    }

    #[test]
    fn a_hole_in_a_24_leaves_every_other_address() {
        let parts = subtract(&n("198.51.100.0/24"), &[n("198.51.100.77/32")]);
        assert_eq!(parts.len(), 8);
        assert_eq!(addrs(&parts), 255);
        assert!(!covered(&parts, "198.51.100.77".parse().unwrap()));
        for last in (0..=255u8).filter(|&x| x != 77) {
            assert!(covered(
                &parts,
                format!("198.51.100.{last}").parse().unwrap()
            ));
        }
    }

    #[test]
    fn covering_disjoint_and_v6_holes() {
        assert!(subtract(&n("198.51.100.0/24"), &[n("198.51.0.0/16")]).is_empty());
        assert_eq!(
            subtract(
                &n("198.51.100.0/24"),
                &[n("10.0.0.0/8"), n("2001:db8::/32")]
            ),
            vec![n("198.51.100.0/24")]
        );
        let parts = subtract(&n("2001:db8::/48"), &[n("2001:db8:0:1::/64")]);
        assert_eq!(parts.len(), 16);
        assert!(!covered(&parts, "2001:db8:0:1::5".parse().unwrap()));
        assert!(covered(&parts, "2001:db8:0:2::5".parse().unwrap()));
        // Two holes.
        let parts = subtract(
            &n("198.51.100.0/24"),
            &[n("198.51.100.1/32"), n("198.51.100.200/32")],
        );
        assert_eq!(addrs(&parts), 254);
    }
}
