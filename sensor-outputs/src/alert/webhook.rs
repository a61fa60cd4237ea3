//! Generic JSON webhook, for other chat systems and SOAR platforms.
//!
//! Each request is `POST <url>` with `Content-Type: application/json` and the configured
//! headers; the body is documented on [`super::WebhookSink`]. A 2xx answer is success; 429 is a
//! throttle (wait and retry), 408 and 5xx are retried with back-off, any other status is final.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::sink::SendError;
use sensor_model::http::{self, HttpSettings};

pub(crate) struct WebhookClient {
    http: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the URL (it may embed a token) nor header values (secrets).
        f.debug_struct("WebhookClient")
            .field("host", &self.url.host_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebhookClient {
    pub(crate) fn new(
        url: &str,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("url: {e}"))?;
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header name {name:?} is not valid"))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| format!("the value of header {name} is not a valid header value"))?;
            // Keeps the value out of any debug output of the request.
            value.set_sensitive(true);
            map.insert(name, value);
        }
        let http = http::client(&HttpSettings {
            key: "alerts.webhook",
            timeout: Some(timeout),
            connect_timeout: None,
            ca_file: None,
            // Requests carry a secret (the key in the query string, token headers or a token
            // in the URL): a redirect could carry it to another host.
            redirects: false,
        })
        .map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            url,
            headers: map,
        })
    }

    pub(crate) async fn send_json(&self, body: &Value) -> Result<(), SendError> {
        let response = self
            .http
            .post(self.url.clone())
            .headers(self.headers.clone())
            .json(body)
            .send()
            .await
            .map_err(SendError::from_reqwest)?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(SendError::from_status(status))
        }
    }
}
