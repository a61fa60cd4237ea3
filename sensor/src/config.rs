//! The sensor's TOML configuration: one section per stage, unknown keys rejected.
//!
//! Every option is documented in `config/sensor.example.toml`, which a test parses. Errors name
//! the key they are about, on one line.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use sensor_blocklist::job::JobContext;
use sensor_model::error::{ConfigError, parse_nets};
use sensor_outputs::output::OutputKind;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub sensor: SensorSection,
    #[serde(default)]
    pub capture: sensor_kernel::config::CaptureSection,
    #[serde(default)]
    pub filter: sensor_kernel::config::FilterSection,
    #[serde(default)]
    pub blocklist: sensor_blocklist::config::BlocklistSection,
    #[serde(default)]
    pub output: sensor_outputs::output::OutputSection,
    #[serde(default)]
    pub trust: sensor_intel::trust::TrustSection,
    #[serde(default)]
    pub intel: sensor_intel::IntelSection,
    #[serde(default)]
    pub alerts: sensor_outputs::alert::AlertsSection,
    #[serde(default)]
    pub metrics: sensor_outputs::metrics::MetricsSection,
    #[serde(default)]
    pub pdns: sensor_pdns::config::PdnsSection,
    /// `[kafka]`: off unless the section is present.
    pub kafka: Option<sensor_outputs::sink::kafka::KafkaSection>,
    /// `[elasticsearch]`: off unless the section is present.
    pub elasticsearch: Option<sensor_outputs::sink::elastic::ElasticSection>,
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
    /// Give up the capabilities that loaded and attached the program once that is done (keeping
    /// CAP_NET_ADMIN only for the nft/ipset exports, CAP_NET_BIND_SERVICE only for a port
    /// below 1024). Off only to diagnose a kernel that refuses map access without them.
    pub drop_capabilities: bool,
}

impl Default for SensorSection {
    fn default() -> Self {
        Self {
            name: "default".into(),
            pin_root: PathBuf::from(sensor_model::paths::PIN_ROOT),
            drop_capabilities: true,
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
        if !(1..=300).contains(&self.capture.response_timeout_secs) {
            return Err(ConfigError::Invalid {
                key: "capture.response_timeout_secs",
                message: format!(
                    "needs 1 to 300 seconds, got {}",
                    self.capture.response_timeout_secs
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
        let client_allow = parse_nets("filter.client_allow", &self.filter.client_allow)?;
        self.filter.widest_prefix.check(
            "filter.client_allow",
            "filter.widest_prefix",
            &client_allow,
        )?;
        self.blocklist.validate()?;
        // The rewrite changes packets the sensor forwards: a mirror port's are copies.
        if self.blocklist.resolved.rewrite == sensor_blocklist::resolved::Rewrite::Nxdomain
            && self.capture.mode != sensor_kernel::config::CaptureMode::Inline
        {
            return Err(ConfigError::Invalid {
                key: "blocklist.resolved.rewrite",
                message: "\"nxdomain\" needs capture.mode = \"inline\" (a mirror port sees copies)"
                    .into(),
            });
        }
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
        self.pdns.validate()?;
        self.blocklist.schedule.parse()?;
        self.blocklist.export.validate()?;
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

    /// What the nightly job needs from this config.
    pub fn job_context(&self) -> JobContext {
        JobContext {
            blocklist: self.blocklist.clone(),
            threatbook: self.intel.threatbook.clone(),
            rules: self.rule_inputs(),
            alerts: self.alerts.clone(),
            sensor_name: self.sensor.name.clone(),
            pin_dir: self.pin_dir(),
        }
    }

    /// What the blocklist's rules need from the rest of the config: the clients never
    /// reported, and every endpoint the sensor talks to (protected from blocking).
    pub fn rule_inputs(&self) -> sensor_blocklist::publish::RuleInputs {
        let mut endpoints: Vec<String> = Vec::new();
        if let Some(es) = &self.elasticsearch {
            endpoints.extend(es.urls.iter().cloned());
        }
        #[cfg(feature = "kafka")]
        if let Some(k) = &self.kafka {
            endpoints.extend(k.brokers.iter().cloned());
        }
        if let Some(tb) = &self.intel.threatbook {
            endpoints.push(tb.base_url.clone());
        }
        endpoints.extend(self.alerts.wecom.iter().map(|w| w.base_url.clone()));
        endpoints.extend(self.alerts.webhook.iter().map(|w| w.url.clone()));
        if !self.blocklist.sources.is_empty() {
            endpoints.push(self.blocklist.elasticsearch.url.clone());
        }
        sensor_blocklist::publish::RuleInputs {
            client_allow: self.client_allow(),
            endpoints,
        }
    }

    /// Directory holding this instance's pinned maps.
    pub fn pin_dir(&self) -> PathBuf {
        self.sensor.pin_root.join(&self.sensor.name)
    }
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
        assert!(c.pdns.enabled);
        assert_eq!(c.pdns.retention_days, 30);
        assert_eq!(
            c.pdns.path,
            PathBuf::from("/var/lib/dns-sensor/pdns/pdns.sqlite")
        );
    }

    #[test]
    fn pdns_section_rejects_unknown_keys_and_names_bad_values() {
        let err = Config::from_toml("[pdns]\nretention = 7\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention") && err.contains("line 2"), "{err}");
        let err = Config::from_toml("[pdns]\nretention_days = 0\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pdns.retention_days"), "{err}");
        let c = Config::from_toml(
            "[pdns]\nenabled = false\npath = \"/srv/pdns.sqlite\"\nretention_days = 90\n",
            "t",
        )
        .unwrap();
        assert!(!c.pdns.enabled);
        assert_eq!(c.pdns.retention().unwrap().get(), 90);
    }

    #[test]
    fn resolved_rewrite_is_none_or_nxdomain_and_nxdomain_needs_inline_blocking() {
        use sensor_blocklist::resolved::Rewrite;
        let c = Config::from_toml("", "t").unwrap();
        assert_eq!(c.blocklist.resolved.rewrite, Rewrite::None);
        let err = Config::from_toml("[blocklist.resolved]\nrewrite = \"sinkhole\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rewrite") && err.contains("nxdomain"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let on = "[blocklist.resolved]\nenabled = true\nrewrite = \"nxdomain\"\n";
        let c = Config::from_toml(on, "t").unwrap();
        assert!(c.blocklist.resolved.rewrites());
        let err = Config::from_toml(&format!("[capture]\nmode = \"mirror\"\n{on}"), "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blocklist.resolved.rewrite") && err.contains("inline"),
            "{err}"
        );
        let err = Config::from_toml("[blocklist.resolved]\nrewrite = \"nxdomain\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blocklist.resolved.rewrite") && err.contains("enabled"),
            "{err}"
        );
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
        let tb: sensor_intel::threatbook::ThreatBookSection =
            value["intel"]["threatbook"].clone().try_into().unwrap();
        assert_eq!(tb, Default::default());
        let feeds: Vec<sensor_intel::feeds::FeedConfig> =
            value["intel"]["feeds"].clone().try_into().unwrap();
        let defaults: sensor_intel::feeds::FeedConfig = toml::from_str(
            "name = \"local-blocklist\"\nkind = \"domains\"\npath = \"/etc/dns-sensor/malicious-domains.txt\"",
        )
        .unwrap();
        assert_eq!(feeds, [defaults]);
        // And the whole file with them is a valid config.
        let full = Config::from_toml(&optional, "optional sections").unwrap();
        assert_eq!(full.alerts.wecom.len(), 1);
        assert_eq!(full.alerts.webhook.len(), 1);
        assert_eq!(full.alerts.wecom[0].max_per_minute, 20);
        let export = &full.blocklist.export;
        assert_eq!(export.fortigate, Some(Default::default()));
        assert_eq!(export.checkpoint, Some(Default::default()));
        assert_eq!(export.mikrotik, Some(Default::default()));
        assert_eq!(export.nft, Some(Default::default()));
        assert_eq!(export.ipset, Some(Default::default()));
    }
}
