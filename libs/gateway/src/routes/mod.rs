//! The HTTP routes of API v1, grouped by resource.

pub mod admin;
pub mod campaigns;
pub mod consent;
pub mod dashboard;
pub mod enrolment;
pub mod events;
pub mod keys;
pub mod members;
pub mod ops;
pub mod privacy;
pub mod segments;

use std::time::Duration;

use serde::Deserialize;

use crate::problem::ApiError;

/// The longest a request may wait for its effect.
pub const MAX_WAIT_MS: u64 = 5000;

/// `?wait_ms=N`: how long to wait for the effect before answering 202.
#[derive(Debug, Deserialize)]
pub struct WaitQuery {
    pub wait_ms: Option<u64>,
}

impl WaitQuery {
    /// The deadline asked for, or `default`; more than [`MAX_WAIT_MS`] is refused.
    pub fn deadline(&self, default: Option<Duration>) -> Result<Option<Duration>, ApiError> {
        match self.wait_ms {
            Some(ms) if ms > MAX_WAIT_MS => Err(ApiError::Invalid(format!(
                "wait_ms must be at most {MAX_WAIT_MS}"
            ))),
            Some(0) => Ok(None),
            Some(ms) => Ok(Some(Duration::from_millis(ms))),
            None => Ok(default),
        }
    }
}

/// Writes `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}
