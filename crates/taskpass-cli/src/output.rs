//! Rendering: JSON documents for scripts, short lines for people.

use serde_json::{Value, json};
use taskpass_proto::v1 as pb;

/// The message for a failed command: the gRPC code and the broker's message, or the chain.
pub fn error_text(e: &anyhow::Error) -> String {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        return format!("{}: {}", code_name(s.code()), s.message());
    }
    format!("{e:#}")
}

fn code_name(c: tonic::Code) -> String {
    // tonic's Debug is CamelCase; the contract speaks in gRPC's SCREAMING_CASE.
    let dbg = format!("{c:?}");
    let mut out = String::new();
    for (i, ch) in dbg.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

pub fn agent_state(s: i32) -> &'static str {
    match pb::AgentState::try_from(s) {
        Ok(pb::AgentState::Active) => "active",
        Ok(pb::AgentState::Suspended) => "suspended",
        Ok(pb::AgentState::Offboarded) => "offboarded",
        _ => "unspecified",
    }
}

pub fn task_state(s: i32) -> &'static str {
    match pb::TaskState::try_from(s) {
        Ok(pb::TaskState::Open) => "open",
        Ok(pb::TaskState::PendingApproval) => "pending_approval",
        Ok(pb::TaskState::Completed) => "completed",
        Ok(pb::TaskState::Expired) => "expired",
        Ok(pb::TaskState::Revoked) => "revoked",
        Ok(pb::TaskState::Denied) => "denied",
        _ => "unspecified",
    }
}

pub fn agent(a: &pb::Agent) -> Value {
    json!({
        "name": a.name, "agent_id": a.agent_id, "owner": a.owner, "purpose": a.purpose,
        "tenant": a.tenant, "environment": a.environment, "state": agent_state(a.state),
        "oidc": a.oidc.iter().map(|b| json!({"issuer": b.issuer, "subject": b.subject})).collect::<Vec<_>>(),
        "audiences": a.audiences, "scopes": a.scopes, "max_ttl_seconds": a.max_ttl_seconds,
        "approval_scopes": a.approval_scopes, "review_every_days": a.review_every_days,
        "created_at": a.created_at, "updated_at": a.updated_at,
    })
}

pub fn task(t: &pb::Task) -> Value {
    json!({
        "task_id": t.task_id, "agent_id": t.agent_id, "state": task_state(t.state),
        "purpose": t.purpose, "audiences": t.audiences, "scopes": t.scopes,
        "created_at": t.created_at, "expires_at": t.expires_at,
        "on_behalf_of": t.on_behalf_of, "approval_id": t.approval_id,
    })
}

pub fn token(t: &pb::TokenInfo) -> Value {
    json!({
        "token_id": t.token_id, "task_id": t.task_id, "agent_id": t.agent_id,
        "audience": t.audience, "scopes": t.scopes, "issued_at": t.issued_at,
        "expires_at": t.expires_at, "revoked": t.revoked,
    })
}

pub fn audit(e: &pb::AuditEntry) -> Value {
    json!({
        "sequence": e.sequence, "time": e.time, "actor": e.actor, "action": e.action,
        "outcome": e.outcome, "reason": e.reason, "agent_id": e.agent_id, "task_id": e.task_id,
        "token_id": e.token_id, "detail": e.detail, "prev_hash": e.prev_hash, "hash": e.hash,
    })
}

pub fn agent_line(a: &pb::Agent) -> String {
    format!(
        "{:<24} {:<10} owner={} audiences=[{}] scopes=[{}]",
        a.name,
        agent_state(a.state),
        a.owner,
        a.audiences.join(","),
        a.scopes.join(",")
    )
}

pub fn task_line(t: &pb::Task) -> String {
    format!(
        "{}  {:<10} {}  expires_at={}  aud=[{}] scopes=[{}]  {:?}",
        t.task_id,
        task_state(t.state),
        t.agent_id,
        t.expires_at,
        t.audiences.join(","),
        t.scopes.join(","),
        t.purpose
    )
}

pub fn token_line(t: &pb::TokenInfo) -> String {
    format!(
        "{}  {}  aud={} scopes=[{}] exp={}{}",
        t.token_id,
        t.task_id,
        t.audience,
        t.scopes.join(","),
        t.expires_at,
        if t.revoked { "  REVOKED" } else { "" }
    )
}

pub fn audit_line(e: &pb::AuditEntry) -> String {
    let mut s = format!(
        "#{:<6} {} {:<5} {:<16} {}",
        e.sequence, e.time, e.outcome, e.action, e.actor
    );
    for (k, v) in [
        ("task", &e.task_id),
        ("token", &e.token_id),
        ("reason", &e.reason),
        ("detail", &e.detail),
    ] {
        if !v.is_empty() {
            s.push_str(&format!(" {k}={v}"));
        }
    }
    s
}
