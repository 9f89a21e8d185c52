//! The policy set sliced by what a request can match, so that a request is evaluated against
//! the policies that could apply to it and not against all of them.
//!
//! Cedar evaluates every policy of the set it is given. A policy's scope (its `principal`,
//! `action` and `resource` constraints) says which requests it can apply to at all; the set is
//! cut along those lines once, at compile time:
//!
//! - by action (`action == A`, `action in [A, B]`, or any);
//! - by resource type (`resource is T`, the type of `resource == T::"x"`, or every type the
//!   action takes);
//! - then into a generic slice (principal and resource unconstrained or constrained by type),
//!   slices keyed by the principal entity a policy names (`principal == X`, `principal in X`,
//!   `principal is T in X`), and slices keyed by the resource entity it names.
//!
//! A policy whose resource is unconstrained and whose conditions never read `resource` gives
//! the same answer for every resource of a request: it goes to the action's request-level
//! slice, evaluated once per request rather than once per audience and scope.
//!
//! A request looks up the generic slice, the principal slices of the agent and of each of its
//! ancestors (its tenant), and the resource slices of the resource and of its ancestors (a
//! tool's audience): exactly the policies whose scope can match it. Cedar's answers over the
//! slices combine as over the whole set: any satisfied forbid denies; otherwise any satisfied
//! permit allows; otherwise nothing permits.

use std::collections::HashMap;

use cedar_policy::{
    ActionConstraint, EntityUid, Policy, PolicySet, PrincipalConstraint, ResourceConstraint,
};

/// The resource types each action takes (as the schema declares).
const RESOURCES: [(&str, &[&str]); 3] = [
    ("StartTask", &["Audience", "Scope"]),
    ("IssueToken", &["Audience", "Scope"]),
    ("CallTool", &["Tool"]),
];

/// The policies one (action, resource type) can meet.
#[derive(Debug, Default)]
pub(crate) struct Slice {
    pub(crate) generic: PolicySet,
    pub(crate) by_principal: HashMap<EntityUid, PolicySet>,
    pub(crate) by_resource: HashMap<EntityUid, PolicySet>,
}

impl Slice {
    /// The sets to evaluate for a principal and a resource, given each with its ancestors.
    pub(crate) fn sets<'a>(
        &'a self,
        principal: &'a [EntityUid],
        resource: &'a [EntityUid],
    ) -> impl Iterator<Item = &'a PolicySet> + 'a {
        std::iter::once(&self.generic)
            .chain(principal.iter().filter_map(|p| self.by_principal.get(p)))
            .chain(resource.iter().filter_map(|r| self.by_resource.get(r)))
    }
}

/// The slices of a set: per action, the request-level slice; per (action id, resource type
/// name without namespace), the resource-level slice.
#[derive(Debug, Default)]
pub(crate) struct Index {
    request: HashMap<&'static str, Slice>,
    resource: HashMap<(&'static str, &'static str), Slice>,
}

/// Whether `v` (a policy's JSON) reads the variable `resource` anywhere in its conditions.
fn reads_resource(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(m) => {
            m.get("Var").and_then(serde_json::Value::as_str) == Some("resource")
                || m.values().any(reads_resource)
        }
        serde_json::Value::Array(a) => a.iter().any(reads_resource),
        _ => false,
    }
}

fn short(t: &cedar_policy::EntityTypeName) -> String {
    t.basename().to_owned()
}

fn add(set: &mut PolicySet, p: &Policy) -> Result<(), String> {
    set.add(p.clone()).map_err(|e| e.to_string())
}

impl Index {
    /// Slices `policies`.
    pub(crate) fn build<'a>(policies: impl Iterator<Item = &'a Policy>) -> Result<Self, String> {
        let mut index = Self::default();
        for p in policies {
            let actions: Vec<&'static str> = match p.action_constraint() {
                ActionConstraint::Any => RESOURCES.iter().map(|(a, _)| *a).collect(),
                ActionConstraint::Eq(a) => vec![action_name(&a)?],
                ActionConstraint::In(list) => {
                    let mut v = Vec::with_capacity(list.len());
                    for a in &list {
                        v.push(action_name(a)?);
                    }
                    v
                }
            };
            let (types, resource_key): (Option<String>, Option<EntityUid>) =
                match p.resource_constraint() {
                    ResourceConstraint::Any => (None, None),
                    ResourceConstraint::Is(t) => (Some(short(&t)), None),
                    ResourceConstraint::Eq(e) => (Some(short(e.type_name())), Some(e)),
                    ResourceConstraint::In(e) => (None, Some(e)),
                    ResourceConstraint::IsIn(t, e) => (Some(short(&t)), Some(e)),
                };
            let principal_key = match p.principal_constraint() {
                PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
                PrincipalConstraint::Eq(e) | PrincipalConstraint::In(e) => Some(e),
                PrincipalConstraint::IsIn(_, e) => Some(e),
            };
            let resource_blind = types.is_none()
                && resource_key.is_none()
                && !p
                    .to_json()
                    .map(|j| reads_resource(&j["conditions"]))
                    .unwrap_or(true);
            for action in actions {
                if resource_blind {
                    let slice = index.request.entry(action).or_default();
                    match &principal_key {
                        Some(k) => add(slice.by_principal.entry(k.clone()).or_default(), p)?,
                        None => add(&mut slice.generic, p)?,
                    }
                    continue;
                }
                let Some((_, takes)) = RESOURCES.iter().find(|(a, _)| *a == action) else {
                    continue;
                };
                for ty in takes
                    .iter()
                    .filter(|t| types.as_deref().is_none_or(|want| want == **t))
                {
                    let slice = index.resource.entry((action, *ty)).or_default();
                    match (&principal_key, &resource_key) {
                        (Some(k), _) => add(slice.by_principal.entry(k.clone()).or_default(), p)?,
                        (None, Some(k)) => add(slice.by_resource.entry(k.clone()).or_default(), p)?,
                        (None, None) => add(&mut slice.generic, p)?,
                    }
                }
            }
        }
        Ok(index)
    }

    /// The resource-level slice of (action, resource type), if any policy can meet it.
    pub(crate) fn slice(
        &self,
        action: &'static str,
        resource_type: &'static str,
    ) -> Option<&Slice> {
        self.resource.get(&(action, resource_type))
    }

    /// The request-level slice of `action`: policies that answer alike for every resource.
    pub(crate) fn request_slice(&self, action: &str) -> Option<&Slice> {
        self.request.get(action)
    }
}

/// The action's id in `Taskpass::Action::"…"`; another namespace's actions are refused (the
/// validator refuses them first).
fn action_name(a: &EntityUid) -> Result<&'static str, String> {
    let id: &str = a.id().unescaped();
    RESOURCES
        .iter()
        .map(|(n, _)| *n)
        .find(|n| *n == id && a.type_name().to_string() == "Taskpass::Action")
        .ok_or_else(|| format!("action {a} is not one of the schema's"))
}
