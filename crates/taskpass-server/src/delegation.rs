//! On-behalf-of delegation (RFC 8693 semantics): a user's token from an issuer of
//! `[[delegation.oidc]]`, verified like an attestation by a verifier of its own (user issuers
//! never attest agents, nor agent issuers users), read into the core's [`User`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};
use taskpass_attest::{AttestationMethod, OidcIssuerConfig, OidcOptions, OidcVerifier};
use taskpass_core::{Agent, Clock, Denial, DenialKind, Scope, ScopeSet, User};

use crate::broker::Broker;
use crate::error::ApiError;

/// The most groups and scopes read from a user's token.
const MAX_ENTRIES: usize = 256;

/// One `[[delegation.oidc]]` table: an issuer of users' tokens, as `[[attestation.oidc]]`,
/// and where its tokens say the user's scopes and tenant.
///
/// The first five keys are [`OidcIssuerConfig`]'s, written out again: serde cannot flatten
/// a table and refuse unknown keys at once, and an unknown key must be an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationIssuerConfig {
    /// The issuer URL, compared exactly with the token's `iss`.
    pub issuer: String,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Where the issuer's JWKS is; else OIDC discovery.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Static keys instead of fetching.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Extra trust root for fetching from the issuer.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The claim holding the user's scopes (space-separated, or an array). Default `scope`.
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// The claim holding the user's tenant. Default `tenant`.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The tenant every user of this issuer belongs to (one identity provider per tenant):
    /// set, the users' tenant is this, and a token whose tenant claim says otherwise is
    /// refused, so that no issuer can vouch for another tenant's users.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The claim holding the user's groups. Default `groups`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// When set, the user's scopes are those its groups map to (and the scope claim is not
    /// read): `{ "payments-team" = ["payments:read", "payments:write"] }`.
    #[serde(default)]
    pub groups_to_scopes: BTreeMap<String, Vec<String>>,
}

fn default_scope_claim() -> String {
    "scope".into()
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}

impl DelegationIssuerConfig {
    /// The issuer as the OIDC verifier takes it.
    fn oidc(&self) -> OidcIssuerConfig {
        OidcIssuerConfig {
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            jwks_uri: self.jwks_uri.clone(),
            jwks_file: self.jwks_file.clone(),
            ca_file: self.ca_file.clone(),
        }
    }

    /// Every problem with the entry.
    pub(crate) fn problems(&self) -> Vec<String> {
        const TABLE: &str = "[[delegation.oidc]]";
        let mut p = self.oidc().validate_in(TABLE);
        for (name, v) in [
            ("scope_claim", &self.scope_claim),
            ("tenant_claim", &self.tenant_claim),
            ("groups_claim", &self.groups_claim),
        ] {
            if v.trim().is_empty() {
                p.push(format!("{TABLE} issuer {:?}: {name} is empty", self.issuer));
            }
        }
        for (group, scopes) in &self.groups_to_scopes {
            if let Err(e) = ScopeSet::parse(scopes) {
                p.push(format!(
                    "{TABLE} issuer {:?}: groups_to_scopes.{group}: {e}",
                    self.issuer
                ));
            }
        }
        p
    }

    /// Paths made absolute against `resolve`.
    pub(crate) fn resolved(mut self, resolve: impl Fn(&std::path::Path) -> PathBuf) -> Self {
        self.jwks_file = self.jwks_file.as_deref().map(&resolve);
        self.ca_file = self.ca_file.as_deref().map(&resolve);
        self
    }
}

/// The verifier of users' tokens and what each issuer's claims mean.
#[derive(Debug)]
pub(crate) struct Delegation {
    verifier: Arc<OidcVerifier>,
    issuers: HashMap<String, DelegationIssuerConfig>,
}

/// Strings of a claim that is a string (split on spaces when `split`) or an array of them.
fn strings(v: Option<&Value>, split: bool) -> Result<Vec<String>, String> {
    let out: Vec<String> = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if split => s
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned).ok_or("holds a non-string"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("is neither a string nor an array of strings".into()),
    };
    if out.len() > MAX_ENTRIES {
        return Err(format!("holds more than {MAX_ENTRIES} values"));
    }
    Ok(out)
}

impl Delegation {
    /// The verifier for `issuers`, or `None` when there are none (delegation is off).
    pub(crate) async fn new(
        issuers: Vec<DelegationIssuerConfig>,
        leeway_seconds: u32,
        clock: Arc<dyn Clock>,
    ) -> Result<Option<Self>, taskpass_attest::AttestError> {
        if issuers.is_empty() {
            return Ok(None);
        }
        let verifier = OidcVerifier::new(
            issuers.iter().map(DelegationIssuerConfig::oidc).collect(),
            OidcOptions {
                leeway_seconds,
                config_table: "[[delegation.oidc]]",
                ..OidcOptions::default()
            },
            clock,
        )
        .await?;
        verifier.spawn_refresh();
        Ok(Some(Self {
            verifier,
            issuers: issuers.into_iter().map(|c| (c.issuer.clone(), c)).collect(),
        }))
    }

    /// The user a verified token describes, or why it is refused.
    pub(crate) async fn user(&self, token: &str) -> Result<User, String> {
        let (identity, claims) = self
            .verifier
            .verify_claims(token)
            .await
            .map_err(|e| match e {
                taskpass_attest::AttestError::UntrustedIssuer { issuer } => format!(
                    "its issuer {issuer} is not trusted for users: add it under [[delegation.oidc]]"
                ),
                other => other.to_string(),
            })?;
        let (issuer, subject) = match identity.method {
            AttestationMethod::Oidc { issuer, subject } => (issuer, subject),
            _ => return Err("it is not an OIDC token".into()),
        };
        let config = self
            .issuers
            .get(&issuer)
            .ok_or_else(|| format!("its issuer {issuer:?} is not configured"))?;
        user_of(config, issuer.clone(), subject, &claims)
    }
}

/// Reads the user out of verified claims, as `config` says.
fn user_of(
    config: &DelegationIssuerConfig,
    issuer: String,
    subject: String,
    claims: &Map<String, Value>,
) -> Result<User, String> {
    let claim = |name: &str, split: bool| {
        strings(claims.get(name), split).map_err(|e| format!("its {name} claim {e}"))
    };
    let claimed = match claims.get(&config.tenant_claim) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 256 => Some(s.clone()),
        Some(_) => {
            return Err(format!(
                "its {} claim is not a string of at most 256 bytes",
                config.tenant_claim
            ));
        }
    };
    let tenant = match (&config.tenant, claimed) {
        (Some(pinned), Some(c)) if &c != pinned => {
            return Err(format!(
                "its {} claim says tenant {c:?}, and its issuer vouches for tenant {pinned:?} only",
                config.tenant_claim
            ));
        }
        (Some(pinned), _) => pinned.clone(),
        (None, c) => c.unwrap_or_default(),
    };
    let groups = claim(&config.groups_claim, false)?;
    let scopes: Vec<String> = if config.groups_to_scopes.is_empty() {
        claim(&config.scope_claim, true)?
    } else {
        groups
            .iter()
            .filter_map(|g| config.groups_to_scopes.get(g))
            .flatten()
            .cloned()
            .collect()
    };
    // A scope this broker cannot hold is one the user cannot delegate: left out.
    let scopes: Vec<String> = scopes
        .into_iter()
        .filter(|s| Scope::parse(s).is_ok())
        .collect();
    let scopes = ScopeSet::parse(&scopes).map_err(|e| format!("its scopes: {e}"))?;
    let may_act = match claims.get("may_act") {
        None => None,
        Some(Value::Object(m)) => match m.get("sub") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => return Err("its may_act claim names no sub".into()),
        },
        Some(_) => return Err("its may_act claim is not an object".into()),
    };
    Ok(User {
        subject,
        issuer,
        tenant,
        groups,
        scopes,
        may_act,
    })
}

impl Broker {
    /// The user a request acts for: `None` without a token; the verified user with one, or a
    /// refusal (audited) when the token does not verify. Without `[[delegation.oidc]]` the
    /// core refuses the request (`delegation_not_enabled`).
    pub(crate) async fn on_behalf_of(
        &self,
        agent: &Agent,
        token: Option<&str>,
        action: &'static str,
    ) -> Result<Option<User>, ApiError> {
        let (Some(token), Some(d)) = (token.filter(|t| !t.is_empty()), &self.delegation) else {
            return Ok(None);
        };
        match d.user(token).await {
            Ok(u) => Ok(Some(u)),
            Err(why) => {
                let d = Denial {
                    kind: DenialKind::PermissionDenied,
                    rule: "subject_token_refused",
                    policies: Vec::new(),
                    message: format!("the user's token (subject_token) is refused: {why}"),
                };
                Err(self.deny(agent, action, "", d.into()).await)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(groups: &[(&str, &[&str])]) -> DelegationIssuerConfig {
        DelegationIssuerConfig {
            issuer: "https://idp.example".into(),
            audiences: vec!["taskpass".into()],
            jwks_uri: None,
            jwks_file: None,
            ca_file: None,
            scope_claim: default_scope_claim(),
            tenant_claim: default_tenant_claim(),
            tenant: None,
            groups_claim: default_groups_claim(),
            groups_to_scopes: groups
                .iter()
                .map(|(g, s)| ((*g).to_owned(), s.iter().map(|x| (*x).to_owned()).collect()))
                .collect(),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn scopes_tenant_groups_and_may_act() {
        let c = config(&[]);
        let u = user_of(
            &c,
            "i".into(),
            "alice".into(),
            &claims(
                serde_json::json!({"scope": "crm:read crm:write", "tenant": "acme",
                                        "may_act": {"sub": "spiffe://x/agent/a"}}),
            ),
        )
        .unwrap();
        assert_eq!(u.scopes.to_claim(), "crm:read crm:write");
        assert_eq!(u.tenant, "acme");
        assert_eq!(u.may_act.as_deref(), Some("spiffe://x/agent/a"));
        let g = config(&[("sales", &["crm:read"]), ("admins", &["crm:delete"])]);
        let u = user_of(
            &g,
            "i".into(),
            "bob".into(),
            &claims(serde_json::json!({"groups": ["sales", "other"], "scope": "crm:delete"})),
        )
        .unwrap();
        assert_eq!(
            u.scopes.to_claim(),
            "crm:read",
            "groups decide, not the scope claim"
        );
        let mut pinned = config(&[]);
        pinned.tenant = Some("acme".into());
        let u = user_of(
            &pinned,
            "i".into(),
            "x".into(),
            &claims(serde_json::json!({})),
        )
        .unwrap();
        assert_eq!(u.tenant, "acme", "the issuer's tenant");
        assert!(
            user_of(
                &pinned,
                "i".into(),
                "x".into(),
                &claims(serde_json::json!({"tenant": "globex"}))
            )
            .is_err(),
            "an issuer pinned to acme cannot vouch for globex"
        );
        for bad in [
            serde_json::json!({"tenant": 5}),
            serde_json::json!({"scope": {"a": 1}}),
            serde_json::json!({"may_act": "spiffe://x"}),
            serde_json::json!({"may_act": {}}),
        ] {
            assert!(
                user_of(&c, "i".into(), "x".into(), &claims(bad.clone())).is_err(),
                "{bad}"
            );
        }
    }
}
