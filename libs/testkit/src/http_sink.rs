//! An HTTP receiver for webhook tests: an in-process HTTP/1 server (hyper) on a free loopback
//! port that records every request (method, path, headers, body) and answers a configured
//! status to the first N requests and 200 afterwards, or never answers at all.
//! [`HttpSink::wait_for`] wakes on each recorded request (a watch channel), never by polling.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use loyalty_testkit::http_sink::{HttpSink, HttpSinkOptions};
//! // 503 with `Retry-After: 7` twice, then 200.
//! let sink = HttpSink::start_with(HttpSinkOptions::failing(503, 2).retry_after("7")).await?;
//! let url = sink.url(); // http://127.0.0.1:PORT/hook
//! let got = sink.wait_for(3, Duration::from_secs(5)).await?;
//! assert_eq!(got[0].header("loyalty-message-id"), Some("m-1"));
//! # let _ = url; Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the sink answers.
#[derive(Clone, Debug)]
pub struct HttpSinkOptions {
    /// The status of the first [`HttpSinkOptions::fail_first`] answers.
    pub fail_status: u16,
    /// How many requests get `fail_status`; the others get 200.
    pub fail_first: usize,
    /// A `Retry-After` header on the failing answers.
    pub retry_after: Option<String>,
    /// Never answer: each request is recorded, then held until the sink is dropped.
    pub hang: bool,
}

impl Default for HttpSinkOptions {
    /// 200 to everything.
    fn default() -> Self {
        HttpSinkOptions {
            fail_status: 200,
            fail_first: 0,
            retry_after: None,
            hang: false,
        }
    }
}

impl HttpSinkOptions {
    /// `status` to the first `first` requests, 200 afterwards.
    pub fn failing(status: u16, first: usize) -> Self {
        HttpSinkOptions {
            fail_status: status,
            fail_first: first,
            ..Self::default()
        }
    }

    /// Records requests and never answers them (a receiver that hangs).
    pub fn hanging() -> Self {
        HttpSinkOptions {
            hang: true,
            ..Self::default()
        }
    }

    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_owned());
        self
    }
}

/// One request as the sink received it.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The raw body, byte for byte (what a signature is computed over).
    pub body: Vec<u8>,
    /// The status the sink answered (none when hanging).
    pub answered: Option<u16>,
}

impl ReceivedRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("the request's body is not JSON")
    }
}

/// A running sink; stopped (with every connection it holds) when dropped.
pub struct HttpSink {
    addr: SocketAddr,
    received: watch::Receiver<Vec<ReceivedRequest>>,
    task: JoinHandle<()>,
}

impl HttpSink {
    /// A sink answering 200 to everything.
    pub async fn start() -> anyhow::Result<HttpSink> {
        Self::start_with(HttpSinkOptions::default()).await
    }

    /// A sink answering as `options` say. Binds 127.0.0.1:0 (no port race).
    pub async fn start_with(options: HttpSinkOptions) -> anyhow::Result<HttpSink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the HTTP sink")?;
        let addr = listener.local_addr()?;
        let (tx, received) = watch::channel(Vec::new());
        let shared = Arc::new(Shared { options, tx });
        let task = tokio::spawn(accept_loop(listener, shared));
        Ok(HttpSink {
            addr,
            received,
            task,
        })
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.received.borrow().clone()
    }

    /// Waits until at least `n` requests were received (at most `timeout`); returns them all.
    pub async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ReceivedRequest>> {
        let mut rx = self.received.clone();
        let waited = match tokio::time::timeout(timeout, rx.wait_for(|v| v.len() >= n)).await {
            Ok(Ok(v)) => Ok(v.clone()),
            Ok(Err(_)) => Err(anyhow::anyhow!("the HTTP sink stopped")),
            Err(_) => Err(anyhow::anyhow!(
                "{} request(s) received within {timeout:?}, {n} expected",
                self.received.borrow().len()
            )),
        };
        waited
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

struct Shared {
    options: HttpSinkOptions,
    tx: watch::Sender<Vec<ReceivedRequest>>,
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP sink: accept failed");
                continue;
            }
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP sink: connection ended");
            }
        });
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(e) => {
            tracing::warn!(error = %e, "HTTP sink: body not read");
            Vec::new()
        }
    };
    let o = &shared.options;
    let mut status = None;
    shared.tx.send_modify(|v| {
        let s = if v.len() < o.fail_first {
            o.fail_status
        } else {
            200
        };
        status = (!o.hang).then_some(s);
        v.push(ReceivedRequest {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.to_string()),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
            answered: status,
        });
    });
    let Some(status) = status else {
        // Held until the sink is dropped (the client's timeout is what is tested).
        std::future::pending::<()>().await;
        unreachable!("pending never completes");
    };
    let mut answer = Response::builder().status(status);
    if status != 200 {
        if let Some(r) = &o.retry_after {
            answer = answer.header("retry-after", r.as_str());
        }
    }
    let answer = answer
        .body(Full::new(Bytes::from_static(b"")))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_recorded_and_answered_as_configured() {
        let sink = HttpSink::start_with(HttpSinkOptions::failing(503, 1).retry_after("7"))
            .await
            .unwrap();
        let http = reqwest::Client::new();
        let first = http
            .post(sink.url())
            .header("x-test", "a")
            .body("one")
            .send()
            .await
            .unwrap();
        assert_eq!(first.status().as_u16(), 503);
        assert_eq!(first.headers()["retry-after"], "7");
        let second = http.post(sink.url()).body("two").send().await.unwrap();
        assert_eq!(second.status().as_u16(), 200);
        let got = sink.wait_for(2, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got[0].method, "POST");
        assert_eq!(got[0].path, "/hook");
        assert_eq!(got[0].header("X-Test"), Some("a"));
        assert_eq!(got[0].body, b"one");
        assert_eq!(got[0].answered, Some(503));
        assert_eq!(got[1].body, b"two");
        assert_eq!(got[1].answered, Some(200));
        assert!(sink.wait_for(3, Duration::from_millis(50)).await.is_err());
    }

    #[tokio::test]
    async fn a_hanging_sink_records_and_never_answers() {
        let sink = HttpSink::start_with(HttpSinkOptions::hanging())
            .await
            .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let e = http.post(sink.url()).body("x").send().await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        let got = sink.wait_for(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got[0].answered, None);
        let port = sink.port();
        drop(sink);
        tokio::task::yield_now().await;
        // Dropped: nothing listens any more.
        let refused = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/hook"))
            .send()
            .await;
        assert!(refused.is_err());
    }
}
