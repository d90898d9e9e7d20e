//! This adapter's metrics, registered once in the platform's registry
//! ([`loyalty_core::metrics::metrics`]) so that `/metrics` serves them with the others.

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts};

pub(crate) struct SmtpMetrics {
    /// `result` (`ok`, `transient`, `permanent`).
    pub deliveries: IntCounterVec,
    pub seconds: Histogram,
}

pub(crate) fn metrics() -> &'static SmtpMetrics {
    static M: OnceLock<SmtpMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "loyalty_smtp_deliveries_total",
                "E-mails handed to the SMTP relay, by result (ok, transient, permanent).",
            ),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric options: {e}"));
        let seconds = Histogram::with_opts(
            HistogramOpts::new(
                "loyalty_smtp_delivery_seconds",
                "Duration of an SMTP delivery (connection to the relay's answer to the data).",
            )
            .buckets(vec![
                0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .unwrap_or_else(|e| unreachable!("static metric options: {e}"));
        let registry = &loyalty_core::metrics::metrics().registry;
        for c in [
            Box::new(deliveries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(seconds.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::warn!(error = %e, "smtp metrics not registered");
            }
        }
        SmtpMetrics {
            deliveries,
            seconds,
        }
    })
}
