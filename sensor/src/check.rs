//! `sensor check-config`: what a start would trip over, found without touching the kernel.
//!
//! Parsing and validation stop at the first error (serde cannot go on after an unknown key);
//! once the file parses, every check below runs and each problem is one line naming its key,
//! so an operator fixes them all in one round instead of one per restart.

use crate::config::Config;

use sensor_model::secret::SecretSource;

/// One problem: the config key it is about and what is wrong, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.message)
    }
}

/// Runs every check on a parsed config. `check_interfaces`: whether the capture interfaces must
/// exist on this host (not when the file is checked for another machine).
pub fn check(config: &Config, check_interfaces: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut add = |key: &str, message: String| {
        out.push(Problem {
            key: key.to_owned(),
            message,
        })
    };
    if check_interfaces {
        for name in &config.capture.interfaces {
            if nix::net::if_::if_nametoindex(name.as_str()).is_err() {
                add(
                    "capture.interfaces",
                    format!("no interface {name:?} on this host (`ip link` lists them)"),
                );
            }
        }
    }
    if check_interfaces {
        // The host exports run these programs at every publication.
        let export = &config.blocklist.export;
        for (key, program, package) in [
            (
                "blocklist.export.nft.program",
                export.nft.as_ref().map(|s| &s.program),
                "nftables",
            ),
            (
                "blocklist.export.ipset.program",
                export.ipset.as_ref().map(|s| &s.program),
                "ipset",
            ),
        ] {
            let Some(program) = program else { continue };
            match std::process::Command::new(program)
                .arg("--version")
                .stdin(std::process::Stdio::null())
                .output()
            {
                Ok(o) if o.status.success() => {}
                Ok(o) => add(
                    key,
                    format!("{} --version: {}", program.display(), o.status),
                ),
                Err(e) => add(
                    key,
                    format!(
                        "cannot run {}: {e} (install the Debian package `{package}`)",
                        program.display()
                    ),
                ),
            }
        }
    }
    if (!config.trust.domains.is_empty() || !config.trust.files.is_empty())
        && let Err(e) = sensor_intel::trust::TrustFilter::new(&config.trust)
    {
        add("trust.files", e.to_string());
    }
    if let Err(e) = sensor_intel::feeds::LocalFeeds::load(&config.intel.feeds) {
        add("intel.feeds", e.to_string());
    }
    if let Err(e) = config.alerts.load_inventory() {
        add("alerts.inventory", e.to_string());
    }
    if let Err(e) = config.metrics.address() {
        add("metrics.listen", e.to_string());
    }
    // The EDL's certificate and key load and match (as the start, and each SIGHUP, will).
    if let (Some(c), Some(k)) = (
        &config.blocklist.edl.tls_cert,
        &config.blocklist.edl.tls_key,
    ) && let Err(e) = sensor_blocklist::edl_tls::CertSource::open(c, k)
    {
        add("blocklist.edl.tls_cert", e.to_string());
    }
    // Secrets: readable now (a file the service user cannot read, an unset variable); the
    // values are read and dropped, never printed.
    let mut secret = |key: &'static str, s: &SecretSource| {
        if !s.is_unset()
            && let Err(e) = s.resolve(key)
        {
            out.push(Problem {
                key: key.to_owned(),
                message: strip_key(&e.to_string(), key),
            });
        }
    };
    if let Some(tb) = &config.intel.threatbook {
        secret("intel.threatbook.api_key", &tb.api_key);
    }
    for w in &config.alerts.wecom {
        secret("alerts.wecom.key", &w.key);
    }
    secret(
        "blocklist.edl.basic_auth_password",
        &config.blocklist.edl.basic_auth_password,
    );
    for (key, s) in [
        (
            "blocklist.elasticsearch.password",
            &config.blocklist.elasticsearch.password,
        ),
        (
            "blocklist.elasticsearch.api_key",
            &config.blocklist.elasticsearch.api_key,
        ),
    ] {
        if let Some(s) = s {
            secret(key, s);
        }
    }
    if let Some(es) = &config.elasticsearch {
        for (key, s) in [
            ("elasticsearch.password", &es.password),
            ("elasticsearch.api_key", &es.api_key),
        ] {
            if let Some(s) = s {
                secret(key, s);
            }
        }
    }
    if let Some(k) = &config.kafka {
        for s in k.secrets.values() {
            secret("kafka.secrets", s);
        }
    }
    out
}

/// `ConfigError::Invalid` already says "config key `k`: ..."; keep only the message.
fn strip_key(text: &str, key: &str) -> String {
    text.strip_prefix(&format!("config key `{key}`: "))
        .unwrap_or(text)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"[capture]
interfaces = ["no-such-if0"]

[trust]
files = ["{d}/missing-trust.txt"]

[alerts]
inventory = "{d}/missing.csv"

[[alerts.wecom]]
key = {{ env = "DNS_SENSOR_CHECK_TEST_UNSET" }}

[metrics]
listen = "not an address"

[blocklist.export.nft]
program = "/nonexistent/nft"
"#,
            d = dir.path().display()
        );
        let config = Config::from_toml(&text, "test");
        // A bad listen address may already fail validation; then check it without it.
        let config = match config {
            Ok(c) => c,
            Err(_) => Config::from_toml(&text.replace("not an address", "127.0.0.1:0"), "test")
                .expect("parses"),
        };
        let problems = check(&config, true);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "capture.interfaces",
            "trust.files",
            "alerts.inventory",
            "alerts.wecom.key",
            "blocklist.export.nft.program",
        ] {
            assert!(keys.contains(&key), "{key} not reported: {problems:?}");
        }
        assert!(
            problems
                .iter()
                .all(|p| !p.message.contains('\n') && !p.message.is_empty())
        );
        assert!(
            check(&config, false)
                .iter()
                .all(|p| p.key != "capture.interfaces")
        );
    }

    #[test]
    fn the_example_config_has_no_problem_but_its_interface() {
        let config = Config::from_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/sensor.example.toml"
        )))
        .expect("example parses");
        assert_eq!(check(&config, false), vec![]);
    }
}
