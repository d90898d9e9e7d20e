//! A small OTLP/HTTP trace receiver for tests: what a collector would get from the processes.
//!
//! [`OtlpReceiver::start`] listens on a free loopback port and answers `POST /v1/traces`
//! (protobuf `ExportTraceServiceRequest`, decoded with `opentelemetry-proto`) with `200`; every
//! span received is kept as a [`ReceivedSpan`] (ids in hex, attributes as strings, the
//! service name of its resource). Point a process at it with
//! `OTEL_EXPORTER_OTLP_ENDPOINT=<endpoint()>`, then [`OtlpReceiver::wait_for`] the spans a test
//! expects, with a deadline. HTTP/1.1 with `Content-Length` bodies and keep-alive is all the
//! SDK's exporter speaks; anything else is answered `400` and the connection closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One span as received.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// `service.name` of the exporting process.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP's `SpanKind` (2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    pub attributes: HashMap<String, String>,
    /// `(trace id, span id)` of each link.
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Shared {
    spans: parking_lot::Mutex<Vec<ReceivedSpan>>,
    requests: parking_lot::Mutex<usize>,
    arrived: Notify,
}

/// The receiver; stops listening when dropped.
pub struct OtlpReceiver {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    /// Listens on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<OtlpReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP receiver")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Ok(OtlpReceiver { port, shared, task })
    }

    /// The value of `OTEL_EXPORTER_OTLP_ENDPOINT` for a process exporting here.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().clone()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> usize {
        *self.shared.requests.lock()
    }

    /// Waits until the spans received satisfy `done`, for at most `timeout`; returns them.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let names: Vec<String> = spans
                    .iter()
                    .map(|s| format!("{}:{}", s.service, s.name))
                    .collect();
                bail!("no {what} within {timeout:?}; received {names:?}");
            }
        }
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve(stream, Arc::clone(&shared)));
    }
}

/// One connection: requests one after the other until the client closes or errs.
async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    loop {
        let reply = match read_request(&mut stream, &mut buf).await {
            Ok(Some((path, body))) => handle(&shared, &path, &body),
            Ok(None) => return,
            Err(e) => {
                let _ = respond(&mut stream, "400 Bad Request", &e.to_string()).await;
                return;
            }
        };
        let (status, text) = match reply {
            Ok(()) => ("200 OK", String::new()),
            Err(e) => ("400 Bad Request", e.to_string()),
        };
        if respond(&mut stream, status, &text).await.is_err() {
            return;
        }
    }
}

/// Decodes one export request and keeps its spans.
fn handle(shared: &Shared, path: &str, body: &[u8]) -> anyhow::Result<()> {
    if path != "/v1/traces" {
        bail!("no such path: {path}");
    }
    let request = ExportTraceServiceRequest::decode(body).context("decoding the request")?;
    let spans = flatten(request);
    *shared.requests.lock() += 1;
    shared.spans.lock().extend(spans);
    shared.arrived.notify_waiters();
    Ok(())
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let resource = rs.resource.map(|r| attributes(&r.attributes));
        let service = resource
            .and_then(|mut r| r.remove("service.name"))
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                kind: span.kind,
                attributes: attributes(&span.attributes),
                links: span
                    .links
                    .iter()
                    .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                    .collect(),
            });
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads one request (`None`: the client closed between requests): its path and body.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> anyhow::Result<Option<(String, Vec<u8>)>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            bail!("request head over {MAX_HEAD} bytes");
        }
        if !fill(stream, buf).await? {
            return if buf.is_empty() {
                Ok(None)
            } else {
                bail!("connection closed mid-request")
            };
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let (path, length) = parse_head(&head)?;
    while buf.len() < head_end + length {
        if !fill(stream, buf).await? {
            bail!("connection closed mid-body");
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Ok(Some((path, body)))
}

/// Reads more bytes into `buf`; `false` at the end of the stream.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

/// The path of a `POST` and its `Content-Length`.
fn parse_head(head: &str) -> anyhow::Result<(String, usize)> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some("POST"), Some(path)) = (parts.next(), parts.next()) else {
        bail!("not a POST: {request_line:?}");
    };
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked bodies are not supported");
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse::<usize>().context("content-length")?);
        }
    }
    let length = length.context("no content-length")?;
    if length > MAX_BODY {
        bail!("body of {length} bytes");
    }
    Ok((path.to_owned(), length))
}

async fn respond(stream: &mut TcpStream, status: &str, text: &str) -> std::io::Result<()> {
    let (kind, body) = match text.is_empty() {
        // An empty ExportTraceServiceResponse: every span accepted.
        true => ("application/x-protobuf", ""),
        false => ("text/plain", text),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

/// The spans of `trace_id`.
pub fn of_trace<'a>(spans: &'a [ReceivedSpan], trace_id: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id == trace_id).collect()
}

/// The chain of spans from `span` up through its parents among `spans` (`span` first), to a
/// root or to the first span whose parent was not received (a caller's remote span).
pub fn ancestry<'a>(spans: &'a [ReceivedSpan], span: &'a ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let by_id: HashMap<(&str, &str), &ReceivedSpan> = spans
        .iter()
        .map(|s| ((s.trace_id.as_str(), s.span_id.as_str()), s))
        .collect();
    let mut chain = vec![span];
    let mut current = span;
    while let Some(parent) =
        by_id.get(&(current.trace_id.as_str(), current.parent_span_id.as_str()))
    {
        if chain.len() > spans.len() {
            break; // a cycle: not a tree, which the caller's checks will show
        }
        chain.push(parent);
        current = parent;
    }
    chain
}

/// The spans of `trace_id` as an indented tree (children in start order as received), one
/// line per span: service, name, and the attributes named in `keys` when present.
pub fn render_tree(spans: &[ReceivedSpan], trace_id: &str, keys: &[&str]) -> String {
    let trace = of_trace(spans, trace_id);
    let ids: std::collections::HashSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = String::new();
    for root in trace
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()))
    {
        render(&trace, root, 0, keys, &mut out);
    }
    out
}

fn render(
    trace: &[&ReceivedSpan],
    span: &ReceivedSpan,
    depth: usize,
    keys: &[&str],
    out: &mut String,
) {
    let attrs: Vec<String> = keys
        .iter()
        .filter_map(|k| span.attr(k).map(|v| format!("{k}={v}")))
        .collect();
    out.push_str(&format!(
        "{}{} [{}] {}\n",
        "  ".repeat(depth),
        span.name,
        span.service,
        attrs.join(" ")
    ));
    for child in trace.iter().filter(|c| c.parent_span_id == span.span_id) {
        render(trace, child, depth + 1, keys, out);
    }
}
