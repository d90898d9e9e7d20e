//! Distributed traces: the W3C trace context carried in the log's record headers, and the spans
//! of the log, the engine and the ports, named and attributed after the OpenTelemetry semantic
//! conventions (`messaging.*`, `db.*`; the gateway adds `http.*`).
//!
//! The spans are plain `tracing` spans that declare an `otel.name` field (the name they are
//! exported under), which is what the exporting layer selects them by; a process that exports traces (the `loyalty` binary
//! with `OTEL_EXPORTER_OTLP_ENDPOINT` set) installs the OpenTelemetry pipeline, its W3C
//! TraceContext propagator, and calls [`enable`]. Until then every function here returns
//! [`Span::none`] or an empty [`Context`] and injects nothing, so tracing costs nothing when it
//! is off.
//!
//! One purchase then makes one trace:
//!
//! ```text
//! POST /v1/purchases                      gateway (server span)
//! ├── program, status, processed          store and cache calls (client spans)
//! └── send pos-commands                   log append (producer); its context goes in the
//!     │                                   record's `traceparent` header
//!     └── process pos-commands            engine, one batch of one partition (consumer)
//!         ├── processed, claim_events     store calls
//!         ├── apply purchase              the member actor
//!         ├── commit                      the batch's effects
//!         └── put_statuses                hot cache
//! ```
//!
//! A batch of several records cannot have several parents: its span links to each record's
//! context instead, and each command's `apply` span is the child of its own record's context,
//! so every purchase still forms one tree from the till to the ledger.
//!
//! **No personal data.** Span names and attributes carry topic names, partitions, offsets,
//! operation names, command kinds and outcome codes only: never a phone number, a name, a
//! member id or an event id. Events (log lines) are not exported with the spans.

pub mod ports;

use std::sync::OnceLock;

use bytes::Bytes;
use opentelemetry::propagation::Injector;
use opentelemetry::trace::TraceContextExt;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::ports::{Appended, Partition, Record};

pub use opentelemetry::propagation::Extractor;
pub use opentelemetry::Context;

/// Most links a batch's span gets (the SDK keeps 128 by default).
pub const MAX_LINKS: usize = 128;

/// Set by [`enable`]: the `messaging.system` of this process's log.
static LOG_SYSTEM: OnceLock<&'static str> = OnceLock::new();

/// Turns the spans of this module on, for a process whose log is `log_system` (`kafka`,
/// `embedded`). Call it once the OpenTelemetry pipeline is installed; later calls change
/// nothing.
pub fn enable(log_system: &'static str) {
    let _ = LOG_SYSTEM.set(log_system);
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    LOG_SYSTEM.get().is_some()
}

fn log_system() -> &'static str {
    LOG_SYSTEM.get().copied().unwrap_or("unknown")
}

/// Record headers as a carrier of the trace context (an existing header of the same name is
/// replaced, so a record copied to the dead-letter topic carries one `traceparent`).
struct HeadersOut<'a>(&'a mut Vec<(String, Bytes)>);

impl Injector for HeadersOut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        self.0.push((key.to_owned(), Bytes::from(value)));
    }
}

struct HeadersIn<'a>(&'a [(String, Bytes)]);

impl Extractor for HeadersIn<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The context a carrier (HTTP headers, record headers) propagates, read with the installed
/// propagator; empty when there is none or it is malformed.
pub fn remote_context(carrier: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier))
}

/// The context the producer of `headers` injected (empty if none).
pub fn record_context(headers: &[(String, Bytes)]) -> Context {
    remote_context(&HeadersIn(headers))
}

/// Writes the context of `span` into `headers` (`traceparent`, `tracestate`).
pub fn inject(span: &Span, headers: &mut Vec<(String, Bytes)>) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HeadersOut(headers))
        });
    }
}

/// The span of one append to `topic` (a producer span) by the log adapter `system` (`kafka`,
/// `embedded`), its context injected into the record's `headers` so that the consumer's spans
/// join the trace. Finish it with [`record_append`].
pub fn send_span(system: &'static str, topic: &str, headers: &mut Vec<(String, Bytes)>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = %topic,
        messaging.destination.partition.id = Empty,
        messaging.kafka.offset = Empty,
        error.type = Empty,
    );
    inject(&span, headers);
    span
}

/// Records where an append landed, or why it failed, on its [`send_span`].
pub fn record_append(span: &Span, result: &crate::Result<Appended>) {
    match result {
        Ok(a) => {
            span.record(
                "messaging.destination.partition.id",
                tracing::field::display(a.partition),
            );
            span.record("messaging.kafka.offset", a.offset);
        }
        Err(e) => record_error(span, e),
    }
}

/// Marks `span` failed with the error's kind (never its message, which may name data).
pub fn record_error(span: &Span, error: &crate::Error) {
    span.record("error.type", error.kind());
    span.record("otel.status_code", "ERROR");
}

/// The engine's span of one batch of records of `partition` (a consumer span): the child of
/// the record's context for a batch of one, else linked to every record's context (at most
/// [`MAX_LINKS`]).
pub fn process_span(topic: &str, partition: Partition, records: &[Record]) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {topic}"),
        otel.kind = "consumer",
        messaging.system = log_system(),
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %topic,
        messaging.destination.partition.id = %partition,
        messaging.batch.message_count = records.len(),
    );
    match records {
        [one] => {
            let _ = span.set_parent(record_context(&one.headers));
        }
        many => {
            for r in many.iter().take(MAX_LINKS) {
                span.add_link(record_context(&r.headers).span().span_context().clone());
            }
        }
    }
    span
}

/// The parent of the spans of one command of a batch of `batch_len` records: the batch's span
/// (the current one) when it is the only record, else the record's own context.
pub fn command_parent(record: &Record, batch_len: usize) -> Context {
    if !enabled() {
        Context::new()
    } else if batch_len == 1 {
        Span::current().context()
    } else {
        record_context(&record.headers)
    }
}

/// The span of one scheduler run of `partition` (an internal span: the members it advances
/// are counted, never named).
pub fn scheduler_span(partition: Partition) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        "scheduler run",
        otel.name = "scheduler run",
        messaging.destination.partition.id = partition,
        loyalty.scheduler.due = Empty,
    )
}

/// The span of one page of a re-index sweep of `partition` ([`crate::engine::reindex`]):
/// `kind` is `all` or `program`; the members read and written are recorded on it.
pub fn reindex_span(partition: Partition, kind: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        "scheduler reindex",
        otel.name = "scheduler reindex",
        messaging.destination.partition.id = partition,
        loyalty.reindex.kind = kind,
        loyalty.reindex.scanned = Empty,
        loyalty.reindex.written = Empty,
    )
}

/// The parent of the `apply` spans of a scheduler run: the run's span (the current one).
pub fn current_parent() -> Context {
    if enabled() {
        Span::current().context()
    } else {
        Context::new()
    }
}

/// The member actor's span of one command of kind `kind` (`purchase`...), the child of
/// `parent` (see [`command_parent`]). Its outcome goes in `loyalty.outcome` ([`record_outcome`]).
pub fn apply_span(parent: &Context, kind: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "apply",
        otel.name = %format_args!("apply {kind}"),
        loyalty.command.kind = kind,
        loyalty.outcome = Empty,
    );
    let _ = span.set_parent(parent.clone());
    span
}

/// What an applied command did: `applied`, or the rejection's code (`insufficient-points`...).
pub fn record_outcome(span: &Span, outcome: &'static str) {
    span.record("loyalty.outcome", outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_until_enabled_and_injects_nothing() {
        // The pipeline is never installed in unit tests: no span, no header.
        let mut headers = vec![("a".to_owned(), Bytes::from_static(b"1"))];
        let span = send_span("kafka", "t", &mut headers);
        assert!(!enabled() && span.is_none());
        assert_eq!(headers.len(), 1);
        assert!(!command_parent(&record(), 1).has_active_span());
    }

    fn record() -> Record {
        Record {
            partition: 0,
            offset: 0,
            key: Bytes::new(),
            payload: Bytes::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn headers_are_a_case_insensitive_carrier() {
        let mut headers = vec![("TraceParent".to_owned(), Bytes::from_static(b"old"))];
        HeadersOut(&mut headers).set("traceparent", "new".into());
        assert_eq!(headers.len(), 1);
        assert_eq!(HeadersIn(&headers).get("TRACEPARENT"), Some("new"));
        assert_eq!(HeadersIn(&headers).keys(), vec!["traceparent"]);
        let bad = vec![("traceparent".to_owned(), Bytes::from_static(&[0xff]))];
        assert_eq!(HeadersIn(&bad).get("traceparent"), None);
    }
}
