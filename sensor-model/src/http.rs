//! The one HTTP client builder every HTTP client of the sensor uses (Elasticsearch, ThreatBook,
//! WeCom, webhooks): the same user agent, the same timeouts' meaning, the same `ca_file`; the one
//! rule for which URLs may carry a credential ([`check_url`]); and the one bounded body read
//! ([`read_capped`]), so a broken proxy or a hostile server cannot make the sensor buffer
//! gigabytes.

use std::{path::Path, time::Duration};

use crate::error::{ConfigError, error_chain};

/// The user agent of every request the sensor makes.
pub const USER_AGENT: &str = concat!("dns-sensor/", env!("CARGO_PKG_VERSION"));

/// How one client is built. No `Default`: each caller states every setting (a defaulted
/// `redirects: false` would silently change a client).
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings<'a> {
    /// The config key errors name (e.g. `intel.threatbook`, or `elasticsearch.ca_file` for a
    /// client whose only setting that can fail is its CA file).
    pub key: &'static str,
    /// Time limit of a whole request (connect, send, answer). `None`: no limit.
    pub timeout: Option<Duration>,
    /// Time limit of connecting. `None`: only `timeout` applies.
    pub connect_timeout: Option<Duration>,
    /// A PEM bundle of CA certificates: when set, the client trusts only these CAs (not the
    /// system's roots). Errors if it cannot be read, is not PEM, or holds no certificate.
    pub ca_file: Option<&'a Path>,
    /// Follow redirects (reqwest's default policy, up to 10). `false` for a client whose
    /// requests carry a secret in the URL, which a redirect could carry elsewhere.
    pub redirects: bool,
}

/// Checks an endpoint URL that a credential (API key, password, robot key, token header) travels
/// to: `https` always; `http` only to a loopback host (the credential never crosses a network)
/// or when the endpoint's `allow_insecure_http = true` says so explicitly. Any other scheme, no
/// host, or a user/password inside the URL is refused. Errors name `key` and never echo the URL
/// (it may hold a token).
pub fn check_url(
    key: &'static str,
    url: &str,
    allow_insecure_http: bool,
) -> Result<reqwest::Url, ConfigError> {
    let invalid = |message: &str| ConfigError::Invalid {
        key,
        message: message.into(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| ConfigError::Invalid {
        key,
        message: format!("not a URL: {e}"),
    })?;
    if parsed.host().is_none() {
        return Err(invalid("the URL has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("must not hold credentials in the URL"));
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if allow_insecure_http || is_loopback(&parsed) => Ok(parsed),
        "http" => Err(invalid(
            "plain http:// would send the credential in clear: use https://, or set \
             allow_insecure_http = true for this endpoint",
        )),
        other => Err(ConfigError::Invalid {
            key,
            message: format!("scheme `{other}` is not http(s)"),
        }),
    }
}

/// True for `localhost` and loopback addresses (`127.0.0.0/8`, `::1`).
pub fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // IPv6 hosts come bracketed.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.trim_end_matches('.').eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The answer is larger than the cap: only the cap was read, the rest dropped with the
    /// connection.
    #[error("answer larger than {max} bytes (HTTP {status}); not read further")]
    TooLarge { max: usize, status: u16 },
    /// The transport failed while reading (message without URL, causes on one line).
    #[error("{0}")]
    Transport(String),
}

/// Reads a response body, at most `max` bytes. A `Content-Length` above the cap is refused
/// before reading; a body without one is read chunk by chunk and refused as soon as it passes
/// the cap, so memory stays bounded whatever the server sends.
pub async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    let status = response.status().as_u16();
    let too_large = || BodyError::TooLarge { max, status };
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(error_chain(&e.without_url())))?
    {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Builds a client with [`USER_AGENT`] and `settings`. Errors name `settings.key`, hold no URL,
/// and fit on one line.
pub fn client(settings: &HttpSettings<'_>) -> Result<reqwest::Client, ConfigError> {
    let key = settings.key;
    let mut builder = reqwest::Client::builder().user_agent(USER_AGENT);
    if let Some(t) = settings.timeout {
        builder = builder.timeout(t);
    }
    if let Some(t) = settings.connect_timeout {
        builder = builder.connect_timeout(t);
    }
    if !settings.redirects {
        builder = builder.redirect(reqwest::redirect::Policy::none());
    }
    if let Some(path) = settings.ca_file {
        builder = builder.tls_certs_only(ca_bundle(key, path)?);
    }
    builder.build().map_err(|e| ConfigError::Invalid {
        key,
        message: format!(
            "cannot build the HTTP client: {}",
            error_chain(&e.without_url())
        ),
    })
}

/// The certificates of a PEM bundle; at least one.
fn ca_bundle(key: &'static str, path: &Path) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| ConfigError::Invalid {
        key,
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ConfigError::Invalid {
        key,
        message: format!(
            "{} is not a PEM bundle: {}",
            path.display(),
            error_chain(&e.without_url())
        ),
    })?;
    if certs.is_empty() {
        return Err(ConfigError::Invalid {
            key,
            message: format!("{} holds no certificate", path.display()),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ca_file: Option<&Path>) -> HttpSettings<'_> {
        HttpSettings {
            key: "x.ca_file",
            timeout: Some(Duration::from_secs(5)),
            connect_timeout: Some(Duration::from_secs(1)),
            ca_file,
            redirects: false,
        }
    }

    /// A self-signed CA (EC P-256, `openssl req -x509`); only parsed, never used to connect.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBezCCASGgAwIBAgIUNmasSpK0nctcYCQPw27cP3OY0BEwCgYIKoZIzj0EAwIw\n\
EjEQMA4GA1UEAwwHdGVzdC1jYTAgFw0yNjEyMDUwODU4NDRaGA8yMTI2MTExMTA4\n\
NTg0NFowEjEQMA4GA1UEAwwHdGVzdC1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEH\n\
A0IABFJsIm3RiIAEu7Ao8+VSGVT8nxrE3BHMRk3adRWOoJM0tD7cfcRXIwrMtytt\n\
slKFQKECogStLwdGZMtBVHf8rpSjUzBRMB0GA1UdDgQWBBSWTYGr/uXG6Yt4pWEh\n\
gSaHLWy8iDAfBgNVHSMEGDAWgBSWTYGr/uXG6Yt4pWEhgSaHLWy8iDAPBgNVHRMB\n\
Af8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIClXoBvyqhUF8ur3fadjfU9ik5q7\n\
j4ZtDx8R7Rf+sRgKAiEA7Zbrg3JKedR4QfehwTKhpn9hTbzkZ01aRXa+I5MsJgM=\n\
-----END CERTIFICATE-----\n\
";

    #[test]
    fn credentials_need_https_unless_loopback_or_allowed() {
        for ok in [
            "https://api.example.com",
            "http://127.0.0.1:8080/x",
            "http://[::1]:9200",
            "http://localhost:1/",
        ] {
            check_url("x.url", ok, false).unwrap();
        }
        let err = check_url("x.url", "http://es.corp.example:9200", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`x.url`") && err.contains("allow_insecure_http"),
            "{err}"
        );
        assert!(
            !err.contains('\n') && !err.contains("corp.example"),
            "{err}"
        );
        check_url("x.url", "http://es.corp.example:9200", true).unwrap();
        for bad in ["ftp://a.example", "http://u:pw@a.example", "not a url"] {
            let err = check_url("x.url", bad, true).unwrap_err().to_string();
            assert!(err.contains("`x.url`") && !err.contains("pw"), "{err}");
        }
    }

    #[test]
    fn a_bundle_of_one_or_more_cas_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.pem");
        std::fs::write(&one, CA_PEM).unwrap();
        client(&settings(Some(&one))).unwrap();
        let two = dir.path().join("two.pem");
        std::fs::write(&two, format!("{CA_PEM}{CA_PEM}")).unwrap();
        client(&settings(Some(&two))).unwrap();
    }

    #[test]
    fn builds_without_a_ca_file() {
        client(&settings(None)).unwrap();
        client(&HttpSettings {
            key: "x",
            timeout: None,
            connect_timeout: None,
            ca_file: None,
            redirects: true,
        })
        .unwrap();
    }

    #[test]
    fn ca_file_errors_name_the_key_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client(&settings(Some(&missing))).unwrap_err().to_string();
        assert!(
            err.contains("`x.ca_file`") && err.contains("cannot read"),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let err = client(&settings(Some(&empty))).unwrap_err().to_string();
        assert!(err.contains("`x.ca_file`"), "{err}");
        assert!(
            err.contains("no certificate") || err.contains("not a PEM"),
            "{err}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = client(&settings(Some(&garbage))).unwrap_err().to_string();
        assert!(err.contains("`x.ca_file`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
