//! Request-time policy for Taskpass, in Cedar: the Taskpass schema, policy sets compiled and
//! strictly validated against it with an id for every policy, and an engine that implements
//! the core's [`Policies`] so that `decide_start_task` and `decide_issue` consult it on top
//! of the allow-lists. No I/O: the broker reads the files and the store.
//!
//! ```
//! use taskpass_policy::{PolicySource, PolicyEngine};
//! let engine = PolicyEngine::compile(&[PolicySource::new(
//!     "base.cedar",
//!     r#"@id("within-allow-lists") permit(principal, action, resource);"#,
//! )])
//! .unwrap();
//! assert_eq!(engine.ids(), ["within-allow-lists"]);
//! ```

mod engine;
mod entities;
mod index;

pub use engine::{PolicyEngine, PolicyError, PolicySource, schema_text};
