//! The HTTP routes of API v1, grouped by resource.

pub mod admin;
pub mod events;
pub mod members;
pub mod ops;

use std::time::Duration;

use loyalty_core::model::Franchise;
use loyalty_core::ports::CachedStatus;
use loyalty_domain::{MemberId, Phone};
use serde::Deserialize;

use crate::problem::ApiError;
use crate::state::Gateway;

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

/// How a POS names a member: exactly one of its id, phone number or QR token.
#[derive(Debug, Deserialize)]
pub struct MemberRef {
    pub member_id: Option<String>,
    pub phone: Option<String>,
    pub qr: Option<String>,
}

impl MemberRef {
    /// The member named, `Ok(None)` if none is named (an anonymous sale). A member that is not
    /// enrolled in `franchise` (or belongs to another) is `unknown-member`.
    pub async fn resolve(
        &self,
        gw: &Gateway,
        franchise: &Franchise,
    ) -> Result<Option<(MemberId, CachedStatus)>, ApiError> {
        let given = [&self.member_id, &self.phone, &self.qr]
            .iter()
            .filter(|x| x.is_some())
            .count();
        if given > 1 {
            return Err(ApiError::Invalid(
                "name the member by one of member_id, phone or qr, not several".into(),
            ));
        }
        let id = if let Some(m) = &self.member_id {
            MemberId::parse(m)?
        } else if let Some(p) = &self.phone {
            loyalty_core::identity::member_id(&franchise.secret, &Phone::parse(p)?)
        } else if let Some(q) = &self.qr {
            loyalty_core::identity::member_of_qr(&franchise.secret, q)
                .ok_or_else(ApiError::unknown_member)?
        } else {
            return Ok(None);
        };
        match gw.member_status(franchise, &id).await? {
            Some(s) => Ok(Some((id, s))),
            None => Err(ApiError::unknown_member()),
        }
    }
}

/// Writes `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}
