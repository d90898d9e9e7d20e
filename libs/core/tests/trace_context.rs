//! The trace context through the log, with a real OpenTelemetry SDK behind `tracing` (spans
//! collected in memory): an append injects its `send` span's context into the record's
//! headers; the engine's batch span is the child of that context for a batch of one record and
//! links to every record's for a larger batch; each command's `apply` span joins its own
//! record's trace. Also: nothing is injected while traces are off.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use loyalty_core::ports::Record;
use loyalty_core::trace;
use opentelemetry::trace::{SpanId, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Debug, Default)]
struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collected {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> {
        if let Ok(mut spans) = self.0.lock() {
            spans.extend(batch);
        }
        async { Ok(()) }
    }
}

impl Collected {
    fn named(&self, name: &str) -> Vec<SpanData> {
        let spans = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        spans.into_iter().filter(|s| s.name == name).collect()
    }
}

fn record(offset: u64, headers: Vec<(String, Bytes)>) -> Record {
    Record {
        partition: 0,
        offset,
        key: Bytes::from_static(b"k"),
        payload: Bytes::new(),
        headers,
    }
}

/// Appends as the adapters do: a `send` span whose context lands in the headers.
fn append(topic: &str) -> (Vec<(String, Bytes)>, SpanId) {
    let mut headers = vec![("other".to_owned(), Bytes::from_static(b"kept"))];
    let span = trace::send_span("kafka", topic, &mut headers);
    let id = span.context().span().span_context().span_id();
    drop(span);
    (headers, id)
}

#[test]
fn the_context_travels_in_the_record_headers() {
    // Off: no span, no header.
    let mut headers = Vec::new();
    assert!(trace::send_span("kafka", "t", &mut headers).is_none());
    assert!(headers.is_empty());

    let collected = Collected::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(collected.clone())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    trace::enable("kafka");
    tracing::subscriber::with_default(subscriber, || {
        let (one, one_send) = append("pos-commands");
        assert!(one.iter().any(|(k, _)| k == "traceparent"), "{one:?}");
        assert!(one.iter().any(|(k, _)| k == "other"));
        let cx = trace::record_context(&one);
        assert_eq!(cx.span().span_context().span_id(), one_send);

        // A batch of one: process is the send's child, apply the process's.
        let batch = [record(0, one.clone())];
        let span = trace::process_span("pos-commands", 0, &batch);
        let parent = futures::executor::block_on(
            async { trace::command_parent(&batch[0], 1) }.instrument(span.clone()),
        );
        drop(trace::apply_span(&parent, "purchase"));
        drop(span);

        // A batch of two traces: links to both, each apply in its own record's trace.
        let (two, two_send) = append("pos-commands");
        let batch = [record(1, one), record(2, two)];
        let span = trace::process_span("pos-commands", 0, &batch);
        let parent = trace::command_parent(&batch[1], 2);
        drop(trace::apply_span(&parent, "refund"));
        drop(span);

        let process = collected.named("process pos-commands");
        assert_eq!(process.len(), 2);
        assert_eq!(process[0].parent_span_id, one_send);
        assert_eq!(process[1].parent_span_id, SpanId::INVALID);
        let linked: Vec<SpanId> = process[1]
            .links
            .iter()
            .map(|l| l.span_context.span_id())
            .collect();
        assert_eq!(linked, vec![one_send, two_send]);
        let applied = collected.named("apply purchase");
        assert_eq!(applied[0].parent_span_id, process[0].span_context.span_id());
        let refunded = collected.named("apply refund");
        assert_eq!(refunded[0].parent_span_id, two_send);
        let sends = collected.named("send pos-commands");
        assert_eq!(
            refunded[0].span_context.trace_id(),
            sends[1].span_context.trace_id()
        );
    });
    let _ = provider.shutdown();
}
