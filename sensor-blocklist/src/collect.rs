//! Collecting the day's distinct alert source IPs from Elasticsearch.
//!
//! One paged composite aggregation per source (index pattern, IP field, device): the server
//! groups the documents by IP and returns 1,000 buckets a page, so a day of tens of millions of
//! alerts is read without loading a single document. Only APIs that Elasticsearch 7, 8, 9 and
//! OpenSearch share are used (`_search` with `composite`, `_mapping/field`), with plain
//! `application/json`, through the one Elasticsearch client the sink uses too
//! (`sensor_outputs::sink::elastic::client`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use sensor_model::{error::ConfigError, secret::SecretSource, text};
use sensor_outputs::sink::elastic::client::{EsClient, EsConnection, EsKeys};

/// `[[blocklist.sources]]`: where one kind of device writes its alerts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertSource {
    /// Index pattern, e.g. `ngfw-*` or `waf-alerts-*`.
    pub index: String,
    /// Field holding the attacker's address, e.g. `source.ip` or `src_ip`. A text field with a
    /// `.keyword` sub-field (Logstash's dynamic mapping) is read through the sub-field.
    pub field: String,
    /// Device name shown in the results (`NGFW`, `WAF`, ...).
    pub device: String,
    /// The alert's time field.
    #[serde(default = "default_timestamp_field")]
    pub timestamp_field: String,
}

fn default_timestamp_field() -> String {
    "@timestamp".into()
}

/// `[blocklist.elasticsearch]`: the log platform the alerts are read from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReadSection {
    /// Base URL of one node (or a load balancer).
    pub url: String,
    pub username: Option<String>,
    /// Basic-auth password: `{ env = "VAR" }` or `{ file = "/path" }`.
    pub password: Option<SecretSource>,
    /// API key (the base64 `id:key` form): `{ env = "VAR" }` or `{ file = "/path" }`.
    pub api_key: Option<SecretSource>,
    /// A PEM bundle of the CA certificates that signed the server's certificate; when set, the
    /// client trusts only these CAs (not the system's roots). Default: the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Buckets per composite-aggregation page: each page is one search over the day's alerts,
    /// so fewer, larger pages read less. The server's `search.max_buckets` (65,535 by default
    /// since Elasticsearch 7.10 and in OpenSearch; 10,000 before) is the upper bound; a server
    /// that refuses the size is asked again with halved pages.
    pub page_size: usize,
    pub timeout_secs: u64,
    /// Accept a plain `http://` `url` on a non-loopback host although `password` or `api_key` is
    /// set (the credential then crosses the network in clear). Default false.
    pub allow_insecure_http: bool,
    /// The most bytes of one answer read; a larger page is an error naming the cap, never
    /// buffered whole. Default 67108864 (64 MiB: a page of 65,535 buckets is about 15 MB).
    pub max_response_bytes: usize,
    /// The most composite pages read per source in one run; more means a runaway paging loop
    /// (or a server that never ends its `after_key`) and fails the collection. Default 10000.
    pub max_pages: u64,
    /// The most distinct addresses collected over all sources in one run; beyond it the
    /// collection fails rather than hand an unbounded set to the lookups. Default 1000000.
    pub max_addresses: usize,
}

impl Default for ReadSection {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:9200".into(),
            username: None,
            password: None,
            api_key: None,
            ca_file: None,
            page_size: 65_535,
            timeout_secs: 60,
            allow_insecure_http: false,
            max_response_bytes: sensor_outputs::sink::elastic::client::DEFAULT_MAX_RESPONSE_BYTES,
            max_pages: 10_000,
            max_addresses: 1_000_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("config key `{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("elasticsearch {what}: {message}")]
    Request { what: String, message: String },
}

/// What the alerts say about one source IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenIp {
    pub alerts: u64,
    pub devices: BTreeSet<String>,
    pub first: OffsetDateTime,
    pub last: OffsetDateTime,
}

/// The day's distinct IPs, with what was skipped.
#[derive(Debug, Default)]
pub struct Collected {
    pub ips: BTreeMap<IpAddr, SeenIp>,
    /// Alert documents in the day's buckets.
    pub alerts: u64,
    /// Bucket keys that are not an IP address (e.g. `-`), with their alert counts.
    pub unparsable: u64,
    /// Composite pages read.
    pub pages: u64,
}

/// The keys `[blocklist.elasticsearch]` errors name.
const KEYS: EsKeys = EsKeys {
    urls: "blocklist.elasticsearch.url",
    username: "blocklist.elasticsearch.username",
    password: "blocklist.elasticsearch.password",
    api_key: "blocklist.elasticsearch.api_key",
    ca_file: "blocklist.elasticsearch.ca_file",
};

impl ReadSection {
    /// The connection settings of the shared Elasticsearch client: one node, `timeout_secs`
    /// (at least 1) for each request.
    pub fn connection(&self) -> EsConnection<'_> {
        EsConnection {
            urls: std::slice::from_ref(&self.url),
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            api_key: self.api_key.as_ref(),
            ca_file: self.ca_file.as_deref(),
            timeout: Duration::from_secs(self.timeout_secs.max(1)),
            connect_timeout: None,
            allow_insecure_http: self.allow_insecure_http,
            max_response_bytes: self.max_response_bytes,
            keys: &KEYS,
        }
    }
}

/// The read side: the shared Elasticsearch client and the page size.
pub struct Reader {
    client: EsClient,
    page_size: usize,
    max_pages: u64,
    max_addresses: usize,
}

/// Longest server-given reason kept in an error (it reaches logs and the failure notice).
const MAX_REASON_CHARS: usize = 300;

impl Reader {
    pub fn new(cfg: &ReadSection) -> Result<Self, CollectError> {
        let client = EsClient::new(&cfg.connection()).map_err(|e| match e {
            ConfigError::Invalid { key, message } => CollectError::Config { key, message },
            other => CollectError::Config {
                key: "blocklist.elasticsearch",
                message: other.to_string(),
            },
        })?;
        for (key, zero) in [
            ("blocklist.elasticsearch.max_pages", cfg.max_pages == 0),
            (
                "blocklist.elasticsearch.max_addresses",
                cfg.max_addresses == 0,
            ),
            (
                "blocklist.elasticsearch.max_response_bytes",
                cfg.max_response_bytes == 0,
            ),
        ] {
            if zero {
                return Err(CollectError::Config {
                    key,
                    message: "must be greater than 0".into(),
                });
            }
        }
        Ok(Self {
            client,
            page_size: cfg.page_size.clamp(1, 65_535),
            max_pages: cfg.max_pages,
            max_addresses: cfg.max_addresses,
        })
    }

    async fn request(
        &self,
        what: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CollectError> {
        let err = |message: String| CollectError::Request {
            what: what.to_owned(),
            message,
        };
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        let (status, answer) = self
            .client
            .send(method, path, body)
            .await
            .map_err(|t| err(t.message))?;
        let body: Value = serde_json::from_slice(&answer).map_err(|e| {
            err(format!(
                "HTTP {status}, error decoding response body: {}",
                text::one_line(&e.to_string(), MAX_REASON_CHARS)
            ))
        })?;
        if !status.is_success() {
            // The server's words: one line, bounded, inert (they reach logs and chat).
            let reason = body["error"]["root_cause"][0]["reason"]
                .as_str()
                .or(body["error"]["reason"].as_str())
                .unwrap_or("no reason given");
            return Err(err(format!(
                "HTTP {status}: {}",
                text::one_line(reason, MAX_REASON_CHARS)
            )));
        }
        Ok(body)
    }

    /// The field to aggregate on: `field`, or `field.keyword` when `field` is text.
    async fn aggregatable(&self, src: &AlertSource) -> Result<String, CollectError> {
        let path = format!(
            "{}/_mapping/field/{}?ignore_unavailable=true&allow_no_indices=true",
            src.index, src.field
        );
        let m = self
            .request(
                &format!("mapping of {} in {}", src.field, src.index),
                reqwest::Method::GET,
                &path,
                None,
            )
            .await?;
        let text = m.as_object().is_some_and(|indices| {
            indices.values().any(|i| {
                i["mappings"][&src.field]["mapping"]
                    .as_object()
                    .and_then(|o| o.values().next())
                    .is_some_and(|f| f["type"] == "text" && f["fields"]["keyword"].is_object())
            })
        });
        Ok(if text {
            format!("{}.keyword", src.field)
        } else {
            src.field.clone()
        })
    }

    /// Every distinct source IP of alerts in `[from, to)`, over all sources.
    pub async fn collect(
        &self,
        sources: &[AlertSource],
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Collected, CollectError> {
        let mut out = Collected::default();
        for src in sources {
            let field = self.aggregatable(src).await?;
            let mut after: Option<Value> = None;
            let mut page_size = self.page_size;
            let mut pages = 0u64;
            loop {
                if pages >= self.max_pages {
                    return Err(CollectError::Request {
                        what: format!("alerts of {} in {}", src.device, src.index),
                        message: format!(
                            "more than blocklist.elasticsearch.max_pages = {} composite pages; \
                             stopped (a server that never ends its after_key, or raise the cap)",
                            self.max_pages
                        ),
                    });
                }
                pages += 1;
                let mut composite = json!({
                    "size": page_size,
                    "sources": [{"ip": {"terms": {"field": field}}}],
                });
                if let Some(a) = &after {
                    composite["after"] = a.clone();
                }
                let body = json!({
                    "size": 0,
                    "query": {"range": {src.timestamp_field.as_str(): {
                        "gte": rfc3339(from), "lt": rfc3339(to)
                    }}},
                    "aggs": {"ips": {
                        "composite": composite,
                        "aggs": {
                            "first": {"min": {"field": src.timestamp_field}},
                            "last": {"max": {"field": src.timestamp_field}},
                        }
                    }}
                });
                let path = format!(
                    "{}/_search?ignore_unavailable=true&allow_no_indices=true",
                    src.index
                );
                let page = match self
                    .request(
                        &format!("alerts of {} in {}", src.device, src.index),
                        reqwest::Method::POST,
                        &path,
                        Some(body),
                    )
                    .await
                {
                    Ok(p) => p,
                    // Elasticsearch before 7.10 caps a search at 10,000 buckets: ask again
                    // with smaller pages rather than fail the night.
                    Err(CollectError::Request { message, .. })
                        if page_size > 1000 && message.contains("too many buckets") =>
                    {
                        page_size = (page_size / 2).max(1000);
                        tracing::warn!(
                            page_size,
                            "server refused the page size; using smaller pages"
                        );
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let next = read_page(&page, &src.device, from, &mut out);
                if out.ips.len() > self.max_addresses {
                    return Err(CollectError::Request {
                        what: format!("alerts of {} in {}", src.device, src.index),
                        message: format!(
                            "more than blocklist.elasticsearch.max_addresses = {} distinct \
                             addresses; stopped",
                            self.max_addresses
                        ),
                    });
                }
                match next {
                    Some(a) if Some(&a) == after.as_ref() => {
                        return Err(CollectError::Request {
                            what: format!("alerts of {} in {}", src.device, src.index),
                            message: "the server returned the same after_key twice; stopped".into(),
                        });
                    }
                    Some(a) => after = Some(a),
                    None => break,
                }
            }
        }
        Ok(out)
    }
}

/// Adds one page of the composite aggregation (an answer from the server) to `out`; returns the
/// `after_key` to ask for the next page, or `None` after the last.
pub fn read_page(
    page: &Value,
    device: &str,
    from: OffsetDateTime,
    out: &mut Collected,
) -> Option<Value> {
    out.pages += 1;
    let agg = &page["aggregations"]["ips"];
    let buckets = agg["buckets"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for b in buckets {
        let n = b["doc_count"].as_u64().unwrap_or(0);
        out.alerts += n;
        let key = &b["key"]["ip"];
        let ip = key.as_str().and_then(|s| s.trim().parse::<IpAddr>().ok());
        let Some(ip) = ip else {
            out.unparsable += n;
            continue;
        };
        let first = millis(&b["first"]["value"]).unwrap_or(from);
        let last = millis(&b["last"]["value"]).unwrap_or(first);
        let e = out.ips.entry(ip).or_insert_with(|| SeenIp {
            alerts: 0,
            devices: BTreeSet::new(),
            first,
            last,
        });
        e.alerts += n;
        e.devices.insert(device.to_owned());
        e.first = e.first.min(first);
        e.last = e.last.max(last);
    }
    match agg.get("after_key") {
        Some(a) if !a.is_null() && !buckets.is_empty() => Some(a.clone()),
        _ => None,
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn millis(v: &Value) -> Option<OffsetDateTime> {
    let ms = v.as_f64()?;
    OffsetDateTime::from_unix_timestamp_nanos((ms * 1e6) as i128).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(cfg: &ReadSection) -> &'static str {
        match Reader::new(cfg) {
            Err(CollectError::Config { key, .. }) => key,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn errors_name_the_blocklist_keys() {
        let url = |url: &str| ReadSection {
            url: url.into(),
            ..ReadSection::default()
        };
        assert_eq!(key_of(&url("no url")), "blocklist.elasticsearch.url");
        assert_eq!(
            key_of(&url("http://u:p@127.0.0.1:9200")),
            "blocklist.elasticsearch.url"
        );
        let alone = ReadSection {
            username: Some("elastic".into()),
            ..ReadSection::default()
        };
        assert_eq!(key_of(&alone), "blocklist.elasticsearch.username");
        let unset = ReadSection {
            api_key: Some(SecretSource::default()),
            ..ReadSection::default()
        };
        assert_eq!(key_of(&unset), "blocklist.elasticsearch.api_key");
        let ca = ReadSection {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..ReadSection::default()
        };
        assert_eq!(key_of(&ca), "blocklist.elasticsearch.ca_file");
        Reader::new(&ReadSection::default()).unwrap();
    }
}
