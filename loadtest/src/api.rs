//! A thin HTTP client for the platform's API: every answer is kept as data (status and JSON
//! body), never trusted, so that the generator can classify it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

/// The API client: one connection pool shared by every simulated till, spread over one or
/// more gateways of the same platform (round-robin, request by request).
#[derive(Clone)]
pub struct Api {
    client: Client,
    /// What `--url` named, normalized: the gateways' base URLs joined by commas.
    base: String,
    bases: Arc<[String]>,
    next: Arc<AtomicUsize>,
}

impl Api {
    /// A client for the platform at `base` (e.g. `http://127.0.0.1:8080`, or several gateways
    /// of one platform separated by commas: `http://127.0.0.1:8080,http://127.0.0.1:8081`),
    /// with a per-request timeout (it must exceed the largest `wait_ms` the generator sends).
    /// With several gateways every request goes to the next one in turn.
    pub fn new(base: &str, timeout: Duration, max_idle: usize) -> anyhow::Result<Self> {
        let bases = split_bases(base);
        if bases.is_empty() {
            anyhow::bail!("no URL given (--url)");
        }
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(max_idle)
            .tcp_nodelay(true)
            .build()?;
        Ok(Api {
            client,
            base: bases.join(","),
            bases: bases.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The target as named (several gateways: their URLs joined by commas).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Every gateway's base URL.
    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// The base URL of the next request: the gateways in turn.
    fn next_base(&self) -> &str {
        if self.bases.len() == 1 {
            return &self.bases[0];
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len();
        &self.bases[i]
    }

    pub fn request(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.next_base(), path))
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

/// The base URLs of a `--url` value: comma-separated, blanks and trailing slashes removed.
pub fn split_bases(url: &str) -> Vec<String> {
    url.split(',')
        .map(|u| u.trim().trim_end_matches('/'))
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
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
    fn several_gateways_take_requests_in_turn() {
        assert_eq!(
            split_bases(" http://a:1/, http://b:2 ,"),
            vec!["http://a:1".to_owned(), "http://b:2".to_owned()]
        );
        let api = Api::new("http://a:1/,http://b:2", Duration::from_secs(1), 1).unwrap();
        assert_eq!(api.base(), "http://a:1,http://b:2");
        let urls: Vec<String> = (0..4)
            .map(|_| {
                let r = api.request(Method::GET, "/x", "k").build().unwrap();
                r.url().as_str().to_owned()
            })
            .collect();
        assert_eq!(
            urls,
            [
                "http://a:1/x",
                "http://b:2/x",
                "http://a:1/x",
                "http://b:2/x"
            ]
        );
        let one = Api::new("http://a:1/", Duration::from_secs(1), 1).unwrap();
        assert_eq!(one.bases(), ["http://a:1".to_owned()]);
        assert!(Api::new(" , ", Duration::from_secs(1), 1).is_err());
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
