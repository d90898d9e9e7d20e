//! Rate limits of phone lookups (`GET /v1/members/lookup?phone=`): a bucket per API key and
//! one per client address ([`loyalty_core::rate_limit`]), so a leaked or curious store key
//! cannot walk the phone numbering plan to learn who is a member (issue 14, defect 10). A QR
//! lookup is not limited: a token carries a MAC and cannot be guessed. An enrolment at the till
//! is not limited either: each probe would enrol the number it tries (a member created, counted
//! in the dashboards), and a till enrols in bursts at opening time.
//!
//! A refused request is `429 rate-limited` with `Retry-After`, and counted in
//! `loyalty_rate_limited_total{scope}` (alerted on by the chart's `LoyaltyLookupsRateLimited`).
//! When the buckets cannot be reached (Redis down) the request goes through, counted in
//! `loyalty_rate_limit_errors_total`: an outage of the limiter must not stop the tills.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::header::HeaderName;
use actix_web::HttpRequest;
use loyalty_core::metrics::metrics;
use loyalty_core::model::Principal;
use loyalty_core::rate_limit::{RateLimit, RateLimiter};

use crate::problem::ApiError;

/// The phone-lookup limits of a gateway, registered as app data by the service.
pub struct LookupLimits {
    pub limiter: Arc<dyn RateLimiter>,
    /// Per API key.
    pub per_key: RateLimit,
    /// Per client address (an IPv6 address counts by its /64, which one host usually holds
    /// whole).
    pub per_address: RateLimit,
    /// The header that carries the client's address when a trusted proxy stands in front
    /// (its last value is the one the proxy wrote); `None`: the TCP peer.
    pub address_header: Option<HeaderName>,
}

impl LookupLimits {
    /// Takes a token from the request's key bucket and address bucket: 429 when either is
    /// empty.
    pub async fn check(&self, req: &HttpRequest, caller: &Principal) -> Result<(), ApiError> {
        // The caller's key by its id (a rotated key keeps its budget), not by hashing it again.
        let key = caller.key_id.as_deref().unwrap_or("admin");
        self.take(&format!("lookup:key:{key}"), &self.per_key, "key")
            .await?;
        if let Some(addr) = self.client_address(req) {
            let bucket = format!("lookup:addr:{}", address_bucket(addr));
            self.take(&bucket, &self.per_address, "address").await?;
        }
        Ok(())
    }

    async fn take(
        &self,
        bucket: &str,
        limit: &RateLimit,
        scope: &'static str,
    ) -> Result<(), ApiError> {
        match self.limiter.take(bucket, limit).await {
            Ok(d) => match d.retry_after {
                None => Ok(()),
                Some(wait) => {
                    metrics().rate_limited.with_label_values(&[scope]).inc();
                    tracing::info!(scope, "phone lookups rate limited");
                    Err(ApiError::RateLimited {
                        scope,
                        retry_after: wait,
                    })
                }
            },
            Err(e) => {
                metrics().rate_limit_errors.inc();
                tracing::warn!(error = %e, "rate limiter unavailable; request let through");
                Ok(())
            }
        }
    }

    pub(crate) fn client_address(&self, req: &HttpRequest) -> Option<IpAddr> {
        if let Some(h) = &self.address_header {
            let last = req.headers().get_all(h).last()?.to_str().ok()?;
            let hop = last.rsplit(',').next()?.trim();
            return hop.parse().ok();
        }
        req.peer_addr().map(|a| a.ip())
    }
}

/// The bucket name of an address: an IPv4 address whole, an IPv6 address by its /64.
pub(crate) fn address_bucket(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = a.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The limits of the request's app, if the service registered them.
pub async fn check_lookup(req: &HttpRequest, caller: &Principal) -> Result<(), ApiError> {
    match req.app_data::<actix_web::web::Data<LookupLimits>>() {
        Some(l) => l.check(req, caller).await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_bucket(a), address_bucket(b));
        assert_ne!(address_bucket(a), address_bucket(c));
        let v4: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_bucket(v4), "192.0.2.7");
    }
}
