//! ThreatBook v3 client: domain verdicts from the compromise-detection scene (`/v3/scene/dns`)
//! and IP verdicts from the IP reputation scene (`/v3/scene/ip_reputation`).
//!
//! Every assumption about ThreatBook's wire format lives in this module. What was checked, and
//! against what (the official API pages at `x.threatbook.com/v5/apiDocs` are a JavaScript app that
//! could not be read here, so the sources are second-hand; each is named where it is used):
//!
//! - Endpoints `https://api.threatbook.cn/v3/scene/dns` and `/v3/scene/ip_reputation`, parameters
//!   `apikey`, `resource` (comma-separated, "up to 100"), `lang` (`zh`/`en`, English when absent):
//!   Fortinet's FortiSOAR ThreatBook connector (`fortinet-fortisoar/connector-threatbook`,
//!   `threatbook/info.json`, operations `loss_detection` and `get_ip_reputation`), whose parameter
//!   texts paraphrase the official pages; ThreatBook's own Python samples as copied in several
//!   public clients send `requests.request("POST", url, params=query)`, i.e. POST with the
//!   parameters in the query string, which is what we do.
//! - Envelope `{"response_code": int, "verbose_msg": str, "data": ...}`; `response_code`, not the
//!   HTTP status, tells success: the same connector's output schemas, and the response-code table
//!   `0 成功, 1 部分成功, 2 没有数据, -1 权限受限或请求出错, -2 请求无效, -3 请求参数缺失,
//!   -4 超出请求限制, -5 系统错误` with the `verbose_msg` values (`Invalid API Key`,
//!   `Invalid Access IP`, `Frequent Limitation`, `Beyond Limitation`, `System Error`, `No Data`, ...)
//!   as reproduced in `NAXG/ThreatMCP` (`threatbook_mcp/response_handler.py`).
//! - `/v3/scene/dns` answers `data.domains.<name>` and `data.ips.<ip>` (connector output schema
//!   `{"data": {"ips": {}, "domains": {}}}`); the per-indicator fields `is_malicious`,
//!   `confidence_level`, `severity`, `judgments`, `tags_classes` (`[{"tags_type", "tags": [..]}]`),
//!   `permalink`: the connector's schemas for the same family of answers and a design note citing
//!   the official page (`x.threatbook.com/apiDocs`) for this endpoint.
//! - `/v3/scene/ip_reputation` answers `data.<ip>` with `is_malicious`, `confidence_level`,
//!   `severity`, `judgments`, `tags_classes`, `basic {carrier, location {country, province, city,
//!   lng, lat, country_code}}`, `asn {rank, info, number}`, `scene`, `update_time`: the connector's
//!   `get_ip_reputation` output schema and a captured real answer in `Catsofsuffering/xThreatBook`
//!   (`Readme.md`), where `asn.number` is a JSON number. No `permalink` appears there.
//!
//! Not verified (no source found): whether `/v3/scene/dns` lists names it knows nothing about
//! (we accept both: absent means no finding, present with `is_malicious: false` is a clean
//! finding); what exactly `response_code` 1 leaves out; what a request with more than 100
//! resources gets back (we never send one); whether the POST form body is accepted instead of the
//! query string (it would keep the key out of URLs, but we keep to the documented samples).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Deserializer};

use crate::{Answers, LookupError, Provider, batch::Limits};
use sensor_model::verdict::{Confidence, Finding, IpContext, Severity};
use sensor_model::{
    error::ConfigError,
    http::{self, HttpSettings},
    secret::{Secret, SecretSource},
};

/// The provider name in findings, counters and errors.
pub const PROVIDER: &str = "threatbook";

/// The most resources ThreatBook accepts in one `resource` parameter ("up to 100").
pub const MAX_RESOURCES: usize = 100;

/// Path of the compromise-detection scene, which answers for domain names.
const DNS_PATH: &str = "v3/scene/dns";
/// Path of the IP reputation scene.
const IP_PATH: &str = "v3/scene/ip_reputation";

/// Answers are a few hundred bytes per indicator; anything far larger is not a ThreatBook answer,
/// and reading it whole would let a broken proxy exhaust memory.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// `verbose_msg` is echoed into errors; a broken proxy could send a page of HTML.
const MAX_MESSAGE_CHARS: usize = 200;

/// Language of the free-text parts of an answer (`judgments`, tag names).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    En,
    Zh,
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Zh => "zh",
        }
    }
}

/// `[intel.threatbook]`: the ThreatBook v3 cloud API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ThreatBookSection {
    /// API root; `/v3/scene/...` is appended. `https` is required except for a loopback host
    /// (tests, a local forwarding proxy) or with `allow_insecure_http`, because the API key
    /// travels in the query string.
    pub base_url: String,
    /// Accept a plain `http://` `base_url` on a non-loopback host (the key then crosses the
    /// network in clear). Default false.
    pub allow_insecure_http: bool,
    /// Where the API key comes from: `{ file = "/path" }` (default: the `LoadCredential=` file
    /// `/run/credentials/dns-sensor.service/secret_threatbook_key`) or `{ env = "VAR" }`.
    pub api_key: SecretSource,
    /// Language of judgments and tags in answers: `en` or `zh`.
    pub lang: Lang,
    /// `[intel.threatbook.limits]`: batching, concurrency, rate, quota, timeout, breaker.
    /// `batch_size` may not exceed 100 (ThreatBook's limit per request).
    pub limits: Limits,
}

impl Default for ThreatBookSection {
    fn default() -> Self {
        Self {
            base_url: "https://api.threatbook.cn".into(),
            allow_insecure_http: false,
            // The credential the packaged unit hands over (LoadCredential=): a file readable by
            // the service alone, rather than the environment.
            api_key: SecretSource {
                env: None,
                file: Some("/run/credentials/dns-sensor.service/secret_threatbook_key".into()),
            },
            lang: Lang::En,
            limits: Limits::default(),
        }
    }
}

impl ThreatBookSection {
    /// Checks what ThreatBook constrains; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.endpoint_base()?;
        if self.api_key.is_unset() {
            return Err(ConfigError::Invalid {
                key: "intel.threatbook.api_key",
                message: "no secret source: set `env` or `file`".into(),
            });
        }
        if self.api_key.env.is_some() && self.api_key.file.is_some() {
            return Err(ConfigError::Invalid {
                key: "intel.threatbook.api_key",
                message: "set either `env` or `file`, not both".into(),
            });
        }
        let limits = &self.limits;
        if !(1..=MAX_RESOURCES).contains(&limits.batch_size) {
            return Err(ConfigError::Invalid {
                key: "intel.threatbook.limits.batch_size",
                message: format!(
                    "{} is outside 1..={MAX_RESOURCES} (ThreatBook's limit per request)",
                    limits.batch_size
                ),
            });
        }
        if limits.timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "intel.threatbook.limits.timeout_ms",
                message: "must be above 0".into(),
            });
        }
        if limits.max_concurrency == 0 {
            return Err(ConfigError::Invalid {
                key: "intel.threatbook.limits.max_concurrency",
                message: "must be at least 1".into(),
            });
        }
        if !(limits.requests_per_second.is_finite() && limits.requests_per_second > 0.0) {
            return Err(ConfigError::Invalid {
                key: "intel.threatbook.limits.requests_per_second",
                message: format!("{} is not a positive number", limits.requests_per_second),
            });
        }
        Ok(())
    }

    /// Resolves the API key from its source.
    pub fn resolve_api_key(&self) -> Result<Secret, ConfigError> {
        self.api_key.resolve("intel.threatbook.api_key")
    }

    /// The base URL, checked, with a trailing slash so that joining keeps any path prefix.
    fn endpoint_base(&self) -> Result<Url, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "intel.threatbook.base_url",
            message,
        };
        let mut url = http::check_url(
            "intel.threatbook.base_url",
            &self.base_url,
            self.allow_insecure_http,
        )?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("must not have a query or fragment".into()));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(url)
    }
}

/// The ThreatBook provider. One HTTP client (one connection pool) for all calls.
///
/// `Debug` shows no key: [`Secret`] prints `Secret(***)` and the URLs hold none.
#[derive(Debug)]
pub struct ThreatBook {
    client: reqwest::Client,
    api_key: Secret,
    dns_url: Url,
    ip_url: Url,
    lang: Lang,
    max_batch: usize,
    timeout: Duration,
}

impl ThreatBook {
    /// Builds the client from a validated section and the resolved key.
    pub fn new(section: &ThreatBookSection, api_key: Secret) -> Result<Self, ConfigError> {
        section.validate()?;
        let base = section.endpoint_base()?;
        let join = |path: &str| {
            base.join(path).map_err(|e| ConfigError::Invalid {
                key: "intel.threatbook.base_url",
                message: format!("cannot append {path}: {e}"),
            })
        };
        let timeout = Duration::from_millis(section.limits.timeout_ms);
        let client = http::client(&HttpSettings {
            key: "intel.threatbook",
            timeout: None,
            connect_timeout: Some(timeout),
            ca_file: None,
            // A redirect would be a misconfiguration; following it could carry the key elsewhere.
            redirects: false,
        })?;
        Ok(Self {
            client,
            api_key,
            dns_url: join(DNS_PATH)?,
            ip_url: join(IP_PATH)?,
            lang: section.lang,
            max_batch: section.limits.batch_size,
            timeout,
        })
    }

    /// Resolves the key from the section's source and builds the client.
    pub fn from_section(section: &ThreatBookSection) -> Result<Self, ConfigError> {
        Self::new(section, section.resolve_api_key()?)
    }

    async fn domains(&self, names: &[String]) -> Result<Answers<String>, LookupError> {
        let mut asked = HashSet::with_capacity(names.len());
        let mut resources = Vec::with_capacity(names.len());
        for name in names {
            // The resource list is comma-separated, and a DNS label may hold any byte: a name
            // with a comma would smuggle extra resources into the call. ThreatBook cannot know
            // names outside hostname syntax anyway, so they are left unanswered (no finding).
            if !is_sendable_name(name) {
                tracing::debug!(
                    provider = PROVIDER,
                    "skipping a name outside hostname syntax"
                );
                continue;
            }
            if asked.insert(name.as_str()) {
                resources.push(name.as_str());
            }
        }
        if resources.is_empty() {
            return Ok(Answers::new());
        }
        self.check_batch(resources.len())?;
        let body = self.call(&self.dns_url, &resources.join(",")).await?;
        parse_domains(&body, &asked)
    }

    async fn ips(&self, ips: &[IpAddr]) -> Result<Answers<IpAddr>, LookupError> {
        let asked: HashSet<IpAddr> = ips.iter().copied().collect();
        if asked.is_empty() {
            return Ok(Answers::new());
        }
        self.check_batch(asked.len())?;
        let resources = asked
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let body = self.call(&self.ip_url, &resources).await?;
        parse_ips(&body, &asked)
    }

    /// The batcher honours [`Provider::max_batch`]; a larger batch is a bug on our side, refused
    /// before anything is sent (code 0: ThreatBook never saw it).
    fn check_batch(&self, n: usize) -> Result<(), LookupError> {
        if n > self.max_batch {
            return Err(LookupError::Request {
                provider: PROVIDER.into(),
                code: 0,
                message: format!(
                    "batch of {n} exceeds the limit of {}; not sent",
                    self.max_batch
                ),
            });
        }
        Ok(())
    }

    /// One request, bounded by the timeout as a whole (connect, send, and reading the body).
    /// Returns the JSON `data` of a successful answer.
    async fn call(&self, url: &Url, resources: &str) -> Result<Data, LookupError> {
        let started = Instant::now();
        let exchange = async {
            let mut response = self
                .client
                .post(url.clone())
                .query(&[
                    ("apikey", self.api_key.expose()),
                    ("resource", resources),
                    ("lang", self.lang.as_str()),
                ])
                .timeout(self.timeout)
                .send()
                .await
                .map_err(|e| self.reqwest_error(e))?;
            let status = response.status();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| self.reqwest_error(e))? {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(LookupError::Protocol {
                        provider: PROVIDER.into(),
                        message: format!(
                            "answer larger than {MAX_BODY_BYTES} bytes (HTTP {status})"
                        ),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.timeout_error())??;
        let result = classify(status, &body).map_err(|e| self.redact(e));
        tracing::debug!(
            provider = PROVIDER,
            path = url.path(),
            http_status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.reason(),
            },
            "threatbook call"
        );
        result
    }

    fn timeout_error(&self) -> LookupError {
        LookupError::Timeout {
            provider: PROVIDER.into(),
            millis: self.timeout.as_millis() as u64,
        }
    }

    /// Maps a reqwest error without its URL (which holds the key in its query string); the
    /// source chain is kept for diagnosis (refused, reset, TLS, ...), with the key scrubbed in
    /// case some layer ever echoes it.
    fn reqwest_error(&self, e: reqwest::Error) -> LookupError {
        let e = e.without_url();
        if e.is_timeout() {
            return self.timeout_error();
        }
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        self.redact(LookupError::Transport {
            provider: PROVIDER.into(),
            message,
        })
    }

    /// Removes the key from an error's message, whatever produced it.
    fn redact(&self, e: LookupError) -> LookupError {
        let key = self.api_key.expose();
        let scrub = |m: String| {
            if key.is_empty() {
                m
            } else {
                m.replace(key, "***")
            }
        };
        match e {
            LookupError::Access { provider, message } => LookupError::Access {
                provider,
                message: scrub(message),
            },
            LookupError::Request {
                provider,
                code,
                message,
            } => LookupError::Request {
                provider,
                code,
                message: scrub(message),
            },
            LookupError::RateLimited { provider, message } => LookupError::RateLimited {
                provider,
                message: scrub(message),
            },
            LookupError::Server { provider, message } => LookupError::Server {
                provider,
                message: scrub(message),
            },
            LookupError::Transport { provider, message } => LookupError::Transport {
                provider,
                message: scrub(message),
            },
            LookupError::Protocol { provider, message } => LookupError::Protocol {
                provider,
                message: scrub(message),
            },
            other @ (LookupError::Timeout { .. } | LookupError::CircuitOpen { .. }) => other,
        }
    }
}

impl Provider for ThreatBook {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn lookup_domains<'a>(
        &'a self,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<Answers<String>, LookupError>> {
        Box::pin(self.domains(names))
    }

    fn lookup_ips<'a>(
        &'a self,
        ips: &'a [IpAddr],
    ) -> BoxFuture<'a, Result<Answers<IpAddr>, LookupError>> {
        Box::pin(self.ips(ips))
    }
}

/// Hostname syntax as DNS carries it (IDNs arrive as `xn--` labels): letters, digits, `-`, `_`
/// (service labels such as `_dmarc`) and dots, at most 253 characters.
fn is_sendable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

// ---------------------------------------------------------------------------------------------
// Wire format. Unknown fields are ignored: ThreatBook adds fields over time, and only the ones
// below carry meaning for us.

/// The envelope of every answer.
#[derive(Debug, Deserialize)]
struct Envelope {
    response_code: i64,
    #[serde(default, deserialize_with = "null_default")]
    verbose_msg: String,
    #[serde(default)]
    data: serde_json::Value,
}

/// The `data` of a successful answer; `Null` for "no data".
type Data = serde_json::Value;

/// `/v3/scene/dns` data: `{"domains": {...}, "ips": {...}}`. We send only names, so `ips` is
/// not read.
#[derive(Debug, Deserialize)]
struct DnsData {
    #[serde(default, deserialize_with = "null_default")]
    domains: HashMap<String, WireVerdict>,
}

/// One indicator's verdict, in both scenes (`basic` and `asn` only in IP reputation).
#[derive(Debug, Deserialize)]
struct WireVerdict {
    is_malicious: bool,
    #[serde(default, deserialize_with = "null_default")]
    severity: String,
    #[serde(default, deserialize_with = "null_default")]
    confidence_level: String,
    #[serde(default, deserialize_with = "null_default")]
    judgments: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    tags_classes: Vec<WireTagClass>,
    #[serde(default, deserialize_with = "null_default")]
    permalink: String,
    #[serde(default)]
    basic: Option<WireBasic>,
    #[serde(default)]
    asn: Option<WireAsn>,
}

#[derive(Debug, Deserialize)]
struct WireTagClass {
    #[serde(default, deserialize_with = "null_default")]
    tags_type: String,
    #[serde(default, deserialize_with = "null_default")]
    tags: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireBasic {
    #[serde(default, deserialize_with = "null_default")]
    carrier: String,
    #[serde(default, deserialize_with = "null_default")]
    location: WireLocation,
}

#[derive(Debug, Default, Deserialize)]
struct WireLocation {
    #[serde(default, deserialize_with = "null_default")]
    country: String,
    #[serde(default, deserialize_with = "null_default")]
    province: String,
    #[serde(default, deserialize_with = "null_default")]
    city: String,
}

#[derive(Debug, Default, Deserialize)]
struct WireAsn {
    /// A JSON number in the captured answer; placeholders in schemas are strings, so both are
    /// read, and anything else (empty, out of range) is no AS number.
    #[serde(default, deserialize_with = "lenient_u32")]
    number: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    info: String,
}

/// `null` reads as the default, like an absent field.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

fn protocol(message: impl Into<String>) -> LookupError {
    LookupError::Protocol {
        provider: PROVIDER.into(),
        message: message.into(),
    }
}

/// The provider's message, cut and made inert for logs, errors and alert messages (it is text
/// a proxy in between could choose).
fn short(msg: &str) -> String {
    sensor_model::text::one_line(msg, MAX_MESSAGE_CHARS)
}

/// Decides from `response_code` (not the HTTP status) when the body is a ThreatBook envelope;
/// otherwise from the HTTP status. Returns the `data` of a usable answer (`Null`: no data).
pub fn classify(status: StatusCode, body: &[u8]) -> Result<Data, LookupError> {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(err) => {
            let provider = PROVIDER.to_string();
            return Err(if status.is_server_error() {
                LookupError::Server {
                    provider,
                    message: format!("HTTP {status}"),
                }
            } else if status == StatusCode::TOO_MANY_REQUESTS {
                LookupError::RateLimited {
                    provider,
                    message: format!("HTTP {status}"),
                }
            } else {
                protocol(format!(
                    "HTTP {status}, not a ThreatBook answer: {}",
                    short(&err.to_string())
                ))
            });
        }
    };
    let provider = PROVIDER.to_string();
    let message = short(&envelope.verbose_msg);
    match envelope.response_code {
        0 => Ok(envelope.data),
        // Partial success. When the account's limit cut the batch short, the names left out
        // were not looked up, and reading them as clean would be wrong: back off instead.
        // Otherwise (e.g. "Invalid data format" for some resources) the answered part stands,
        // and the resources ThreatBook could not read get no finding.
        1 if message.to_ascii_lowercase().contains("limit") => {
            Err(LookupError::RateLimited { provider, message })
        }
        1 => Ok(envelope.data),
        // "No Data": the query worked and ThreatBook knows none of the resources.
        2 => Ok(Data::Null),
        -1 => Err(LookupError::Access { provider, message }),
        code @ (-2 | -3) => Err(LookupError::Request {
            provider,
            code,
            message,
        }),
        -4 => Err(LookupError::RateLimited { provider, message }),
        -5 => Err(LookupError::Server { provider, message }),
        code => Err(protocol(format!("unknown response_code {code}: {message}"))),
    }
}

/// An empty `data` may come as `null`, `{}` or `[]`.
fn is_empty_data(data: &Data) -> bool {
    match data {
        Data::Null => true,
        Data::Array(a) => a.is_empty(),
        Data::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Maps the `/v3/scene/dns` data to findings for the names asked about.
pub fn parse_domains(data: &Data, asked: &HashSet<&str>) -> Result<Answers<String>, LookupError> {
    if is_empty_data(data) {
        return Ok(Answers::new());
    }
    let data = DnsData::deserialize(data).map_err(|e| protocol(format!("data.domains: {e}")))?;
    let mut answers = Answers::with_capacity(data.domains.len());
    for (name, verdict) in data.domains {
        let name = sensor_model::verdict::normalise(&name);
        if asked.contains(name.as_str()) {
            answers.insert(name, finding(verdict, false));
        } else {
            tracing::debug!(
                provider = PROVIDER,
                "ignoring an answer for a name not asked about"
            );
        }
    }
    Ok(answers)
}

/// Maps the `/v3/scene/ip_reputation` data (`data.<ip>`) to findings for the IPs asked about.
pub fn parse_ips(data: &Data, asked: &HashSet<IpAddr>) -> Result<Answers<IpAddr>, LookupError> {
    if is_empty_data(data) {
        return Ok(Answers::new());
    }
    let data = HashMap::<String, WireVerdict>::deserialize(data)
        .map_err(|e| protocol(format!("data: {e}")))?;
    let mut answers = Answers::with_capacity(data.len());
    for (key, verdict) in data {
        // IPv6 may come back in another spelling; parsing compares addresses, not strings.
        match key.parse::<IpAddr>() {
            Ok(ip) if asked.contains(&ip) => {
                answers.insert(ip, finding(verdict, true));
            }
            _ => tracing::debug!(
                provider = PROVIDER,
                "ignoring an answer for an IP not asked about"
            ),
        }
    }
    Ok(answers)
}

fn non_empty(s: String) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn severity(s: &str) -> Option<Severity> {
    match s.trim().to_ascii_lowercase().as_str() {
        "info" => Some(Severity::Info),
        "low" => Some(Severity::Low),
        "medium" => Some(Severity::Medium),
        "high" => Some(Severity::High),
        "critical" => Some(Severity::Critical),
        _ => None,
    }
}

fn confidence(s: &str) -> Option<Confidence> {
    match s.trim().to_ascii_lowercase().as_str() {
        "low" => Some(Confidence::Low),
        "medium" => Some(Confidence::Medium),
        "high" => Some(Confidence::High),
        _ => None,
    }
}

/// One verdict as a [`Finding`]. Unknown severity or confidence words become `None` rather than
/// failing the batch: the verdict itself (`is_malicious`) is what matters.
fn finding(v: WireVerdict, with_ip_context: bool) -> Finding {
    let tags = v
        .tags_classes
        .into_iter()
        .flat_map(|class| {
            let kind = class.tags_type.trim().to_owned();
            class
                .tags
                .into_iter()
                .filter(|t| !t.trim().is_empty())
                .map(move |tag| {
                    if kind.is_empty() {
                        tag
                    } else {
                        format!("{kind}:{tag}")
                    }
                })
        })
        .collect();
    let ip_context = with_ip_context.then(|| {
        let basic = v.basic.unwrap_or_default();
        let asn = v.asn.unwrap_or_default();
        IpContext {
            carrier: non_empty(basic.carrier),
            country: non_empty(basic.location.country),
            province: non_empty(basic.location.province),
            city: non_empty(basic.location.city),
            asn: asn.number,
            asn_info: non_empty(asn.info),
        }
    });
    Finding {
        provider: PROVIDER.into(),
        malicious: v.is_malicious,
        severity: severity(&v.severity),
        confidence: confidence(&v.confidence_level),
        judgments: v
            .judgments
            .into_iter()
            .filter(|j| !j.trim().is_empty())
            .collect(),
        tags,
        permalink: non_empty(v.permalink),
        ip_context,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/v3/scene/dns` answer shaped like the documented one: one malicious name with a gang
    /// tag, one whitelisted name.
    const DNS_ANSWER: &str = include_str!("../../tests/fixtures/threatbook/dns_answer.json");

    /// The captured `/v3/scene/ip_reputation` answer from `Catsofsuffering/xThreatBook`.
    const IP_ANSWER: &str =
        include_str!("../../tests/fixtures/threatbook/ip_reputation_answer.json");

    fn dns(body: &str, asked: &[&str]) -> Result<Answers<String>, LookupError> {
        let data = classify(StatusCode::OK, body.as_bytes())?;
        parse_domains(&data, &asked.iter().copied().collect())
    }

    fn error_for(code: i64, msg: &str) -> LookupError {
        let body = format!(r#"{{"response_code": {code}, "verbose_msg": "{msg}"}}"#);
        classify(StatusCode::OK, body.as_bytes()).unwrap_err()
    }

    #[test]
    fn domain_answer_maps_to_findings() {
        let answers = dns(
            DNS_ANSWER,
            &["noah-admin.site", "www.example.com", "unknown.test"],
        )
        .unwrap();
        assert_eq!(
            answers.len(),
            2,
            "unknown.test is absent: ThreatBook knows nothing"
        );
        let bad = &answers["noah-admin.site"];
        assert_eq!(bad.provider, "threatbook");
        assert!(bad.malicious);
        assert_eq!(bad.severity, Some(Severity::Critical));
        assert_eq!(bad.confidence, Some(Confidence::High));
        assert_eq!(bad.judgments, ["C2", "Malware"]);
        assert_eq!(bad.tags, ["gangs:SilverFox", "Trojan"]);
        assert_eq!(
            bad.permalink.as_deref(),
            Some("https://x.threatbook.com/v5/domain/noah-admin.site")
        );
        assert_eq!(bad.ip_context, None);
        let good = &answers["www.example.com"];
        assert!(!good.malicious);
        assert_eq!(good.severity, Some(Severity::Info));
    }

    #[test]
    fn names_not_asked_about_are_dropped_and_keys_normalised() {
        let body = r#"{"response_code": 0, "verbose_msg": "OK", "data": {"domains": {
            "EVIL.Example.": {"is_malicious": true},
            "other.test": {"is_malicious": true}
        }}}"#;
        let answers = dns(body, &["evil.example"]).unwrap();
        assert_eq!(answers.keys().collect::<Vec<_>>(), ["evil.example"]);
        let f = &answers["evil.example"];
        assert_eq!(
            (f.severity, f.confidence, f.permalink.as_deref()),
            (None, None, None)
        );
    }

    #[test]
    fn ip_answer_maps_basic_and_asn() {
        let data = classify(StatusCode::OK, IP_ANSWER.as_bytes()).unwrap();
        let ip: IpAddr = "159.203.93.255".parse().unwrap();
        let answers = parse_ips(&data, &[ip].into_iter().collect()).unwrap();
        let f = &answers[&ip];
        assert!(f.malicious);
        assert_eq!(f.severity, Some(Severity::Low));
        assert_eq!(f.confidence, Some(Confidence::Low));
        assert_eq!(f.judgments, ["Zombie", "IDC", "Spam"]);
        assert_eq!(f.permalink, None);
        assert_eq!(
            f.ip_context,
            Some(IpContext {
                carrier: Some("DigitalOcean, LLC".into()),
                country: Some("United States".into()),
                province: Some("New Jersey".into()),
                city: Some("Clifton".into()),
                asn: Some(14061),
                asn_info: Some("DIGITALOCEAN-ASN, US".into()),
            })
        );
    }

    #[test]
    fn ipv6_keys_match_by_address_and_odd_asn_reads_as_none() {
        let body = r#"{"response_code": 0, "verbose_msg": "OK", "data": {
            "2001:0db8:0000:0000:0000:0000:0000:0001": {
                "is_malicious": false, "severity": "info", "judgments": null,
                "basic": {"carrier": "", "location": null}, "asn": {"number": "", "info": ""}
            }
        }}"#;
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let data = classify(StatusCode::OK, body.as_bytes()).unwrap();
        let answers = parse_ips(&data, &[ip].into_iter().collect()).unwrap();
        assert_eq!(answers[&ip].ip_context, Some(IpContext::default()));
        assert!(answers[&ip].judgments.is_empty());
    }

    #[test]
    fn every_response_code_maps() {
        assert!(matches!(
            error_for(-1, "Invalid API Key"),
            LookupError::Access { .. }
        ));
        assert!(matches!(
            error_for(-2, "Invalid API Method"),
            LookupError::Request { code: -2, .. }
        ));
        assert!(matches!(
            error_for(-3, "Missing Parameter"),
            LookupError::Request { code: -3, .. }
        ));
        assert!(matches!(
            error_for(-4, "Frequent Limitation"),
            LookupError::RateLimited { .. }
        ));
        assert!(matches!(
            error_for(-5, "System Error"),
            LookupError::Server { .. }
        ));
        assert!(matches!(
            error_for(-9, "whatever"),
            LookupError::Protocol { .. }
        ));
        assert!(matches!(
            error_for(7, "URL Downloading"),
            LookupError::Protocol { .. }
        ));
        assert!(matches!(
            error_for(1, "Beyond Limitation"),
            LookupError::RateLimited { .. }
        ));
        // "No Data": nothing known, nothing wrong.
        assert!(
            dns(
                r#"{"response_code": 2, "verbose_msg": "No Data", "data": []}"#,
                &["a.test"]
            )
            .unwrap()
            .is_empty()
        );
        // Partial success for another reason: the answered part stands.
        let body = r#"{"response_code": 1, "verbose_msg": "Invalid data format",
            "data": {"domains": {"a.test": {"is_malicious": true}}}}"#;
        assert!(dns(body, &["a.test"]).unwrap()["a.test"].malicious);
        // The message is ThreatBook's, and errors say which provider.
        let e = error_for(-1, "Invalid Access IP");
        assert_eq!(
            e.to_string(),
            "threatbook: access refused (key, account or source IP): Invalid Access IP"
        );
    }

    #[test]
    fn response_code_wins_over_http_status() {
        let body = br#"{"response_code": -4, "verbose_msg": "Frequent Limitation"}"#;
        let e = classify(StatusCode::INTERNAL_SERVER_ERROR, body).unwrap_err();
        assert!(matches!(e, LookupError::RateLimited { .. }), "{e:?}");
        let ok = br#"{"response_code": 0, "verbose_msg": "OK", "data": {}}"#;
        assert!(classify(StatusCode::BAD_GATEWAY, ok).is_ok());
    }

    #[test]
    fn non_json_answers_map_by_http_status() {
        let e = classify(StatusCode::BAD_GATEWAY, b"<html>502</html>").unwrap_err();
        assert!(matches!(e, LookupError::Server { .. }), "{e:?}");
        let e = classify(StatusCode::TOO_MANY_REQUESTS, b"slow down").unwrap_err();
        assert!(matches!(e, LookupError::RateLimited { .. }), "{e:?}");
        let e = classify(StatusCode::OK, b"<html>captive portal</html>").unwrap_err();
        assert!(matches!(e, LookupError::Protocol { .. }), "{e:?}");
    }

    #[test]
    fn malformed_answers_are_protocol_errors() {
        // No response_code.
        let e = classify(StatusCode::OK, br#"{"verbose_msg": "OK", "data": {}}"#).unwrap_err();
        assert!(matches!(e, LookupError::Protocol { .. }), "{e:?}");
        // `domains` of the wrong shape.
        let e = dns(
            r#"{"response_code": 0, "data": {"domains": ["a.test"]}}"#,
            &["a.test"],
        )
        .unwrap_err();
        assert!(matches!(e, LookupError::Protocol { .. }), "{e:?}");
        // A verdict without `is_malicious` cannot be read as clean.
        let e = dns(
            r#"{"response_code": 0, "data": {"domains": {"a.test": {"severity": "high"}}}}"#,
            &["a.test"],
        )
        .unwrap_err();
        assert!(matches!(e, LookupError::Protocol { .. }), "{e:?}");
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(1000);
        let LookupError::Server { message, .. } = error_for(-5, &long) else {
            panic!("not a server error");
        };
        assert!(message.chars().count() <= MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn sendable_names() {
        assert!(is_sendable_name("_dmarc.xn--fiqs8s.example"));
        assert!(!is_sendable_name("a,evil.example"));
        assert!(!is_sendable_name("a b.example"));
        assert!(!is_sendable_name(""));
    }

    fn section() -> ThreatBookSection {
        ThreatBookSection::default()
    }

    fn invalid_key(s: &ThreatBookSection) -> &'static str {
        match s.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn section_defaults_and_toml() {
        assert!(section().validate().is_ok());
        let s: ThreatBookSection = toml::from_str(
            r#"
            base_url = "https://api.threatbook.cn"
            api_key = { file = "/etc/dns-sensor/threatbook.key" }
            lang = "zh"
            [limits]
            batch_size = 50
            "#,
        )
        .unwrap();
        assert_eq!(s.lang, Lang::Zh);
        assert_eq!(s.limits.batch_size, 50);
        assert_eq!(s.limits.timeout_ms, Limits::default().timeout_ms);
        assert!(toml::from_str::<ThreatBookSection>("apikey = 'x'").is_err());
        assert!(toml::from_str::<ThreatBookSection>("lang = 'fr'").is_err());
    }

    #[test]
    fn section_validation_names_the_key() {
        let mut s = section();
        s.limits.batch_size = 101;
        assert_eq!(invalid_key(&s), "intel.threatbook.limits.batch_size");
        s.limits.batch_size = 0;
        assert_eq!(invalid_key(&s), "intel.threatbook.limits.batch_size");

        let mut s = section();
        s.limits.timeout_ms = 0;
        assert_eq!(invalid_key(&s), "intel.threatbook.limits.timeout_ms");

        let mut s = section();
        s.api_key = SecretSource::default();
        assert_eq!(invalid_key(&s), "intel.threatbook.api_key");

        for bad in [
            "not a url",
            "ftp://api.threatbook.cn",
            "http://api.threatbook.cn",
            "https://user:pw@api.threatbook.cn",
            "https://api.threatbook.cn/?apikey=x",
        ] {
            let mut s = section();
            s.base_url = bad.into();
            assert_eq!(invalid_key(&s), "intel.threatbook.base_url", "{bad}");
        }
        for good in [
            "http://127.0.0.1:8080",
            "http://[::1]:1",
            "http://localhost",
            "https://proxy.corp/tb",
        ] {
            let mut s = section();
            s.base_url = good.into();
            assert!(s.validate().is_ok(), "{good}");
        }
        // Plain http to a real host only when the operator says so, in one line naming the key.
        let mut s = section();
        s.base_url = "http://tb-proxy.corp:8080".into();
        let Err(err) = s.validate() else {
            panic!("plain http accepted")
        };
        let err = err.to_string();
        assert!(
            err.contains("`intel.threatbook.base_url`") && err.contains("allow_insecure_http"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        s.allow_insecure_http = true;
        assert!(s.validate().is_ok());
    }

    #[test]
    fn endpoints_keep_a_path_prefix() {
        let mut s = section();
        s.base_url = "https://proxy.corp/threatbook".into();
        let tb = ThreatBook::new(&s, Secret::new("k")).unwrap();
        assert_eq!(
            tb.dns_url.as_str(),
            "https://proxy.corp/threatbook/v3/scene/dns"
        );
        assert_eq!(
            tb.ip_url.as_str(),
            "https://proxy.corp/threatbook/v3/scene/ip_reputation"
        );
        assert_eq!(tb.max_batch(), 100);
        assert!(!format!("{tb:?}").contains("Secret(\"k\")"));
    }

    #[test]
    fn redaction_removes_the_key_from_messages() {
        let tb = ThreatBook::new(&section(), Secret::new("canary-key-42")).unwrap();
        let e = tb.redact(LookupError::Transport {
            provider: PROVIDER.into(),
            message: "failed for ...?apikey=canary-key-42&resource=x".into(),
        });
        assert!(!e.to_string().contains("canary-key-42"), "{e}");
    }
}
