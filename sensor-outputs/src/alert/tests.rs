//! Config tests for `[alerts]`; the behaviour is tested end to end in `tests/alerts.rs`.

use super::*;

fn parse(text: &str) -> Result<AlertsSection, String> {
    let section: AlertsSection = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    section.validate().map_err(|e| e.to_string())?;
    Ok(section)
}

/// The snippet documented for `config/sensor.example.toml`: every key at its default.
const EXAMPLE: &str = r#"
suppress_window_secs = 3600
queue_size = 4096
backlog_size = 10000
# inventory = "/etc/dns-sensor/inventory.csv"
time_zone = "UTC"

# [[alerts.wecom]]
# name = "secops"
# key = { env = "WECOM_ROBOT_KEY" }
# base_url = "https://qyapi.weixin.qq.com"
# max_per_minute = 20
# mention_userids = []
# timeout_secs = 10
"#;

#[test]
fn example_sets_every_default() {
    assert_eq!(parse(EXAMPLE).unwrap(), AlertsSection::default());
}

#[test]
fn sinks_parse_with_their_defaults() {
    let s = parse(
        r#"
        time_zone = "+08:00"
        [[wecom]]
        key = { env = "WECOM_ROBOT_KEY" }
        [[webhook]]
        url = "https://soar.example/hook"
        headers = { Authorization = { file = "/run/secrets/soar" }, X-Source = "dns-sensor" }
        "#,
    )
    .unwrap();
    assert_eq!(s.wecom[0].base_url, "https://qyapi.weixin.qq.com");
    assert_eq!(s.wecom[0].max_per_minute, 20);
    assert_eq!(s.webhook[0].max_per_minute, 60);
    assert_eq!(
        s.webhook[0].headers["X-Source"],
        HeaderSource::Value("dns-sensor".into())
    );
    assert!(matches!(
        s.webhook[0].headers["Authorization"],
        HeaderSource::Secret(_)
    ));
}

#[test]
fn errors_name_the_key_on_one_line() {
    for (text, key) in [
        (
            "[[wecom]]\nkey = { env = \"K\" }\nmax_per_minute = 21\n",
            "alerts.wecom.max_per_minute",
        ),
        ("[[wecom]]\nbase_url = \"https://x\"\n", "alerts.wecom.key"),
        (
            "[[wecom]]\nkey = { env = \"K\" }\nbase_url = \"ftp://x\"\n",
            "alerts.wecom.base_url",
        ),
        (
            "[[wecom]]\nkey = { env = \"K\" }\nmention_userids = [\"<@all>\"]\n",
            "alerts.wecom.mention_userids",
        ),
        ("time_zone = \"Asia/Shanghai\"\n", "alerts.time_zone"),
        ("suppress_window_secs = 0\n", "alerts.suppress_window_secs"),
        ("[[webhook]]\nurl = \"not a url\"\n", "alerts.webhook.url"),
        (
            "[[webhook]]\nurl = \"https://x/\"\nheaders = { \"bad header\" = \"v\" }\n",
            "alerts.webhook.headers",
        ),
        // Credentials never travel in clear: the robot key and webhook tokens need https.
        (
            "[[wecom]]\nkey = { env = \"K\" }\nbase_url = \"http://wecom-proxy.corp\"\n",
            "alerts.wecom.base_url",
        ),
        (
            "[[webhook]]\nurl = \"http://soar.corp/hook?token=t0k3n\"\n",
            "alerts.webhook.url",
        ),
    ] {
        let err = parse(text).unwrap_err();
        assert!(err.contains(key), "{text}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
    // Plain http only when allowed explicitly, or to the loopback (a local relay, the tests).
    let err = parse("[[webhook]]\nurl = \"http://soar.corp/hook?token=t0k3n\"\n").unwrap_err();
    assert!(
        err.contains("allow_insecure_http") && !err.contains("t0k3n"),
        "{err}"
    );
    for ok in [
        "[[webhook]]\nurl = \"http://soar.corp/hook\"\nallow_insecure_http = true\n",
        "[[webhook]]\nurl = \"http://127.0.0.1:8080/hook\"\n",
        "[[wecom]]\nkey = { env = \"K\" }\nbase_url = \"http://wecom.corp\"\nallow_insecure_http = true\n",
    ] {
        parse(ok).unwrap();
    }
    let err = parse("[[wecom]]\nkey = { env = \"K\" }\nmentioned_mobile_list = []\n").unwrap_err();
    assert!(err.contains("mentioned_mobile_list"), "{err}");
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "canary-d3b07384\n").unwrap();
    let key = SecretSource {
        env: None,
        file: Some(path),
    };
    let secret = key.resolve("alerts.wecom.key").unwrap();
    let client = wecom::WeComClient::new(
        "https://qyapi.weixin.qq.com",
        secret,
        Duration::from_secs(1),
    )
    .unwrap();
    let shown = format!("{client:?}");
    assert!(!shown.contains("canary-d3b07384"), "{shown}");
}
