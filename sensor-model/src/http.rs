//! The one HTTP client builder every HTTP client of the sensor uses (Elasticsearch, ThreatBook,
//! WeCom, webhooks): the same user agent, the same timeouts' meaning, the same `ca_file`.

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
