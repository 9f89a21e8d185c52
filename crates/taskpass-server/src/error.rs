//! Service errors and their one mapping onto gRPC status codes.

use taskpass_core::{Denial, DenialKind, ParseError};
use taskpass_store::StoreError;
use tonic::{Code, Status};

/// What an RPC can fail with. Messages are for the caller: actionable and never secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Attestation missing, malformed, expired, untrusted or matching no agent.
    #[error("{0}")]
    Unauthenticated(String),
    /// Attested, but policy or allow-lists say no.
    #[error("{0}")]
    PermissionDenied(String),
    /// Malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such thing for this caller.
    #[error("{0}")]
    NotFound(String),
    /// Already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Size or rate limits.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Not available on this broker.
    #[error("{0}")]
    Unimplemented(String),
    /// A cursor or position past the end.
    #[error("{0}")]
    OutOfRange(String),
    /// The call took longer than the broker allows.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A dependency is down for now (an issuer's keys cannot be fetched): retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A fault inside the broker: the detail goes to the log, not to the caller.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The error for a field that did not parse, naming it: RESOURCE_EXHAUSTED when a size
    /// limit was hit, INVALID_ARGUMENT otherwise.
    pub fn field(field: &str, e: ParseError) -> Self {
        match e {
            ParseError::TooLong { .. } | ParseError::TooMany { .. } => {
                Self::ResourceExhausted(format!("{field}: {e}"))
            }
            _ => Self::InvalidArgument(format!("{field}: {e}")),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match &e {
            ApiError::Internal(detail) => {
                tracing::error!(detail = %detail, "internal error");
                Status::internal("internal error in the broker; its log has the detail")
            }
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what } => Self::NotFound(format!("{what} not found")),
            StoreError::AlreadyExists { what } => {
                Self::AlreadyExists(format!("{what} already exists"))
            }
            StoreError::Precondition(m) => Self::FailedPrecondition(m),
            // "the store cannot write: …": the write was not made; retry once it recovers.
            e @ StoreError::Unwritable(_) => Self::Unavailable(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        Self::Internal(format!("serialisation failed: {e}"))
    }
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> Self {
        let msg = d.to_string();
        match d.kind {
            DenialKind::InvalidArgument => Self::InvalidArgument(msg),
            DenialKind::PermissionDenied => Self::PermissionDenied(msg),
            DenialKind::FailedPrecondition => Self::FailedPrecondition(msg),
            // A feature this broker does not enable is a policy "no", naming its rule.
            _ => Self::PermissionDenied(msg),
        }
    }
}
