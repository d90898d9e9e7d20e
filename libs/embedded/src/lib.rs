//! Embedded adapters of the loyalty ports, for `dev` mode and tests: a durable partitioned
//! event log with consumer groups ([`log`]), a durable store on redb ([`store`]) and an
//! in-process hot cache ([`cache`]). They keep the semantics of the real adapters (partitions,
//! offsets, at-least-once redelivery, conditional writes, durability across `kill -9`), so the
//! engine cannot tell them apart.

pub mod cache;
pub mod lock;
pub mod log;
pub mod messages;
pub mod notify;
pub mod pending_codes;
pub mod rate_limit;
pub mod store;

pub use cache::EmbeddedCache;
pub use lock::DataDirLock;
pub use messages::EmbeddedMessages;
pub use notify::EmbeddedNotifier;
pub use pending_codes::EmbeddedPendingCodes;
pub use rate_limit::EmbeddedRateLimiter;
pub use store::EmbeddedStore;
