//! Compiling policy files into one validated set with an id per policy, and evaluating it.

use std::collections::HashSet;
use std::fmt;

use cedar_policy::{
    Authorizer, Decision as CedarDecision, Entities, PolicyId, PolicySet, Request, Schema,
    ValidationMode, Validator,
};
use taskpass_core::{Policies, PolicyAction, PolicyQuery, PolicyResource, Verdict};

use crate::entities::Types;

const SCHEMA: &str = include_str!("schema.cedarschema");

/// The Taskpass Cedar schema, as policy authors read it.
pub fn schema_text() -> &'static str {
    SCHEMA
}

/// The largest policy file, and the most policies in a set.
const MAX_SOURCE_BYTES: usize = 1 << 20;
const MAX_POLICIES: usize = 10_000;

/// One policy file: a name (for ids and messages) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    /// The file's name, e.g. `business-hours.cedar`.
    pub name: String,
    /// Its Cedar text.
    pub text: String,
}

impl PolicySource {
    /// A named source.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }

    /// The prefix of ids of its policies without an `@id`: the file name without `.cedar`.
    fn stem(&self) -> &str {
        let base = self.name.rsplit('/').next().unwrap_or(&self.name);
        base.strip_suffix(".cedar").unwrap_or(base)
    }
}

/// Why a policy set was refused: every problem found, each naming its file and policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the policy set is invalid: {}", .0.join("; "))]
pub struct PolicyError(pub Vec<String>);

/// A compiled, strictly validated policy set and the schema it was validated against.
pub struct PolicyEngine {
    schema: Schema,
    set: PolicySet,
    ids: Vec<String>,
    approval: HashSet<PolicyId>,
    types: Types,
    authorizer: Authorizer,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.ids)
            .finish_non_exhaustive()
    }
}

fn schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(s, _warnings)| s)
        .map_err(|e| PolicyError(vec![format!("the built-in schema: {e}")]))
}

impl PolicyEngine {
    /// Parses every source, gives each policy its id (`@id("…")`, else `<file>:<n>`, n
    /// counting from 1 in the file), and validates the whole set against the schema in strict
    /// mode. Ids must be unique; templates and unknown annotations' values are refused.
    pub fn compile(sources: &[PolicySource]) -> Result<Self, PolicyError> {
        let schema = schema()?;
        let mut problems = Vec::new();
        let mut set = PolicySet::new();
        let mut ids = Vec::new();
        let mut approval = HashSet::new();
        for src in sources {
            if src.text.len() > MAX_SOURCE_BYTES {
                problems.push(format!(
                    "{}: larger than {} KiB",
                    src.name,
                    MAX_SOURCE_BYTES >> 10
                ));
                continue;
            }
            let parsed: PolicySet = match src.text.parse() {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("{}: {}", src.name, one_line(&e)));
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                problems.push(format!(
                    "{}: templates (?principal, ?resource) are not supported; write static policies",
                    src.name
                ));
                continue;
            }
            // Keep the file's order: Cedar's default ids are policy0, policy1, ….
            let mut policies: Vec<_> = parsed.policies().collect();
            policies.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .strip_prefix("policy")
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(usize::MAX)
            });
            for (n, p) in policies.into_iter().enumerate() {
                let id = match p.annotation("id") {
                    Some(id) if valid_id(id) => id.to_owned(),
                    Some(id) => {
                        problems.push(format!(
                            "{}: policy {} has @id({id:?}): use letters, digits, '-', '_', '.' and ':', at most 128",
                            src.name,
                            n + 1
                        ));
                        continue;
                    }
                    None => format!("{}:{}", src.stem(), n + 1),
                };
                match p.annotation("approval") {
                    None => {}
                    Some("required") if p.effect() == cedar_policy::Effect::Permit => {
                        approval.insert(PolicyId::new(&id));
                    }
                    Some(v) => problems.push(format!(
                        "{}: policy {id}: @approval({v:?}) is not understood: only a permit may carry @approval(\"required\")",
                        src.name
                    )),
                }
                if let Err(e) = set.add(p.new_id(PolicyId::new(&id))) {
                    problems.push(format!("{}: policy {id}: {}", src.name, one_line(&e)));
                    continue;
                }
                ids.push(id);
            }
        }
        if ids.len() > MAX_POLICIES {
            problems.push(format!("more than {MAX_POLICIES} policies"));
        }
        if problems.is_empty() {
            let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
            for e in result.validation_errors() {
                problems.push(format!("policy {}: {}", e.policy_id(), one_line(e)));
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError(problems));
        }
        Ok(Self {
            schema,
            set,
            ids,
            approval,
            types: Types::new(),
            authorizer: Authorizer::new(),
        })
    }

    /// The ids of the set's policies, in the order of their files.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The schema the set was validated against.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    fn describe(r: &PolicyResource<'_>) -> String {
        match r {
            PolicyResource::Audience(a) => format!("audience {a}"),
            PolicyResource::Scope(s) => format!("scope {s}"),
            PolicyResource::Tool { name, audience } => format!("tool {name} of {audience}"),
            _ => "a resource".to_owned(),
        }
    }

    fn evaluate_query(&self, q: &PolicyQuery<'_>) -> Result<Verdict, String> {
        let tool_call = q.action == PolicyAction::CallTool;
        let (entities, resources) = self.types.entities(q.agent, q.context.user, q.resources)?;
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        let context = self.types.context(&q.context, tool_call)?;
        let principal = self.types.agent_uid(q.agent);
        let action = self.types.action(q.action.as_str());
        let mut permitted: Vec<String> = Vec::new();
        let mut asks: Vec<String> = Vec::new();
        if resources.is_empty() {
            return Ok(Verdict::Deny {
                rule: "no_policy_permits",
                policies: Vec::new(),
                message: format!("{} names no resource", q.action.as_str()),
            });
        }
        for (uid, r) in resources.into_iter().zip(q.resources) {
            let request = Request::new(
                principal.clone(),
                action.clone(),
                uid,
                context.clone(),
                None,
            )
            .map_err(|e| e.to_string())?;
            let response = self
                .authorizer
                .is_authorized(&request, &self.set, &entities);
            let d = response.diagnostics();
            let mut reason: Vec<String> = d.reason().map(ToString::to_string).collect();
            reason.sort_unstable();
            let errors: Vec<String> = d.errors().map(one_line).collect();
            let what = format!(
                "{} of {} by agent {}",
                q.action.as_str(),
                Self::describe(r),
                q.agent.name
            );
            if !errors.is_empty() {
                // Cedar skips a policy that fails to evaluate: a forbid that errs would not
                // forbid. Fail closed instead.
                let mut failed: Vec<String> = d
                    .errors()
                    .map(|e| match e {
                        cedar_policy::AuthorizationError::PolicyEvaluationError(p) => {
                            p.policy_id().to_string()
                        }
                    })
                    .collect();
                failed.sort_unstable();
                failed.dedup();
                return Ok(Verdict::Deny {
                    rule: "policy_error",
                    message: format!(
                        "{what} is refused: a policy could not be evaluated ({})",
                        errors.join("; ")
                    ),
                    policies: failed,
                });
            }
            match response.decision() {
                CedarDecision::Deny if reason.is_empty() => {
                    return Ok(Verdict::Deny {
                        rule: "no_policy_permits",
                        policies: Vec::new(),
                        message: format!("no policy permits {what}"),
                    });
                }
                CedarDecision::Deny => {
                    return Ok(Verdict::Deny {
                        rule: "policy_forbids",
                        message: format!("{what} is forbidden by policy"),
                        policies: reason,
                    });
                }
                CedarDecision::Allow => {
                    for id in reason {
                        if self.approval.contains(&PolicyId::new(&id)) {
                            asks.push(id.clone());
                        }
                        permitted.push(id);
                    }
                }
            }
        }
        permitted.sort_unstable();
        permitted.dedup();
        asks.sort_unstable();
        asks.dedup();
        Ok(if asks.is_empty() {
            Verdict::Allow {
                policies: permitted,
            }
        } else {
            Verdict::NeedsApproval { policies: asks }
        })
    }
}

impl Policies for PolicyEngine {
    fn evaluate(&self, q: &PolicyQuery<'_>) -> Verdict {
        self.evaluate_query(q).unwrap_or_else(|e| Verdict::Deny {
            rule: "policy_error",
            policies: Vec::new(),
            message: format!(
                "{} by agent {} is refused: the request could not be put to the policies ({e})",
                q.action.as_str(),
                q.agent.name
            ),
        })
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// An error's message on one line.
fn one_line(e: &impl fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
