//! The policy set in force: read by every decision, replaced whole by `policy apply`.

use std::sync::{Arc, RwLock};

use taskpass_core::{AllowListsOnly, Policies};

/// The active policy engine. A decision takes the current one (an `Arc` clone under a read
/// lock) and decides against it; a new set replaces it whole, so no decision sees half of one.
#[derive(Debug)]
pub(crate) struct ActivePolicies(RwLock<Arc<dyn Policies>>);

impl ActivePolicies {
    /// Starts with `engine`.
    pub(crate) fn new(engine: Arc<dyn Policies>) -> Self {
        Self(RwLock::new(engine))
    }

    /// The allow-lists alone.
    pub(crate) fn allow_lists_only() -> Self {
        Self::new(Arc::new(AllowListsOnly))
    }

    /// The engine in force now.
    pub(crate) fn current(&self) -> Arc<dyn Policies> {
        match self.0.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts `engine` in force.
    #[allow(dead_code, reason = "used by policy apply, next")]
    pub(crate) fn replace(&self, engine: Arc<dyn Policies>) {
        match self.0.write() {
            Ok(mut g) => *g = engine,
            Err(poisoned) => *poisoned.into_inner() = engine,
        }
    }
}
