//! Refusals that follow from bad input (a refused attestation, a malformed or unknown task id,
//! a rate limit), audited in aggregate.
//!
//! Every decision is audited, but writing each of these on its own would let one hostile
//! client grow the audit log and fill the store writer's queue at the rate it can send
//! requests, paying an fsync per refusal. Instead each refusal is counted in memory under
//! (who, action, rule), where "who" is the agent id once the caller is identified and its
//! source address before; every interval the broker appends one audit entry per key with the
//! count, the first and last time and one example message, all in one grouped commit. The
//! tally holds at most [`Refusals::max_keys`] keys: past that, refusals are counted under one
//! overflow entry, so its memory is bounded too.

use std::collections::HashMap;
use std::sync::Mutex;

use taskpass_core::{AuditEntry, AuditOutcome};

/// The longest example message kept per key.
const EXAMPLE_CHARS: usize = 240;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    actor: String,
    action: &'static str,
    rule: &'static str,
}

#[derive(Debug)]
struct Count {
    n: u64,
    first: i64,
    last: i64,
    agent_id: String,
    task_id: String,
    example: String,
}

#[derive(Debug, Default)]
struct Tally {
    counts: HashMap<Key, Count>,
    overflow: u64,
    overflow_first: i64,
}

/// One refusal to count.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// The agent id, or `source:<address>` for a caller not identified.
    pub actor: &'a str,
    /// The agent concerned (empty when none).
    pub agent_id: &'a str,
    /// The RPC, as the audit log names it (`complete_task`).
    pub action: &'static str,
    /// The stable rule, e.g. `task_not_found`.
    pub rule: &'static str,
    /// The canonical task id concerned, if there is one.
    pub task_id: &'a str,
    /// The message the caller got.
    pub message: &'a str,
}

/// The counts since the last flush.
#[derive(Debug)]
pub struct Refusals {
    max_keys: usize,
    tally: Mutex<Tally>,
}

impl Refusals {
    /// A tally of at most `max_keys` distinct (who, action, rule) keys per interval.
    pub fn new(max_keys: usize) -> Self {
        Self {
            max_keys: max_keys.max(1),
            tally: Mutex::new(Tally::default()),
        }
    }

    /// Counts one refusal at `now`.
    pub fn record(&self, r: Refusal<'_>, now: i64) {
        let mut t = self
            .tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = Key {
            actor: clip(r.actor, 300),
            action: r.action,
            rule: r.rule,
        };
        if let Some(c) = t.counts.get_mut(&key) {
            c.n += 1;
            c.last = now;
            return;
        }
        if t.counts.len() >= self.max_keys {
            if t.overflow == 0 {
                t.overflow_first = now;
            }
            t.overflow += 1;
            return;
        }
        t.counts.insert(
            key,
            Count {
                n: 1,
                first: now,
                last: now,
                agent_id: r.agent_id.to_owned(),
                task_id: r.task_id.to_owned(),
                example: clip(r.message, EXAMPLE_CHARS),
            },
        );
    }

    /// Takes the counts as audit drafts, one per key (oldest first), and starts a new interval.
    pub fn take(&self, now: i64) -> Vec<AuditEntry> {
        let tally = std::mem::take(
            &mut *self
                .tally
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut out: Vec<AuditEntry> = tally
            .counts
            .into_iter()
            .map(|(k, c)| {
                let mut a = AuditEntry::draft(c.first, &k.actor, k.action);
                a.outcome = AuditOutcome::Deny;
                a.reason = k.rule.to_owned();
                a.agent_id = c.agent_id;
                a.task_id = c.task_id;
                a.detail = format!(
                    "count={} first={} last={} example={}",
                    c.n, c.first, c.last, c.example
                );
                a
            })
            .collect();
        out.sort_by(|a, b| (a.time, &a.actor, &a.action).cmp(&(b.time, &b.actor, &b.action)));
        if tally.overflow > 0 {
            let mut a = AuditEntry::draft(tally.overflow_first, "broker", "refusals");
            a.outcome = AuditOutcome::Deny;
            a.reason = "refusal_tally_full".into();
            a.detail = format!(
                "count={} first={} last={now} example=more than {} distinct callers were refused in one interval",
                tally.overflow, tally.overflow_first, self.max_keys
            );
            out.push(a);
        }
        out
    }

    /// Puts back drafts that could not be written (the store was unwritable), merged with
    /// what was counted meanwhile, so that no refusal goes unaudited once the store recovers.
    pub fn restore(&self, drafts: Vec<AuditEntry>) {
        let mut t = self
            .tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for d in drafts {
            let (Some(action), Some(rule)) = (static_name(&d.action), static_name(&d.reason))
            else {
                continue;
            };
            let n = count_of(&d.detail);
            let key = Key {
                actor: d.actor,
                action,
                rule,
            };
            let room = t.counts.len() < self.max_keys;
            let last = last_of(&d.detail).unwrap_or(d.time);
            if let Some(c) = t.counts.get_mut(&key) {
                c.n += n;
                c.first = c.first.min(d.time);
                c.last = c.last.max(last);
            } else if room {
                let example = d
                    .detail
                    .split_once("example=")
                    .map(|(_, e)| e.to_owned())
                    .unwrap_or_default();
                t.counts.insert(
                    key,
                    Count {
                        n,
                        first: d.time,
                        last,
                        agent_id: d.agent_id,
                        task_id: d.task_id,
                        example,
                    },
                );
            } else {
                t.overflow += n;
            }
        }
    }
}

/// The names a tally key may hold, so that restored drafts keep `&'static str` keys.
fn static_name(s: &str) -> Option<&'static str> {
    RULES.iter().copied().find(|r| *r == s)
}

/// Every action and rule name the broker counts.
pub(crate) const RULES: &[&str] = &[
    "start_task",
    "issue_token",
    "complete_task",
    "get_task",
    "refusals",
    "refusal_tally_full",
    "attestation_refused",
    "no_matching_agent",
    "rate_limited",
    "malformed_request",
    "request_too_large",
    "task_not_found",
    "task_not_open",
];

fn last_of(detail: &str) -> Option<i64> {
    detail
        .split(' ')
        .find_map(|w| w.strip_prefix("last="))
        .and_then(|n| n.parse().ok())
}

fn count_of(detail: &str) -> u64 {
    detail
        .strip_prefix("count=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// At most `max` characters, control characters escaped.
fn clip(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 4);
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal<'a>(actor: &'a str, rule: &'static str, message: &'a str) -> Refusal<'a> {
        Refusal {
            actor,
            agent_id: "",
            action: "complete_task",
            rule,
            task_id: "",
            message,
        }
    }

    #[test]
    fn one_entry_per_key_with_its_count() {
        let r = Refusals::new(100);
        for i in 0..1000 {
            r.record(
                refusal("agent-a", "task_not_found", "no such task"),
                10 + i / 100,
            );
        }
        r.record(refusal("agent-b", "task_not_found", "x"), 12);
        r.record(refusal("agent-a", "rate_limited", "slow down"), 13);
        let drafts = r.take(20);
        assert_eq!(drafts.len(), 3);
        let a = drafts
            .iter()
            .find(|d| d.actor == "agent-a" && d.reason == "task_not_found")
            .unwrap();
        assert!(
            a.detail.starts_with("count=1000 first=10 last=19 "),
            "{}",
            a.detail
        );
        assert_eq!(a.outcome, AuditOutcome::Deny);
        assert!(r.take(21).is_empty(), "a new interval starts empty");
    }

    #[test]
    fn keys_are_bounded_and_overflow_is_counted() {
        let r = Refusals::new(10);
        for i in 0..500 {
            r.record(
                refusal(&format!("source:10.0.0.{i}"), "attestation_refused", "bad"),
                5,
            );
        }
        let drafts = r.take(6);
        assert_eq!(drafts.len(), 11);
        let last = drafts.last().unwrap();
        assert_eq!(last.reason, "refusal_tally_full");
        assert!(last.detail.starts_with("count=490 "), "{}", last.detail);
    }

    #[test]
    fn examples_are_clipped_and_escaped() {
        let r = Refusals::new(10);
        let nasty = format!("\u{1b}[31mred\nline{}", "x".repeat(1000));
        r.record(refusal(&nasty, "malformed_request", &nasty), 1);
        let d = &r.take(2)[0];
        assert!(!d.detail.chars().any(char::is_control), "{:?}", d.detail);
        assert!(!d.actor.chars().any(char::is_control), "{:?}", d.actor);
        assert!(d.detail.chars().count() < 400);
    }

    #[test]
    fn restored_drafts_merge_with_new_counts() {
        let r = Refusals::new(10);
        r.record(refusal("a", "task_not_found", "m"), 1);
        r.record(refusal("a", "task_not_found", "m"), 1);
        let drafts = r.take(2);
        r.record(refusal("a", "task_not_found", "m"), 3);
        r.restore(drafts);
        let d = r.take(4);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].detail.starts_with("count=3 first=1 "),
            "{}",
            d[0].detail
        );
    }

    #[test]
    fn every_rule_the_broker_uses_can_be_restored() {
        for name in RULES {
            assert_eq!(static_name(name), Some(*name));
        }
    }
}
