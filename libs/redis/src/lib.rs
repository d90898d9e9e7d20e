//! The Redis adapter of the hot cache ([`loyalty_core::ports::HotCache`]): member statuses
//! served at the till, written by the engine after the durable write, read by every gateway.
//!
//! Redis is only a cache here: losing it loses nothing, and [`rebuild`] writes every member's
//! status back from the durable store (after a `FLUSHALL`, a failover to an empty replica, or
//! to warm a new instance). The same function fills any [`HotCache`], the embedded one too.
//!
//! # Key layout
//!
//! One string key per member: `{prefix}status:{member_id}` (prefix `loyalty:` by default,
//! [`RedisCacheOptions::prefix`]). Its value is a small ASCII header followed by the JSON served
//! at the till:
//!
//! ```text
//! v2 00000000000000000042 0000000003 franchise-id\n{"member_id":...}
//! ^^ ^^^^^^^^^^^^^^^^^^^^ ^^^^^^^^^^ ^^^^^^^^^^^^  ^^^^^^^^^^^^^^^^^
//! |  version: 20 digits,  program    the member's  the JSON of MemberStatus, byte for byte
//! |  zero-padded u64      version    franchise id
//! format tag              (10 digits, the one the status was rendered with)
//! ```
//!
//! Values of the first format (`v1 <version> <franchise>`, without the program version) are
//! still read, as rendered with an unknown program (version 0: rendered again on read).
//!
//! One value (not a hash) so that a read is one `GET` that can never see the version of one
//! write with the JSON of another, and a TTL covers the whole entry. The version is zero-padded
//! so that the Lua script compares versions as strings: exact for every `u64`, where Lua numbers
//! (doubles) would not be above 2^53. Franchise ids are `[A-Za-z0-9_.:-]`, so neither the
//! space nor the newline can occur inside one.
//!
//! # Ordering
//!
//! Every write goes through one Lua script (run with `EVALSHA`) that stores the new value
//! unless the stored one carries a newer version: an older status never replaces a newer one,
//! whatever the order in which writers, retries or a rebuild arrive. Equal versions are
//! replaced (same rule as the embedded cache), so a rebuild can re-render a status. Values are
//! always set whole; nothing is ever incremented in Redis, so a retried write cannot double
//! count.

mod cache;
pub mod key_changes;
mod pending_codes;
mod rate_limit;
pub mod replies;

pub use cache::{RedisCache, RedisCacheOptions};
/// Rebuilding works on any hot cache; it lives with the ports.
pub use loyalty_core::rebuild::{rebuild, DEFAULT_REBUILD_PAGE};
pub use pending_codes::RedisPendingCodes;
pub use rate_limit::RedisRateLimiter;

#[doc(no_inline)]
pub use loyalty_core::ports::HotCache;
