//! A client's malformed request is not the server's fault, so it is not logged at ERROR.
//!
//! actix-http answers a request head it cannot parse or buffer (an invalid byte in a header, a
//! URI longer than the `http` crate takes, a head over its 128 KiB buffer or 96 headers, a bad
//! method or version) with a 400 or 431 of its own, then logs `stream error: request parse error:
//! …` at ERROR from `actix_http::h1::dispatcher`; a connection the client breaks (`stream error:
//! I/O error…`) is logged the same way. [`ClientFaults`] turns these into a DEBUG event of
//! target `loyalty::http` (so `RUST_LOG=loyalty::http=debug` shows them) and drops the ERROR.
//! Every other ERROR of actix-http (its internal errors are logged by separate events) stays.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The layer of the process's subscriber that demotes the HTTP codec's client errors.
pub struct ClientFaults;

/// Whether `event` is the HTTP codec's report of a connection it closed on a client's error.
fn is_client_fault(event: &Event<'_>) -> Option<String> {
    let meta = event.metadata();
    if *meta.level() != Level::ERROR || meta.target() != "actix_http::h1::dispatcher" {
        return None;
    }
    let mut message = Message(String::new());
    event.record(&mut message);
    message.0.starts_with("stream error").then_some(message.0)
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for ClientFaults {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        match is_client_fault(event) {
            Some(message) => {
                tracing::debug!(
                    target: "loyalty::http",
                    error = %message,
                    "connection closed on a client's error (the HTTP codec answered it)"
                );
                false
            }
            None => true,
        }
    }
}
