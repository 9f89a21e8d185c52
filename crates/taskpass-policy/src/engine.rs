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
    index: crate::index::Index,
    /// The whole set, as validated: what the slices are checked against in tests.
    whole: PolicySet,
    ids: Vec<String>,
    approval: HashSet<PolicyId>,
    types: Types,
    authorizer: Authorizer,
    memo: std::sync::Mutex<Memo>,
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
        let index = crate::index::Index::build(set.policies()).map_err(|e| PolicyError(vec![e]))?;
        Ok(Self {
            schema,
            index,
            whole: set,
            ids,
            approval,
            types: Types::new().map_err(|e| PolicyError(vec![e]))?,
            authorizer: Authorizer::new(),
            memo: std::sync::Mutex::new(Memo::default()),
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

    /// Cedar's plain answer for one resource over the whole set, without the slices: allow or
    /// deny and the deciding policies. For tests that hold the slices to it.
    #[doc(hidden)]
    pub fn decide_unsliced(&self, q: &PolicyQuery<'_>) -> Result<Vec<(bool, Vec<String>)>, String> {
        let (entities, resources) = self.types.entities(q.agent, q.context.user, q.resources)?;
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        let context = self
            .types
            .context(&q.context, q.action == PolicyAction::CallTool)?;
        let mut out = Vec::new();
        for uid in resources {
            let request = Request::new(
                self.types.agent_uid(q.agent),
                self.types.action(q.action.as_str()),
                uid,
                context.clone(),
                None,
            )
            .map_err(|e| e.to_string())?;
            let r = self
                .authorizer
                .is_authorized(&request, &self.whole, &entities);
            let mut ids: Vec<String> = r.diagnostics().reason().map(ToString::to_string).collect();
            ids.sort_unstable();
            out.push((r.decision() == CedarDecision::Allow, ids));
        }
        Ok(out)
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
        let mut principals = vec![principal.clone()];
        if !q.agent.tenant.is_empty() {
            principals.push(self.types.tenant_uid(&q.agent.tenant));
        }
        // The request-level policies answer alike for every resource: asked once, with the
        // first resource standing for all.
        let mut request_level = Outcome::default();
        if let (Some(slice), Some(first)) = (
            self.index.request_slice(q.action.as_str()),
            resources.first(),
        ) {
            let request = Request::new(
                principal.clone(),
                action.clone(),
                first.clone(),
                context.clone(),
                None,
            )
            .map_err(|e| e.to_string())?;
            for set in slice.sets(&principals, &[]) {
                request_level.add(&self.authorizer.is_authorized(&request, set, &entities));
            }
        }
        for (uid, r) in resources.into_iter().zip(q.resources) {
            let (ty, parent) = match r {
                PolicyResource::Audience(_) => ("Audience", None),
                PolicyResource::Scope(_) => ("Scope", None),
                PolicyResource::Tool { audience, .. } => {
                    ("Tool", Some(self.types.audience_uid(audience)))
                }
                _ => return Err("a resource of a kind this schema does not know".into()),
            };
            let what = || {
                format!(
                    "{} of {} by agent {}",
                    q.action.as_str(),
                    Self::describe(r),
                    q.agent.name
                )
            };
            let mut out = request_level.clone();
            if let Some(slice) = self.index.slice(q.action.as_str(), ty) {
                let mut scope = vec![uid.clone()];
                scope.extend(parent);
                let request = Request::new(
                    principal.clone(),
                    action.clone(),
                    uid,
                    context.clone(),
                    None,
                )
                .map_err(|e| e.to_string())?;
                for set in slice.sets(&principals, &scope) {
                    out.add(&self.authorizer.is_authorized(&request, set, &entities));
                }
            }
            let Outcome {
                mut forbids,
                permits,
                errors,
                mut failed,
            } = out;
            if !errors.is_empty() {
                // Cedar skips a policy that fails to evaluate: a forbid that errs would not
                // forbid. Fail closed instead.
                failed.sort_unstable();
                failed.dedup();
                return Ok(Verdict::Deny {
                    rule: "policy_error",
                    message: format!(
                        "{} is refused: a policy could not be evaluated ({})",
                        what(),
                        errors.join("; ")
                    ),
                    policies: failed,
                });
            }
            if !forbids.is_empty() {
                forbids.sort_unstable();
                forbids.dedup();
                return Ok(Verdict::Deny {
                    rule: "policy_forbids",
                    message: format!("{} is forbidden by policy", what()),
                    policies: forbids,
                });
            }
            if permits.is_empty() {
                return Ok(Verdict::Deny {
                    rule: "no_policy_permits",
                    policies: Vec::new(),
                    message: format!("no policy permits {}", what()),
                });
            }
            for id in permits {
                if self.approval.contains(&PolicyId::new(&id)) {
                    asks.push(id.clone());
                }
                permitted.push(id);
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

/// What Cedar said over some slices of one request: the satisfied forbids and permits, and
/// the policies that failed to evaluate.
#[derive(Debug, Default, Clone)]
struct Outcome {
    forbids: Vec<String>,
    permits: Vec<String>,
    errors: Vec<String>,
    failed: Vec<String>,
}

impl Outcome {
    fn add(&mut self, response: &cedar_policy::Response) {
        let d = response.diagnostics();
        for e in d.errors() {
            self.errors.push(one_line(e));
            let cedar_policy::AuthorizationError::PolicyEvaluationError(p) = e;
            self.failed.push(p.policy_id().to_string());
        }
        let reason = d.reason().map(ToString::to_string);
        match response.decision() {
            CedarDecision::Deny => self.forbids.extend(reason),
            CedarDecision::Allow => self.permits.extend(reason),
        }
    }
}

/// The most verdicts remembered within one second.
const MEMO_ENTRIES: usize = 4096;
/// The longest query key remembered.
const MEMO_KEY_BYTES: usize = 2048;

/// Verdicts of this second, by their whole query. A decision is a pure function of the
/// query, whose finest-grained input is the time in seconds: within one second the same query
/// gets the same verdict, so it is computed once (an agent asking for many tokens of one task
/// at once pays for one evaluation). Cleared when the second changes; bounded, and not
/// filled past its bound.
#[derive(Debug, Default)]
struct Memo {
    second: i64,
    verdicts: std::collections::HashMap<String, Verdict>,
}

/// Every input of a query, length-prefixed: two queries have equal keys only when equal.
fn memo_key(q: &PolicyQuery<'_>) -> String {
    use std::fmt::Write as _;
    let mut k = String::with_capacity(256);
    let mut put = |v: &str| {
        let _ = write!(k, "{}:{v}", v.len());
    };
    let a = q.agent;
    put(q.action.as_str());
    for v in [
        a.id.as_str(),
        a.name.as_str(),
        &a.owner,
        &a.tenant,
        &a.environment,
        &a.purpose,
    ] {
        put(v);
    }
    put(&a.labels.len().to_string());
    for l in &a.labels {
        put(l);
    }
    for r in q.resources {
        match r {
            PolicyResource::Audience(x) => {
                put("a");
                put(x.as_str());
            }
            PolicyResource::Scope(x) => {
                put("s");
                put(x.as_str());
            }
            PolicyResource::Tool { name, audience } => {
                put("t");
                put(name);
                put(audience.as_str());
            }
            _ => put("?"),
        }
    }
    let c = &q.context;
    put(c.purpose);
    put(&c.scopes.to_claim());
    for x in c.audiences {
        put(x.as_str());
    }
    put(&c.ttl_seconds.to_string());
    put(if c.approved { "1" } else { "0" });
    if let Some(u) = c.user {
        put(&u.subject);
        put(&u.tenant);
        for g in &u.groups {
            put(g);
        }
    } else {
        put("-");
    }
    if let Some(args) = c.arguments {
        put(&taskpass_core::canonical_json(args));
    }
    k
}

impl Policies for PolicyEngine {
    fn evaluate(&self, q: &PolicyQuery<'_>) -> Verdict {
        let key = memo_key(q);
        {
            let mut memo = self
                .memo
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if memo.second != q.context.now {
                memo.second = q.context.now;
                memo.verdicts.clear();
            }
            if let Some(v) = memo.verdicts.get(&key) {
                return v.clone();
            }
        }
        let verdict = self.evaluate_fresh(q);
        let mut memo = self
            .memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Long keys (large tool arguments) are not kept: the memo stays within about
        // MEMO_ENTRIES × MEMO_KEY_BYTES.
        if memo.second == q.context.now
            && memo.verdicts.len() < MEMO_ENTRIES
            && key.len() <= MEMO_KEY_BYTES
        {
            memo.verdicts.insert(key, verdict.clone());
        }
        verdict
    }
}

impl PolicyEngine {
    /// A verdict computed now, never remembered.
    pub fn evaluate_fresh(&self, q: &PolicyQuery<'_>) -> Verdict {
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
