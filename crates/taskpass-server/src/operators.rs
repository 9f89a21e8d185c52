//! Operators: who they are (a client certificate of the broker's own CA, recorded by the
//! broker, not revoked), and their credentials' lifecycle: issued online from a CSR (30 days
//! by default, at most 90), listed, revoked by serial or by name. The first admin comes with a
//! new CA and only then; `taskpassd --recover-admin` makes another while the broker is stopped.

use std::path::Path;

use taskpass_core::{
    AgentName, AuditEntry, CertificateHolder, CertificateRecord, Operator, PrincipalKind, RoleName,
    TrustDomain, is_canonical_serial, operator_holder_key,
};
use taskpass_proto::v1 as pb;
use taskpass_store::{IssueCertificate, Store, StoreError};

use crate::broker::Broker;
use crate::certificates::cert_to_pb;
use crate::error::ApiError;
use crate::pki::{DEFAULT_OPERATOR_DAYS, IssuedCertificate, PkiError};

/// The record of an operator certificate.
fn operator_record(
    role: &RoleName,
    name: &str,
    td: &TrustDomain,
    c: &IssuedCertificate,
) -> Result<CertificateRecord, PkiError> {
    Ok(CertificateRecord {
        serial: c.serial.clone(),
        subject: crate::pki::operator_id(td, role, name)?,
        holder: CertificateHolder::Operator {
            name: name.to_owned(),
            role: role.clone(),
        },
        thumbprint: taskpass_core::certificate_thumbprint(&c.der),
        issued_at: c.not_before,
        not_after: c.not_after,
        revoked_at: None,
        revoke_reason: String::new(),
    })
}

/// Records an operator certificate issued outside a request (the first admin, a recovery).
pub(crate) async fn record_operator(
    store: &dyn Store,
    td: &TrustDomain,
    role: &RoleName,
    name: &str,
    cert: &IssuedCertificate,
    now: i64,
    action: &str,
) -> Result<(), StoreError> {
    let record = operator_record(role, name, td, cert).map_err(|e| StoreError::Encode {
        what: "operator certificate",
        detail: e.to_string(),
    })?;
    let mut a = AuditEntry::draft(now, "taskpassd", action);
    a.detail = format!(
        "operator={} serial={} not_after={}",
        record.subject, record.serial, record.not_after
    );
    store
        .record_certificate(IssueCertificate {
            agent: None,
            record,
            audit: a,
        })
        .await?;
    Ok(())
}

/// Records the first admin credential: the one this start made with a new CA, or, for a data
/// dir from before operator certificates were recorded, its `admin.pem` when the store holds
/// no operator certificate at all (so that the upgrade does not lock its admin out).
pub(crate) async fn record_bootstrap_admin(
    store: &dyn Store,
    td: &TrustDomain,
    dir: &Path,
    first: Option<&IssuedCertificate>,
    now: i64,
) -> Result<(), crate::StartError> {
    if let Some(first) = first {
        record_operator(
            store,
            td,
            &RoleName::admin(),
            "bootstrap",
            first,
            now,
            "operator.bootstrap",
        )
        .await?;
        return Ok(());
    }
    let path = dir.join(crate::pki::files::ADMIN);
    let Ok(pem) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    if !store
        .list_principal_certificates(PrincipalKind::Operator, 1)
        .await?
        .is_empty()
    {
        return Ok(());
    }
    let cert = crate::pki::parse_issued(&pem)?;
    let Some((role, name)) = crate::pki::operator_of(&cert, td) else {
        return Ok(());
    };
    if store.certificate(&cert.serial).await?.is_none() {
        record_operator(store, td, &role, &name, &cert, now, "operator.bootstrap").await?;
        tracing::info!(path = %path.display(), "recorded the existing admin credential");
    }
    Ok(())
}

/// `taskpassd --recover-admin NAME --out DIR`: with the broker stopped (the store is opened
/// here, exclusively), issues and records a new admin credential from the data dir's CA.
pub async fn recover_admin(
    config: &crate::Config,
    name: &str,
    out: &Path,
) -> Result<std::path::PathBuf, crate::StartError> {
    let other = |what: &'static str, detail: String| crate::StartError::Other { what, detail };
    AgentName::parse(name).map_err(|e| other("operator name", e.to_string()))?;
    let issuer = crate::pki::load_issuer(&config.data_dir)?;
    let (cert, key) = crate::pki::issue_operator(
        &issuer,
        &config.trust_domain,
        &RoleName::admin(),
        name,
        DEFAULT_OPERATOR_DAYS,
    )?;
    let path = config.data_dir.join(crate::pki::files::STORE);
    let store = tokio::task::spawn_blocking(move || {
        taskpass_store::RedbStore::open(path, taskpass_store::StoreOptions::default())
    })
    .await
    .map_err(|e| other("opening the store", e.to_string()))?
    .map_err(|e| {
        other(
            "opening the store (is the broker still running? stop it first)",
            e.to_string(),
        )
    })?;
    let now = taskpass_core::Clock::now(&taskpass_core::SystemClock);
    record_operator(
        &store,
        &config.trust_domain,
        &RoleName::admin(),
        name,
        &cert,
        now,
        "operator.recover",
    )
    .await?;
    std::fs::create_dir_all(out).map_err(|e| other("creating --out", e.to_string()))?;
    let cert_path = out.join(format!("{name}.pem"));
    crate::pki::write_file(&out.join(format!("{name}-key.pem")), key.as_bytes(), false)?;
    crate::pki::write_file(&cert_path, cert.pem.as_bytes(), true)?;
    Ok(cert_path)
}

impl Broker {
    /// IssueOperatorCertificate.
    pub async fn issue_operator_certificate(
        &self,
        op: &Operator,
        req: pb::IssueOperatorCertificateRequest,
    ) -> Result<pb::IssueOperatorCertificateResponse, ApiError> {
        AgentName::parse(&req.name).map_err(|e| ApiError::field("name", e))?;
        let role = RoleName::parse(&req.role)
            .ok()
            .filter(|r| self.roles.contains(r))
            .ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "role {:?} is not defined on this broker: use one of {}, or define it under [roles] in the config",
                    req.role,
                    self.roles.names().map(RoleName::as_str).collect::<Vec<_>>().join(", ")
                ))
            })?;
        let subject = crate::pki::operator_id(&self.trust_domain, &role, &req.name)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let holder = CertificateHolder::Operator {
            name: req.name.clone(),
            role,
        };
        let (record, pem) = self
            .issue_principal_certificate(
                &op.id,
                subject,
                holder,
                &req.csr_pem,
                req.days,
                "operator.issue",
            )
            .await?;
        Ok(pb::IssueOperatorCertificateResponse {
            certificate_pem: pem,
            serial: record.serial,
            expires_at: record.not_after,
            operator_id: record.subject.to_string(),
            ca_pem: self.ca_pem.clone(),
        })
    }

    /// ListOperators.
    pub async fn list_operators(
        &self,
        _op: &Operator,
        req: pb::ListOperatorsRequest,
    ) -> Result<Vec<pb::CertificateInfo>, ApiError> {
        let limit = match req.limit {
            0 => 1000,
            n => usize::try_from(n).unwrap_or(1000).min(10_000),
        };
        Ok(self
            .store
            .list_principal_certificates(PrincipalKind::Operator, limit)
            .await?
            .iter()
            .map(cert_to_pb)
            .collect())
    }

    /// RevokeOperator: one serial, or every live certificate of an operator name.
    pub async fn revoke_operator(
        &self,
        op: &Operator,
        req: pb::RevokeOperatorRequest,
    ) -> Result<Vec<pb::CertificateInfo>, ApiError> {
        let reason = crate::admin::text("reason", &req.reason, false)?;
        let target = req.serial_or_name.trim();
        let now = self.now();
        let serials: Vec<String> = if is_canonical_serial(target)
            && self
                .store
                .certificate(target)
                .await?
                .is_some_and(|c| matches!(c.holder, CertificateHolder::Operator { .. }))
        {
            vec![target.to_owned()]
        } else if AgentName::parse(target).is_ok() {
            let key = operator_holder_key(target);
            self.store
                .list_certificates(&key, 10_000)
                .await?
                .into_iter()
                .filter(|c| c.is_live(now))
                .map(|c| c.serial)
                .collect()
        } else {
            return Err(ApiError::InvalidArgument(
                "give an operator's name or one of its certificate serials (lowercase hex, as `taskpass operator list` prints them)".into(),
            ));
        };
        if serials.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no live operator certificate for {target:?}"
            )));
        }
        self.revoke_principal_certificates(
            &op.id,
            serials,
            &reason,
            "operator.revoke",
            "operator_revoked",
        )
        .await
    }
}
