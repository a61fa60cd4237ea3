//! The operator's commands: `sensor blocklist unblock|allow|revoke|list`. Each takes the state
//! lock, records the decision (with an audit line), and publishes at once: the kernel map
//! (through the pins, whether the daemon runs or not), the EDL file (which a running daemon
//! serves within a quarter of a second) and the state. No ThreatBook or Elasticsearch needed.

use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;
use time::OffsetDateTime;

use crate::{
    config::BlocklistSection,
    lock::StateLock,
    overrides::{Kind, Override, Overrides},
    publish::{self, KernelTarget, PublishError, Published, RuleInputs, Rules},
};

/// Where the command acts.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub section: &'a BlocklistSection,
    pub inputs: &'a RuleInputs,
    pub pin_dir: &'a std::path::Path,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("--reason: say why (it goes into the audit log)")]
    NoReason,
    #[error("--for: must be at least one second")]
    ZeroDuration,
    #[error("{0} has no operator decision to revoke (see `sensor blocklist list`)")]
    NothingToRevoke(IpNet),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// What a command did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub action: &'static str,
    pub net: String,
    /// RFC 3339, or `null` for a lasting decision.
    pub until: Option<String>,
    pub reason: String,
    pub by: String,
    /// Stored nightly entries taken off the list by this decision.
    pub removed_from_store: usize,
    pub published: Published,
}

/// Takes `net` off every list now and keeps it off for `for_` (default: the policy's
/// `expiry_days`); after that intel may list it again.
pub fn unblock(
    t: &Target<'_>,
    net: IpNet,
    for_: Option<Duration>,
    reason: &str,
    by: &str,
    now: OffsetDateTime,
) -> Result<Outcome, OperatorError> {
    let secs = match for_ {
        Some(d) if d.as_secs() == 0 => return Err(OperatorError::ZeroDuration),
        Some(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        None => i64::from(t.section.policy.expiry_days) * 86_400,
    };
    decide(
        t,
        net,
        Kind::Unblock,
        Some(now.unix_timestamp().saturating_add(secs)),
        reason,
        by,
        now,
    )
}

/// Never lists `net` until the decision is revoked.
pub fn allow(
    t: &Target<'_>,
    net: IpNet,
    reason: &str,
    by: &str,
    now: OffsetDateTime,
) -> Result<Outcome, OperatorError> {
    decide(t, net, Kind::Allow, None, reason, by, now)
}

/// What every change starts with: a reason, the state lock, the current overrides.
fn begin<'r>(
    t: &Target<'_>,
    reason: &'r str,
) -> Result<(&'r str, StateLock, Overrides), OperatorError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(OperatorError::NoReason);
    }
    let dir = &t.section.policy.state_dir;
    let lock = StateLock::acquire(dir, publish::LOCK_WAIT).map_err(PublishError::from)?;
    let ov = Overrides::load(dir).map_err(PublishError::from)?;
    Ok((reason, lock, ov))
}

fn decide(
    t: &Target<'_>,
    net: IpNet,
    kind: Kind,
    until: Option<i64>,
    reason: &str,
    by: &str,
    now: OffsetDateTime,
) -> Result<Outcome, OperatorError> {
    let (reason, _lock, mut ov) = begin(t, reason)?;
    ov.add(Override {
        net,
        kind,
        until,
        reason: reason.to_owned(),
        by: by.to_owned(),
        at: now.unix_timestamp(),
    })
    .map_err(PublishError::from)?;
    let (summary, published) = publish::replan_locked(
        t.section,
        t.inputs,
        now,
        None,
        KernelTarget::Pinned(t.pin_dir),
        false,
    )?;
    Ok(Outcome {
        action: kind.name(),
        net: net.trunc().to_string(),
        until: until.map(rfc3339),
        reason: reason.to_owned(),
        by: by.to_owned(),
        removed_from_store: summary.removed_never,
        published,
    })
}

/// Removes the operator's decisions about exactly `net`. What was unblocked is not put back:
/// intel lists it again only on a new malicious verdict.
pub fn revoke(
    t: &Target<'_>,
    net: IpNet,
    reason: &str,
    by: &str,
    now: OffsetDateTime,
) -> Result<Outcome, OperatorError> {
    let (reason, _lock, mut ov) = begin(t, reason)?;
    let gone = ov
        .revoke(&net, reason, by, now.unix_timestamp())
        .map_err(PublishError::from)?;
    if gone.is_empty() {
        return Err(OperatorError::NothingToRevoke(net));
    }
    let (_, published) = publish::replan_locked(
        t.section,
        t.inputs,
        now,
        None,
        KernelTarget::Pinned(t.pin_dir),
        false,
    )?;
    Ok(Outcome {
        action: "revoke",
        net: net.trunc().to_string(),
        until: None,
        reason: reason.to_owned(),
        by: by.to_owned(),
        removed_from_store: 0,
        published,
    })
}

/// One line of `sensor blocklist list`: something that is never listed, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Allowed {
    pub net: String,
    /// `operator_allow`, `operator_unblock`, `protected`, `blocklist.policy.allow`,
    /// `filter.client_allow`.
    pub kind: String,
    pub why: String,
    pub until: Option<String>,
    pub by: Option<String>,
    pub at: Option<String>,
    /// False for an unblock that has lapsed (shown for a day after).
    pub active: bool,
}

/// Everything that is kept off the lists, with the reason.
pub fn list(t: &Target<'_>, now: OffsetDateTime) -> Result<Vec<Allowed>, OperatorError> {
    let rules = Rules::current(t.section, t.inputs, now.unix_timestamp())?;
    let now = now.unix_timestamp();
    let mut out: Vec<Allowed> = rules
        .overrides
        .all()
        .iter()
        .map(|o| Allowed {
            net: o.net.to_string(),
            kind: format!("operator_{}", o.kind.name()),
            why: o.reason.clone(),
            until: o.until.map(rfc3339),
            by: Some(o.by.clone()),
            at: Some(rfc3339(o.at)),
            active: o.active(now),
        })
        .collect();
    let plain = |net: &IpNet, kind: &str, why: &str| Allowed {
        net: net.to_string(),
        kind: kind.to_owned(),
        why: why.to_owned(),
        until: None,
        by: None,
        at: None,
        active: true,
    };
    for p in &rules.protected.nets {
        out.push(plain(&p.net, "protected", &p.why));
    }
    for n in t.section.policy.allow_nets() {
        out.push(plain(&n, "blocklist.policy.allow", "configured allowlist"));
    }
    for n in &t.inputs.client_allow {
        out.push(plain(
            n,
            "filter.client_allow",
            "a client the sensor does not report",
        ));
    }
    Ok(out)
}

/// A table for the terminal.
pub fn render_list(items: &[Allowed]) -> String {
    let w = items.iter().map(|a| a.net.len()).max().unwrap_or(0).max(7);
    let mut out = format!(
        "{:<w$}  {:<21}  {:<20}  {}\n",
        "network", "kind", "until", "why"
    );
    for a in items {
        let until = match (&a.until, a.active) {
            (Some(u), true) => u.clone(),
            (Some(u), false) => format!("{u} (lapsed)"),
            (None, _) => "-".into(),
        };
        let who =
            a.by.as_ref()
                .map(|b| format!(" (by {b})"))
                .unwrap_or_default();
        out.push_str(&format!(
            "{:<w$}  {:<21}  {:<20}  {}{}\n",
            a.net,
            a.kind,
            until,
            a.why.replace(['\n', '\r'], " "),
            who
        ));
    }
    out
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
