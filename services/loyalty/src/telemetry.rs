//! Logs and traces of a `loyalty` process.
//!
//! **Logs** (`tracing`) go to stderr, human-readable by default, JSON with
//! `LOYALTY_LOG_FORMAT=json` (what production runs), filtered by `RUST_LOG` (default `info`).
//! Inside a traced span every JSON line starts with the span's `trace_id` and `span_id`, so a
//! log line leads to its trace. Logs never carry personal data (phone numbers, names):
//! handlers log ids only.
//!
//! **Traces** (OpenTelemetry) are off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. Then [`start`] installs the SDK with a batch
//! span processor exporting OTLP over HTTP/protobuf (`<endpoint>/v1/traces`), the W3C
//! TraceContext propagator, and a `tracing` layer that exports the platform's trace spans:
//! those that declare an `otel.name` field (`loyalty_core::trace`, the gateway's request span);
//! other spans (a library's, a task's lifetime span) and log lines are not exported. The standard variables apply:
//! `OTEL_SERVICE_NAME` (default `loyalty-dev`, `loyalty-gateway`, `loyalty-engine`... by
//! command), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`
//! (default `parentbased_always_on`), `OTEL_BSP_SCHEDULE_DELAY` and the other `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_HEADERS` / `_TIMEOUT`; `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn traces off. A value this build cannot honour (a gRPC
//! protocol, an unknown sampler, a ratio outside 0..1) stops the process at startup, naming the
//! variable. Dropping the returned [`Telemetry`] (or [`Telemetry::shutdown`]) flushes the
//! spans still queued: on a graceful exit nothing is lost.
//!
//! Which spans exist, and what they never carry, is in `loyalty_core::trace`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How long a graceful exit waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Set once a trace pipeline is installed in this process.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces (see [`start`]).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The trace pipeline of a process, flushed and shut down when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter (at most a few seconds). Later
    /// calls do nothing.
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                tracing::warn!(error = %e, "traces: the last spans may not have been exported");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Logs only, at `info` unless `RUST_LOG` says otherwise.
pub fn init() {
    init_with_default("info");
}

/// Like [`init`], with another default level (tests use `warn`). No traces.
pub fn init_with_default(level: &str) {
    install(level, None);
}

/// Logs, and traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, for a process whose
/// `service.name` is `default_service` unless `OTEL_SERVICE_NAME` names another. Keep the
/// result until the process exits.
pub fn start(default_service: &str) -> anyhow::Result<Telemetry> {
    let provider = match traces_configured()? {
        true => Some(provider(default_service)?),
        false => None,
    };
    install("info", provider.as_ref());
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        EXPORTING.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry { provider })
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the environment asks for traces; `Err` for a setting this build cannot honour.
fn traces_configured() -> anyhow::Result<bool> {
    let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .is_some();
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    if !endpoint || disabled {
        return Ok(false);
    }
    check_protocol()?;
    check_sampler(
        var("OTEL_TRACES_SAMPLER").as_deref(),
        var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
    )?;
    Ok(true)
}

fn check_protocol() -> anyhow::Result<()> {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = var(name).filter(|p| p != "http/protobuf") {
            bail!("{name}={p}: this build exports OTLP over HTTP/protobuf only (http/protobuf)");
        }
    }
    Ok(())
}

/// The samplers of the specification that the SDK implements.
const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// `OTEL_TRACES_SAMPLER` (and its `_ARG` for a ratio sampler) as the SDK will read them.
fn check_sampler(sampler: Option<&str>, arg: Option<&str>) -> anyhow::Result<()> {
    let Some(sampler) = sampler else {
        return Ok(());
    };
    if !SAMPLERS.contains(&sampler) {
        bail!("OTEL_TRACES_SAMPLER={sampler}: not one of {SAMPLERS:?}");
    }
    if sampler.ends_with("traceidratio") {
        let arg = arg.unwrap_or("1.0");
        match arg.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => {}
            _ => bail!("OTEL_TRACES_SAMPLER_ARG={arg}: a sampling ratio from 0 to 1"),
        }
    }
    Ok(())
}

/// The SDK's provider: OTLP/HTTP protobuf exporter behind a batch span processor (both read
/// their `OTEL_*` variables), sampler from the environment, this process's resource.
fn provider(default_service: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .context("OTEL_EXPORTER_OTLP_ENDPOINT: configuring the OTLP exporter")?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(default_service))
        .build())
}

/// `service.name` from `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` (the SDK reads both),
/// else `default_service`; `service.version` is the binary's.
fn resource(default_service: &str) -> Resource {
    let named = var("OTEL_SERVICE_NAME").is_some()
        || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    match named {
        true => builder.build(),
        false => builder
            .with_service_name(default_service.to_owned())
            .build(),
    }
}

/// Installs the global subscriber: the log layer (filtered by `RUST_LOG`, else `level`) and,
/// with a provider, the span exporter's layer. A second call keeps the first subscriber.
fn install(level: &str, provider: Option<&SdkTracerProvider>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = std::env::var("LOYALTY_LOG_FORMAT").as_deref() == Ok("json");
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
        logs.json()
            .event_format(WithTraceIds(format::format().json()))
            .boxed()
    } else {
        logs.boxed()
    };
    let spans = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("loyalty"))
            .with_threads(false)
            .with_filter(filter_fn(|m| {
                m.is_span() && m.fields().field("otel.name").is_some()
            }))
    });
    // Already initialised (tests): keep the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .with(crate::client_faults::ClientFaults)
        .try_init();
}

/// A JSON event format that starts each line with the `trace_id` and `span_id` of the
/// innermost traced span around the event, when there is one.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = trace_ids(ctx) else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// The ids of the innermost span of the event's scope that has an OpenTelemetry context.
fn trace_ids<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    let ids: Vec<tracing::span::Id> = ctx.event_scope()?.map(|span| span.id()).collect();
    tracing::dispatcher::get_default(|dispatch| {
        ids.iter().find_map(|id| {
            let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
            let sc = cx.span().span_context().clone();
            sc.is_valid()
                .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_are_checked() {
        assert!(check_sampler(None, None).is_ok());
        assert!(check_sampler(Some("parentbased_always_on"), None).is_ok());
        assert!(check_sampler(Some("parentbased_traceidratio"), Some("0.25")).is_ok());
        assert!(check_sampler(Some("traceidratio"), None).is_ok());
        let unknown = check_sampler(Some("jaeger_remote"), None).unwrap_err();
        assert!(unknown
            .to_string()
            .contains("OTEL_TRACES_SAMPLER=jaeger_remote"));
        for bad in ["1.5", "-0.1", "half"] {
            let e = check_sampler(Some("traceidratio"), Some(bad)).unwrap_err();
            assert!(e.to_string().contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
        }
    }
}
