/// Errors of the core and of every port. Adapters map their technology's errors onto these
/// variants, so the engine and the gateway handle any adapter the same way.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A conditional write lost: a member's stored version is not the one expected (another
    /// writer got there first, or this one was fenced), or an event id is already recorded.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backing service is unreachable or failed; the operation may be retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The caller asked for something that cannot exist (unknown topic, bad partition...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The component is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
