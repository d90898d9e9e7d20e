//! Announcements that an API key's principal changed, so that every gateway forgets it at once.
//!
//! Each gateway keeps the principals of the keys it saw lately for a short time (its principal
//! cache, `LOYALTY_PRINCIPAL_TTL_MS`), so that a request does not read the store. A key rotated
//! or revoked through one gateway is forgotten there at once; the others learn it through a
//! [`KeyChanges`] announcement (Redis pub/sub between processes) and forget it too, without
//! waiting for the end of their cache's TTL. An announcement can be lost (pub/sub delivers at
//! most once, to whoever is subscribed): the TTL stays the bound, and a gateway that was not
//! subscribed for a while forgets every principal when it subscribes again.

/// Tells the other gateways that the principal of the key whose hash is `key_hash` changed.
pub trait KeyChanges: Send + Sync + 'static {
    /// Fire and forget: a request never waits on the announcement.
    fn announce(&self, key_hash: &str);
}

/// One gateway in the process and no other to tell: the gateway that changed the key forgets
/// it itself.
pub struct NoOtherGateway;

impl KeyChanges for NoOtherGateway {
    fn announce(&self, _key_hash: &str) {}
}
