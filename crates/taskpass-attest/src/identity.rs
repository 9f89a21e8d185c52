use crate::AttestError;

/// What a verified attestation proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedIdentity {
    /// How, and as whom, the caller proved itself.
    pub method: AttestationMethod,
    /// When the proof stops being valid (Unix seconds): the token's own `exp`.
    pub expires_at: i64,
}

/// The kind of proof, with the identity it establishes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AttestationMethod {
    /// An OIDC ID token from a trusted issuer.
    Oidc {
        /// The token's `iss`, exactly as configured.
        issuer: String,
        /// The token's `sub`.
        subject: String,
    },
}

/// The evidence an agent presents on a call.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum Evidence<'a> {
    /// A compact-serialised OIDC ID token (JWS).
    OidcToken(&'a str),
}

impl std::fmt::Debug for Evidence<'_> {
    // Never print the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OidcToken(t) => write!(f, "OidcToken(<{} bytes>)", t.len()),
        }
    }
}

/// Something that turns evidence into a verified identity.
#[async_trait::async_trait]
pub trait Attestor: Send + Sync + std::fmt::Debug {
    /// Verifies `evidence` now; errors say why it is refused.
    async fn attest(&self, evidence: &Evidence<'_>) -> Result<AttestedIdentity, AttestError>;
}
