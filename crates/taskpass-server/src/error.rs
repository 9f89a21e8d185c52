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
    /// Attested, but the client the request names is not the agent attested (OAuth
    /// `client_id`).
    #[error("{0}")]
    InvalidClient(String),
    /// Attested, but policy or allow-lists say no.
    #[error("{0}")]
    PermissionDenied(String),
    /// A decision of the domain's policy, with the rule that made it (its code follows the
    /// denial's kind; the token endpoint also reads the rule).
    #[error("{0}")]
    Denied(Denial),
    /// Malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// A DPoP proof that cannot be used (already used).
    #[error("{0}")]
    InvalidProof(String),
    /// No such thing for this caller.
    #[error("{0}")]
    NotFound(String),
    /// Already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Size limits.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A rate limit: retry later.
    #[error("{0}")]
    RateLimited(String),
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
            Self::Unauthenticated(_) | Self::InvalidClient(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Denied(d) => match d.kind {
                DenialKind::InvalidArgument => Code::InvalidArgument,
                DenialKind::FailedPrecondition => Code::FailedPrecondition,
                // A feature this broker does not enable is a policy "no", naming its rule.
                _ => Code::PermissionDenied,
            },
            Self::InvalidArgument(_) | Self::InvalidProof(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ResourceExhausted(_) | Self::RateLimited(_) => Code::ResourceExhausted,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status of the JSON API's answer (the usual mapping of gRPC codes).
    pub fn http_status(&self) -> u16 {
        if let Self::ResourceExhausted(_) = self {
            // A size limit; a rate limit is 429 below.
            return 413;
        }
        match self.code() {
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::DeadlineExceeded => 504,
            _ => 500,
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
        Self::Denied(d)
    }
}

/// An error of the OAuth token endpoint (RFC 6749 §5.2): the HTTP status, the `error` code and
/// a description a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// 400 for the request's fault, 401 for failed client authentication, 429, 503, 500.
    pub status: u16,
    /// `invalid_request`, `invalid_client`, `invalid_grant`, `unauthorized_client`,
    /// `unsupported_grant_type`, `invalid_scope`, `invalid_target` (RFC 8707),
    /// `invalid_dpop_proof` (RFC 9449), `temporarily_unavailable`, `server_error`.
    pub error: &'static str,
    /// `error_description`.
    pub description: String,
}

impl OAuthError {
    /// A 400 with this code.
    pub fn bad(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: 400,
            error,
            description: description.into(),
        }
    }
}

/// What a token request's credential is, for its errors: a refused credential is
/// `invalid_grant` for an assertion (RFC 7523), `invalid_request` for a subject or actor
/// token (RFC 8693 §2.2.2), `invalid_client` for client authentication (RFC 6749 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantCredential {
    /// jwt-bearer's `assertion`.
    Assertion,
    /// token exchange's `subject_token` / `actor_token`.
    Exchanged,
    /// client_credentials' client authentication.
    Client,
}

impl ApiError {
    /// The token endpoint's answer for this error, for a grant whose credential is `cred`.
    pub fn oauth(&self, cred: GrantCredential) -> OAuthError {
        let description = self.to_string();
        let refused = match cred {
            GrantCredential::Assertion => (400, "invalid_grant"),
            GrantCredential::Exchanged => (400, "invalid_request"),
            GrantCredential::Client => (401, "invalid_client"),
        };
        let (status, error) = match self {
            Self::InvalidClient(_) => (401, "invalid_client"),
            Self::InvalidProof(_) => (400, "invalid_dpop_proof"),
            Self::Unauthenticated(_) => refused,
            Self::Denied(d) => match d.rule {
                r if r.starts_with("audience") => (400, "invalid_target"),
                r if r.starts_with("scope") => (400, "invalid_scope"),
                // The subject or actor token is unacceptable by policy.
                r if r.starts_with("delegation") && cred == GrantCredential::Exchanged => {
                    (400, "invalid_request")
                }
                _ if d.kind == DenialKind::InvalidArgument => (400, "invalid_request"),
                _ => (400, "invalid_grant"),
            },
            Self::PermissionDenied(_) => (400, "unauthorized_client"),
            Self::NotFound(_) | Self::FailedPrecondition(_) => (400, "invalid_grant"),
            Self::RateLimited(_) => (429, "temporarily_unavailable"),
            Self::Unavailable(_) | Self::DeadlineExceeded(_) => (503, "temporarily_unavailable"),
            Self::Internal(detail) => {
                tracing::error!(detail = %detail, "internal error");
                return OAuthError {
                    status: 500,
                    error: "server_error",
                    description: "internal error in the broker; its log has the detail".into(),
                };
            }
            _ => (400, "invalid_request"),
        };
        OAuthError {
            status,
            error,
            description,
        }
    }
}
