//! The config sections the kernel program is set up from: `[capture]` and `[filter]`.

use serde::Deserialize;

/// XDP attach mode.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Native (driver) mode when the driver supports it, otherwise generic.
    #[default]
    Auto,
    /// Driver mode only; fails on drivers without XDP support.
    Native,
    /// Generic (SKB) mode: works on every interface, slower.
    Skb,
}

/// What the program does with packets it has read.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// On a gateway or host: everything not blocklisted passes.
    #[default]
    Inline,
    /// On a SPAN/mirror port: packets are copies and are dropped once read.
    Mirror,
}

/// What happens to the XDP attachment when the daemon dies without cleaning up (`kill -9`, a
/// crash, the OOM killer).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnCrash {
    /// The attachment belongs to the process and goes with it: traffic flows unfiltered and
    /// unobserved until the sensor is back (a sensor must never be the reason the network stops).
    #[default]
    FailOpen,
    /// The attachment is pinned on bpffs and outlives the process: the BLOCKLIST keeps dropping
    /// (and counting), queries are no longer reported (the ring buffer fills, counted as
    /// `ring_full`). The next start takes the pinned attachment over in place (one atomic
    /// program swap, never two attachments and never a moment without one).
    KeepBlocking,
}

/// `[capture]`: where and how the XDP program runs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSection {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpAttachMode,
    pub mode: CaptureMode,
    /// UDP and TCP ports of DNS servers (at most 8): queries go to them, responses come from
    /// them.
    pub dns_ports: Vec<u16>,
    /// Report the responses from the DNS ports (answers, response codes, response times).
    /// Off: they are counted (`responses_off`) and nothing else.
    pub responses: bool,
    /// Also attach the TC egress program (clsact: a TCX link on 6.6+) to the interfaces: the
    /// same parser and records on what *leaves* them. On a DNS server's own interface the
    /// queries arrive (XDP) and the answers leave (egress): without it, a sensor on the
    /// resolver host sees no response. It only observes, never drops; blocking stays in XDP.
    pub egress: bool,
    /// How long a query waits for its response before it is counted unanswered (seconds).
    pub response_timeout_secs: u64,
    /// Nanosecond event timestamps (`bpf_ktime_get_ns`) instead of the coarse clock (one
    /// scheduler tick). Costs a clock read per event, expensive on some virtual machines.
    pub precise_timestamps: bool,
    /// What the attachment does when the daemon dies without cleaning up.
    pub on_crash: OnCrash,
}

impl Default for CaptureSection {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            xdp_mode: XdpAttachMode::Auto,
            mode: CaptureMode::Inline,
            dns_ports: vec![53],
            precise_timestamps: false,
            responses: true,
            egress: false,
            response_timeout_secs: 5,
            on_crash: OnCrash::FailOpen,
        }
    }
}

/// `[filter]`: what never becomes an event.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSection {
    /// Clients (IPs or CIDRs) whose queries make no event (resolvers, known servers).
    pub client_allow: Vec<String>,
    /// The widest prefix `client_allow` may hold (`{ v4 = 16, v6 = 32 }`): a wide allow entry
    /// hides every client in it, the infected laptop included.
    pub widest_prefix: sensor_model::error::PrefixRails,
}
