//! What the sensor knows about a name or an address: the combined [`Verdict`], each provider's
//! [`Finding`], and the `intel` object of an event's document. Shared by the intel stage that
//! makes them and the outputs and nightly job that read them.

use serde::{Deserialize, Serialize};

/// Severity as ThreatBook grades it (`info` … `critical`); local feeds use the same scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// How sure the provider is (`low`, `medium`, `high`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    Low,
    Medium,
    High,
}

/// What one provider said about one indicator (a domain name or an IP address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The provider's name: `threatbook`, or `feed:<name>` for a local feed.
    pub provider: String,
    pub malicious: bool,
    pub severity: Option<Severity>,
    pub confidence: Option<Confidence>,
    /// The provider's threat types, e.g. `["C2", "Botnet"]`.
    pub judgments: Vec<String>,
    /// Tag classes with their tags, flattened to `class:tag` or just the tag.
    pub tags: Vec<String>,
    /// A link to the provider's page for the indicator.
    pub permalink: Option<String>,
    /// For IP reputation: carrier, location and AS, as the provider gave them.
    pub ip_context: Option<IpContext>,
}

/// The `basic` and `asn` parts of an IP reputation answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IpContext {
    pub carrier: Option<String>,
    pub country: Option<String>,
    pub province: Option<String>,
    pub city: Option<String>,
    pub asn: Option<u32>,
    pub asn_info: Option<String>,
}

/// The combined verdict for one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// At least one provider says malicious.
    Malicious,
    /// Every provider answered and none says malicious.
    Clean,
    /// No complete answer (provider down, breaker open, quota used): looked up again later.
    Unknown,
    /// The name or client is trusted: not looked up.
    Trusted,
    /// Deliberately not sent to a remote provider (a special-use or internal name, or the
    /// client's daily budget of new names is spent; the reason is the assessment's only
    /// `errors` entry). Local feeds were asked and found nothing. Never looked up again later.
    NotLookedUp,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malicious => "malicious",
            Self::Clean => "clean",
            Self::Unknown => "unknown",
            Self::Trusted => "trusted",
            Self::NotLookedUp => "not_looked_up",
        }
    }
}

/// What the sensor knows about one name: the combined verdict and every provider's finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assessment {
    pub verdict: Verdict,
    /// Findings that say malicious (clean answers are not kept: they carry nothing to show).
    pub findings: Vec<Finding>,
    /// Providers that did not answer, with the reason (for `unknown`).
    pub errors: Vec<String>,
}

impl Assessment {
    pub fn unknown(errors: Vec<String>) -> Self {
        Self {
            verdict: Verdict::Unknown,
            findings: Vec::new(),
            errors,
        }
    }

    /// Not sent to a remote provider, for `reason` (a fixed word: `special_use`, `reverse`,
    /// `internal`, `client_budget`, `budget_table_full`).
    pub fn not_looked_up(reason: &'static str) -> Self {
        Self {
            verdict: Verdict::NotLookedUp,
            findings: Vec::new(),
            errors: vec![reason.to_owned()],
        }
    }

    /// Why a `not_looked_up` name was not sent.
    pub fn not_looked_up_reason(&self) -> Option<&str> {
        (self.verdict == Verdict::NotLookedUp)
            .then(|| self.errors.first().map(String::as_str))
            .flatten()
    }

    /// The highest severity among the malicious findings.
    pub fn severity(&self) -> Option<Severity> {
        self.findings.iter().filter_map(|f| f.severity).max()
    }

    /// The highest confidence among the malicious findings.
    pub fn confidence(&self) -> Option<Confidence> {
        self.findings.iter().filter_map(|f| f.confidence).max()
    }
}

/// Normalises a presentation-form name for lookups: lower case, no trailing dot.
pub fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The `intel` object of an event's JSON document: the verdict, and for a malicious name what
/// the providers said, flattened so Kibana can filter on `intel.judgments` or `intel.tags`.
#[derive(Debug, Serialize)]
pub struct IntelDoc<'a> {
    pub verdict: &'static str,
    /// Why a `not_looked_up` name was not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<Confidence>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub judgments: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permalinks: Vec<&'a str>,
}

impl Assessment {
    /// The document form; lists keep the providers' order without repeats.
    pub fn document(&self) -> IntelDoc<'_> {
        fn push<'a>(v: &mut Vec<&'a str>, s: &'a str) {
            if !v.contains(&s) {
                v.push(s);
            }
        }
        let mut doc = IntelDoc {
            verdict: self.verdict.as_str(),
            reason: self.not_looked_up_reason(),
            severity: self.severity(),
            confidence: self.confidence(),
            providers: Vec::new(),
            judgments: Vec::new(),
            tags: Vec::new(),
            permalinks: Vec::new(),
        };
        for f in &self.findings {
            push(&mut doc.providers, &f.provider);
            f.judgments.iter().for_each(|j| push(&mut doc.judgments, j));
            f.tags.iter().for_each(|t| push(&mut doc.tags, t));
            if let Some(p) = &f.permalink {
                push(&mut doc.permalinks, p);
            }
        }
        doc
    }
}
