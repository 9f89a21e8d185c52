//! Operators: who they are (a client certificate of the broker's own CA, recorded by the
//! broker, not revoked), and their credentials' lifecycle: issued online from a CSR (30 days
//! by default, at most 90), listed, revoked by serial or by name. The first admin comes with a
//! new CA and only then; `taskpassd --recover-admin` makes another while the broker is stopped.

use std::path::Path;

use taskpass_core::{
    AgentName, AuditEntry, CertificateHolder, CertificateRecord, Operator, Permission, Role,
    TrustDomain, is_canonical_serial, operator_holder_key,
};
use taskpass_proto::v1 as pb;
use taskpass_store::{IssueCertificate, RevokeCertificate, Store, StoreError};

use crate::broker::{Broker, Caller};
use crate::certificates::cert_to_pb;
use crate::error::ApiError;
use crate::pki::{DEFAULT_OPERATOR_DAYS, IssuedCertificate, MAX_OPERATOR_DAYS, PkiError};

/// The record of an operator certificate.
fn operator_record(
    role: Role,
    name: &str,
    td: &TrustDomain,
    c: &IssuedCertificate,
) -> Result<CertificateRecord, PkiError> {
    Ok(CertificateRecord {
        serial: c.serial.clone(),
        subject: crate::pki::operator_id(td, role, name)?,
        holder: CertificateHolder::Operator {
            name: name.to_owned(),
            role,
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
    role: Role,
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
            Role::Admin,
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
    if !store.list_operator_certificates(1).await?.is_empty() {
        return Ok(());
    }
    let cert = crate::pki::parse_issued(&pem)?;
    let Some((role, name)) = crate::pki::operator_of(&cert, td) else {
        return Ok(());
    };
    if store.certificate(&cert.serial).await?.is_none() {
        record_operator(store, td, role, &name, &cert, now, "operator.bootstrap").await?;
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
        Role::Admin,
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
        Role::Admin,
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
    /// The operator a request's client certificate proves: a certificate of the broker's own
    /// CA (never an external one: a CA trusted for agents, a SPIRE server's say, must not mint
    /// an operator), recorded by the broker and not revoked.
    pub(crate) async fn operator(&self, caller: &Caller) -> Result<Operator, ApiError> {
        let chain = match caller.certs.as_deref() {
            Some(c) if !c.is_empty() => c.as_slice(),
            _ => {
                return Err(ApiError::Unauthenticated(
                    "the admin API needs an operator client certificate: pass --cert and --key (or --data-dir)".into(),
                ));
            }
        };
        let id = self
            .operator_certs
            .verify(chain, self.now())
            .map_err(|e| ApiError::Unauthenticated(format!("operator {e}")))?;
        let Some((role, _name)) = id
            .spiffe_id
            .path()
            .strip_prefix("/operator/")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(role, name)| Some((Role::parse(role)?, name)))
            .filter(|(_, name)| AgentName::parse(name).is_ok())
        else {
            return Err(ApiError::Unauthenticated(format!(
                "client certificate names no operator of trust domain {}",
                self.trust_domain
            )));
        };
        if self.revoked_serials.contains(&id.serial) {
            return Err(ApiError::Unauthenticated(
                "operator certificate has been revoked".into(),
            ));
        }
        let known = caller
            .conn
            .as_ref()
            .is_some_and(|c| c.operator_certificate_recorded.get().is_some());
        if !known {
            match self.store.certificate(&id.serial).await? {
                Some(r) if r.thumbprint == id.thumbprint && r.revoked_at.is_none() => {
                    if let Some(c) = &caller.conn {
                        let _ = c.operator_certificate_recorded.set(());
                    }
                }
                Some(r) if r.revoked_at.is_some() => {
                    return Err(ApiError::Unauthenticated(
                        "operator certificate has been revoked".into(),
                    ));
                }
                _ => {
                    return Err(ApiError::Unauthenticated(
                        "operator certificate was not issued through this broker: get one with `taskpass operator issue`".into(),
                    ));
                }
            }
        }
        Ok(Operator {
            id: id.spiffe_id.to_string(),
            role,
        })
    }

    /// IssueOperatorCertificate.
    pub async fn issue_operator_certificate(
        &self,
        op: &Operator,
        req: pb::IssueOperatorCertificateRequest,
    ) -> Result<pb::IssueOperatorCertificateResponse, ApiError> {
        self.authorize(op, Permission::ManageOperators).await?;
        AgentName::parse(&req.name).map_err(|e| ApiError::field("name", e))?;
        let role = Role::parse(&req.role).ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "role {:?}: use admin, approver or auditor",
                req.role
            ))
        })?;
        let days = match req.days {
            0 => DEFAULT_OPERATOR_DAYS,
            d if d > MAX_OPERATOR_DAYS => {
                return Err(ApiError::InvalidArgument(format!(
                    "days {d} is more than {MAX_OPERATOR_DAYS}: operator credentials are short-lived; issue the next one before this one ends"
                )));
            }
            d => d,
        };
        let subject = crate::pki::operator_id(&self.trust_domain, role, &req.name)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let issuer = crate::pki::load_issuer(&self.data_dir).map_err(|e| {
            tracing::error!(error = %e, "cannot load the CA to issue a certificate");
            ApiError::Unavailable("the broker cannot use its CA right now".into())
        })?;
        let issued = crate::pki::issue_from_csr(&issuer, &subject, &req.csr_pem, days * 24)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        drop(issuer);
        let record = operator_record(role, &req.name, &self.trust_domain, &issued)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let mut a = AuditEntry::draft(self.now(), &op.id, "operator.issue");
        a.detail = format!(
            "operator={} serial={} not_after={}",
            record.subject, record.serial, record.not_after
        );
        let record = self
            .store
            .record_certificate(IssueCertificate {
                agent: None,
                record,
                audit: a,
            })
            .await?;
        Ok(pb::IssueOperatorCertificateResponse {
            certificate_pem: issued.pem,
            serial: record.serial,
            expires_at: record.not_after,
            operator_id: record.subject.to_string(),
            ca_pem: self.ca_pem.clone(),
        })
    }

    /// ListOperators.
    pub async fn list_operators(
        &self,
        op: &Operator,
        req: pb::ListOperatorsRequest,
    ) -> Result<Vec<pb::CertificateInfo>, ApiError> {
        self.authorize(op, Permission::ManageOperators).await?;
        let limit = match req.limit {
            0 => 1000,
            n => usize::try_from(n).unwrap_or(1000).min(10_000),
        };
        Ok(self
            .store
            .list_operator_certificates(limit)
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
        self.authorize(op, Permission::ManageOperators).await?;
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
        let mut out = Vec::new();
        for serial in serials {
            let mut a = AuditEntry::draft(now, &op.id, "operator.revoke");
            a.reason = reason.clone();
            a.detail = format!("serial={serial}");
            let (record, _) = self
                .store
                .revoke_certificate(RevokeCertificate {
                    serial,
                    reason: if reason.is_empty() {
                        "operator_revoked".into()
                    } else {
                        reason.clone()
                    },
                    now,
                    audit: a,
                })
                .await?;
            self.revoked_serials.insert(record.serial.clone());
            out.push(cert_to_pb(&record));
        }
        Ok(out)
    }
}
