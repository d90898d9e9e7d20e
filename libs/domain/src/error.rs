/// Input the domain refuses: a value out of its type's bounds, or an incoherent program.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("invalid program: {0}")]
    InvalidProgram(String),
}

impl DomainError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DomainError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_program(reason: impl Into<String>) -> Self {
        DomainError::InvalidProgram(reason.into())
    }
}
