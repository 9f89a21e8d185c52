//! The Cedar entities and context of one query, built from the core's types as the schema
//! (`schema.cedarschema`) declares them.

use std::collections::{HashMap, HashSet};

use cedar_policy::{Context, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use taskpass_core::{Agent, Audience, PolicyContext, PolicyResource, User};

/// The entity type names of the schema.
#[derive(Debug)]
pub(crate) struct Types {
    tenant: EntityTypeName,
    agent: EntityTypeName,
    user: EntityTypeName,
    audience: EntityTypeName,
    scope: EntityTypeName,
    tool: EntityTypeName,
    action: EntityTypeName,
}

impl Types {
    /// The schema's type names; an error only if this crate's own constants do not parse.
    pub(crate) fn new() -> Result<Self, String> {
        let t = |s: &str| -> Result<EntityTypeName, String> {
            s.parse().map_err(|e| format!("entity type {s}: {e}"))
        };
        Ok(Self {
            tenant: t("Taskpass::Tenant")?,
            agent: t("Taskpass::Agent")?,
            user: t("Taskpass::User")?,
            audience: t("Taskpass::Audience")?,
            scope: t("Taskpass::Scope")?,
            tool: t("Taskpass::Tool")?,
            action: t("Taskpass::Action")?,
        })
    }

    fn uid(t: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
    }

    pub(crate) fn action(&self, name: &str) -> EntityUid {
        Self::uid(&self.action, name)
    }

    pub(crate) fn agent_uid(&self, a: &Agent) -> EntityUid {
        Self::uid(&self.agent, a.id.as_str())
    }

    pub(crate) fn tenant_uid(&self, tenant: &str) -> EntityUid {
        Self::uid(&self.tenant, tenant)
    }

    pub(crate) fn audience_uid(&self, a: &Audience) -> EntityUid {
        Self::uid(&self.audience, a.as_str())
    }

    fn tenant_parent(&self, tenant: &str) -> HashSet<EntityUid> {
        if tenant.is_empty() {
            HashSet::new()
        } else {
            HashSet::from([Self::uid(&self.tenant, tenant)])
        }
    }

    /// The agent, the tenants, the user and every resource of a query.
    pub(crate) fn entities(
        &self,
        agent: &Agent,
        user: Option<&User>,
        resources: &[PolicyResource<'_>],
    ) -> Result<(Vec<Entity>, Vec<EntityUid>), String> {
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let mut out = Vec::with_capacity(resources.len() + 4);
        let mut uids = Vec::with_capacity(resources.len());
        let attrs = HashMap::from([
            ("name".to_owned(), s(agent.name.as_str())),
            ("owner".to_owned(), s(&agent.owner)),
            ("tenant".to_owned(), s(&agent.tenant)),
            ("environment".to_owned(), s(&agent.environment)),
            ("purpose".to_owned(), s(&agent.purpose)),
            (
                "labels".to_owned(),
                RestrictedExpression::new_set(agent.labels.iter().map(|l| s(l))),
            ),
        ]);
        out.push(
            Entity::new(
                self.agent_uid(agent),
                attrs,
                self.tenant_parent(&agent.tenant),
            )
            .map_err(|e| e.to_string())?,
        );
        let mut tenants: Vec<&str> = vec![agent.tenant.as_str()];
        if let Some(u) = user {
            out.push(self.user_entity(u)?);
            tenants.push(u.tenant.as_str());
        }
        tenants.sort_unstable();
        tenants.dedup();
        for t in tenants.into_iter().filter(|t| !t.is_empty()) {
            out.push(Entity::new_no_attrs(
                Self::uid(&self.tenant, t),
                HashSet::new(),
            ));
        }
        let mut audiences: Vec<&Audience> = Vec::new();
        for r in resources {
            match *r {
                PolicyResource::Audience(a) => {
                    audiences.push(a);
                    uids.push(Self::uid(&self.audience, a.as_str()));
                }
                PolicyResource::Scope(sc) => {
                    let uid = Self::uid(&self.scope, sc.as_str());
                    let attrs = HashMap::from([("name".to_owned(), s(sc.as_str()))]);
                    out.push(
                        Entity::new(uid.clone(), attrs, HashSet::new())
                            .map_err(|e| e.to_string())?,
                    );
                    uids.push(uid);
                }
                PolicyResource::Tool { name, audience } => {
                    audiences.push(audience);
                    let uid = Self::uid(&self.tool, name);
                    let attrs = HashMap::from([("name".to_owned(), s(name))]);
                    let parent = HashSet::from([Self::uid(&self.audience, audience.as_str())]);
                    out.push(Entity::new(uid.clone(), attrs, parent).map_err(|e| e.to_string())?);
                    uids.push(uid);
                }
                _ => return Err("a resource of a kind this schema does not know".into()),
            }
        }
        audiences.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        audiences.dedup();
        for a in audiences {
            let attrs = HashMap::from([("url".to_owned(), s(a.as_str()))]);
            out.push(
                Entity::new(Self::uid(&self.audience, a.as_str()), attrs, HashSet::new())
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok((out, uids))
    }

    fn user_entity(&self, u: &User) -> Result<Entity, String> {
        let groups = RestrictedExpression::new_set(
            u.groups
                .iter()
                .map(|g| RestrictedExpression::new_string(g.clone())),
        );
        let attrs = HashMap::from([
            (
                "tenant".to_owned(),
                RestrictedExpression::new_string(u.tenant.clone()),
            ),
            ("groups".to_owned(), groups),
        ]);
        Entity::new(
            Self::uid(&self.user, &u.subject),
            attrs,
            self.tenant_parent(&u.tenant),
        )
        .map_err(|e| e.to_string())
    }

    /// The request's context, as the action's context type declares it.
    pub(crate) fn context(
        &self,
        c: &PolicyContext<'_>,
        tool_call: bool,
    ) -> Result<Context, String> {
        let strings = |v: Vec<&str>| {
            RestrictedExpression::new_set(
                v.into_iter()
                    .map(|s| RestrictedExpression::new_string(s.to_owned())),
            )
        };
        let days = c.now.div_euclid(86_400);
        let time = RestrictedExpression::new_record([
            ("unix".to_owned(), RestrictedExpression::new_long(c.now)),
            (
                "hour".to_owned(),
                RestrictedExpression::new_long(c.now.rem_euclid(86_400) / 3600),
            ),
            // 1970-01-01 was a Thursday (4).
            (
                "weekday".to_owned(),
                RestrictedExpression::new_long((days + 3).rem_euclid(7) + 1),
            ),
        ])
        .map_err(|e| e.to_string())?;
        let mut pairs = vec![
            (
                "purpose".to_owned(),
                RestrictedExpression::new_string(c.purpose.to_owned()),
            ),
            (
                "scopes".to_owned(),
                strings(c.scopes.iter().map(|s| s.as_str()).collect()),
            ),
            (
                "audiences".to_owned(),
                strings(c.audiences.iter().map(Audience::as_str).collect()),
            ),
            (
                "ttl_seconds".to_owned(),
                RestrictedExpression::new_long(i64::from(c.ttl_seconds)),
            ),
            ("time".to_owned(), time),
            (
                "approved".to_owned(),
                RestrictedExpression::new_bool(c.approved),
            ),
        ];
        if let Some(u) = c.user {
            pairs.push((
                "user".to_owned(),
                RestrictedExpression::new_entity_uid(Self::uid(&self.user, &u.subject)),
            ));
        }
        if tool_call {
            let args = c
                .arguments
                .map(taskpass_core::canonical_json)
                .unwrap_or_else(|| "{}".to_owned());
            pairs.push((
                "arguments".to_owned(),
                RestrictedExpression::new_string(args),
            ));
        }
        Context::from_pairs(pairs).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn type_names_parse() {
        assert!(super::Types::new().is_ok());
    }
}
