//! One-off notices (the nightly blocklist summary) to every configured alert sink: markdown to
//! WeCom robots, `{"source":"dns-sensor","notice":...}` to JSON webhooks. One message per sink
//! per call, outside the hit pipeline (a notice a night does not need its budget or digests).

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    AlertsSection, HeaderSource, sink::SendError, webhook::WebhookClient, wecom::WeComClient,
};

/// Sends `markdown` / `body` to every sink; returns one line per sink that failed (the key and
/// URL never appear in it).
pub async fn send(config: &AlertsSection, markdown: &str, body: &Value) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, w) in config.wecom.iter().enumerate() {
        let name = w.name.clone().unwrap_or_else(|| format!("wecom-{}", i + 1));
        let sent = async {
            let key = w
                .key
                .resolve("alerts.wecom.key")
                .map_err(|e| e.to_string())?;
            let client = WeComClient::new(&w.base_url, key, Duration::from_secs(w.timeout_secs))?;
            // A summary is short; should it not be, its first 4,096-byte part is what fits.
            let parts = super::format::split_lines(markdown, 4096);
            let text = parts.first().map(String::as_str).unwrap_or("");
            client.send_markdown(text).await.map_err(describe)
        };
        if let Err(e) = sent.await {
            failures.push(format!("{name}: {e}"));
        }
    }
    for (i, w) in config.webhook.iter().enumerate() {
        let name = w
            .name
            .clone()
            .unwrap_or_else(|| format!("webhook-{}", i + 1));
        let sent = async {
            let mut headers = Vec::new();
            for (h, v) in &w.headers {
                let value = match v {
                    HeaderSource::Value(v) => v.clone(),
                    HeaderSource::Secret(s) => s
                        .resolve("alerts.webhook.headers")
                        .map_err(|e| e.to_string())?
                        .expose()
                        .to_owned(),
                };
                headers.push((h.clone(), value));
            }
            let client = WebhookClient::new(&w.url, headers, Duration::from_secs(w.timeout_secs))?;
            client
                .send_json(&json!({"source": "dns-sensor", "notice": body}))
                .await
                .map_err(describe)
        };
        if let Err(e) = sent.await {
            failures.push(format!("{name}: {e}"));
        }
    }
    failures
}

fn describe(e: SendError) -> String {
    match e {
        SendError::Throttled { reason } => reason,
        SendError::Retriable { reason, detail } | SendError::Final { reason, detail } => {
            format!("{reason}: {detail}")
        }
    }
}
