//! The one Elasticsearch client, shared by the sink's worker and the nightly job's alert reader
//! (`sensor_blocklist::collect`): nodes used in turn, authentication (basic or API key), TLS
//! (`ca_file`: the only CAs trusted), one HTTP client built by `sensor_model::http`.
//!
//! It sends one request and returns the answer; what to retry, and when, is the caller's.

use std::{
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use reqwest::{Method, StatusCode, header::HeaderValue};

use sensor_model::{
    error::{ConfigError, error_chain},
    http::{self, HttpSettings},
    secret::{Secret, SecretSource},
};

/// The config keys a section's errors name (`elasticsearch.*`, `blocklist.elasticsearch.*`).
#[derive(Debug, Clone, Copy)]
pub struct EsKeys {
    pub urls: &'static str,
    pub username: &'static str,
    pub password: &'static str,
    pub api_key: &'static str,
    /// Also named when the HTTP client cannot be built (TLS is the only setting that can fail).
    pub ca_file: &'static str,
}

/// Where and how to connect, read from a config section.
#[derive(Debug, Clone, Copy)]
pub struct EsConnection<'a> {
    /// Node URLs, used in turn; credentials are refused (they belong in the fields below).
    pub urls: &'a [String],
    /// Basic authentication, with `password`.
    pub username: Option<&'a str>,
    pub password: Option<&'a SecretSource>,
    /// `Authorization: ApiKey <value>` (the base64 `id:api_key` form); wins over basic
    /// authentication when both are set.
    pub api_key: Option<&'a SecretSource>,
    /// A PEM bundle: when set, only these CAs are trusted.
    pub ca_file: Option<&'a Path>,
    /// Time limit of one request.
    pub timeout: Duration,
    /// Time limit of connecting; `None`: only `timeout`.
    pub connect_timeout: Option<Duration>,
    /// Accept plain `http://` node URLs on non-loopback hosts although credentials are set.
    pub allow_insecure_http: bool,
    /// The most bytes of one answer read; a larger answer is an error, not read further.
    pub max_response_bytes: usize,
    pub keys: &'a EsKeys,
}

enum Auth {
    None,
    Basic { user: String, password: Secret },
    ApiKey(HeaderValue),
}

/// A client of one cluster. `Debug` shows the nodes and the kind of authentication only.
pub struct EsClient {
    http: reqwest::Client,
    /// Base URLs without a trailing slash; no credentials.
    nodes: Vec<String>,
    next: AtomicUsize,
    auth: Auth,
    max_response_bytes: usize,
}

impl std::fmt::Debug for EsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::Basic { .. } => "basic",
            Auth::ApiKey(_) => "api_key",
        };
        f.debug_struct("EsClient")
            .field("nodes", &self.nodes)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

/// Why a request got no HTTP answer. Holds no URL (reqwest's errors are stripped of it).
#[derive(Debug, Clone)]
pub struct Transport {
    /// The node's base URL.
    pub node: String,
    /// The error and its causes on one line.
    pub message: String,
}

/// The default cap of one answer: a composite page of 65,535 buckets with its two
/// sub-aggregations is about 15 MB, a bulk answer of 1,000 items well under 1 MB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.node, self.message)
    }
}

impl EsClient {
    /// Resolves the secrets, checks the URLs and builds the HTTP client. Errors name the
    /// section's keys.
    pub fn new(c: &EsConnection<'_>) -> Result<Self, ConfigError> {
        let keys = c.keys;
        let invalid = |key, message: String| ConfigError::Invalid { key, message };
        if c.urls.is_empty() {
            return Err(invalid(keys.urls, "needs at least one node URL".into()));
        }
        for u in c.urls {
            // The error holds no URL: the URL itself may hold a password.
            let url = reqwest::Url::parse(u)
                .map_err(|e| invalid(keys.urls, format!("not a URL: {e}")))?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(invalid(
                    keys.urls,
                    "put credentials in `username`/`password`, not in the URL".into(),
                ));
            }
        }
        let auth = match (c.username, c.password, c.api_key) {
            (_, _, Some(key)) => {
                let key = key.resolve(keys.api_key)?;
                let mut v =
                    HeaderValue::from_str(&format!("ApiKey {}", key.expose())).map_err(|_| {
                        invalid(
                            keys.api_key,
                            "the key holds characters a header cannot carry".into(),
                        )
                    })?;
                v.set_sensitive(true);
                Auth::ApiKey(v)
            }
            (Some(user), Some(pw), None) => Auth::Basic {
                user: user.to_owned(),
                password: pw.resolve(keys.password)?,
            },
            (None, None, None) => Auth::None,
            _ => {
                return Err(invalid(
                    keys.username,
                    "set both `username` and `password`, or `api_key`".into(),
                ));
            }
        };
        if !matches!(auth, Auth::None) {
            for u in c.urls {
                http::check_url(keys.urls, u, c.allow_insecure_http)?;
            }
        }
        if c.max_response_bytes == 0 {
            return Err(invalid(
                keys.urls,
                "max_response_bytes must be above 0".into(),
            ));
        }
        let http = http::client(&HttpSettings {
            key: keys.ca_file,
            timeout: Some(c.timeout),
            connect_timeout: c.connect_timeout,
            ca_file: c.ca_file,
            // Requests carry the password or API key; Elasticsearch never redirects, so a
            // redirect is a proxy's doing and following it could hand the credential on.
            redirects: false,
        })?;
        Ok(Self {
            http,
            nodes: c
                .urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            next: AtomicUsize::new(0),
            auth,
            max_response_bytes: c.max_response_bytes,
        })
    }

    /// One request to the next node (round-robin): `path` is relative to the node's URL (it may
    /// hold a query), `body` its content type and bytes. Returns the answer's status and body,
    /// whatever the status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(StatusCode, Vec<u8>), Transport> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let node = &self.nodes[i % self.nodes.len()];
        let mut req = self
            .http
            .request(method, format!("{node}/{path}"))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some((content_type, bytes)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        req = match &self.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password.expose())),
            Auth::ApiKey(v) => req.header(reqwest::header::AUTHORIZATION, v.clone()),
        };
        let fail = |e: reqwest::Error| Transport {
            node: node.clone(),
            message: error_chain(&e.without_url()),
        };
        let resp = req.send().await.map_err(fail)?;
        let status = resp.status();
        let bytes = http::read_capped(resp, self.max_response_bytes)
            .await
            .map_err(|e| Transport {
                node: node.clone(),
                message: e.to_string(),
            })?;
        Ok((status, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: EsKeys = EsKeys {
        urls: "t.urls",
        username: "t.username",
        password: "t.password",
        api_key: "t.api_key",
        ca_file: "t.ca_file",
    };

    fn conn(urls: &[String]) -> EsConnection<'_> {
        EsConnection {
            urls,
            username: None,
            password: None,
            api_key: None,
            ca_file: None,
            timeout: Duration::from_secs(1),
            connect_timeout: None,
            allow_insecure_http: false,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            keys: &KEYS,
        }
    }

    fn key_of(e: ConfigError) -> &'static str {
        match e {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn errors_name_the_sections_keys() {
        let none: Vec<String> = Vec::new();
        assert_eq!(key_of(EsClient::new(&conn(&none)).unwrap_err()), "t.urls");
        let bad = vec!["not a url".to_owned()];
        assert_eq!(key_of(EsClient::new(&conn(&bad)).unwrap_err()), "t.urls");
        let creds = vec!["http://u:secret@127.0.0.1:9200".to_owned()];
        let e = EsClient::new(&conn(&creds)).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert_eq!(key_of(e), "t.urls");

        let ok = vec!["http://127.0.0.1:9200/".to_owned()];
        let alone = EsConnection {
            username: Some("elastic"),
            ..conn(&ok)
        };
        assert_eq!(key_of(EsClient::new(&alone).unwrap_err()), "t.username");
        let unset = SecretSource::default();
        let key = EsConnection {
            api_key: Some(&unset),
            ..conn(&ok)
        };
        assert_eq!(key_of(EsClient::new(&key).unwrap_err()), "t.api_key");
        let missing = Path::new("/nonexistent/ca.pem");
        let ca = EsConnection {
            ca_file: Some(missing),
            ..conn(&ok)
        };
        assert_eq!(key_of(EsClient::new(&ca).unwrap_err()), "t.ca_file");

        let client = EsClient::new(&conn(&ok)).unwrap();
        assert_eq!(client.nodes, ["http://127.0.0.1:9200"]);
    }

    #[test]
    fn credentials_over_plain_http_need_an_explicit_yes() {
        let dir = tempfile::tempdir().unwrap();
        let pw_file = dir.path().join("pw");
        std::fs::write(&pw_file, "hunter2").unwrap();
        let pw = SecretSource {
            env: None,
            file: Some(pw_file),
        };
        let remote = vec!["http://es.corp.example:9200".to_owned()];
        let basic = EsConnection {
            username: Some("elastic"),
            password: Some(&pw),
            ..conn(&remote)
        };
        let e = EsClient::new(&basic).unwrap_err();
        assert!(e.to_string().contains("allow_insecure_http"), "{e}");
        assert_eq!(key_of(e), "t.urls");
        EsClient::new(&EsConnection {
            allow_insecure_http: true,
            ..basic
        })
        .unwrap();
        // Without credentials nothing secret travels; with https or on loopback it is fine.
        EsClient::new(&conn(&remote)).unwrap();
        let tls = vec!["https://es.corp.example:9200".to_owned()];
        EsClient::new(&EsConnection {
            urls: &tls,
            ..basic
        })
        .unwrap();
    }

    #[tokio::test]
    async fn nodes_are_used_in_turn() {
        // Nothing listens on port 9 of the loopback: each request fails at once, naming its node.
        let urls = vec![
            "http://127.0.0.1:9".to_owned(),
            "http://127.0.0.2:9/".to_owned(),
        ];
        let client = EsClient::new(&conn(&urls)).unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let t = client.send(Method::GET, "", None).await.unwrap_err();
            assert!(!t.message.contains('\n'), "{t}");
            seen.push(t.node);
        }
        assert_eq!(
            seen,
            [
                "http://127.0.0.1:9",
                "http://127.0.0.2:9",
                "http://127.0.0.1:9"
            ]
        );
    }
}
