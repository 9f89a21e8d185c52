//! The agents and open tasks that every agent call reads, kept decoded in memory so that the
//! request path opens no read transaction and decodes no JSON for them.
//!
//! Only the writer changes the cache, and only after its commit and before it answers the
//! batch's callers: the cache never shows a state that is not durable, a caller reads its own
//! write, and the cache trails the file only while a commit is being published (a reader may
//! then get the previous committed value, which the writer re-checks anyway). A lookup that
//! misses falls back to the file. Entries are bounded:
//! past the capacity an arbitrary entry makes room, and a task leaves when it reaches a final
//! state.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use taskpass_core::{Agent, AgentState, Binding, Task};

/// The cache itself; shared by the writer thread and every reader.
#[derive(Debug)]
pub(crate) struct RecordCache {
    capacity: usize,
    maps: RwLock<Maps>,
}

#[derive(Debug, Default)]
struct Maps {
    /// Agent name → agent.
    agents: HashMap<String, Arc<Agent>>,
    /// OIDC issuer → subject → agent name, for the cached agents that are not offboarded
    /// (nested, so that a lookup borrows the two strings instead of building a key).
    oidc: HashMap<String, HashMap<String, String>>,
    /// SPIFFE id → agent name, likewise.
    x509: HashMap<String, String>,
    /// Task id → task, for tasks not in a final state.
    tasks: HashMap<String, Arc<Task>>,
}

/// What one batch of commands wrote or read, by key: the writer's view of its own uncommitted
/// changes, and what the cache learns once the batch commits.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub(crate) agents: HashMap<String, Arc<Agent>>,
    pub(crate) tasks: HashMap<String, Arc<Task>>,
}

impl RecordCache {
    /// An empty cache holding at most `capacity` agents and as many tasks.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            maps: RwLock::new(Maps::default()),
        }
    }

    // A panic while holding the lock cannot leave the maps half-changed in a way that matters
    // (every change is a whole insert or remove), so a poisoned lock is still used.
    fn read(&self) -> RwLockReadGuard<'_, Maps> {
        self.maps
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Maps> {
        self.maps
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn agent(&self, name: &str) -> Option<Arc<Agent>> {
        self.read().agents.get(name).cloned()
    }

    pub(crate) fn agent_by_binding(&self, binding: &Binding) -> Option<Arc<Agent>> {
        let maps = self.read();
        let name = match binding {
            Binding::Oidc { issuer, subject } => maps.oidc.get(issuer)?.get(subject)?,
            Binding::X509 { spiffe_id } => maps.x509.get(spiffe_id.as_str())?,
            #[allow(unreachable_patterns, reason = "the enum is non_exhaustive")]
            _ => return None,
        };
        maps.agents.get(name).cloned()
    }

    pub(crate) fn task(&self, id: &str) -> Option<Arc<Task>> {
        self.read().tasks.get(id).cloned()
    }

    /// Forgets everything (the file was reopened and is read again).
    pub(crate) fn clear(&self) {
        *self.write() = Maps::default();
    }

    /// Applies what a committed batch wrote or read.
    pub(crate) fn apply(&self, changes: Changes) {
        if self.capacity == 0 || (changes.agents.is_empty() && changes.tasks.is_empty()) {
            return;
        }
        let mut maps = self.write();
        for (name, agent) in changes.agents {
            maps.put_agent(name, agent, self.capacity);
        }
        for (id, task) in changes.tasks {
            maps.put_task(id, task, self.capacity);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        let maps = self.read();
        (maps.agents.len(), maps.tasks.len())
    }

    /// The OIDC bindings held, each checked to name a cached agent.
    #[cfg(test)]
    fn bindings(&self) -> usize {
        let maps = self.read();
        let names: Vec<&String> = maps
            .oidc
            .values()
            .flat_map(|s| s.values())
            .chain(maps.x509.values())
            .collect();
        assert!(names.iter().all(|n| maps.agents.contains_key(*n)));
        names.len()
    }
}

impl Maps {
    fn put_agent(&mut self, name: String, agent: Arc<Agent>, capacity: usize) {
        if !self.agents.contains_key(&name)
            && self.agents.len() >= capacity
            && let Some(victim) = self.agents.keys().next().cloned()
        {
            self.remove_agent(&victim);
        }
        self.remove_agent(&name);
        if agent.state != AgentState::Offboarded {
            for b in &agent.bindings {
                match b {
                    Binding::Oidc { issuer, subject } => {
                        self.oidc
                            .entry(issuer.clone())
                            .or_default()
                            .insert(subject.clone(), name.clone());
                    }
                    Binding::X509 { spiffe_id } => {
                        self.x509.insert(spiffe_id.to_string(), name.clone());
                    }
                    #[allow(unreachable_patterns, reason = "the enum is non_exhaustive")]
                    _ => {}
                }
            }
        }
        self.agents.insert(name, agent);
    }

    fn remove_agent(&mut self, name: &str) {
        let Some(old) = self.agents.remove(name) else {
            return;
        };
        for b in &old.bindings {
            match b {
                Binding::Oidc { issuer, subject } => {
                    if let Some(subjects) = self.oidc.get_mut(issuer) {
                        if subjects.get(subject).is_some_and(|n| n == name) {
                            subjects.remove(subject);
                        }
                        if subjects.is_empty() {
                            self.oidc.remove(issuer);
                        }
                    }
                }
                Binding::X509 { spiffe_id }
                    if self.x509.get(spiffe_id.as_str()).is_some_and(|n| n == name) =>
                {
                    self.x509.remove(spiffe_id.as_str());
                }
                #[allow(unreachable_patterns, reason = "the enum is non_exhaustive")]
                _ => {}
            }
        }
    }

    fn put_task(&mut self, id: String, task: Arc<Task>, capacity: usize) {
        if task.state.is_final() {
            self.tasks.remove(&id);
            return;
        }
        if !self.tasks.contains_key(&id)
            && self.tasks.len() >= capacity
            && let Some(victim) = self.tasks.keys().next().cloned()
        {
            self.tasks.remove(&victim);
        }
        self.tasks.insert(id, task);
    }
}

#[cfg(test)]
mod tests {
    use taskpass_core::{AgentName, AllowList, Purpose, ScopeSet, TaskId, TaskState, TrustDomain};

    use super::*;

    fn oidc(issuer: &str, subject: &str) -> Binding {
        Binding::Oidc {
            issuer: issuer.into(),
            subject: subject.into(),
        }
    }

    fn agent(name: &str, subject: &str, state: AgentState) -> Arc<Agent> {
        let td = TrustDomain::parse("example.org").unwrap();
        let name = AgentName::parse(name).unwrap();
        Arc::new(Agent {
            id: td.agent_id(&name),
            name,
            owner: "team".into(),
            purpose: "test".into(),
            tenant: String::new(),
            environment: String::new(),
            labels: Vec::new(),
            state,
            bindings: vec![Binding::Oidc {
                issuer: "https://idp".into(),
                subject: subject.into(),
            }],
            allow: AllowList::default(),
            review_every_days: 0,
            created_at: 1,
            updated_at: 1,
        })
    }

    fn task(state: TaskState) -> Arc<Task> {
        let a = agent("a", "s", AgentState::Active);
        Arc::new(Task {
            id: TaskId::from_ulid(ulid::Ulid::new()),
            agent: a.id.clone(),
            state,
            purpose: Purpose::parse("test").unwrap(),
            audiences: vec![],
            scopes: ScopeSet::parse(&["read"]).unwrap(),
            created_at: 1,
            expires_at: 100,
            ended_at: None,
            on_behalf_of: None,
            approval_id: None,
            approved_by: None,
            user: None,
            approval: None,
            implicit: false,
        })
    }

    fn changes(agents: &[Arc<Agent>], tasks: &[Arc<Task>]) -> Changes {
        Changes {
            agents: agents
                .iter()
                .map(|a| (a.name.to_string(), Arc::clone(a)))
                .collect(),
            tasks: tasks
                .iter()
                .map(|t| (t.id.to_string(), Arc::clone(t)))
                .collect(),
        }
    }

    #[test]
    fn finds_agents_by_name_and_binding_until_offboarded() {
        let cache = RecordCache::new(10);
        let a = agent("alpha", "sub-a", AgentState::Active);
        cache.apply(changes(&[Arc::clone(&a)], &[]));
        assert_eq!(cache.agent("alpha").as_deref(), Some(&*a));
        assert_eq!(
            cache
                .agent_by_binding(&oidc("https://idp", "sub-a"))
                .as_deref(),
            Some(&*a)
        );
        assert!(
            cache
                .agent_by_binding(&oidc("https://idp", "sub-b"))
                .is_none()
        );
        assert!(
            cache
                .agent_by_binding(&oidc("https://other", "sub-a"))
                .is_none()
        );

        let gone = agent("alpha", "sub-a", AgentState::Offboarded);
        cache.apply(changes(&[Arc::clone(&gone)], &[]));
        assert!(
            cache
                .agent_by_binding(&oidc("https://idp", "sub-a"))
                .is_none()
        );
        assert_eq!(cache.bindings(), 0);
        assert_eq!(cache.agent("alpha").unwrap().state, AgentState::Offboarded);
    }

    #[test]
    fn final_tasks_leave_and_capacity_holds() {
        let cache = RecordCache::new(2);
        let open = task(TaskState::Open);
        let id = open.id.to_string();
        cache.apply(changes(&[], &[Arc::clone(&open)]));
        assert_eq!(cache.task(&id).as_deref(), Some(&*open));
        let mut done = (*open).clone();
        done.state = TaskState::Completed;
        cache.apply(changes(&[], &[Arc::new(done)]));
        assert!(cache.task(&id).is_none());

        let tasks: Vec<_> = (0..5).map(|_| task(TaskState::Open)).collect();
        cache.apply(changes(&[], &tasks));
        let agents: Vec<_> = (0..5)
            .map(|i| agent(&format!("a{i}"), &format!("s{i}"), AgentState::Active))
            .collect();
        cache.apply(changes(&agents, &[]));
        assert_eq!(cache.len(), (2, 2));
        // An evicted agent's binding goes with it.
        let found = (0..5)
            .filter(|i| {
                cache
                    .agent_by_binding(&oidc("https://idp", &format!("s{i}")))
                    .is_some()
            })
            .count();
        assert_eq!(found, 2);
        assert_eq!(cache.bindings(), 2, "an evicted agent's binding is gone");
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = RecordCache::new(0);
        cache.apply(changes(
            &[agent("a", "s", AgentState::Active)],
            &[task(TaskState::Open)],
        ));
        assert_eq!(cache.len(), (0, 0));
    }
}
