//! The policy set in force: loaded at start (the config's `[policy] files` and the store's
//! versions), read by every decision, replaced whole by `policy apply`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use taskpass_core::{
    AllowListsOnly, AuditEntry, AuditOutcome, Operator, Policies, PolicyFile, PolicyOrigin,
    PolicySetRecord,
};
use taskpass_policy::{PolicyEngine, PolicySource};
use taskpass_proto::v1 as pb;
use taskpass_store::Store;

use crate::broker::Broker;
use crate::error::ApiError;
use crate::serve::StartError;

/// The most files in a set, the longest file name, and the largest set.
const MAX_FILES: usize = 256;
const MAX_NAME: usize = 255;
const MAX_SET_BYTES: usize = 4 << 20;

/// What is in force: the engine and the version it was compiled from (none: the allow-lists
/// decide alone).
#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) engine: Arc<dyn Policies>,
    pub(crate) record: Option<PolicySetRecord>,
}

/// The active policy set. A decision takes the current one (an `Arc` clone under a read
/// lock) and decides against it; a new set replaces it whole, so no decision sees half of
/// one. Applies are serialised, so the set in force is always the newest recorded.
#[derive(Debug)]
pub(crate) struct ActivePolicies {
    current: RwLock<Arc<Active>>,
    apply: tokio::sync::Mutex<()>,
}

impl ActivePolicies {
    fn new(active: Active) -> Self {
        Self {
            current: RwLock::new(Arc::new(active)),
            apply: tokio::sync::Mutex::new(()),
        }
    }

    /// The set in force now.
    pub(crate) fn current(&self) -> Arc<Active> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn replace(&self, active: Active) {
        let active = Arc::new(active);
        match self.current.write() {
            Ok(mut g) => *g = active,
            Err(poisoned) => *poisoned.into_inner() = active,
        }
    }

    /// Loads the set in force at start. When the config names files whose content differs
    /// from the last version recorded from the config, they are validated and recorded as a
    /// new version (an invalid file stops the start); the newest recorded version is put in
    /// force, so a set applied with `policy apply` outlives restarts until the files change.
    pub(crate) async fn load(
        store: &dyn Store,
        files: &[PathBuf],
        now: i64,
    ) -> Result<Self, StartError> {
        let bad = |detail: String| StartError::Other {
            what: "loading the [policy] files",
            detail,
        };
        // The newest versions are enough: the one in force, and the last loaded from the
        // config (looked for among the newest hundred; older than that, the files load anew).
        let history = store.policy_sets(100).await?;
        if !files.is_empty() {
            let mut read = Vec::with_capacity(files.len());
            for p in files {
                let text =
                    std::fs::read_to_string(p).map_err(|e| bad(format!("{}: {e}", p.display())))?;
                read.push(PolicyFile {
                    name: p.display().to_string(),
                    text,
                });
            }
            let engine = compile(&read).map_err(|e| bad(e.to_string()))?;
            let digest = PolicySetRecord::digest_of(&read);
            let last_from_config = history.iter().find(|r| r.origin == PolicyOrigin::Config);
            if last_from_config.is_none_or(|r| r.digest != digest) {
                let record = PolicySetRecord {
                    version: 0,
                    files: read,
                    policy_ids: engine.ids().to_vec(),
                    digest,
                    applied_at: now,
                    applied_by: "taskpassd".into(),
                    origin: PolicyOrigin::Config,
                };
                let mut a = AuditEntry::draft(now, "taskpassd", "policy.load");
                a.detail = detail(&record);
                let record = store.record_policy_set(record, a).await?;
                tracing::info!(
                    version = record.version,
                    policies = record.policy_ids.len(),
                    "policy set loaded from the config"
                );
                return Ok(Self::new(Active {
                    engine: Arc::new(engine),
                    record: Some(record),
                }));
            }
        }
        match history.into_iter().next() {
            None => Ok(Self::new(Active {
                engine: Arc::new(AllowListsOnly),
                record: None,
            })),
            Some(record) => {
                let engine = compile(&record.files).map_err(|e| {
                    bad(format!(
                        "policy set version {} in the store no longer validates: {e}",
                        record.version
                    ))
                })?;
                tracing::info!(version = record.version, "policy set in force");
                Ok(Self::new(Active {
                    engine: Arc::new(engine),
                    record: Some(record),
                }))
            }
        }
    }
}

fn compile(files: &[PolicyFile]) -> Result<PolicyEngine, taskpass_policy::PolicyError> {
    let sources: Vec<PolicySource> = files
        .iter()
        .map(|f| PolicySource::new(f.name.clone(), f.text.clone()))
        .collect();
    PolicyEngine::compile(&sources)
}

fn detail(r: &PolicySetRecord) -> String {
    format!(
        "digest={} origin={} policies={}",
        r.digest,
        r.origin.as_str(),
        r.policy_ids.join(",")
    )
}

fn info(r: &PolicySetRecord, active: bool, with_files: bool) -> pb::PolicySetInfo {
    pb::PolicySetInfo {
        version: r.version,
        policy_ids: r.policy_ids.clone(),
        digest: r.digest.clone(),
        applied_at: r.applied_at,
        applied_by: r.applied_by.clone(),
        origin: r.origin.as_str().into(),
        files: if with_files {
            r.files
                .iter()
                .map(|f| pb::PolicyFile {
                    name: f.name.clone(),
                    text: f.text.clone(),
                })
                .collect()
        } else {
            Vec::new()
        },
        active,
    }
}

/// The files of an ApplyPolicies request, bounded and named as a person would.
fn files_of(req: pb::ApplyPoliciesRequest) -> Result<Vec<PolicyFile>, ApiError> {
    if req.files.is_empty() {
        return Err(ApiError::InvalidArgument(
            "no policy file: name at least one (a set without a permit denies everything)".into(),
        ));
    }
    if req.files.len() > MAX_FILES {
        return Err(ApiError::InvalidArgument(format!(
            "at most {MAX_FILES} policy files in a set"
        )));
    }
    let total: usize = req.files.iter().map(|f| f.name.len() + f.text.len()).sum();
    if total > MAX_SET_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "the policy set is larger than {} MiB",
            MAX_SET_BYTES >> 20
        )));
    }
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(req.files.len());
    for f in req.files {
        if f.name.is_empty() || f.name.len() > MAX_NAME || f.name.chars().any(char::is_control) {
            return Err(ApiError::InvalidArgument(format!(
                "policy file name {:?}: 1 to {MAX_NAME} bytes without control characters",
                crate::admin::shown(&f.name)
            )));
        }
        if !names.insert(f.name.clone()) {
            return Err(ApiError::InvalidArgument(format!(
                "policy file {} is named twice",
                f.name
            )));
        }
        out.push(PolicyFile {
            name: f.name,
            text: f.text,
        });
    }
    Ok(out)
}

impl Broker {
    /// ApplyPolicies: validated whole, recorded, then put in force; a set with any problem
    /// changes nothing.
    pub(crate) async fn apply_policies(
        &self,
        op: &Operator,
        req: pb::ApplyPoliciesRequest,
    ) -> Result<pb::PolicySetInfo, ApiError> {
        let now = self.now();
        let refuse = |why: String| async move {
            let mut a = AuditEntry::draft(now, &op.id, "policy.apply");
            a.outcome = AuditOutcome::Deny;
            a.reason = "invalid_policy_set".into();
            a.detail = crate::admin::shown(&why);
            match self.store.append_audit(a).await {
                Ok(()) => ApiError::InvalidArgument(why),
                Err(e) => e.into(),
            }
        };
        let files = match files_of(req) {
            Ok(f) => f,
            Err(e) => return Err(refuse(e.to_string()).await),
        };
        let engine = match compile(&files) {
            Ok(e) => e,
            Err(e) => {
                return Err(refuse(format!("{e}; the set in force is unchanged")).await);
            }
        };
        let _one_at_a_time = self.policies.apply.lock().await;
        let record = PolicySetRecord {
            version: 0,
            digest: PolicySetRecord::digest_of(&files),
            files,
            policy_ids: engine.ids().to_vec(),
            applied_at: now,
            applied_by: op.id.clone(),
            origin: PolicyOrigin::Apply,
        };
        let mut a = AuditEntry::draft(now, &op.id, "policy.apply");
        a.reason = "valid".into();
        a.detail = detail(&record);
        let record = self.store.record_policy_set(record, a).await?;
        tracing::info!(version = record.version, operator = %op.id, "policy set applied");
        let out = info(&record, true, true);
        self.policies.replace(Active {
            engine: Arc::new(engine),
            record: Some(record),
        });
        Ok(out)
    }

    /// GetPolicies: the set in force with its files.
    pub(crate) fn get_policies(&self, _op: &Operator) -> pb::GetPoliciesResponse {
        pb::GetPoliciesResponse {
            set: self
                .policies
                .current()
                .record
                .as_ref()
                .map(|r| info(r, true, true)),
        }
    }

    /// ListPolicySets: the recorded versions, newest first.
    pub(crate) async fn list_policy_sets(
        &self,
        _op: &Operator,
        req: pb::ListPolicySetsRequest,
    ) -> Result<Vec<pb::PolicySetInfo>, ApiError> {
        let limit = crate::admin::limit(req.limit, 100);
        let active = self.policies.current().record.as_ref().map(|r| r.version);
        Ok(self
            .store
            .policy_sets(limit)
            .await?
            .iter()
            .map(|r| info(r, Some(r.version) == active, false))
            .collect())
    }
}
