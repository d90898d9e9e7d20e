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

impl Error {
    /// Whether retrying the operation later can succeed: the backing service is down or slow
    /// (`Unavailable`), or a conditional write lost and the work must be redone from the
    /// store's truth (`Conflict`). `Corrupt` and `Invalid` are permanent: retrying changes
    /// nothing, and the caller must stop loudly or dead-letter.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Conflict(_))
    }

    /// A short, bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Conflict(_) => "conflict",
            Error::Unavailable(_) => "unavailable",
            Error::Corrupt(_) => "corrupt",
            Error::Invalid(_) => "invalid",
            Error::ShuttingDown => "shutting-down",
        }
    }
}
