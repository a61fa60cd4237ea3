//! The JSON document written for each query: Elastic Common Schema field names, nested as
//! Packetbeat writes them (so Kibana and existing pipelines read it unchanged).

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
                kind: match intel.map(|a| a.verdict) {
                    Some(crate::verdict::Verdict::Malicious) => "alert",
                    _ => "event",
                },
                category: ["network"],
                kind_type: ["protocol"],
                dataset: "dns",
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
                dns_type: "query",
                question: Question {
                    name: &self.name,
                    qtype: qtype_name(self.qtype),
                    class: qclass_name(self.qclass),
                },
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
