//! The principals the broker's own CA vouches for besides agents: operators
//! (`spiffe://<td>/operator/<role>/<name>`) and validators (`spiffe://<td>/validator/<name>`).
//!
//! A principal is proved by a client certificate of the broker's CA (never an external one: a
//! CA trusted for agents, a SPIRE server's say, must not mint an operator or a validator) that
//! the broker recorded for that very holder and has not revoked. The chain and the record are
//! checked once per connection (neither can change within it); expiry and revocation on every
//! call.

use std::sync::Arc;

use taskpass_core::{
    AgentName, AuditEntry, CertificateHolder, CertificateRecord, Operator, Permission, RoleName,
    SpiffeId,
};
use taskpass_proto::v1 as pb;
use taskpass_store::{IssueCertificate, RevokeCertificate};

use crate::broker::{Broker, Caller};
use crate::certificates::cert_to_pb;
use crate::error::ApiError;
use crate::pki::{DEFAULT_OPERATOR_DAYS, MAX_OPERATOR_DAYS};

/// A validator: a downstream API registered with `taskpass validator add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validator {
    /// Its SPIFFE id, e.g. `spiffe://example.org/validator/billing-api`.
    pub id: String,
    /// The audiences it validates tokens for.
    pub audiences: Vec<String>,
}

impl Validator {
    /// Whether tokens for `aud` are this validator's business.
    pub fn serves(&self, aud: &str) -> bool {
        self.audiences.iter().any(|a| a == aud)
    }
}

/// Who a broker-CA client certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An operator.
    Operator(Operator),
    /// A validator.
    Validator(Arc<Validator>),
}

impl Principal {
    /// Its SPIFFE id.
    pub fn id(&self) -> &str {
        match self {
            Self::Operator(o) => &o.id,
            Self::Validator(v) => &v.id,
        }
    }
}

/// A principal as a connection remembers it: with what must be checked again on every call.
#[derive(Debug)]
pub(crate) struct Proven {
    principal: Principal,
    serial: String,
    not_after: i64,
}

/// What the RPC that needs a principal is, for the error a caller without one gets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Needs {
    /// The admin API: an operator.
    Operator,
    /// Introspect or WatchRevocations: a validator or an operator.
    Reader(&'static str),
}

impl Needs {
    fn missing(self) -> ApiError {
        ApiError::Unauthenticated(match self {
            Self::Operator => "the admin API needs an operator client certificate: pass --cert and --key (or --data-dir)".into(),
            Self::Reader(rpc) => format!(
                "{rpc} needs a validator's client certificate (`taskpass validator add`) or an operator's"
            ),
        })
    }
}

/// What the SPIFFE id's path says the certificate is.
fn claimed(path: &str) -> Option<CertificateHolder> {
    if let Some(rest) = path.strip_prefix("/operator/") {
        let (role, name) = rest.split_once('/')?;
        AgentName::parse(name).ok()?;
        return Some(CertificateHolder::Operator {
            name: name.to_owned(),
            role: RoleName::parse(role).ok()?,
        });
    }
    let name = path.strip_prefix("/validator/")?;
    AgentName::parse(name).ok()?;
    Some(CertificateHolder::Validator {
        name: name.to_owned(),
        audiences: Vec::new(),
    })
}

impl Broker {
    /// The operator or validator this call's client certificate proves.
    pub(crate) async fn principal(
        &self,
        caller: &Caller,
        needs: Needs,
    ) -> Result<Principal, ApiError> {
        let now = self.now();
        if let Some(proven) = caller.conn.as_ref().and_then(|c| c.principal.get()) {
            return self.still_valid(proven, now);
        }
        let chain = match caller.certs.as_deref() {
            Some(c) if !c.is_empty() => c.as_slice(),
            _ => return Err(needs.missing()),
        };
        let id = self
            .own_certs
            .verify(chain, now)
            .map_err(|e| ApiError::Unauthenticated(format!("client {e}")))?;
        let Some(claim) = claimed(id.spiffe_id.path()) else {
            return Err(ApiError::Unauthenticated(format!(
                "client certificate names no operator or validator of trust domain {}",
                self.trust_domain
            )));
        };
        let record = match self.store.certificate(&id.serial).await? {
            Some(r) if r.thumbprint == id.thumbprint => r,
            _ => {
                return Err(ApiError::Unauthenticated(
                    "client certificate was not issued through this broker: get one with `taskpass operator issue` or `taskpass validator add`".into(),
                ));
            }
        };
        if record.revoked_at.is_some() || self.revoked_serials.contains(&id.serial) {
            return Err(revoked());
        }
        let principal = match (claim, record.holder) {
            (
                CertificateHolder::Operator { name, role },
                CertificateHolder::Operator {
                    name: recorded,
                    role: recorded_role,
                },
            ) if name == recorded && role == recorded_role => Principal::Operator(Operator {
                id: id.spiffe_id.to_string(),
                permissions: self.roles.permissions(&role),
                role,
            }),
            (
                CertificateHolder::Validator { name, .. },
                CertificateHolder::Validator {
                    name: recorded,
                    audiences,
                },
            ) if name == recorded => Principal::Validator(Arc::new(Validator {
                id: id.spiffe_id.to_string(),
                audiences,
            })),
            _ => {
                return Err(ApiError::Unauthenticated(
                    "client certificate names another principal than the broker issued it to"
                        .into(),
                ));
            }
        };
        let proven = Proven {
            principal,
            serial: id.serial,
            not_after: id.not_after.min(record.not_after),
        };
        let result = self.still_valid(&proven, now);
        if let Some(c) = &caller.conn {
            let _ = c.principal.set(proven);
        }
        result
    }

    fn still_valid(&self, proven: &Proven, now: i64) -> Result<Principal, ApiError> {
        if proven.not_after <= now {
            return Err(ApiError::Unauthenticated(
                "client certificate has expired: get a new one".into(),
            ));
        }
        if self.revoked_serials.contains(&proven.serial) {
            return Err(revoked());
        }
        Ok(proven.principal.clone())
    }

    /// The operator a request's client certificate proves.
    pub(crate) async fn operator(&self, caller: &Caller) -> Result<Operator, ApiError> {
        match self.principal(caller, Needs::Operator).await? {
            Principal::Operator(op) => Ok(op),
            Principal::Validator(v) => Err(ApiError::PermissionDenied(format!(
                "{} is a validator: the admin API takes operators only",
                v.id
            ))),
        }
    }

    /// Who may call Introspect (and, unless it is open, WatchRevocations): a validator, or an
    /// operator allowed to read tokens.
    pub(crate) async fn reader(
        &self,
        caller: &Caller,
        rpc: &'static str,
    ) -> Result<Principal, ApiError> {
        let p = self.principal(caller, Needs::Reader(rpc)).await?;
        if let Principal::Operator(op) = &p {
            self.authorize(op, Permission::TokensRead, rpc).await?;
        }
        Ok(p)
    }
}

impl Broker {
    /// Issues a client certificate of the broker's CA for `subject` to the key of `csr_pem`,
    /// for `days` (0 = 30, at most 90), and records it for `holder`.
    pub(crate) async fn issue_principal_certificate(
        &self,
        actor: &str,
        subject: SpiffeId,
        holder: CertificateHolder,
        csr_pem: &str,
        days: u32,
        action: &str,
    ) -> Result<(CertificateRecord, String), ApiError> {
        let days = match days {
            0 => DEFAULT_OPERATOR_DAYS,
            d if d > MAX_OPERATOR_DAYS => {
                return Err(ApiError::InvalidArgument(format!(
                    "days {d} is more than {MAX_OPERATOR_DAYS}: these credentials are short-lived; issue the next one before this one ends"
                )));
            }
            d => d,
        };
        let issuer = crate::pki::load_issuer(&self.data_dir).map_err(|e| {
            tracing::error!(error = %e, "cannot load the CA to issue a certificate");
            ApiError::Unavailable("the broker cannot use its CA right now".into())
        })?;
        let issued = crate::pki::issue_from_csr(&issuer, &subject, csr_pem, days * 24)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        drop(issuer);
        let record = CertificateRecord {
            serial: issued.serial.clone(),
            subject,
            holder,
            thumbprint: taskpass_core::certificate_thumbprint(&issued.der),
            issued_at: issued.not_before,
            not_after: issued.not_after,
            revoked_at: None,
            revoke_reason: String::new(),
        };
        let mut a = AuditEntry::draft(self.now(), actor, action);
        let label = match &record.holder {
            CertificateHolder::Validator { .. } => "validator",
            _ => "operator",
        };
        a.detail = format!(
            "{label}={} serial={} not_after={}",
            record.subject, record.serial, record.not_after
        );
        if let CertificateHolder::Validator { audiences, .. } = &record.holder {
            a.detail = format!("{} audiences={}", a.detail, audiences.join(","));
        }
        let record = self
            .store
            .record_certificate(IssueCertificate {
                agent: None,
                record,
                audit: a,
            })
            .await?;
        Ok((record, issued.pem))
    }

    /// Revokes these certificates, each audited as `action`, and refuses them from the next
    /// call on.
    pub(crate) async fn revoke_principal_certificates(
        &self,
        actor: &str,
        serials: Vec<String>,
        reason: &str,
        action: &str,
        default_reason: &str,
    ) -> Result<Vec<pb::CertificateInfo>, ApiError> {
        let now = self.now();
        let mut out = Vec::new();
        for serial in serials {
            let mut a = AuditEntry::draft(now, actor, action);
            a.reason = reason.to_owned();
            a.detail = format!("serial={serial}");
            let (record, _) = self
                .store
                .revoke_certificate(RevokeCertificate {
                    serial,
                    reason: if reason.is_empty() {
                        default_reason.to_owned()
                    } else {
                        reason.to_owned()
                    },
                    now,
                    audit: a,
                })
                .await?;
            self.revoked_serials.insert(&record);
            out.push(cert_to_pb(&record));
        }
        Ok(out)
    }
}

fn revoked() -> ApiError {
    ApiError::Unauthenticated("client certificate has been revoked".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(matches!(
            claimed("/operator/admin/ops"),
            Some(CertificateHolder::Operator { role, .. }) if role.as_str() == "admin"
        ));
        assert!(matches!(
            claimed("/validator/billing-api"),
            Some(CertificateHolder::Validator { .. })
        ));
        for bad in [
            "/operator/Root/x",
            "/operator/a_b/x",
            "/operator/admin/",
            "/operator/admin/A",
            "/validator/",
            "/validator/a/b",
            "/agent/x",
            "/validatorx",
        ] {
            assert_eq!(claimed(bad), None, "{bad}");
        }
    }
}
