//! Agent certificates from the broker's CA: issued to an operator's request from a CSR (the
//! key never leaves the agent), renewed by the agent over mTLS with its current certificate,
//! listed and revoked by operators. Every one is recorded in the store; a revoked serial is
//! refused on the very next call and streamed as a revocation of kind CERTIFICATE.

use std::collections::HashMap;
use std::sync::RwLock;

use taskpass_core::{
    AgentName, AuditEntry, CertificateHolder, CertificateRecord, Operator, SpiffeId,
    is_canonical_serial,
};
use taskpass_proto::v1 as pb;
use taskpass_store::{IssueCertificate, RevokeCertificate};

use crate::broker::{Broker, Caller};
use crate::error::ApiError;

/// The revoked certificates of the broker's CA that have not expired, by serial (checked on
/// every mTLS call) and by thumbprint (tokens bound to one are inactive). An entry is dropped
/// once its certificate has expired: the set holds only what could still be presented.
#[derive(Debug, Default)]
pub(crate) struct RevokedSerials(RwLock<Revoked>);

#[derive(Debug, Default)]
struct Revoked {
    /// serial → notAfter.
    serials: HashMap<String, i64>,
    /// `x5t#S256` → notAfter.
    thumbprints: HashMap<String, i64>,
    /// Entries at the last prune: the next one comes when the set has doubled.
    pruned_at: usize,
}

impl RevokedSerials {
    pub(crate) fn new(revoked: Vec<CertificateRecord>) -> Self {
        let set = Self::default();
        for r in &revoked {
            set.insert(r);
        }
        set
    }

    pub(crate) fn contains(&self, serial: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .serials
            .contains_key(serial)
    }

    /// Whether a revoked certificate has this `x5t#S256`.
    pub(crate) fn contains_thumbprint(&self, thumbprint: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .thumbprints
            .contains_key(thumbprint)
    }

    pub(crate) fn insert(&self, record: &CertificateRecord) {
        let mut r = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.serials.insert(record.serial.clone(), record.not_after);
        r.thumbprints
            .insert(record.thumbprint.clone(), record.not_after);
        if r.serials.len() >= 2 * r.pruned_at.max(512) {
            let now = taskpass_core::Clock::now(&taskpass_core::SystemClock);
            r.serials.retain(|_, not_after| *not_after > now);
            r.thumbprints.retain(|_, not_after| *not_after > now);
            r.pruned_at = r.serials.len();
        }
    }
}

pub(crate) fn cert_to_pb(c: &CertificateRecord) -> pb::CertificateInfo {
    pb::CertificateInfo {
        serial: c.serial.clone(),
        spiffe_id: c.subject.to_string(),
        agent_id: match &c.holder {
            CertificateHolder::Agent { agent } => agent.to_string(),
            _ => String::new(),
        },
        operator: match &c.holder {
            CertificateHolder::Operator { name, .. } => name.clone(),
            _ => String::new(),
        },
        role: match &c.holder {
            CertificateHolder::Operator { role, .. } => role.as_str().to_owned(),
            _ => String::new(),
        },
        validator: match &c.holder {
            CertificateHolder::Validator { name, .. } => name.clone(),
            _ => String::new(),
        },
        audiences: match &c.holder {
            CertificateHolder::Validator { audiences, .. } => audiences.clone(),
            _ => Vec::new(),
        },
        issued_at: c.issued_at,
        expires_at: c.not_after,
        revoked: c.revoked_at.is_some(),
        revoked_at: c.revoked_at.unwrap_or(0),
        revoke_reason: c.revoke_reason.clone(),
        thumbprint: c.thumbprint.clone(),
    }
}

impl Broker {
    /// Issues a certificate for `agent`'s own SPIFFE id to the key of `csr_pem` and records it.
    async fn issue_certificate(
        &self,
        actor: &str,
        name: &AgentName,
        subject: SpiffeId,
        csr_pem: &str,
        hours: u32,
        action: &str,
    ) -> Result<(CertificateRecord, String), ApiError> {
        let (default_hours, max_hours) = self.certificate_hours;
        let hours = match hours {
            0 => default_hours,
            h if h > max_hours => {
                return Err(ApiError::InvalidArgument(format!(
                    "hours {h} is above attestation.max_certificate_hours ({max_hours})"
                )));
            }
            h => h,
        };
        let issuer = crate::pki::load_issuer(&self.data_dir).map_err(|e| {
            tracing::error!(error = %e, "cannot load the CA to issue a certificate");
            ApiError::Unavailable("the broker cannot use its CA right now".into())
        })?;
        let issued = crate::pki::issue_from_csr(&issuer, &subject, csr_pem, hours)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        drop(issuer);
        let agent_id = self.trust_domain.agent_id(name);
        let record = CertificateRecord {
            serial: issued.serial.clone(),
            thumbprint: taskpass_core::certificate_thumbprint(&issued.der),
            subject,
            holder: CertificateHolder::Agent {
                agent: agent_id.clone(),
            },
            issued_at: issued.not_before,
            not_after: issued.not_after,
            revoked_at: None,
            revoke_reason: String::new(),
        };
        let mut a = AuditEntry::draft(self.now(), actor, action);
        a.agent_id = agent_id.to_string();
        a.detail = format!(
            "serial={} spiffe_id={} not_after={}",
            record.serial, record.subject, record.not_after
        );
        let record = self
            .store
            .record_certificate(IssueCertificate {
                agent: Some(name.clone()),
                record,
                audit: a,
            })
            .await?;
        Ok((record, issued.pem))
    }

    /// IssueAgentCertificate.
    pub async fn issue_agent_certificate(
        &self,
        op: &Operator,
        req: pb::IssueAgentCertificateRequest,
    ) -> Result<pb::IssueAgentCertificateResponse, ApiError> {
        let name = AgentName::parse(&req.name).map_err(|e| ApiError::field("name", e))?;
        // The broker's CA vouches for the agent's own id and nothing else.
        let subject = SpiffeId::parse(self.trust_domain.agent_id(&name).as_str())
            .map_err(|e| ApiError::field("name", e))?;
        let (record, pem) = self
            .issue_certificate(
                &op.id,
                &name,
                subject,
                &req.csr_pem,
                req.hours,
                "certificate.issue",
            )
            .await?;
        Ok(pb::IssueAgentCertificateResponse {
            certificate_pem: pem,
            serial: record.serial,
            expires_at: record.not_after,
            spiffe_id: record.subject.to_string(),
            ca_pem: self.ca_pem.clone(),
        })
    }

    /// RenewCertificate: the connection's current certificate, issued by this broker and
    /// still live, is the proof; the new one names the same identity.
    pub async fn renew_certificate(
        &self,
        caller: &Caller,
        req: pb::RenewCertificateRequest,
    ) -> Result<pb::RenewCertificateResponse, ApiError> {
        let mtls = pb::Attestation {
            method: Some(pb::attestation::Method::Mtls(pb::MtlsAttestation {})),
        };
        let attested = self
            .authenticate(caller, "renew_certificate", Some(&mtls))
            .await?;
        self.charge(&attested.agent, "renew_certificate")?;
        let current = attested.certificate.ok_or_else(|| {
            ApiError::Unauthenticated("renewal needs the current client certificate".into())
        })?;
        if current.authority != crate::broker::BROKER_CA {
            return Err(ApiError::FailedPrecondition(format!(
                "this certificate was issued by {}, not by this broker: renew it there",
                current.authority
            )));
        }
        let (record, pem) = self
            .issue_certificate(
                attested.agent.id.as_str(),
                &attested.agent.name,
                current.spiffe_id,
                &req.csr_pem,
                0,
                "certificate.renew",
            )
            .await?;
        Ok(pb::RenewCertificateResponse {
            certificate_pem: pem,
            expires_at: record.not_after,
            serial: record.serial,
        })
    }

    /// ListCertificates.
    pub async fn list_certificates(
        &self,
        _op: &Operator,
        req: pb::ListCertificatesRequest,
    ) -> Result<Vec<pb::CertificateInfo>, ApiError> {
        let name = AgentName::parse(&req.name).map_err(|e| ApiError::field("name", e))?;
        let holder = self.trust_domain.agent_id(&name);
        let limit = match req.limit {
            0 => 100,
            n => usize::try_from(n).unwrap_or(100).min(10_000),
        };
        Ok(self
            .store
            .list_certificates(holder.as_str(), limit)
            .await?
            .iter()
            .map(cert_to_pb)
            .collect())
    }

    /// RevokeCertificate.
    pub async fn revoke_certificate(
        &self,
        op: &Operator,
        req: pb::RevokeCertificateRequest,
    ) -> Result<pb::RevokeCertificateResponse, ApiError> {
        if !is_canonical_serial(&req.serial) {
            return Err(ApiError::InvalidArgument(
                "serial must be the certificate's serial in lowercase hex, as `taskpass agent cert list` prints it".into(),
            ));
        }
        let reason = crate::admin::text("reason", &req.reason, false)?;
        let now = self.now();
        let mut a = AuditEntry::draft(now, &op.id, "certificate.revoke");
        a.reason = reason.clone();
        a.detail = format!("serial={}", req.serial);
        if let Some(c) = self.store.certificate(&req.serial).await?
            && let CertificateHolder::Agent { agent } = &c.holder
        {
            a.agent_id = agent.to_string();
        }
        let why = if reason.is_empty() {
            "certificate_revoked".to_owned()
        } else {
            reason
        };
        let (record, event) = self
            .store
            .revoke_certificate(RevokeCertificate {
                serial: req.serial,
                reason: why,
                now,
                audit: a,
            })
            .await?;
        self.revoked_serials.insert(&record);
        Ok(pb::RevokeCertificateResponse {
            certificate: Some(cert_to_pb(&record)),
            sequence: event.sequence,
        })
    }
}
