//! This adapter's metrics, registered once in the platform's registry
//! ([`loyalty_core::metrics::metrics`]) so that `/metrics` serves them with the others.

use std::sync::OnceLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

pub(crate) struct WebhookMetrics {
    /// `type` (`campaign_message`, `enrolment_code`), `result` (`ok`, `transient`, `permanent`).
    pub deliveries: IntCounterVec,
    /// `type`.
    pub seconds: HistogramVec,
}

pub(crate) fn metrics() -> &'static WebhookMetrics {
    static M: OnceLock<WebhookMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "loyalty_webhook_deliveries_total",
                "Webhook deliveries by message type and result (ok, transient, permanent).",
            ),
            &["type", "result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric options: {e}"));
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "loyalty_webhook_delivery_seconds",
                "Duration of a webhook delivery (request to answer), by message type.",
            )
            .buckets(vec![
                0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["type"],
        )
        .unwrap_or_else(|e| unreachable!("static metric options: {e}"));
        let registry = &loyalty_core::metrics::metrics().registry;
        for c in [
            Box::new(deliveries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(seconds.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::warn!(error = %e, "webhook metrics not registered");
            }
        }
        WebhookMetrics {
            deliveries,
            seconds,
        }
    })
}
