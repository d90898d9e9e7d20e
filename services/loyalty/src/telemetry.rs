//! Structured logs (`tracing`): human-readable by default, JSON with `LOYALTY_LOG_FORMAT=json`,
//! filtered by `RUST_LOG` (default `info`). Logs never carry personal data (phone numbers,
//! names): handlers log ids only.

use tracing_subscriber::EnvFilter;

pub fn init() {
    init_with_default("info");
}

/// Like [`init`], with another default level (tests use `warn`).
pub fn init_with_default(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if std::env::var("LOYALTY_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests): keep the first subscriber.
    let _ = result;
}
