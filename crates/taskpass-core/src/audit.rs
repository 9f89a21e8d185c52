//! The audit log's entries and its hash chain.
//!
//! Entry `n` stores the hash of entry `n - 1` and its own hash:
//! `hash = SHA-256(prev_hash || JSON(entry without hash))`, the JSON written with the fields in
//! their declared order. Editing, removing or reordering any entry breaks every hash after it.

use serde::{Deserialize, Serialize};

/// The `prev_hash` of the first entry: 32 zero bytes, hex.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Whether the decision allowed the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditOutcome {
    /// Allowed and done.
    Allow,
    /// Refused, with a reason.
    Deny,
}

impl AuditOutcome {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// One decision, as written to the audit log. Never holds a token or an attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub sequence: u64,
    /// Unix seconds.
    pub time: i64,
    /// Who asked: an agent id, an operator id, or `broker` for the sweeper.
    pub actor: String,
    /// What was asked, e.g. `start_task`, `issue_token`, `agent.offboard`.
    pub action: String,
    /// The decision.
    pub outcome: AuditOutcome,
    /// Why: the rule that decided.
    pub reason: String,
    /// The agent concerned, if any.
    pub agent_id: String,
    /// The task concerned, if any.
    pub task_id: String,
    /// The token concerned, if any.
    pub token_id: String,
    /// Free-form detail (audiences, scopes, counts).
    pub detail: String,
    /// The previous entry's hash, hex.
    pub prev_hash: String,
    /// This entry's hash, hex.
    pub hash: String,
}

#[derive(Serialize)]
struct Body<'a> {
    sequence: u64,
    time: i64,
    actor: &'a str,
    action: &'a str,
    outcome: AuditOutcome,
    reason: &'a str,
    agent_id: &'a str,
    task_id: &'a str,
    token_id: &'a str,
    detail: &'a str,
}

impl AuditEntry {
    /// A new allowed decision by `actor` at `time`, not yet linked into the chain: fill in the
    /// other fields, then the store seals it with [`AuditEntry::seal`] as it appends.
    pub fn draft(time: i64, actor: &str, action: &str) -> Self {
        Self {
            sequence: 0,
            time,
            actor: actor.to_owned(),
            action: action.to_owned(),
            outcome: AuditOutcome::Allow,
            reason: String::new(),
            agent_id: String::new(),
            task_id: String::new(),
            token_id: String::new(),
            detail: String::new(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// The hash this entry should have given its `prev_hash` and contents. Fails only if the
    /// contents cannot be serialised, which is then an error, never the hash of nothing.
    pub fn compute_hash(&self) -> Result<String, serde_json::Error> {
        let body = Body {
            sequence: self.sequence,
            time: self.time,
            actor: &self.actor,
            action: &self.action,
            outcome: self.outcome,
            reason: &self.reason,
            agent_id: &self.agent_id,
            task_id: &self.task_id,
            token_id: &self.token_id,
            detail: &self.detail,
        };
        let json = serde_json::to_vec(&body)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(self.prev_hash.as_bytes());
        ctx.update(&json);
        Ok(hex(ctx.finish().as_ref()))
    }

    /// Links this entry after one whose hash is `prev_hash` at position `sequence`, and seals it.
    pub fn seal(mut self, sequence: u64, prev_hash: &str) -> Result<Self, serde_json::Error> {
        self.sequence = sequence;
        self.prev_hash = prev_hash.to_owned();
        self.hash = self.compute_hash()?;
        Ok(self)
    }
}

/// Where a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainProblem {
    /// The first entry that does not verify.
    pub sequence: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// Checks a run of entries, in order, starting after an entry whose hash is `prev_hash` at
/// position `first_sequence - 1`. Returns the last hash.
pub fn verify_chain<'a>(
    entries: impl IntoIterator<Item = &'a AuditEntry>,
    mut prev_hash: String,
    first_sequence: u64,
) -> Result<String, ChainProblem> {
    for (expected_seq, e) in (first_sequence..).zip(entries) {
        if e.sequence != expected_seq {
            return Err(ChainProblem {
                sequence: e.sequence,
                problem: format!("expected sequence {expected_seq}, found {}", e.sequence),
            });
        }
        if e.prev_hash != prev_hash {
            return Err(ChainProblem {
                sequence: e.sequence,
                problem: "prev_hash does not match the previous entry's hash".into(),
            });
        }
        match e.compute_hash() {
            Ok(h) if h == e.hash => {}
            Ok(_) => {
                return Err(ChainProblem {
                    sequence: e.sequence,
                    problem: "hash does not match the entry's contents".into(),
                });
            }
            Err(err) => {
                return Err(ChainProblem {
                    sequence: e.sequence,
                    problem: format!("entry cannot be serialised to be hashed: {err}"),
                });
            }
        }
        prev_hash = e.hash.clone();
    }
    Ok(prev_hash)
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry::draft(1, "a", action)
    }

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|i| {
                let e = entry(&format!("act{i}")).seal(i, &prev).unwrap();
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let head = verify_chain(&c, GENESIS_HASH.into(), 1).unwrap();
        assert_eq!(head, c[4].hash);
    }

    #[test]
    fn any_edit_is_found() {
        let mut c = chain(5);
        c[2].detail = "edited".into();
        assert_eq!(
            verify_chain(&c, GENESIS_HASH.into(), 1)
                .unwrap_err()
                .sequence,
            3
        );

        let mut c = chain(5);
        c.remove(1);
        assert_eq!(
            verify_chain(&c, GENESIS_HASH.into(), 1)
                .unwrap_err()
                .sequence,
            3
        );

        let mut c = chain(5);
        c[4].outcome = AuditOutcome::Deny;
        c[4].hash = c[4].compute_hash().unwrap(); // re-sealed alone: still fine, it is the head
        assert!(verify_chain(&c, GENESIS_HASH.into(), 1).is_ok());
        c[3].reason = "x".into();
        c[3].hash = c[3].compute_hash().unwrap(); // re-sealed in the middle: the next link breaks
        assert_eq!(
            verify_chain(&c, GENESIS_HASH.into(), 1)
                .unwrap_err()
                .sequence,
            5
        );
    }
}
