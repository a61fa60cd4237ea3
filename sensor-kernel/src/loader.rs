//! Loading the XDP object, filling its maps from the config, attaching and pinning.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use ipnet::IpNet;
use sensor_common::{
    AllowValue, BlockValue, Counters, EGRESS_NEXT_PROGRAM_NAME, EGRESS_PROGRAM_NAME, MAX_DNS_PORTS,
    MODE_INLINE, MODE_MIRROR, NEXT_PROGRAM_NAME, PROGRAM_NAME, map_names,
};

use sensor_model::error::error_chain;

use crate::config::{CaptureMode, CaptureSection, XdpAttachMode};

use crate::lists::{PrefixError, PrefixMap};

/// The XDP object, built by build.rs (crate sensor-build) for bpfel-unknown-none with BTF.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf"));

/// Every map the sensor's program declares, in the order they are pinned. Not here, and never
/// pinned: the object's global-data sections and aya-log's ring buffer ([`crate::klog::LOG_MAP`]),
/// which only this process's [`crate::klog::KernelLog`] reads.
pub const ALL_MAPS: [&str; 14] = [
    map_names::EVENTS,
    map_names::COUNTERS,
    map_names::BLOCKLIST,
    map_names::BLOCK_FILTER,
    map_names::CLIENT_ALLOW,
    map_names::ALLOW_FILTER,
    map_names::SCRATCH,
    map_names::BAD_NAMES,
    map_names::NAME_FILTER,
    map_names::NAME_HASH,
    map_names::DEST_BLOCK,
    map_names::DEST_PROTECT,
    // Pinned so that their slots outlive the process with a pinned attachment (keep-blocking):
    // the kernel empties a program array when its last file descriptor and pin are gone.
    map_names::NEXT_XDP,
    map_names::NEXT_TC,
];

/// The maps kept across restarts when `blocklist.keep_on_exit` is set: the blocklist, and
/// blocking by resolution (its blocked destinations, and the names and protections the
/// still-attached program goes on acting on).
pub const BLOCKLIST_MAPS: [&str; 7] = [
    map_names::BLOCKLIST,
    map_names::BLOCK_FILTER,
    map_names::BAD_NAMES,
    map_names::NAME_FILTER,
    map_names::NAME_HASH,
    map_names::DEST_BLOCK,
    map_names::DEST_PROTECT,
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the XDP program needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON): {0}")]
    Privileges(String),
    #[error("loading the XDP program failed: {0}")]
    Load(String),
    #[error("unknown interface {0:?}")]
    UnknownInterface(String),
    #[error("attaching to {interface} ({mode:?} mode) failed: {reason}")]
    Attach {
        interface: String,
        mode: XdpAttachMode,
        reason: String,
    },
    #[error("attaching the TC egress program to {interface} failed: {reason}")]
    AttachEgress { interface: String, reason: String },
    #[error("map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    #[error("bpffs: {0}")]
    Bpffs(std::io::Error),
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Settings baked into the program at load time (`.rodata`).
#[derive(Debug, Clone)]
pub struct ProgramSettings {
    pub mode: CaptureMode,
    pub dns_ports: Vec<u16>,
    pub precise_timestamps: bool,
    /// Report responses from the DNS ports (else count them as `responses_off`).
    pub responses: bool,
    /// Blocking by resolution: `Some((min_secs, max_secs))` bounds of a blocked destination's
    /// lifetime; `None` leaves it off (no destination check, no name check).
    pub resolved: Option<(u32, u32)>,
    /// With blocking by resolution on: rewrite a listed name's UDP response into NXDOMAIN in
    /// place (`blocklist.resolved.rewrite = "nxdomain"`, inline mode only).
    pub rewrite_nxdomain: bool,
    /// Load the TC egress program too (`capture.egress`), for [`attach`] to attach beside XDP.
    pub egress: bool,
}

impl ProgramSettings {
    pub fn from_section(c: &CaptureSection) -> Self {
        Self {
            mode: c.mode,
            dns_ports: c.dns_ports.clone(),
            precise_timestamps: c.precise_timestamps,
            responses: c.responses,
            resolved: None,
            rewrite_nxdomain: false,
            egress: c.egress,
        }
    }
}

impl Default for ProgramSettings {
    fn default() -> Self {
        Self {
            mode: CaptureMode::Inline,
            dns_ports: vec![53],
            precise_timestamps: false,
            responses: true,
            resolved: None,
            rewrite_nxdomain: false,
            egress: false,
        }
    }
}

fn classify_load_error(e: impl std::fmt::Display + std::fmt::Debug) -> LoadError {
    let text = format!("{e}");
    let debug = format!("{e:?}");
    if debug.contains("EPERM")
        || text.contains("Operation not permitted")
        || debug.contains("PermissionDenied")
    {
        LoadError::Privileges(text)
    } else {
        LoadError::Load(format!("{text} ({debug})").replace('\n', " "))
    }
}

/// Loads the object into the kernel (not attached). With `pin_dir`, every map is created
/// pinned there (an existing pin of the same name is reused: that is how a kept blocklist
/// survives a restart).
pub fn load(settings: &ProgramSettings, pin_dir: Option<&Path>) -> Result<Ebpf, LoadError> {
    let mode = match settings.mode {
        CaptureMode::Inline => MODE_INLINE,
        CaptureMode::Mirror => MODE_MIRROR,
    };
    let mut ports = [0u16; MAX_DNS_PORTS];
    for (slot, p) in ports.iter_mut().zip(&settings.dns_ports) {
        *slot = *p;
    }
    let paths: Vec<(&'static str, PathBuf)> = match pin_dir {
        Some(dir) => ALL_MAPS.iter().map(|m| (*m, dir.join(m))).collect(),
        None => Vec::new(),
    };
    let precise = u32::from(settings.precise_timestamps);
    let tai_offset = tai_offset_secs();
    let responses = u32::from(settings.responses);
    let resolved_on = u32::from(settings.resolved.is_some());
    let (resolved_min, resolved_max) = settings.resolved.unwrap_or((300, 86_400));
    let rewrite = u32::from(settings.resolved.is_some() && settings.rewrite_nxdomain);
    let mut loader = EbpfLoader::new();
    loader
        .override_global("MODE", &mode, true)
        .override_global("DNS_PORTS", &ports, true)
        .override_global("PRECISE_TIMESTAMPS", &precise, true)
        .override_global("REPORT_RESPONSES", &responses, true)
        .override_global("TAI_OFFSET_SECS", &tai_offset, true)
        .override_global("RESOLVED_BLOCKING", &resolved_on, true)
        .override_global("RESOLVED_MIN_SECS", &resolved_min, true)
        .override_global("RESOLVED_MAX_SECS", &resolved_max, true)
        .override_global("RESOLVED_REWRITE", &rewrite, true);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(classify_load_error)?;
    let prog: &mut Xdp = program(&mut ebpf);
    prog.load().map_err(classify_load_error)?;
    load_next(&mut ebpf, NEXT_PROGRAM_NAME, map_names::NEXT_XDP)?;
    if settings.egress {
        // Verified only when asked for: the verifier's time is not spent on a program that
        // is never attached.
        egress_program(&mut ebpf)
            .load()
            .map_err(classify_load_error)?;
        load_next(&mut ebpf, EGRESS_NEXT_PROGRAM_NAME, map_names::NEXT_TC)?;
    }
    Ok(ebpf)
}

/// Loads the continuation program `name` (the DNS stage on the second and later messages of a
/// TCP segment) and puts it in slot 0 of the program array `map`, where the program of its
/// type tail-calls it. The array stays in the `Ebpf` (and pinned with `pin_dir`): were its
/// last reference closed, the kernel would empty it.
fn load_next(ebpf: &mut Ebpf, name: &str, map: &'static str) -> Result<(), LoadError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| LoadError::Load(format!("the object has no program {name}")))?;
    let fd = match prog {
        aya::programs::Program::Xdp(p) => {
            p.load().map_err(classify_load_error)?;
            p.fd()
        }
        aya::programs::Program::SchedClassifier(p) => {
            p.load().map_err(classify_load_error)?;
            p.fd()
        }
        _ => return Err(LoadError::Load(format!("{name} is neither XDP nor TC"))),
    }
    .map_err(|e| LoadError::Load(format!("{name}: {e}")))?
    .try_clone()
    .map_err(|e| LoadError::Load(format!("{name}: {e}")))?;
    let mut array = ProgramArray::try_from(ebpf.map_mut(map).ok_or(LoadError::MissingMap(map))?)
        .map_err(map_err(map))?;
    array.set(0, &fd, 0).map_err(map_err(map))
}

/// CLOCK_TAI minus CLOCK_REALTIME in whole seconds: what the XDP program subtracts from
/// `bpf_ktime_get_tai_ns` to compare BLOCKLIST expiries (Unix seconds) with now. 0 when the
/// clocks cannot be read (then an entry lapses up to the kernel's TAI offset late, 37 s at most).
pub fn tai_offset_secs() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    let (Ok(tai), Ok(real)) = (
        clock_gettime(ClockId::CLOCK_TAI),
        clock_gettime(ClockId::CLOCK_REALTIME),
    ) else {
        return 0;
    };
    let diff_ns = (tai.tv_sec() - real.tv_sec()) * 1_000_000_000 + (tai.tv_nsec() - real.tv_nsec());
    // Rounded: the two reads are a few hundred nanoseconds apart.
    u64::try_from((diff_ns + 500_000_000).div_euclid(1_000_000_000)).unwrap_or(0)
}

/// The XDP program of a loaded object.
pub fn program(ebpf: &mut Ebpf) -> &mut Xdp {
    named_program(ebpf, PROGRAM_NAME)
}

/// A program of the object by name (`PROGRAM_NAME` or `NOOP_PROGRAM_NAME`).
#[expect(
    clippy::expect_used,
    reason = "the object is embedded at build time and defines both programs, as XDP; every test that loads it checks this"
)]
pub fn named_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut Xdp {
    ebpf.program_mut(name)
        .expect("the object defines the program")
        .try_into()
        .expect("the program is XDP")
}

/// The TC egress program of a loaded object (loaded when `ProgramSettings::egress` is set).
#[expect(
    clippy::expect_used,
    reason = "the object is embedded at build time and defines the program as a classifier; every test that loads it checks this"
)]
pub fn egress_program(ebpf: &mut Ebpf) -> &mut SchedClassifier {
    ebpf.program_mut(EGRESS_PROGRAM_NAME)
        .expect("the object defines the egress program")
        .try_into()
        .expect("the egress program is a classifier")
}

/// Owned handles on the maps of a loaded object.
pub struct Maps {
    pub events: RingBuf<MapData>,
    pub counters: PerCpuArray<MapData, Counters>,
    pub blocklist: PrefixMap<BlockValue>,
    pub client_allow: PrefixMap<AllowValue>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::MissingMap(name))
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> LoadError {
    move |e| LoadError::Map {
        map,
        reason: e.to_string(),
    }
}

impl Maps {
    /// Takes the maps out of a loaded object (the program keeps using them).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            events: RingBuf::try_from(take(ebpf, map_names::EVENTS)?)
                .map_err(map_err(map_names::EVENTS))?,
            counters: PerCpuArray::try_from(take(ebpf, map_names::COUNTERS)?)
                .map_err(map_err(map_names::COUNTERS))?,
            blocklist: prefix_map(ebpf, map_names::BLOCKLIST, map_names::BLOCK_FILTER)?,
            client_allow: prefix_map(ebpf, map_names::CLIENT_ALLOW, map_names::ALLOW_FILTER)?,
        })
    }

    /// Makes CLIENT_ALLOW and BLOCKLIST hold exactly these entries.
    pub fn fill(&mut self, allow: &[IpNet], block: &[IpNet]) -> Result<(), LoadError> {
        self.client_allow.replace_all(allow)?;
        self.blocklist.replace_all(block)?;
        Ok(())
    }

    /// The counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, LoadError> {
        read_counters(&self.counters).map_err(map_err(map_names::COUNTERS))
    }
}

fn prefix_map<V: aya::Pod + Default>(
    ebpf: &mut Ebpf,
    trie: &'static str,
    filter: &'static str,
) -> Result<PrefixMap<V>, LoadError> {
    Ok(PrefixMap {
        name: trie,
        trie: LpmTrie::try_from(take(ebpf, trie)?).map_err(map_err(trie))?,
        filter: Array::try_from(take(ebpf, filter)?).map_err(map_err(filter))?,
    })
}

/// Sums the per-CPU counters.
pub fn read_counters(
    map: &PerCpuArray<MapData, Counters>,
) -> Result<Counters, aya::maps::MapError> {
    let mut total = Counters::default();
    for c in map.get(&0, 0)?.iter() {
        total.add(c);
    }
    Ok(total)
}

/// Resolves interface names to indexes, before anything is loaded, so a typo fails cleanly.
pub fn interface_indexes(names: &[String]) -> Result<HashMap<u32, String>, LoadError> {
    let mut out = HashMap::new();
    for name in names {
        let idx = nix::net::if_::if_nametoindex(name.as_str())
            .map_err(|_| LoadError::UnknownInterface(name.clone()))?;
        out.insert(idx, name.clone());
    }
    Ok(out)
}

/// Name of the pin of the attachment on `interface` (keep-blocking mode).
pub fn link_pin_name(interface: &str) -> String {
    format!("{LINK_PIN_PREFIX}{interface}")
}

const LINK_PIN_PREFIX: &str = "link_";

/// The program's attachments, owned outside the `Ebpf` so their fate is explicit: closed on a
/// clean exit or an error (detached), left pinned by a crash in keep-blocking mode.
pub struct Attachments {
    links: Vec<Attached>,
}

/// Where a program is attached on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// The XDP program, on what arrives.
    Xdp,
    /// The TC egress program (`capture.egress`), on what leaves.
    TcEgress,
}

impl Hook {
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::TcEgress => "tc-egress",
        }
    }
}

/// One attachment: its interface, hook, pin and link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentInfo {
    pub interface: String,
    pub hook: Hook,
    /// The BPF link's id (`bpftool link show`); `None` for a netlink (cls_bpf) filter.
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// The link is pinned (keep-blocking XDP only).
    pub pinned: bool,
}

struct Attached {
    interface: String,
    hook: Hook,
    /// The pin keeping the attachment alive past this process (keep-blocking).
    pin: Option<PathBuf>,
    link: Held,
}

/// A link this process holds: closing (dropping) it detaches the program.
enum Held {
    Fd(FdLink),
    /// A cls_bpf filter on a clsact qdisc (kernels before 6.6, which have no TCX): dropping it
    /// deletes the filter. The qdisc stays (it may be someone else's; an empty clsact changes
    /// nothing).
    Netlink {
        /// Held for its `Drop` only.
        _filter: SchedClassifierLink,
    },
}

impl Attachments {
    /// Link and program ids per interface and hook, for logs and tests.
    pub fn describe(&self) -> Vec<AttachmentInfo> {
        self.links
            .iter()
            .map(|a| {
                let info = match &a.link {
                    Held::Fd(l) => l.info().ok(),
                    Held::Netlink { .. } => None,
                };
                AttachmentInfo {
                    interface: a.interface.clone(),
                    hook: a.hook,
                    link_id: info.as_ref().map(|i| i.id()),
                    program_id: info.as_ref().map(|i| i.program_id()),
                    pinned: a.pin.is_some(),
                }
            })
            .collect()
    }

    /// Detaches everything: removes the pins, then closes the links.
    pub fn detach(mut self) {
        self.release();
    }

    fn release(&mut self) {
        for a in self.links.drain(..) {
            if let Some(pin) = &a.pin {
                let _ = std::fs::remove_file(pin);
            }
            tracing::debug!(interface = %a.interface, hook = a.hook.name(), "detached");
            drop(a.link);
        }
    }
}

impl Drop for Attachments {
    /// An error path or a panic unwinding detaches too: only a process that dies without
    /// running destructors leaves a (pinned) attachment behind.
    fn drop(&mut self) {
        self.release();
    }
}

/// Attaches the TC egress program (loaded with `ProgramSettings::egress`) to each interface,
/// into `out`. A TCX link where the kernel has TCX (6.6+), appended after the programs already
/// there; otherwise a cls_bpf filter on the clsact qdisc, which is added when missing (and
/// never removed: another tool's filters may be on it). The program only observes, so it is
/// never pinned: it goes with the process whatever `capture.on_crash` says (nothing of it is
/// worth keeping without a reader, and a crash must not leave it behind).
pub fn attach_egress(
    ebpf: &mut Ebpf,
    interfaces: &[String],
    out: &mut Attachments,
) -> Result<(), LoadError> {
    let prog = egress_program(ebpf);
    // The same test aya's own `attach` makes.
    let tcx = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    for name in interfaces {
        let err = |reason: String| LoadError::AttachEgress {
            interface: name.clone(),
            reason,
        };
        let options = if tcx {
            TcAttachOptions::TcxOrder(LinkOrder::last())
        } else {
            match tc::qdisc_add_clsact(name) {
                Ok(()) => {
                    tracing::info!(interface = %name, "added a clsact qdisc for the egress program")
                }
                // EEXIST: the interface has one already (ours from an earlier run, or another
                // tool's); the filter goes on it.
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc_eexist()) => {}
                Err(e) => return Err(err(format!("adding the clsact qdisc: {}", error_chain(&e)))),
            }
            TcAttachOptions::Netlink(NlOptions::default())
        };
        let id = prog
            .attach_with_options(name, TcAttachType::Egress, options)
            .map_err(|e| err(error_chain(&e)))?;
        let link = prog.take_link(id).map_err(|e| err(error_chain(&e)))?;
        let link = if tcx {
            Held::Fd(FdLink::try_from(link).map_err(|e| err(error_chain(&e)))?)
        } else {
            Held::Netlink { _filter: link }
        };
        out.links.push(Attached {
            interface: name.clone(),
            hook: Hook::TcEgress,
            pin: None,
            link,
        });
    }
    Ok(())
}

/// EEXIST, as netlink reports it.
const fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

/// Attaches the program to each interface through a BPF link.
///
/// A link pinned by a previous run that crashed in keep-blocking mode is taken over in place:
/// `BPF_LINK_UPDATE` swaps the program atomically, so there is never a second attachment nor a
/// moment without one. With `keep_pinned` the links are pinned in `pin_dir` and outlive a crash;
/// without it they go with the process (fail open), and a pin found from an earlier run is
/// removed once the link is ours.
pub fn attach(
    ebpf: &mut Ebpf,
    interfaces: &[String],
    mode: XdpAttachMode,
    pin_dir: &Path,
    keep_pinned: bool,
) -> Result<Attachments, LoadError> {
    let xdp_mode = match mode {
        XdpAttachMode::Auto => XdpMode::Default,
        XdpAttachMode::Native => XdpMode::Driver,
        XdpAttachMode::Skb => XdpMode::Skb,
    };
    let prog = program(ebpf);
    let mut out = Attachments { links: Vec::new() };
    for name in interfaces {
        let attach_err = |reason: String| LoadError::Attach {
            interface: name.clone(),
            mode,
            reason,
        };
        let pin_path = pin_dir.join(link_pin_name(name));
        let id = match take_over(prog, &pin_path) {
            Some(id) => id,
            None => {
                let idx = nix::net::if_::if_nametoindex(name.as_str())
                    .map_err(|_| LoadError::UnknownInterface(name.clone()))?;
                prog.attach_to_if_index(idx, xdp_mode)
                    .map_err(|e| attach_err(error_chain(&e)))?
            }
        };
        let link = prog
            .take_link(id)
            .map_err(|e| attach_err(error_chain(&e)))?;
        let link = FdLink::try_from(link).map_err(|e| {
            attach_err(format!(
                "the kernel attached through netlink, not a BPF link (kernel older than 5.9?): {}",
                error_chain(&e)
            ))
        })?;
        let (link, pin) = if keep_pinned {
            let link = if pin_path.exists() {
                link // taken over: already pinned there
            } else {
                FdLink::from(
                    link.pin(&pin_path)
                        .map_err(|e| attach_err(format!("pinning the link: {e}")))?,
                )
            };
            (link, Some(pin_path))
        } else {
            match std::fs::remove_file(&pin_path) {
                Ok(()) => {
                    tracing::info!(interface = %name, "fail-open: unpinned the attachment of an earlier run")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(attach_err(format!("removing {}: {e}", pin_path.display()))),
            }
            (link, None)
        };
        out.links.push(Attached {
            interface: name.clone(),
            hook: Hook::Xdp,
            pin,
            link: Held::Fd(link),
        });
    }
    Ok(out)
}

/// Swaps this program into the link pinned at `path`, if there is one that still works.
/// A pin whose link is defunct (its interface went away) is removed.
fn take_over(prog: &mut Xdp, path: &Path) -> Option<aya::programs::xdp::XdpLinkId> {
    if !path.exists() {
        return None;
    }
    let swapped = PinnedLink::from_pin(path)
        .map_err(|e| error_chain(&e))
        .and_then(|p| XdpLink::try_from(FdLink::from(p)).map_err(|e| error_chain(&e)))
        .and_then(|l| prog.attach_to_link(l).map_err(|e| error_chain(&e)));
    match swapped {
        Ok(id) => {
            tracing::info!(pin = %path.display(), "took over the attachment left by an earlier run (program swapped in place)");
            Some(id)
        }
        Err(reason) => {
            tracing::warn!(pin = %path.display(), %reason, "the pinned attachment of an earlier run is unusable; removing it and attaching anew");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Creates the pin directory (mounting bpffs first when needed) and removes stale pins from a
/// sensor of the same name that did not exit cleanly, except the maps in `keep`. Pinned
/// attachments (keep-blocking) are left for [`attach`] to take over; use
/// [`remove_stale_links`] for those of interfaces no longer configured.
pub fn prepare_pin_dir(dir: &Path, keep: &[&str]) -> Result<(), LoadError> {
    crate::bpffs::ensure_mounted(dir.parent().unwrap_or(dir)).map_err(LoadError::Bpffs)?;
    std::fs::create_dir_all(dir).map_err(|source| LoadError::PinDir {
        path: dir.into(),
        source,
    })?;
    for name in ALL_MAPS {
        if keep.contains(&name) {
            continue;
        }
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => tracing::info!(map = name, "removed a stale pin"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LoadError::PinDir {
                    path: dir.join(name),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Removes pinned attachments of an earlier run on interfaces not in `interfaces`: removing
/// the pin detaches them (nothing else holds them), so a sensor moved to other interfaces does
/// not leave its old ones filtering.
pub fn remove_stale_links(dir: &Path, interfaces: &[String]) -> Result<(), LoadError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(iface) = name.to_str().and_then(|n| n.strip_prefix(LINK_PIN_PREFIX)) else {
            continue;
        };
        if interfaces.iter().any(|i| i == iface) {
            continue;
        }
        std::fs::remove_file(entry.path()).map_err(|source| LoadError::PinDir {
            path: entry.path(),
            source,
        })?;
        tracing::info!(
            interface = iface,
            "removed the pinned attachment of an interface no longer configured"
        );
    }
    Ok(())
}

/// Removes this instance's pins, except `keep`; removes the directory when it is empty.
pub fn unpin(dir: &Path, keep: &[&str]) {
    for name in ALL_MAPS {
        if !keep.contains(&name) {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    let _ = std::fs::remove_dir(dir);
    if let Some(root) = dir.parent() {
        let _ = std::fs::remove_dir(root);
    }
}
