//! What is known to be revoked: token ids, tasks, agents and certificate thumbprints, each
//! kept until its `not_after` (after which no token it covers can be valid) and then
//! forgotten, so memory is bounded by what is still live. Offboarding an agent with 100,000
//! live tokens is one entry. Validators (the SDK) and the broker's status lists both read
//! the revocation log into one.

use std::collections::HashMap;

use crate::revocation::{RevocationEvent, RevocationKind as RevokedKind};
use crate::token::{AccessClaims, Confirmation};

#[derive(Debug, Clone, Copy)]
struct Entry {
    revoked_at: i64,
    not_after: i64,
    reason: &'static str,
}

/// The revoked ids still relevant, by kind.
#[derive(Debug, Default)]
pub struct RevocationSet {
    /// One map per kind, by id.
    maps: [HashMap<String, Entry>; 4],
    /// The earliest `not_after` held: nothing can be dropped before it.
    next_expiry: i64,
}

fn slot(kind: RevokedKind) -> usize {
    match kind {
        RevokedKind::Token => 0,
        RevokedKind::Task => 1,
        RevokedKind::Agent => 2,
        RevokedKind::Certificate => 3,
    }
}

/// The reasons introspection and the stream use, as `'static` strings: anything else is
/// reported as the kind's generic reason.
pub fn known_reason(kind: RevokedKind, reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "revoked",
        "task_completed",
        "task_expired",
        "task_revoked",
        "agent_offboarded",
        "agent_suspended",
        "certificate_revoked",
    ];
    if let Some(r) = KNOWN.iter().find(|k| **k == reason) {
        return r;
    }
    match kind {
        RevokedKind::Token => "revoked",
        RevokedKind::Task => "task_revoked",
        RevokedKind::Agent => "agent_revoked",
        RevokedKind::Certificate => "certificate_revoked",
    }
}

impl RevocationSet {
    /// Records an event of the log (a certificate's by its thumbprint); one already past its
    /// `not_after` at `now` is not kept.
    pub fn apply(&mut self, e: &RevocationEvent, now: i64) {
        let id = match e.kind {
            RevokedKind::Certificate => e.thumbprint.clone(),
            _ => e.id.clone(),
        };
        self.prune(now);
        self.insert(e.kind, id, e.revoked_at, e.not_after, &e.reason, now);
    }

    /// Records a revocation; one already past its `not_after` at `now` is not kept.
    pub fn insert(
        &mut self,
        kind: RevokedKind,
        id: String,
        revoked_at: i64,
        not_after: i64,
        reason: &str,
        now: i64,
    ) {
        if not_after < now || id.is_empty() {
            return;
        }
        let reason = match kind {
            // A token revoked on its own says so, whatever the operator's reason text was.
            RevokedKind::Token => "revoked",
            // The stream names a certificate's revocation by the operator's text.
            RevokedKind::Certificate => "certificate_revoked",
            _ => known_reason(kind, reason),
        };
        let e = self.maps[slot(kind)].entry(id).or_insert(Entry {
            revoked_at,
            not_after,
            reason,
        });
        e.revoked_at = e.revoked_at.max(revoked_at);
        e.not_after = e.not_after.max(not_after);
        self.next_expiry = if self.len() == 1 {
            not_after
        } else {
            self.next_expiry.min(not_after)
        };
    }

    /// Forgets what has expired at `now`.
    pub fn prune(&mut self, now: i64) {
        if self.is_empty() || now <= self.next_expiry {
            return;
        }
        for m in &mut self.maps {
            m.retain(|_, e| e.not_after >= now);
        }
        self.next_expiry = self
            .maps
            .iter()
            .flat_map(HashMap::values)
            .map(|e| e.not_after)
            .min()
            .unwrap_or(i64::MAX);
    }

    /// How many revocations are held.
    pub fn len(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum()
    }

    fn get(&self, kind: RevokedKind, id: &str) -> Option<&Entry> {
        self.maps[slot(kind)].get(id)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why a token with these claims is revoked, if it is.
    pub fn check(&self, claims: &AccessClaims) -> Result<(), &'static str> {
        let certificate = match &claims.cnf {
            Some(Confirmation::Certificate(t)) => Some(t.as_str()),
            _ => None,
        };
        self.covers(
            &claims.jti,
            &claims.txn,
            &claims.client_id,
            claims.iat,
            certificate,
        )
    }

    /// Why the token `jti` of task `txn` and agent `client_id`, issued at `iat`, bound to the
    /// certificate with thumbprint `certificate`, is revoked, if it is.
    pub fn covers(
        &self,
        jti: &str,
        txn: &str,
        client_id: &str,
        iat: i64,
        certificate: Option<&str>,
    ) -> Result<(), &'static str> {
        if let Some(e) = self.get(RevokedKind::Token, jti) {
            return Err(e.reason);
        }
        if let Some(e) = self.get(RevokedKind::Task, txn) {
            return Err(e.reason);
        }
        // An agent revocation covers what it had been issued then: after a suspension is
        // lifted, its new tokens are valid.
        if let Some(e) = self.get(RevokedKind::Agent, client_id)
            && iat <= e.revoked_at
        {
            return Err(e.reason);
        }
        if let Some(t) = certificate
            && let Some(e) = self.get(RevokedKind::Certificate, t)
        {
            return Err(e.reason);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(jti: &str, txn: &str, agent: &str, iat: i64) -> AccessClaims {
        serde_json::from_value(serde_json::json!({
            "iss": "https://b", "sub": agent, "aud": "https://api", "exp": iat + 60,
            "iat": iat, "nbf": iat, "jti": jti, "client_id": agent, "scope": "read", "txn": txn,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn each_kind_refuses_what_it_covers_and_expires() {
        let mut r = RevocationSet::default();
        let c = claims("tok1", "task1", "agent1", 100);
        assert_eq!(r.check(&c), Ok(()));
        r.insert(
            RevokedKind::Task,
            "task1".into(),
            110,
            200,
            "task_completed",
            110,
        );
        assert_eq!(r.check(&c), Err("task_completed"));
        assert_eq!(
            r.check(&claims("tok2", "task2", "agent1", 100)),
            Ok(()),
            "another task"
        );
        r.insert(
            RevokedKind::Agent,
            "agent1".into(),
            120,
            300,
            "agent_suspended",
            120,
        );
        assert_eq!(
            r.check(&claims("tok2", "task2", "agent1", 120)),
            Err("agent_suspended")
        );
        // Issued after the suspension was lifted.
        assert_eq!(r.check(&claims("tok3", "task3", "agent1", 121)), Ok(()));
        r.insert(
            RevokedKind::Token,
            "tok3".into(),
            130,
            181,
            "operator text",
            130,
        );
        assert_eq!(
            r.check(&claims("tok3", "task3", "agent1", 121)),
            Err("revoked")
        );
        assert_eq!(r.len(), 3);
        r.prune(190);
        assert_eq!(r.len(), 2, "the token's entry expired");
        r.prune(301);
        assert_eq!(r.len(), 0);
        // Already expired: not kept at all.
        r.insert(RevokedKind::Task, "old".into(), 1, 2, "task_revoked", 10);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn unknown_reasons_are_generic() {
        assert_eq!(known_reason(RevokedKind::Task, "whatever"), "task_revoked");
        assert_eq!(known_reason(RevokedKind::Agent, "x"), "agent_revoked");
        assert_eq!(
            known_reason(RevokedKind::Agent, "agent_offboarded"),
            "agent_offboarded"
        );
    }
}
