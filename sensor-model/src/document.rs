//! The JSON document written for each query and each answer: Elastic Common Schema field names,
//! nested as Packetbeat writes them (so Kibana and existing pipelines read it unchanged).

use std::net::IpAddr;

use sensor_common::Transport;
use serde::Serialize;

use crate::query::{Query, qclass_name, qtype_name};

/// The JSON document written for each query, with Elastic Common Schema field names nested as
/// Packetbeat writes them.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub event: EventMeta,
    pub source: Endpoint,
    pub destination: Endpoint,
    pub network: Network,
    pub dns: Dns<'a>,
    pub observer: Observer<'a>,
    /// The verdict, when threat intel is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intel: Option<crate::verdict::IntelDoc<'a>>,
}

#[derive(Debug, Serialize)]
pub struct EventMeta {
    pub kind: &'static str,
    pub category: [&'static str; 1],
    #[serde(rename = "type")]
    pub kind_type: [&'static str; 1],
    pub dataset: &'static str,
    /// An answer's time since its query, in nanoseconds (ECS `event.duration`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

#[derive(Debug, Serialize)]
pub struct Network {
    pub transport: &'static str,
    #[serde(rename = "type")]
    pub net_type: &'static str,
    pub protocol: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Dns<'a> {
    pub id: u16,
    #[serde(rename = "type")]
    pub dns_type: &'static str,
    pub question: Question<'a>,
    /// The rest only for an answer (`dns.type: answer`), as Packetbeat writes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_flags: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answers_count: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorities_count: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additionals_count: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answers: Option<Vec<AnswerDoc<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_ip: Option<Vec<IpAddr>>,
}

/// One of `dns.answers`.
#[derive(Debug, Serialize)]
pub struct AnswerDoc<'a> {
    pub name: &'a str,
    #[serde(rename = "type")]
    pub rtype: String,
    pub class: String,
    pub ttl: u32,
    pub data: &'a str,
}

#[derive(Debug, Serialize)]
pub struct Question<'a> {
    pub name: &'a str,
    #[serde(rename = "type")]
    pub qtype: String,
    pub class: String,
}

#[derive(Debug, Serialize)]
pub struct Observer<'a> {
    pub name: &'a str,
    pub ingress: Ingress<'a>,
}

#[derive(Debug, Serialize)]
pub struct Ingress<'a> {
    pub interface: Interface<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<Vlan>,
    /// The inner tag of a QinQ (802.1ad) frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inner_vlan: Option<Vlan>,
}

#[derive(Debug, Serialize)]
pub struct Interface<'a> {
    pub name: &'a str,
}

/// ECS types `vlan.id` as keyword, so it is written as a string.
#[derive(Debug, Serialize)]
pub struct Vlan {
    pub id: String,
}

impl Query {
    /// The ECS document; `timestamp` is RFC 3339 UTC.
    pub fn document<'a>(
        &'a self,
        timestamp: String,
        observer: &'a str,
        interface: &'a str,
        intel: Option<&'a crate::verdict::Assessment>,
    ) -> Document<'a> {
        let vlan = |id: u16| (id != 0).then(|| Vlan { id: id.to_string() });
        Document {
            timestamp,
            event: EventMeta {
                // ECS: a detection is an `alert`, so SIEM views pick malicious queries out.
                kind: if self.is_alert(intel) {
                    "alert"
                } else {
                    "event"
                },
                category: ["network"],
                kind_type: ["protocol"],
                dataset: "dns",
                duration: self.answer.as_ref().and_then(|a| a.duration_ns),
            },
            source: Endpoint {
                ip: self.src,
                port: self.src_port,
            },
            destination: Endpoint {
                ip: self.dst,
                port: self.dst_port,
            },
            network: Network {
                transport: match self.transport {
                    Transport::Udp => "udp",
                    Transport::Tcp => "tcp",
                },
                net_type: if self.src.is_ipv4() { "ipv4" } else { "ipv6" },
                protocol: "dns",
            },
            dns: Dns {
                id: self.dns_id,
                dns_type: if self.answer.is_some() {
                    "answer"
                } else {
                    "query"
                },
                question: Question {
                    name: &self.name,
                    qtype: qtype_name(self.qtype),
                    class: qclass_name(self.qclass),
                },
                response_code: self.answer.as_ref().map(|a| a.response_code()),
                header_flags: self.answer.as_ref().map(|a| a.header_flags()),
                answers_count: self.answer.as_ref().map(|a| a.ancount),
                authorities_count: self.answer.as_ref().map(|a| a.nscount),
                additionals_count: self.answer.as_ref().map(|a| a.arcount),
                answers: self.answer.as_ref().map(|a| {
                    a.answers
                        .iter()
                        .map(|x| AnswerDoc {
                            name: &x.name,
                            rtype: qtype_name(x.rtype),
                            class: qclass_name(x.class),
                            ttl: x.ttl,
                            data: &x.data,
                        })
                        .collect()
                }),
                resolved_ip: self
                    .answer
                    .as_ref()
                    .map(|a| a.resolved_ips())
                    .filter(|ips| !ips.is_empty()),
            },
            observer: Observer {
                name: observer,
                ingress: Ingress {
                    interface: Interface { name: interface },
                    vlan: vlan(self.vlan_outer),
                    inner_vlan: vlan(self.vlan_inner),
                },
            },
            intel: intel.map(|a| a.document()),
        }
    }
}
