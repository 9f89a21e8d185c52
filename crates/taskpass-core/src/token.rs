use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, TaskId, TokenId};
use crate::scope::{Audience, ScopeSet};

/// What the broker keeps about an issued token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The `jti`.
    pub id: TokenId,
    /// The `txn`.
    pub task: TaskId,
    /// The `client_id`.
    pub agent: AgentId,
    /// The `aud`.
    pub audience: Audience,
    /// The `scope`.
    pub scopes: ScopeSet,
    /// The `iat`.
    pub issued_at: i64,
    /// The `exp`.
    pub expires_at: i64,
    /// When an operator revoked this one token.
    pub revoked_at: Option<i64>,
    /// Its position in the broker's status lists: list `i / STATUS_LIST_SIZE`, index
    /// `i % STATUS_LIST_SIZE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_index: Option<u64>,
    /// The `x5t#S256` of the certificate it is bound to (`cnf`), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// How many tokens one status list holds: 16,384 bits, 2 KiB before compression. A list is
/// filled once and never reused; it can be dropped when the last token in it has expired.
pub const STATUS_LIST_SIZE: u64 = 16_384;

/// The `status` claim (draft-ietf-oauth-status-list): where a validator finds the token's
/// status without asking the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenStatus {
    /// The Token Status List mechanism.
    pub status_list: StatusListRef,
}

/// `status.status_list`: the index of the token in the list at `uri`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusListRef {
    /// The token's index in the list.
    pub idx: u64,
    /// The list's URL (the `sub` of the Status List Token served there).
    pub uri: String,
}

impl TokenStatus {
    /// The claim for the token at global status index `index`, lists served under `base`
    /// (`https://broker/statuslists`).
    pub fn at(base: &str, index: u64) -> Self {
        Self {
            status_list: StatusListRef {
                idx: index % STATUS_LIST_SIZE,
                uri: format!("{base}/{}", index / STATUS_LIST_SIZE),
            },
        }
    }
}

/// The `act` claim: who is acting when the token's subject is a user (RFC 8693 §4.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The acting agent's id.
    pub sub: String,
    /// What kind of actor it is: `ai_agent` for Taskpass agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_profile: Option<String>,
}

impl Actor {
    /// The `sub_profile` of Taskpass agents.
    pub const AI_AGENT: &'static str = "ai_agent";
}

/// The `cnf` claim: what a token is bound to, so that only the holder can use it. Exactly one
/// member; any other shape is refused when a token is read (a binding nobody can check must
/// not pass as no binding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// `{"x5t#S256": …}` (RFC 8705): the base64url SHA-256 of the client certificate (DER)
    /// the token was issued to.
    Certificate(String),
    /// `{"jkt": …}` (RFC 9449): the RFC 7638 thumbprint of the DPoP key.
    Key(String),
}

impl Confirmation {
    /// The binding to the certificate `leaf_der`.
    pub fn for_certificate(leaf_der: &[u8]) -> Self {
        Self::Certificate(certificate_thumbprint(leaf_der))
    }

    /// Whether this is a certificate binding that `leaf_der` fulfils.
    pub fn matches_certificate(&self, leaf_der: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        match self {
            Self::Certificate(t) => {
                let presented = certificate_thumbprint(leaf_der);
                bool::from(t.as_bytes().ct_eq(presented.as_bytes()))
            }
            Self::Key(_) => false,
        }
    }

    /// Whether this is a key binding to the key with RFC 7638 thumbprint `jkt`.
    pub fn matches_key(&self, jkt: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        match self {
            Self::Key(t) => bool::from(t.as_bytes().ct_eq(jkt.as_bytes())),
            Self::Certificate(_) => false,
        }
    }
}

/// base64url (no padding) of the SHA-256 of a certificate's DER: `x5t#S256`.
pub fn certificate_thumbprint(der: &[u8]) -> String {
    sha256_b64url(der)
}

/// base64url (no padding) of the SHA-256 of `data`: thumbprints, DPoP's `ath`.
pub fn sha256_b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// A thumbprint as both bindings write it: base64url of 32 bytes, 43 characters.
pub fn is_thumbprint(s: &str) -> bool {
    use base64::Engine as _;
    s.len() == 43
        && base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .is_ok_and(|b| b.len() == 32)
}

impl Serialize for Confirmation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Self::Certificate(t) => m.serialize_entry("x5t#S256", t)?,
            Self::Key(t) => m.serialize_entry("jkt", t)?,
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Confirmation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let m = std::collections::BTreeMap::<String, String>::deserialize(d)?;
        let mut it = m.into_iter();
        let (Some((name, value)), None) = (it.next(), it.next()) else {
            return Err(D::Error::custom("cnf must have exactly one member"));
        };
        if !is_thumbprint(&value) {
            return Err(D::Error::custom("cnf holds a thumbprint of the wrong form"));
        }
        match name.as_str() {
            "x5t#S256" => Ok(Self::Certificate(value)),
            "jkt" => Ok(Self::Key(value)),
            _ => Err(D::Error::custom(
                "cnf names a binding Taskpass does not know",
            )),
        }
    }
}

/// The claims of a Taskpass access token (RFC 9068 profile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The broker's issuer URL.
    pub iss: String,
    /// The agent id, or the user when acting for one.
    pub sub: String,
    /// One audience.
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// The token id.
    pub jti: String,
    /// Always the agent id.
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: String,
    /// The task id.
    pub txn: String,
    /// Present when acting for a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// Confirmation (RFC 7800): present when the token is bound to a certificate or key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Where its status is published (draft-ietf-oauth-status-list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TokenStatus>,
    /// The approver, when its task needed a human's approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

impl AccessClaims {
    /// The claims for `record`, issued by `issuer`, for a task acting for `on_behalf_of`.
    pub fn for_record(issuer: &str, record: &TokenRecord, on_behalf_of: Option<&str>) -> Self {
        let agent = record.agent.as_str().to_owned();
        let (sub, act) = match on_behalf_of {
            Some(user) => (
                user.to_owned(),
                Some(Actor {
                    sub: agent.clone(),
                    sub_profile: Some(Actor::AI_AGENT.to_owned()),
                }),
            ),
            None => (agent.clone(), None),
        };
        Self {
            iss: issuer.to_owned(),
            sub,
            aud: record.audience.as_str().to_owned(),
            exp: record.expires_at,
            iat: record.issued_at,
            nbf: record.issued_at,
            jti: record.id.to_string(),
            client_id: agent,
            scope: record.scopes.to_claim(),
            txn: record.task.to_string(),
            act,
            cnf: None,
            status: None,
            approved_by: None,
        }
    }

    /// The `scope` claim as a list, in claim order.
    pub fn scopes(&self) -> Vec<String> {
        self.scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}
