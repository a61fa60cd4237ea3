//! The composable index template (`PUT _index_template/<name>`): Elasticsearch 7.8 and later,
//! 8, 9, and OpenSearch 1.0 and later. Addresses are `ip` (so CIDR term queries and ranges work
//! in Kibana), `@timestamp` is `date`, ports and ids are numbers, and every other string is
//! `keyword` (a dynamic template), so names, types, providers, judgments and tags aggregate and
//! filter exactly.

use serde_json::{Value, json};

/// The template body for indices matching `index_pattern`.
pub fn body(index_pattern: &str) -> Value {
    let keyword = || json!({ "type": "keyword", "ignore_above": 1024 });
    let endpoint =
        || json!({ "properties": { "ip": { "type": "ip" }, "port": { "type": "long" } } });
    json!({
        "index_patterns": [index_pattern],
        // Above the stock templates of ES 8/9 (100..200 for logs-*, metrics-*, ...), which never
        // match our names anyway; a cluster's own template can still win with a higher one.
        "priority": 200,
        "_meta": { "description": "DNS sensor hits (ECS)", "managed_by": "dns-sensor" },
        "template": {
            "mappings": {
                "dynamic_templates": [
                    { "strings_as_keyword": {
                        "match_mapping_type": "string",
                        "mapping": keyword(),
                    } }
                ],
                "properties": {
                    "@timestamp": { "type": "date" },
                    "event": { "properties": {
                        "kind": keyword(), "category": keyword(), "type": keyword(),
                        "dataset": keyword(),
                    } },
                    "source": endpoint(),
                    "destination": endpoint(),
                    "network": { "properties": {
                        "transport": keyword(), "type": keyword(), "protocol": keyword(),
                    } },
                    "dns": { "properties": {
                        "id": { "type": "long" },
                        "type": keyword(),
                        "question": { "properties": {
                            "name": keyword(), "type": keyword(), "class": keyword(),
                            "registered_domain": keyword(),
                        } },
                    } },
                    "observer": { "properties": {
                        "name": keyword(),
                        "ingress": { "properties": {
                            "interface": { "properties": { "name": keyword() } },
                            "vlan": { "properties": { "id": keyword() } },
                            "inner_vlan": { "properties": { "id": keyword() } },
                        } },
                    } },
                    "threat": { "properties": { "indicator": { "properties": {
                        "type": keyword(), "name": keyword(), "provider": keyword(),
                        "confidence": keyword(),
                        "url": { "properties": { "domain": keyword() } },
                    } } } },
                    "intel": { "properties": {
                        "verdict": keyword(), "severity": keyword(), "confidence": keyword(),
                        "providers": keyword(), "judgments": keyword(), "tags": keyword(),
                        "permalinks": keyword(),
                        "findings": { "properties": {
                            "provider": keyword(), "malicious": { "type": "boolean" },
                            "severity": keyword(), "confidence": keyword(),
                            "judgments": keyword(), "tags": keyword(), "permalink": keyword(),
                        } },
                    } },
                    "user": { "properties": {
                        "name": keyword(), "id": keyword(),
                        "group": { "properties": { "name": keyword() } },
                    } },
                    "host": { "properties": { "hostname": keyword() } },
                }
            }
        }
    })
}
