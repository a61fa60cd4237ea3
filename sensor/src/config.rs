//! The sensor's TOML configuration: one section per stage, unknown keys rejected.
//!
//! Every option is documented in `config/sensor.example.toml`, which a test parses. Errors name
//! the key they are about, on one line.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;

/// Errors from reading or validating a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub sensor: SensorSection,
    #[serde(default)]
    pub capture: CaptureSection,
    #[serde(default)]
    pub filter: FilterSection,
    #[serde(default)]
    pub blocklist: BlocklistSection,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default)]
    pub trust: crate::trust::TrustSection,
    #[serde(default)]
    pub intel: crate::intel::IntelSection,
    #[serde(default)]
    pub alerts: crate::alert::AlertsSection,
    #[serde(default)]
    pub metrics: crate::metrics::MetricsSection,
    /// `[kafka]`: off unless the section is present.
    pub kafka: Option<crate::sink::kafka::KafkaSection>,
    /// `[elasticsearch]`: off unless the section is present.
    pub elasticsearch: Option<crate::sink::elastic::ElasticSection>,
}

/// `[sensor]`: identity of this sensor instance.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SensorSection {
    /// Instance name: written as `observer.name`, and names the pin directory, so two sensors on
    /// one host need different names.
    pub name: String,
    /// Directory on bpffs under which `<name>/` holds the pinned maps.
    pub pin_root: PathBuf,
}

impl Default for SensorSection {
    fn default() -> Self {
        Self {
            name: "default".into(),
            pin_root: PathBuf::from("/sys/fs/bpf/dns-sensor"),
        }
    }
}

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
    /// UDP and TCP destination ports carrying DNS queries (at most 8).
    pub dns_ports: Vec<u16>,
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
}

/// `[blocklist]`: sources dropped in the kernel.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlocklistSection {
    /// Sources (IPs or CIDRs) whose packets are dropped by XDP.
    pub entries: Vec<String>,
    /// Keep the pinned BLOCKLIST map when the sensor stops, and reuse it on the next start.
    pub keep_on_exit: bool,
    /// `[blocklist.schedule]`: when the daemon runs the nightly job.
    pub schedule: crate::blocklist::schedule::ScheduleSection,
    /// `[[blocklist.sources]]`: where the security devices' alerts are.
    pub sources: Vec<crate::blocklist::collect::AlertSource>,
    /// `[blocklist.elasticsearch]`: the log platform holding them.
    pub elasticsearch: crate::blocklist::collect::ReadSection,
    /// `[blocklist.reputation]`: verdict reuse across nights.
    pub reputation: crate::blocklist::reputation::ReputationSection,
    /// `[blocklist.policy]`: thresholds, expiry, safety limits, never-block list, state.
    pub policy: crate::blocklist::store::PolicySection,
    /// `[blocklist.edl]`: the list file and its HTTP server.
    pub edl: crate::blocklist::edl::EdlSection,
    /// Where each night's results (CSV and JSON lines) are written.
    pub results_dir: PathBuf,
}

impl Default for BlocklistSection {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            keep_on_exit: false,
            schedule: Default::default(),
            sources: Vec::new(),
            elasticsearch: Default::default(),
            reputation: Default::default(),
            policy: Default::default(),
            edl: Default::default(),
            results_dir: PathBuf::from("/var/lib/dns-sensor/blocklist/results"),
        }
    }
}

/// Where events go.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    #[default]
    Stdout,
    File,
}

/// `[output]`: the JSON-lines sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    pub kind: OutputKind,
    /// File to append to when `kind = "file"`.
    pub path: Option<PathBuf>,
    /// Events held between the ring-buffer reader and the writer; beyond it events are dropped
    /// and counted, so a slow disk never stalls the ring buffer.
    pub queue_size: usize,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            kind: OutputKind::Stdout,
            path: None,
            queue_size: 65536,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: one_line_toml_error(text, &e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: CIDRs, names, limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.sensor.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::Invalid {
                key: "sensor.name",
                message: format!("{name:?} must be 1-64 characters of [A-Za-z0-9_-]"),
            });
        }
        if self.capture.dns_ports.is_empty()
            || self.capture.dns_ports.len() > sensor_common::MAX_DNS_PORTS
            || self.capture.dns_ports.contains(&0)
        {
            return Err(ConfigError::Invalid {
                key: "capture.dns_ports",
                message: format!(
                    "needs 1 to {} non-zero ports, got {:?}",
                    sensor_common::MAX_DNS_PORTS,
                    self.capture.dns_ports
                ),
            });
        }
        for ifname in &self.capture.interfaces {
            if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
                return Err(ConfigError::Invalid {
                    key: "capture.interfaces",
                    message: format!("{ifname:?} is not a valid interface name"),
                });
            }
        }
        parse_nets("filter.client_allow", &self.filter.client_allow)?;
        parse_nets("blocklist.entries", &self.blocklist.entries)?;
        if self.output.kind == OutputKind::File && self.output.path.is_none() {
            return Err(ConfigError::Invalid {
                key: "output.path",
                message: "required when output.kind = \"file\"".into(),
            });
        }
        if self.output.queue_size == 0 {
            return Err(ConfigError::Invalid {
                key: "output.queue_size",
                message: "must be at least 1".into(),
            });
        }
        self.trust.validate()?;
        self.intel.validate()?;
        self.alerts.validate()?;
        self.metrics.address()?;
        self.blocklist.schedule.parse()?;
        self.blocklist.policy.validate()?;
        self.blocklist.edl.validate()?;
        if let Some(es) = &self.elasticsearch {
            es.validate()?;
        }
        if let Some(k) = &self.kafka {
            k.validate()?;
        }
        Ok(())
    }

    pub fn client_allow(&self) -> Vec<IpNet> {
        parse_nets("filter.client_allow", &self.filter.client_allow).unwrap_or_default()
    }

    pub fn blocklist(&self) -> Vec<IpNet> {
        parse_nets("blocklist.entries", &self.blocklist.entries).unwrap_or_default()
    }

    /// Directory holding this instance's pinned maps.
    pub fn pin_dir(&self) -> PathBuf {
        self.sensor.pin_root.join(&self.sensor.name)
    }
}

/// Parses IPs (as host routes) and CIDRs; host bits set in a CIDR are an error, since
/// `10.1.2.3/8` is more likely a typo than a wish to block 10/8.
pub fn parse_nets(key: &'static str, items: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    items
        .iter()
        .map(|s| {
            let s = s.trim();
            if let Ok(ip) = s.parse::<IpAddr>() {
                return Ok(IpNet::from(ip));
            }
            let net = s.parse::<IpNet>().map_err(|_| ConfigError::Invalid {
                key,
                message: format!("{s:?} is not an IP address or CIDR"),
            })?;
            if net.trunc() != net {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{s:?} has host bits set (did you mean {}?)", net.trunc()),
                });
            }
            Ok(net)
        })
        .collect()
}

/// toml's errors span several lines (a source snippet); keep the message and the line number.
fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_on_one_line() {
        let err = Config::from_toml("[capture]\ninterfaces = [\"lo\"]\nbogus = 1\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn invalid_cidr_names_the_key() {
        let err = Config::from_toml("[filter]\nclient_allow = [\"10.0.0.300/24\"]\n", "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("filter.client_allow") && err.contains("10.0.0.300/24"),
            "{err}"
        );
        let err = Config::from_toml("[blocklist]\nentries = [\"10.1.2.3/8\"]\n", "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blocklist.entries") && err.contains("10.0.0.0/8"),
            "{err}"
        );
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::from_toml("", "t").unwrap();
        assert_eq!(c.capture.dns_ports, vec![53]);
        assert_eq!(c.output.kind, OutputKind::Stdout);
        assert_eq!(c.pin_dir(), PathBuf::from("/sys/fs/bpf/dns-sensor/default"));
    }

    #[test]
    fn example_config_parses_and_documents_every_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/sensor.example.toml");
        let example = Config::from_file(&path).unwrap();
        // The example sets each option to its default, except the interface list.
        let mut defaults = Config::from_toml("", "defaults").unwrap();
        defaults.capture.interfaces = example.capture.interfaces.clone();
        assert_eq!(example, defaults);

        // The optional sections, as written once their "#: " is removed, hold the defaults too.
        let text = std::fs::read_to_string(&path).unwrap();
        let optional: String = text
            .lines()
            .map(|l| l.strip_prefix("#: ").or(l.strip_prefix("#:")).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let value: toml::Value = toml::from_str(&optional).unwrap();
        let tb: crate::intel::threatbook::ThreatBookSection =
            value["intel"]["threatbook"].clone().try_into().unwrap();
        assert_eq!(tb, Default::default());
        let feeds: Vec<crate::intel::feeds::FeedConfig> =
            value["intel"]["feeds"].clone().try_into().unwrap();
        let defaults: crate::intel::feeds::FeedConfig = toml::from_str(
            "name = \"local-blocklist\"\nkind = \"domains\"\npath = \"/etc/dns-sensor/malicious-domains.txt\"",
        )
        .unwrap();
        assert_eq!(feeds, [defaults]);
        // And the whole file with them is a valid config.
        let full = Config::from_toml(&optional, "optional sections").unwrap();
        assert_eq!(full.alerts.wecom.len(), 1);
        assert_eq!(full.alerts.webhook.len(), 1);
        assert_eq!(full.alerts.wecom[0].max_per_minute, 20);
    }
}
