//! A thin HTTP client for the platform's API: every answer is kept as data (status and JSON
//! body), never trusted, so that the generator can classify it.

use std::time::Duration;

use reqwest::{Client, Method, RequestBuilder};
use serde_json::Value;

/// What the server (or the network) answered.
#[derive(Debug, Clone)]
pub enum Answer {
    /// An HTTP answer: its status and its body (`Value::Null` if the body is not JSON).
    Http { status: u16, body: Value },
    /// No HTTP answer: connection refused, reset, timeout...
    Transport(String),
}

impl Answer {
    /// The HTTP status, if there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Answer::Http { status, .. } => Some(*status),
            Answer::Transport(_) => None,
        }
    }

    /// The JSON body (`Null` for a transport error).
    pub fn body(&self) -> &Value {
        match self {
            Answer::Http { body, .. } => body,
            Answer::Transport(_) => &Value::Null,
        }
    }

    /// The problem `code` of an error answer, if any.
    pub fn problem_code(&self) -> Option<&str> {
        self.body().get("code").and_then(Value::as_str)
    }

    /// A short label for reports: `404 unknown-member`, `503`, `transport: timeout`.
    pub fn kind(&self) -> String {
        match self {
            Answer::Http { status, .. } => match self.problem_code() {
                Some(code) => format!("{status} {code}"),
                None => status.to_string(),
            },
            Answer::Transport(kind) => format!("transport: {kind}"),
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self.status(), Some(s) if (200..300).contains(&s))
    }

    /// A string field of the body.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.body().get(name).and_then(Value::as_str)
    }
}

/// The API client: one connection pool shared by every simulated till.
#[derive(Clone)]
pub struct Api {
    client: Client,
    base: String,
}

impl Api {
    /// A client for the platform at `base` (e.g. `http://127.0.0.1:8080`), with a per-request
    /// timeout (it must exceed the largest `wait_ms` the generator sends).
    pub fn new(base: &str, timeout: Duration, max_idle: usize) -> anyhow::Result<Self> {
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(max_idle)
            .tcp_nodelay(true)
            .build()?;
        Ok(Api {
            client,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn request(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(key)
    }

    pub async fn get(&self, path: &str, key: &str) -> Answer {
        send(self.request(Method::GET, path, key)).await
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Answer {
        send(self.request(Method::POST, path, key).json(body)).await
    }

    pub async fn put(&self, path: &str, key: &str, body: &Value) -> Answer {
        send(self.request(Method::PUT, path, key).json(body)).await
    }
}

/// Sends `req` and reads the whole answer.
pub async fn send(req: RequestBuilder) -> Answer {
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(bytes) => Answer::Http {
                    status,
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                },
                Err(e) => Answer::Transport(transport_kind(&e)),
            }
        }
        Err(e) => Answer::Transport(transport_kind(&e)),
    }
}

fn transport_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_body() || e.is_decode() {
        "body".into()
    } else {
        "request".into()
    }
}

/// Percent-encodes a query value (phone numbers carry a `+`, QR tokens a `.`).
pub fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 8);
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_plus() {
        assert_eq!(encode_query("+33612345678"), "%2B33612345678");
        assert_eq!(encode_query("ab.cd"), "ab.cd");
    }

    #[test]
    fn kinds() {
        let a = Answer::Http {
            status: 409,
            body: serde_json::json!({"code": "insufficient-points"}),
        };
        assert_eq!(a.kind(), "409 insufficient-points");
        assert_eq!(
            Answer::Transport("timeout".into()).kind(),
            "transport: timeout"
        );
        let b = Answer::Http {
            status: 503,
            body: Value::Null,
        };
        assert_eq!(b.kind(), "503");
    }
}
