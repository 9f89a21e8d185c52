//! A version of the policy set as the broker records it: its files, the ids of its policies,
//! who put it in force and when.

use serde::{Deserialize, Serialize};

/// One policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyFile {
    /// Its name, e.g. `business-hours.cedar`.
    pub name: String,
    /// Its Cedar text.
    pub text: String,
}

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PolicyOrigin {
    /// The `[policy] files` of the config, read at start.
    Config,
    /// `taskpass policy apply`.
    Apply,
}

impl PolicyOrigin {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Apply => "apply",
        }
    }
}

/// A recorded version of the policy set. The newest version is the one in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySetRecord {
    /// 1, 2, …, given by the store.
    pub version: u64,
    /// The files, in order.
    pub files: Vec<PolicyFile>,
    /// The ids of its policies, in the order of the files.
    pub policy_ids: Vec<String>,
    /// SHA-256 (base64url) of the files' names and texts: equal sets have equal digests.
    pub digest: String,
    /// Unix seconds.
    pub applied_at: i64,
    /// The operator who applied it, or `taskpassd` for the config's files.
    pub applied_by: String,
    /// Where it came from.
    pub origin: PolicyOrigin,
}

impl PolicySetRecord {
    /// The digest of `files`: each name and text length-prefixed, so no two sets collide by
    /// moving text between files.
    pub fn digest_of(files: &[PolicyFile]) -> String {
        let mut buf = Vec::new();
        for f in files {
            for part in [f.name.as_bytes(), f.text.as_bytes()] {
                buf.extend_from_slice(&(part.len() as u64).to_be_bytes());
                buf.extend_from_slice(part);
            }
        }
        crate::token::sha256_b64url(&buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_tell_sets_apart() {
        let f = |n: &str, t: &str| PolicyFile {
            name: n.into(),
            text: t.into(),
        };
        let a = PolicySetRecord::digest_of(&[f("a", "xy"), f("b", "z")]);
        let b = PolicySetRecord::digest_of(&[f("a", "x"), f("b", "yz")]);
        assert_ne!(a, b);
        assert_eq!(a, PolicySetRecord::digest_of(&[f("a", "xy"), f("b", "z")]));
    }
}
