//! Verified attestations remembered until their token's own `exp`, keyed by the token's
//! SHA-256, so a busy agent's token is not re-verified on every call.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::AttestedIdentity;

/// A SHA-256 digest of a token.
pub(crate) type TokenDigest = [u8; 32];

pub(crate) fn digest(token: &str) -> TokenDigest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A bounded map of successful verifications.
#[derive(Debug)]
pub(crate) struct AttestationCache {
    capacity: usize,
    entries: Mutex<HashMap<TokenDigest, AttestedIdentity>>,
}

impl AttestationCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<TokenDigest, AttestedIdentity>> {
        // A panic while holding the lock cannot leave the map inconsistent: every operation is
        // a single insert or removal.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The remembered identity, if its token has not expired at `now`.
    pub(crate) fn get(&self, key: &TokenDigest, now: i64) -> Option<AttestedIdentity> {
        let mut entries = self.entries();
        match entries.get(key) {
            Some(id) if now < id.expires_at => Some(id.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified identity until its `expires_at`. When full, expired entries go
    /// first, then the one that would expire soonest.
    pub(crate) fn insert(&self, key: TokenDigest, identity: AttestedIdentity, now: i64) {
        if self.capacity == 0 || identity.expires_at <= now {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, id| now < id.expires_at);
            if entries.len() >= self.capacity {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, id)| id.expires_at)
                    .map(|(k, _)| *k);
                if let Some(k) = soonest {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(key, identity);
    }

    /// Forgets everything attested by `issuer` (its key set lost a key).
    pub(crate) fn forget_issuer(&self, issuer: &str) {
        self.entries().retain(|_, id| match &id.method {
            crate::AttestationMethod::Oidc { issuer: i, .. } => i != issuer,
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AttestationMethod;

    fn id(issuer: &str, exp: i64) -> AttestedIdentity {
        AttestedIdentity {
            method: AttestationMethod::Oidc {
                issuer: issuer.into(),
                subject: "s".into(),
            },
            expires_at: exp,
        }
    }

    #[test]
    fn hit_until_exp_only() {
        let c = AttestationCache::new(10);
        let k = digest("t");
        c.insert(k, id("i", 100), 50);
        assert_eq!(c.get(&k, 99), Some(id("i", 100)));
        assert_eq!(c.get(&k, 100), None);
        assert_eq!(c.len(), 0);
        c.insert(k, id("i", 100), 100);
        assert_eq!(c.len(), 0, "already-expired identities are not cached");
    }

    #[test]
    fn bounded_evicts_expired_then_soonest() {
        let c = AttestationCache::new(3);
        c.insert(digest("a"), id("i", 10), 0);
        c.insert(digest("b"), id("i", 100), 0);
        c.insert(digest("c"), id("i", 200), 0);
        c.insert(digest("d"), id("i", 300), 20); // "a" has expired: it goes
        assert_eq!(c.len(), 3);
        assert!(c.get(&digest("b"), 20).is_some());
        c.insert(digest("e"), id("i", 400), 20); // none expired: "b" (soonest) goes
        assert_eq!(c.len(), 3);
        assert!(c.get(&digest("b"), 20).is_none());
        assert!(c.get(&digest("e"), 20).is_some());
        c.forget_issuer("i");
        assert_eq!(c.len(), 0);
        let none = AttestationCache::new(0);
        none.insert(digest("a"), id("i", 10), 0);
        assert_eq!(none.len(), 0);
    }
}
