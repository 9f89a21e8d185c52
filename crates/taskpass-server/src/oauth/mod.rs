//! The OAuth 2 token endpoint: agents that know nothing of Taskpass get task tokens with an
//! ordinary OAuth client. `endpoint.rs` reads the HTTP request (form, DPoP proof) and writes
//! RFC 6749 answers; this file turns a grant into a token with the same checks, audit and
//! durability as AgentService.
//!
//! A grant attests the agent (a platform JWT as `assertion`, `subject_token` or
//! `actor_token`, a JWT-SVID `client_assertion`, or the connection's client certificate),
//! then either mints inside an open task of the agent (`task_id`) or opens an *implicit*
//! task for that one token: audited as StartTask and IssueToken are, revocable, its
//! deadline the token's expiry, and closed to any other token.

mod endpoint;

pub(crate) use endpoint::{METADATA_PATH, TOKEN_PATH, metadata, metadata_inserted, token};

use taskpass_core::{Audience, Purpose, ScopeSet, StartRequest};

use crate::broker::{Attested, Broker, Caller, TokenAsk};
use crate::error::ApiError;
use taskpass_proto::v1 as pb;

/// `grant_type` values.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub(crate) const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub(crate) const CLIENT_CREDENTIALS: &str = "client_credentials";

/// How the agent proves what it is.
pub(crate) enum Credential {
    /// A platform JWT, verified exactly like an OIDC attestation.
    Jwt(String),
    /// The client certificate of this connection (RFC 8705 `tls_client_auth`).
    Certificate,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the JWT.
        f.write_str(match self {
            Self::Jwt(_) => "Jwt(..)",
            Self::Certificate => "Certificate",
        })
    }
}

/// A token request, read and checked for shape by the endpoint. `Debug` shows no token.
#[derive(Debug)]
pub(crate) struct Grant {
    /// Which grant (for the audit and the answer).
    pub(crate) grant_type: &'static str,
    pub(crate) credential: Credential,
    /// The user's token, when the agent acts for a user (token exchange with `actor_token`).
    pub(crate) user_token: Option<Secret>,
    /// `client_id`, when sent: must name the attested agent.
    pub(crate) client_id: Option<String>,
    /// An open task of the agent to mint in; none opens an implicit task.
    pub(crate) task_id: Option<String>,
    /// The token's audience (`resource`, or RFC 8693 `audience`).
    pub(crate) audience: Audience,
    /// `scope`, split; empty with `task_id` means the task's scopes.
    pub(crate) scopes: ScopeSet,
    /// A Taskpass extension: the implicit task's purpose.
    pub(crate) purpose: Option<Purpose>,
    /// The DPoP proof, verified, to be used up once the grant is authenticated.
    pub(crate) dpop: Option<taskpass_verify::DpopProof>,
}

/// A string that is never shown (`Debug` prints its length).
pub(crate) struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// A token granted.
pub(crate) struct Granted {
    pub(crate) access_token: String,
    /// `Bearer`, or `DPoP` for a token bound to the proof's key.
    pub(crate) token_type: &'static str,
    pub(crate) expires_in: i64,
    pub(crate) scope: String,
    pub(crate) task_id: String,
    pub(crate) token_id: String,
}

impl Broker {
    /// Grants a token: attests, charges the agent's rate, then mints in its task or in a new
    /// implicit one; durable before it returns.
    pub(crate) async fn grant(&self, caller: &Caller, g: Grant) -> Result<Granted, ApiError> {
        use pb::attestation::Method;
        let method = match &g.credential {
            Credential::Jwt(jwt) => Method::OidcToken(jwt.clone()),
            Credential::Certificate => Method::Mtls(pb::MtlsAttestation {}),
        };
        let att = pb::Attestation {
            method: Some(method),
        };
        let Attested { agent, certificate } =
            self.authenticate(caller, "oauth_token", Some(&att)).await?;
        if let Some(id) = &g.client_id
            && id != agent.id.as_str()
            && id != agent.name.as_str()
        {
            return Err(ApiError::InvalidClient(format!(
                "client_id {id:?} is not the agent the credential proves ({}): send its id or name, or leave client_id out",
                agent.name
            )));
        }
        self.charge(&agent, "issue_token")?;
        if let Some(proof) = &g.dpop {
            self.token_proofs
                .accept(proof, self.now())
                .map_err(|e| ApiError::InvalidProof(format!("DPoP proof: {e}")))?;
        }
        let scopes = g.scopes.to_strings();
        let ask = TokenAsk {
            audience: g.audience.as_str(),
            scopes: &scopes,
            ttl_seconds: 0,
            dpop_jkt: g.dpop.as_ref().map_or("", |p| p.jkt.as_str()),
        };
        let via = format!(" via=oauth grant={}", g.grant_type);
        let granted = |task_id: String, minted: &crate::broker::Minted| Granted {
            token_type: if minted.bound_to_key {
                "DPoP"
            } else {
                "Bearer"
            },
            expires_in: (minted.record.expires_at - self.now()).max(0),
            scope: minted.record.scopes.to_claim(),
            task_id,
            token_id: minted.response.token_id.clone(),
            access_token: minted.response.access_token.clone(),
        };
        match &g.task_id {
            Some(raw) => {
                let task = self.load_own_task(&agent, "issue_token", raw).await?;
                let mut minted = self
                    .mint(&agent, certificate.as_ref(), &task, ask, "issue_token")
                    .await?;
                minted.audit.detail.push_str(&via);
                let answer = granted(task.id.to_string(), &minted);
                // Durable before the token leaves.
                self.store.record_token(minted.record, minted.audit).await?;
                Ok(answer)
            }
            None => {
                let start = StartRequest {
                    purpose: match g.purpose {
                        Some(p) => p,
                        None => Purpose::parse(&format!("OAuth token for {}", g.audience))
                            .map_err(|e| ApiError::field("purpose", e))?,
                    },
                    audiences: vec![g.audience.clone()],
                    scopes: g.scopes.clone(),
                    max_duration_seconds: 0,
                    on_behalf_of_requested: g.user_token.is_some(),
                    user: self
                        .on_behalf_of(
                            &agent,
                            g.user_token.as_ref().map(|t| t.0.as_str()),
                            "start_task",
                        )
                        .await?,
                };
                let (mut task, mut task_audit) = self
                    .open_task(&agent, start, "start_task", crate::broker::Pending::Refused)
                    .await?;
                // Its one token has what the task was granted (for a user, what the user
                // holds of what was asked: RFC 8693 lets the answer's scope be narrower).
                let ask = TokenAsk { scopes: &[], ..ask };
                let mut minted = self
                    .mint(&agent, certificate.as_ref(), &task, ask, "issue_token")
                    .await?;
                // Its one token: the task ends when the token does, and takes no other.
                task.implicit = true;
                task.expires_at = minted.record.expires_at;
                task_audit.detail =
                    format!("{} implicit=true{via}", crate::broker::task_detail(&task));
                minted.audit.detail.push_str(&via);
                let answer = granted(task.id.to_string(), &minted);
                // The task and its token are written together, durable before the token leaves.
                self.store
                    .create_task_with_token(task, task_audit, minted.record, minted.audit)
                    .await?;
                Ok(answer)
            }
        }
    }
}
