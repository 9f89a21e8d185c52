//! Validators' credentials: `taskpass validator add` issues a client certificate of the
//! broker's CA for `spiffe://<td>/validator/<name>` from a CSR, recorded with the audiences the
//! validator serves (30 days by default, at most 90); `validator list`; `validator revoke`
//! revokes every live certificate of the name.

use taskpass_core::{
    AgentName, Audience, CertificateHolder, Operator, PrincipalKind, SpiffeId, holder_key,
};
use taskpass_proto::v1 as pb;

use crate::broker::Broker;
use crate::certificates::cert_to_pb;
use crate::error::ApiError;

impl Broker {
    /// AddValidator.
    pub async fn add_validator(
        &self,
        op: &Operator,
        req: pb::AddValidatorRequest,
    ) -> Result<pb::AddValidatorResponse, ApiError> {
        AgentName::parse(&req.name).map_err(|e| ApiError::field("name", e))?;
        if req.audiences.is_empty() {
            return Err(ApiError::InvalidArgument(
                "audiences: name at least one audience this validator serves (--audience)".into(),
            ));
        }
        let audiences: Vec<String> = Audience::parse_list(&req.audiences)
            .map_err(|e| ApiError::field("audiences", e))?
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect();
        let subject = SpiffeId::parse(&format!(
            "spiffe://{}/validator/{}",
            self.trust_domain, req.name
        ))
        .map_err(|e| ApiError::field("name", e))?;
        let holder = CertificateHolder::Validator {
            name: req.name.clone(),
            audiences,
        };
        let (record, pem) = self
            .issue_principal_certificate(
                &op.id,
                subject,
                holder,
                &req.csr_pem,
                req.days,
                "validator.add",
            )
            .await?;
        Ok(pb::AddValidatorResponse {
            certificate_pem: pem,
            serial: record.serial,
            expires_at: record.not_after,
            validator_id: record.subject.to_string(),
            ca_pem: self.ca_pem.clone(),
        })
    }

    /// ListValidators.
    pub async fn list_validators(
        &self,
        _op: &Operator,
        req: pb::ListValidatorsRequest,
    ) -> Result<Vec<pb::CertificateInfo>, ApiError> {
        let limit = match req.limit {
            0 => 1000,
            n => usize::try_from(n).unwrap_or(1000).min(10_000),
        };
        Ok(self
            .store
            .list_principal_certificates(PrincipalKind::Validator, limit)
            .await?
            .iter()
            .map(cert_to_pb)
            .collect())
    }

    /// RevokeValidator: every live certificate of the name.
    pub async fn revoke_validator(
        &self,
        op: &Operator,
        req: pb::RevokeValidatorRequest,
    ) -> Result<Vec<pb::CertificateInfo>, ApiError> {
        AgentName::parse(&req.name).map_err(|e| ApiError::field("name", e))?;
        let reason = crate::admin::text("reason", &req.reason, false)?;
        let now = self.now();
        let serials: Vec<String> = self
            .store
            .list_certificates(&holder_key(PrincipalKind::Validator, &req.name), 10_000)
            .await?
            .into_iter()
            .filter(|c| c.is_live(now))
            .map(|c| c.serial)
            .collect();
        if serials.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no live validator certificate for {:?}",
                req.name
            )));
        }
        self.revoke_principal_certificates(
            &op.id,
            serials,
            &reason,
            "validator.revoke",
            "validator_revoked",
        )
        .await
    }
}
