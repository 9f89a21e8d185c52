//! Rendering: JSON documents for scripts, short lines for people.

use serde_json::{Value, json};
use taskpass_proto::v1 as pb;

/// The message for a failed command: the gRPC code and the broker's message, or the chain.
pub fn error_text(e: &anyhow::Error) -> String {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        return format!("{}: {}", code_name(s.code()), safe(s.message()));
    }
    safe(&format!("{e:#}")).into_owned()
}

/// A value from the broker made safe for a terminal: control characters (newlines, escape
/// sequences) and the invisible Unicode controls that reorder text are shown as `\u{..}`,
/// so no field can forge a line or move the cursor.
pub fn safe(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Joins values made safe.
fn joined(items: &[String]) -> String {
    items.iter().map(|i| safe(i)).collect::<Vec<_>>().join(",")
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
        "x509": a.x509,
        "audiences": a.audiences, "scopes": a.scopes, "max_ttl_seconds": a.max_ttl_seconds,
        "approval_scopes": a.approval_scopes, "review_every_days": a.review_every_days,
        "labels": a.labels,
        "created_at": a.created_at, "updated_at": a.updated_at,
    })
}

pub fn certificate(c: &pb::CertificateInfo) -> Value {
    json!({
        "serial": c.serial, "spiffe_id": c.spiffe_id, "agent_id": c.agent_id,
        "issued_at": c.issued_at, "expires_at": c.expires_at, "revoked": c.revoked,
        "revoked_at": c.revoked_at, "revoke_reason": c.revoke_reason, "thumbprint": c.thumbprint,
        "operator": c.operator, "role": c.role, "validator": c.validator,
        "audiences": c.audiences,
    })
}

pub fn certificate_line(c: &pb::CertificateInfo) -> String {
    format!(
        "{:<32} {:<8} until={} {}{}",
        safe(&c.serial),
        if c.revoked { "revoked" } else { "valid" },
        c.expires_at,
        safe(&c.spiffe_id),
        if c.audiences.is_empty() {
            String::new()
        } else {
            format!(" audiences={}", safe(&c.audiences.join(",")))
        }
    )
}

pub fn task(t: &pb::Task) -> Value {
    json!({
        "task_id": t.task_id, "agent_id": t.agent_id, "state": task_state(t.state),
        "purpose": t.purpose, "audiences": t.audiences, "scopes": t.scopes,
        "created_at": t.created_at, "expires_at": t.expires_at,
        "on_behalf_of": t.on_behalf_of, "approval_id": t.approval_id,
        "approved_by": t.approved_by, "approval_why": t.approval_why,
    })
}

pub fn approval(a: &pb::Approval) -> Value {
    json!({
        "approval_id": a.approval_id, "task_id": a.task_id, "agent_id": a.agent_id,
        "agent_name": a.agent_name, "owner": a.owner, "purpose": a.purpose,
        "audiences": a.audiences, "scopes": a.scopes, "why": a.why, "policy_ids": a.policy_ids,
        "requested_at": a.requested_at, "expires_at": a.expires_at, "task_seconds": a.task_seconds,
    })
}

/// One line per approval, for people.
pub fn approval_line(a: &pb::Approval) -> String {
    format!(
        "{} agent {} (owner {}) task {} purpose {:?} audiences {} scopes {} until {}: {}",
        safe(&a.approval_id),
        safe(&a.agent_name),
        safe(&a.owner),
        safe(&a.task_id),
        safe(&a.purpose),
        joined(&a.audiences),
        joined(&a.scopes),
        a.expires_at,
        safe(&a.why)
    )
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
        safe(&a.name),
        agent_state(a.state),
        safe(&a.owner),
        joined(&a.audiences),
        joined(&a.scopes)
    )
}

pub fn task_line(t: &pb::Task) -> String {
    format!(
        "{}  {:<10} {}  expires_at={}  aud=[{}] scopes=[{}]  {:?}",
        safe(&t.task_id),
        task_state(t.state),
        safe(&t.agent_id),
        t.expires_at,
        joined(&t.audiences),
        joined(&t.scopes),
        t.purpose
    )
}

pub fn token_line(t: &pb::TokenInfo) -> String {
    format!(
        "{}  {}  aud={} scopes=[{}] exp={}{}",
        safe(&t.token_id),
        safe(&t.task_id),
        safe(&t.audience),
        joined(&t.scopes),
        t.expires_at,
        if t.revoked { "  REVOKED" } else { "" }
    )
}

pub fn audit_line(e: &pb::AuditEntry) -> String {
    let mut s = format!(
        "#{:<6} {} {:<5} {:<16} {}",
        e.sequence,
        e.time,
        safe(&e.outcome),
        safe(&e.action),
        safe(&e.actor)
    );
    for (k, v) in [
        ("task", &e.task_id),
        ("token", &e.token_id),
        ("reason", &e.reason),
        ("detail", &e.detail),
    ] {
        if !v.is_empty() {
            s.push_str(&format!(" {k}={}", safe(v)));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cannot_forge_lines_or_move_the_cursor() {
        let e = pb::AuditEntry {
            sequence: 7,
            actor: "spiffe://x/agent/a".into(),
            action: "get_task".into(),
            outcome: "deny".into(),
            reason: "task_not_found".into(),
            detail: "example=\u{1b}[2J\n#8      1 allow issue_token forged\u{202e}txt".into(),
            ..Default::default()
        };
        let line = audit_line(&e);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(!line.contains('\u{202e}'), "{line:?}");
        assert!(line.contains("\\u{1b}[2J\\u{a}#8"), "{line:?}");
        assert_eq!(safe("plain text"), "plain text");
    }
}
