//! The core of the platform around the pure domain: the ports (traits every adapter
//! implements), the wire format of POS commands, the member actors and their shards (the
//! engine), request-reply, and metrics. No adapter lives here.

pub mod audit;
pub mod campaigns;
pub mod command;
pub mod dashboard;
pub mod dead_letters;
pub mod demo_history;
pub mod engine;
pub mod error;
pub mod identity;
pub mod input;
pub mod key_changes;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod pending_codes;
pub mod ports;
pub mod pos_ingest;
pub mod pos_topic;
pub mod programs;
pub mod projections;
pub mod provisioning;
pub mod rate_limit;
pub mod rebuild;
pub mod replies;
pub mod sealing;
pub mod segments;
pub mod trace;

pub use error::{Error, Result};
