//! The operator verbs: each one admin RPC, printed as text or one JSON document.

use anyhow::{Context, bail};
use serde_json::json;
use taskpass_proto::v1 as pb;

use crate::output as out;
use crate::{
    AgentCmd, ApprovalCmd, AuditCmd, CertCmd, Command, Global, OperatorCmd, Output, TaskCmd,
    TokenCmd, ValidatorCmd,
};

fn emit(g: &Global, json: serde_json::Value, text: impl FnOnce() -> String) {
    match g.output {
        Output::Json => println!("{json}"),
        Output::Text => println!("{}", text()),
    }
}

fn parse_binding(s: &str) -> anyhow::Result<pb::OidcBinding> {
    // The issuer is a URL and may itself contain '=' only in its query, which issuers lack;
    // split at the last '=' so subjects cannot smuggle one in unnoticed.
    let (issuer, subject) = s
        .rsplit_once('=')
        .with_context(|| format!("--oidc {s:?}: expected ISSUER=SUBJECT"))?;
    if issuer.is_empty() || subject.is_empty() {
        bail!("--oidc {s:?}: both ISSUER and SUBJECT are required");
    }
    Ok(pb::OidcBinding {
        issuer: issuer.to_owned(),
        subject: subject.to_owned(),
    })
}

/// Runs an operator verb.
pub async fn run(g: &Global, cmd: Command) -> anyhow::Result<()> {
    let mut admin = crate::conn::admin(g).await?;
    match cmd {
        Command::Agent(AgentCmd::Register {
            name,
            owner,
            purpose,
            oidc,
            x509,
            audiences,
            scopes,
            max_ttl,
            tenant,
            environment,
            review_days,
            approval_scopes,
            labels,
        }) => {
            let agent = pb::Agent {
                name,
                owner,
                purpose,
                tenant,
                environment,
                oidc: oidc
                    .iter()
                    .map(|s| parse_binding(s))
                    .collect::<Result<_, _>>()?,
                x509,
                audiences,
                scopes,
                max_ttl_seconds: max_ttl.unwrap_or(0),
                review_every_days: review_days,
                approval_scopes,
                labels,
                ..Default::default()
            };
            let a = admin
                .register_agent(pb::RegisterAgentRequest { agent: Some(agent) })
                .await?
                .into_inner()
                .agent
                .unwrap_or_default();
            emit(g, out::agent(&a), || {
                format!("registered {}\n{}", a.agent_id, out::agent_line(&a))
            });
        }
        Command::Agent(AgentCmd::Update {
            name,
            owner,
            purpose,
            oidc,
            x509,
            no_oidc,
            no_x509,
            audiences,
            scopes,
            max_ttl,
            tenant,
            environment,
            review_days,
            approval_scopes,
            no_approval_scopes,
            labels,
            no_labels,
        }) => {
            let list = |v: Vec<String>| (!v.is_empty()).then_some(pb::StringList { values: v });
            let oidc = if no_oidc || !oidc.is_empty() {
                Some(pb::OidcBindingList {
                    values: oidc
                        .iter()
                        .map(|s| parse_binding(s))
                        .collect::<Result<_, _>>()?,
                })
            } else {
                None
            };
            let x509 = if no_x509 {
                Some(pb::StringList { values: vec![] })
            } else {
                list(x509)
            };
            let a = admin
                .update_agent(pb::UpdateAgentRequest {
                    name,
                    owner,
                    purpose,
                    tenant,
                    environment,
                    max_ttl_seconds: max_ttl,
                    review_every_days: review_days,
                    audiences: list(audiences),
                    scopes: list(scopes),
                    approval_scopes: if no_approval_scopes {
                        Some(pb::StringList { values: vec![] })
                    } else {
                        list(approval_scopes)
                    },
                    oidc,
                    x509,
                    labels: if no_labels {
                        Some(pb::StringList { values: vec![] })
                    } else {
                        list(labels)
                    },
                })
                .await?
                .into_inner()
                .agent
                .unwrap_or_default();
            emit(g, out::agent(&a), || {
                format!("updated {}\n{}", a.agent_id, out::agent_line(&a))
            });
        }
        Command::Agent(AgentCmd::List) => {
            let agents = admin
                .list_agents(pb::ListAgentsRequest {})
                .await?
                .into_inner()
                .agents;
            emit(
                g,
                json!(agents.iter().map(out::agent).collect::<Vec<_>>()),
                || {
                    agents
                        .iter()
                        .map(out::agent_line)
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        Command::Agent(AgentCmd::Show { name }) => {
            let a = admin
                .get_agent(pb::GetAgentRequest { name })
                .await?
                .into_inner()
                .agent
                .unwrap_or_default();
            emit(g, out::agent(&a), || {
                serde_json::to_string_pretty(&out::agent(&a)).unwrap_or_default()
            });
        }
        Command::Agent(AgentCmd::Suspend { name, reason }) => {
            set_state(
                g,
                &mut admin,
                name,
                pb::AgentState::Suspended,
                reason,
                "suspended",
            )
            .await?;
        }
        Command::Agent(AgentCmd::Resume { name, reason }) => {
            set_state(
                g,
                &mut admin,
                name,
                pb::AgentState::Active,
                reason,
                "resumed",
            )
            .await?;
        }
        Command::Agent(AgentCmd::Offboard { name, reason }) => {
            set_state(
                g,
                &mut admin,
                name,
                pb::AgentState::Offboarded,
                reason,
                "offboarded",
            )
            .await?;
        }
        Command::Agent(AgentCmd::Cert(cmd)) => cert(g, &mut admin, cmd).await?,
        Command::Task(TaskCmd::List { agent, limit }) => {
            let tasks = admin
                .list_tasks(pb::ListTasksRequest {
                    agent: agent.unwrap_or_default(),
                    limit,
                })
                .await?
                .into_inner()
                .tasks;
            emit(
                g,
                json!(tasks.iter().map(out::task).collect::<Vec<_>>()),
                || {
                    tasks
                        .iter()
                        .map(out::task_line)
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        Command::Task(TaskCmd::Revoke { task_id, reason }) => {
            let r = admin
                .revoke_task(pb::RevokeTaskRequest { task_id, reason })
                .await?
                .into_inner();
            let t = r.task.unwrap_or_default();
            emit(
                g,
                json!({"task": out::task(&t), "revoked_tokens": r.revoked_tokens}),
                || {
                    format!(
                        "revoked {} ({} live tokens revoked)",
                        t.task_id, r.revoked_tokens
                    )
                },
            );
        }
        Command::Token(TokenCmd::List { task, limit }) => {
            let tokens = admin
                .list_tokens(pb::ListTokensRequest {
                    task_id: task.unwrap_or_default(),
                    limit,
                })
                .await?
                .into_inner()
                .tokens;
            emit(
                g,
                json!(tokens.iter().map(out::token).collect::<Vec<_>>()),
                || {
                    tokens
                        .iter()
                        .map(out::token_line)
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        Command::Token(TokenCmd::Revoke { token_id, reason }) => {
            let t = admin
                .revoke_token(pb::RevokeTokenRequest { token_id, reason })
                .await?
                .into_inner()
                .token
                .unwrap_or_default();
            emit(g, out::token(&t), || format!("revoked {}", t.token_id));
        }
        Command::Audit(AuditCmd::Tail { limit }) => {
            let entries = admin
                .tail_audit(pb::TailAuditRequest { limit })
                .await?
                .into_inner()
                .entries;
            emit(
                g,
                json!(entries.iter().map(out::audit).collect::<Vec<_>>()),
                || {
                    entries
                        .iter()
                        .map(out::audit_line)
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        Command::Audit(AuditCmd::Verify) => {
            let v = admin
                .verify_audit(pb::VerifyAuditRequest {})
                .await?
                .into_inner();
            emit(
                g,
                json!({"ok": v.ok, "entries": v.entries, "first_bad_sequence": v.first_bad_sequence,
                       "problem": v.problem, "head_hash": v.head_hash}),
                || {
                    if v.ok {
                        format!(
                            "audit chain intact: {} entries, head {}",
                            v.entries, v.head_hash
                        )
                    } else {
                        format!(
                            "audit chain BROKEN at entry {}: {}",
                            v.first_bad_sequence, v.problem
                        )
                    }
                },
            );
            if !v.ok {
                bail!(
                    "audit chain broken at entry {}: {}",
                    v.first_bad_sequence,
                    v.problem
                );
            }
        }
        Command::Operator(cmd) => operator(g, &mut admin, cmd).await?,
        Command::Validator(cmd) => validator(g, &mut admin, cmd).await?,
        Command::Policy(cmd) => crate::policy::run(g, &mut admin, cmd).await?,
        Command::Approval(cmd) => approval(g, &mut admin, cmd).await?,
        Command::Demo | Command::Bench(_) => unreachable_command()?,
    }
    Ok(())
}

async fn approval(
    g: &Global,
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    cmd: ApprovalCmd,
) -> anyhow::Result<()> {
    let (id, approve, reason) = match cmd {
        ApprovalCmd::List { limit } => {
            let list = admin
                .list_approvals(pb::ListApprovalsRequest { limit })
                .await?
                .into_inner()
                .approvals;
            emit(
                g,
                serde_json::Value::Array(list.iter().map(out::approval).collect()),
                || {
                    if list.is_empty() {
                        "no task waits for approval".into()
                    } else {
                        list.iter()
                            .map(out::approval_line)
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                },
            );
            return Ok(());
        }
        ApprovalCmd::Approve { id, reason } => (id, true, reason),
        ApprovalCmd::Deny { id, reason } => (id, false, reason),
    };
    let t = admin
        .decide_approval(pb::DecideApprovalRequest {
            approval_id: id.clone(),
            approve,
            reason,
        })
        .await?
        .into_inner()
        .task
        .unwrap_or_default();
    emit(g, out::task(&t), || {
        format!(
            "{} {id}: task {} is {}",
            if approve { "approved" } else { "denied" },
            t.task_id,
            out::task_state(t.state)
        )
    });
    Ok(())
}

fn unreachable_command() -> anyhow::Result<()> {
    bail!("this command does not talk to a broker")
}

async fn set_state(
    g: &Global,
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    name: String,
    state: pb::AgentState,
    reason: String,
    verb: &str,
) -> anyhow::Result<()> {
    let r = admin
        .set_agent_state(pb::SetAgentStateRequest {
            name,
            state: state.into(),
            reason,
        })
        .await?
        .into_inner();
    let a = r.agent.unwrap_or_default();
    emit(
        g,
        json!({"agent": out::agent(&a), "revoked_tasks": r.revoked_tasks}),
        || format!("{verb} {} ({} open tasks revoked)", a.name, r.revoked_tasks),
    );
    Ok(())
}

/// Issues an operator credential offline from the data dir's CA.
/// Certificates as JSON, or a line each (after `prefix`).
/// Writes `NAME-key.pem` (0600), `NAME.pem` and `ca.pem` (the broker's CA, to trust its
/// server) into `out`.
fn write_credential(
    out: &std::path::Path,
    name: &str,
    key: &str,
    cert_pem: &str,
    ca_pem: &str,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}-key.pem"));
    taskpass_server::write_file(&key_path, key.as_bytes(), false)?;
    taskpass_server::write_file(&cert_path, cert_pem.as_bytes(), true)?;
    if !ca_pem.is_empty() {
        taskpass_server::write_file(&out.join("ca.pem"), ca_pem.as_bytes(), true)?;
    }
    Ok((cert_path, key_path))
}

async fn validator(
    g: &Global,
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    cmd: ValidatorCmd,
) -> anyhow::Result<()> {
    match cmd {
        ValidatorCmd::Add {
            name,
            audiences,
            days,
            out,
        } => {
            let (csr, key) = crate::conn::key_and_csr()?;
            let r = admin
                .add_validator(pb::AddValidatorRequest {
                    name: name.clone(),
                    audiences: audiences.clone(),
                    csr_pem: csr,
                    days,
                })
                .await?
                .into_inner();
            let (cert_path, key_path) =
                write_credential(&out, &name, &key, &r.certificate_pem, &r.ca_pem)?;
            emit(
                g,
                json!({"validator": r.validator_id, "serial": r.serial, "expires_at": r.expires_at,
                       "audiences": audiences, "cert": cert_path, "key": key_path}),
                || {
                    format!(
                        "issued {} serial {} until {} for {}\n  cert {}\n  key  {} (0600)",
                        out::safe(&r.validator_id),
                        out::safe(&r.serial),
                        r.expires_at,
                        out::safe(&audiences.join(" ")),
                        cert_path.display(),
                        key_path.display()
                    )
                },
            );
        }
        ValidatorCmd::List => {
            let certs = admin
                .list_validators(pb::ListValidatorsRequest { limit: 0 })
                .await?
                .into_inner()
                .certificates;
            emit_certificates(g, &certs, "");
        }
        ValidatorCmd::Revoke { name, reason } => {
            let revoked = admin
                .revoke_validator(pb::RevokeValidatorRequest { name, reason })
                .await?
                .into_inner()
                .revoked;
            emit_certificates(g, &revoked, "revoked ");
        }
    }
    Ok(())
}

fn emit_certificates(g: &Global, certs: &[pb::CertificateInfo], prefix: &str) {
    emit(
        g,
        json!(certs.iter().map(out::certificate).collect::<Vec<_>>()),
        || {
            certs
                .iter()
                .map(|c| format!("{prefix}{}", out::certificate_line(c)))
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
}

async fn cert(
    g: &Global,
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    cmd: CertCmd,
) -> anyhow::Result<()> {
    match cmd {
        CertCmd::Issue {
            name,
            out,
            csr,
            hours,
        } => {
            let (csr_pem, key_pem) = match &csr {
                Some(path) => (
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read --csr {}", path.display()))?,
                    None,
                ),
                None => {
                    let (csr, key) = crate::conn::key_and_csr()?;
                    (csr, Some(key))
                }
            };
            let r = admin
                .issue_agent_certificate(pb::IssueAgentCertificateRequest {
                    name: name.clone(),
                    csr_pem,
                    hours: hours.unwrap_or(0),
                })
                .await?
                .into_inner();
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let cert_path = out.join(format!("{name}.pem"));
            let key_path = out.join(format!("{name}-key.pem"));
            if let Some(key) = &key_pem {
                taskpass_server::write_file(&key_path, key.as_bytes(), false)?;
            }
            taskpass_server::write_file(&cert_path, r.certificate_pem.as_bytes(), true)?;
            let ca_path = out.join("ca.pem");
            taskpass_server::write_file(&ca_path, r.ca_pem.as_bytes(), true)?;
            let key_shown = key_pem.as_ref().map(|_| key_path.clone());
            emit(
                g,
                json!({"spiffe_id": r.spiffe_id, "serial": r.serial, "expires_at": r.expires_at,
                       "cert": cert_path, "key": key_shown, "ca": ca_path}),
                || {
                    let key_line = match &key_shown {
                        Some(k) => format!("\n  key  {} (0600)", k.display()),
                        None => String::new(),
                    };
                    format!(
                        "issued {} serial {} until {}\n  cert {}{key_line}\n  ca   {}",
                        out::safe(&r.spiffe_id),
                        out::safe(&r.serial),
                        r.expires_at,
                        cert_path.display(),
                        ca_path.display()
                    )
                },
            );
        }
        CertCmd::List { name } => {
            let certs = admin
                .list_certificates(pb::ListCertificatesRequest { name, limit: 0 })
                .await?
                .into_inner()
                .certificates;
            emit_certificates(g, &certs, "");
        }
        CertCmd::Revoke { serial, reason } => {
            let r = admin
                .revoke_certificate(pb::RevokeCertificateRequest { serial, reason })
                .await?
                .into_inner();
            let c = r.certificate.unwrap_or_default();
            emit(g, out::certificate(&c), || {
                format!(
                    "revoked certificate {} (revocation #{})",
                    out::safe(&c.serial),
                    r.sequence
                )
            });
        }
    }
    Ok(())
}

async fn operator(
    g: &Global,
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    cmd: OperatorCmd,
) -> anyhow::Result<()> {
    match cmd {
        OperatorCmd::Issue {
            name,
            role,
            days,
            out,
        } => {
            let (csr, key) = crate::conn::key_and_csr()?;
            let r = admin
                .issue_operator_certificate(pb::IssueOperatorCertificateRequest {
                    name: name.clone(),
                    role,
                    csr_pem: csr,
                    days,
                })
                .await?
                .into_inner();
            let (cert_path, key_path) =
                write_credential(&out, &name, &key, &r.certificate_pem, "")?;
            emit(
                g,
                json!({"operator": r.operator_id, "serial": r.serial, "expires_at": r.expires_at,
                       "cert": cert_path, "key": key_path}),
                || {
                    format!(
                        "issued {} serial {} until {}\n  cert {}\n  key  {} (0600)",
                        out::safe(&r.operator_id),
                        out::safe(&r.serial),
                        r.expires_at,
                        cert_path.display(),
                        key_path.display()
                    )
                },
            );
        }
        OperatorCmd::List => {
            let certs = admin
                .list_operators(pb::ListOperatorsRequest { limit: 0 })
                .await?
                .into_inner()
                .certificates;
            emit_certificates(g, &certs, "");
        }
        OperatorCmd::Revoke {
            serial_or_name,
            reason,
        } => {
            let revoked = admin
                .revoke_operator(pb::RevokeOperatorRequest {
                    serial_or_name,
                    reason,
                })
                .await?
                .into_inner()
                .revoked;
            emit_certificates(g, &revoked, "revoked ");
        }
    }
    Ok(())
}
