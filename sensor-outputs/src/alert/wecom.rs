//! WeCom (企业微信) group robot client.
//!
//! Wire format, as the group robot documentation (群机器人配置说明, developer.work.weixin.qq.com
//! document 91770, also 99398) describes it and public clients use it:
//! - `POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY`, `Content-Type:
//!   application/json`, body `{"msgtype":"markdown","markdown":{"content":"..."}}`.
//! - The answer is HTTP 200 with `{"errcode":0,"errmsg":"ok"}` on success; failures are also
//!   HTTP 200 with a non-zero `errcode`, so the body decides, never the status alone:
//!   `45009` "api freq out of limit" (over 20 messages a minute: wait and retry),
//!   `93000` "invalid webhook url" (wrong key, or the robot was removed from the group),
//!   `40058` "markdown.content exceed max length 4096", `-1` system busy (the global error code
//!   page, document 90455, advises retrying, at most 3 times).
//! - `mentioned_list` / `mentioned_mobile_list` exist only for `text` messages; markdown
//!   mentions a member with `<@userid>` inside the content, which is what `mention_userids`
//!   writes.
//!
//! The key is the only credential and sits in the query string: it is added to each request
//! from a [`Secret`], errors are stripped of their URL (`reqwest::Error::without_url`), and any
//! text from the server is scrubbed of the key before it is logged.

use std::time::Duration;

use serde::Deserialize;

use super::sink::SendError;
use sensor_model::{
    http::{self, HttpSettings},
    secret::Secret,
    text,
};

/// The documented path under the API base URL.
pub const SEND_PATH: &str = "/cgi-bin/webhook/send";

/// Rate limit: `errcode` 45009.
pub const ERRCODE_THROTTLED: i64 = 45009;
/// System busy, retry later: `errcode` -1.
pub const ERRCODE_BUSY: i64 = -1;
/// Wrong key, or the robot was removed from its group: `errcode` 93000.
pub const ERRCODE_INVALID_KEY: i64 = 93000;
/// The markdown content is over 4,096 bytes: `errcode` 40058.
pub const ERRCODE_TOO_LONG: i64 = 40058;

/// A WeCom answer is a few dozen bytes; anything far larger is not one.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// `errmsg` is echoed into logs.
const MAX_ERRMSG_CHARS: usize = 200;

/// The failure reason of an `errcode`, from a fixed set (it becomes a metric label, and the
/// server picks the code): the documented codes by name, any other as `errcode_other`, with
/// the code itself in the detail.
fn errcode_reason(code: i64) -> &'static str {
    match code {
        ERRCODE_THROTTLED => "errcode_45009",
        ERRCODE_BUSY => "errcode_-1",
        ERRCODE_INVALID_KEY => "errcode_93000",
        ERRCODE_TOO_LONG => "errcode_40058",
        _ => "errcode_other",
    }
}

pub(crate) struct WeComClient {
    http: reqwest::Client,
    /// `<base_url>/cgi-bin/webhook/send`, without the key.
    endpoint: reqwest::Url,
    key: Secret,
}

impl std::fmt::Debug for WeComClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeComClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("key", &self.key)
            .finish()
    }
}

#[derive(Deserialize)]
struct Answer {
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

/// Reads the body of a 2xx answer: the body decides, never the status alone (see the module
/// documentation). `scrub` removes the key from text taken from the answer.
pub fn read_answer(body: &[u8], scrub: impl Fn(&str) -> String) -> Result<(), SendError> {
    // serde's message quotes the offending value, which may be text from the answer.
    let answer: Answer = serde_json::from_slice(body).map_err(|e| SendError::Final {
        reason: "protocol".into(),
        detail: text::one_line(
            &scrub(&format!("answer is not the documented JSON: {e}")),
            MAX_ERRMSG_CHARS,
        ),
    })?;
    // The server's words: scrubbed of the key, then one bounded, inert line.
    let detail = |code: i64| {
        format!(
            "errcode {code}: {}",
            text::one_line(&scrub(&answer.errmsg), MAX_ERRMSG_CHARS)
        )
    };
    match answer.errcode {
        0 => Ok(()),
        ERRCODE_THROTTLED => Err(SendError::Throttled {
            reason: errcode_reason(ERRCODE_THROTTLED).into(),
        }),
        ERRCODE_BUSY => Err(SendError::Retriable {
            reason: errcode_reason(ERRCODE_BUSY).into(),
            detail: detail(ERRCODE_BUSY),
        }),
        code => Err(SendError::Final {
            reason: errcode_reason(code).into(),
            detail: detail(code),
        }),
    }
}

impl WeComClient {
    pub(crate) fn new(base_url: &str, key: Secret, timeout: Duration) -> Result<Self, String> {
        let endpoint =
            reqwest::Url::parse(&format!("{}{SEND_PATH}", base_url.trim_end_matches('/')))
                .map_err(|e| format!("base_url: {e}"))?;
        let http = http::client(&HttpSettings {
            key: "alerts.wecom",
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
            endpoint,
            key,
        })
    }

    /// Removes the key from text that came back from the server or the HTTP stack.
    fn scrub(&self, text: &str) -> String {
        text.replace(self.key.expose(), "***")
    }

    pub(crate) async fn send_markdown(&self, content: &str) -> Result<(), SendError> {
        let body = serde_json::json!({
            "msgtype": "markdown",
            "markdown": { "content": content },
        });
        let response = self
            .http
            .post(self.endpoint.clone())
            .query(&[("key", self.key.expose())])
            .json(&body)
            .send()
            .await
            .map_err(|e| self.scrubbed(SendError::from_reqwest(e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(SendError::from_status(status));
        }
        let bytes = match http::read_capped(response, MAX_ANSWER_BYTES).await {
            Ok(b) => b,
            Err(e @ http::BodyError::TooLarge { .. }) => {
                return Err(SendError::Final {
                    reason: "protocol".into(),
                    detail: e.to_string(),
                });
            }
            Err(http::BodyError::Transport(m)) => {
                return Err(SendError::Retriable {
                    reason: "transport".into(),
                    detail: self.scrub(&m),
                });
            }
        };
        read_answer(&bytes, |text| self.scrub(text))
    }

    fn scrubbed(&self, e: SendError) -> SendError {
        match e {
            SendError::Retriable { reason, detail } => SendError::Retriable {
                reason,
                detail: self.scrub(&detail),
            },
            SendError::Final { reason, detail } => SendError::Final {
                reason,
                detail: self.scrub(&detail),
            },
            t => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa";

    fn read(body: &str) -> Result<(), SendError> {
        read_answer(body.as_bytes(), |t| t.replace(KEY, "***"))
    }

    #[test]
    fn the_body_decides() {
        assert!(read(r#"{"errcode":0,"errmsg":"ok"}"#).is_ok());
        assert!(matches!(
            read(r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#),
            Err(SendError::Throttled { reason }) if reason == "errcode_45009"
        ));
        assert!(matches!(
            read(r#"{"errcode":-1,"errmsg":"system busy"}"#),
            Err(SendError::Retriable { reason, .. }) if reason == "errcode_-1"
        ));
        assert!(matches!(
            read(&format!(r#"{{"errcode":93000,"errmsg":"invalid webhook url {KEY}"}}"#)),
            Err(SendError::Final { reason, detail })
                if reason == "errcode_93000" && detail == "errcode 93000: invalid webhook url ***"
        ));
    }

    /// The reason becomes a metric label: whatever code the server invents, the label set
    /// stays fixed, and the code is kept in the detail.
    #[test]
    fn unknown_codes_share_one_label_and_messages_are_inert() {
        for code in [1, 40001, 123456789, -99] {
            let Err(SendError::Final { reason, detail }) = read(&format!(
                r#"{{"errcode":{code},"errmsg":"line one\nFAKE log line \u001b[31m"}}"#
            )) else {
                panic!("errcode {code} is final");
            };
            assert_eq!(reason, "errcode_other");
            assert!(detail.contains(&code.to_string()), "{detail}");
            assert!(!detail.chars().any(char::is_control), "{detail:?}");
        }
    }

    /// Found by the `http_answers` fuzz target: serde quotes a value of the wrong type in its
    /// message, and a value holding the key put the key into the error's detail.
    #[test]
    fn a_malformed_answer_does_not_leak_the_key() {
        let Err(SendError::Final { reason, detail }) = read(&format!(r#"{{"errcode":"{KEY}"}}"#))
        else {
            panic!("a malformed answer is final");
        };
        assert_eq!(reason, "protocol");
        assert!(detail.contains("***") && !detail.contains(KEY), "{detail}");
    }
}
