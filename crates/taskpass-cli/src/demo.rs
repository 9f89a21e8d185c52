//! `taskpass demo`: a broker on embedded defaults in a temporary dir, an OIDC issuer on
//! loopback, one agent through one task, every step printed.

use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use base64::Engine;
use serde_json::{Value, json};
use taskpass_core::SystemClock;
use taskpass_proto::v1 as pb;
use taskpass_server::ConfigFile;
use taskpass_testkit::{DevIssuer, http_get, https_get};
use tokio_stream::StreamExt;

use crate::Output;

const AUDIENCE: &str = "https://tickets.example.com";
const SUBJECT: &str = "system:serviceaccount:support:ticket-summariser";

struct Story {
    output: Output,
    steps: Vec<Value>,
}

impl Story {
    fn step(&mut self, title: &str, lines: &[String], data: Value) {
        if self.output == Output::Text {
            println!("\n▶ {title}");
            for l in lines {
                println!("    {l}");
            }
        }
        self.steps.push(json!({"step": title, "data": data}));
    }
}

fn attestation(issuer: &DevIssuer) -> Option<pb::Attestation> {
    Some(pb::Attestation {
        method: Some(pb::attestation::Method::OidcToken(
            issuer.token(SUBJECT, "taskpass", 300),
        )),
    })
}

/// Runs the demo.
pub async fn run(output: Output) -> anyhow::Result<()> {
    let mut story = Story {
        output,
        steps: Vec::new(),
    };
    if output == Output::Text {
        println!(
            "Taskpass demo: an agent attests, opens a task, gets a task-scoped token, and loses it the moment the task completes."
        );
    }
    let tmp = tempfile::tempdir()?;
    let data_dir = tmp.path().join("taskpass-data");

    let issuer = DevIssuer::start().await?;
    let issuer_ca = tmp.path().join("issuer-ca.pem");
    issuer.write_ca(&issuer_ca)?;
    story.step(
        "An OIDC issuer is up on loopback (standing in for Kubernetes, GitHub Actions or a cloud IdP)",
        &[format!("issuer {}", issuer.issuer()), "it publishes only issuer + jwks_uri in its discovery document, like Kubernetes".into()],
        json!({"issuer": issuer.issuer()}),
    );

    // The embedded defaults, on kernel-chosen loopback ports so the demo never clashes with a
    // broker already running on 7443/7444.
    let config = ConfigFile::parse(&format!(
        r#"[server]
listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
data_dir = "{}"
trust_domain = "dev.local"

[[attestation.oidc]]
issuer = "{}"
audiences = ["taskpass"]
ca_file = "{}"
"#,
        data_dir.display(),
        issuer.issuer(),
        issuer_ca.display()
    ))?
    .validate(tmp.path())?;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let broker = taskpass_server::serve(grpc, http, config, Arc::new(SystemClock)).await?;
    let grpc_url = format!("https://{}", broker.grpc_addr);
    let http_url = format!("https://{}", broker.http_addr);
    story.step(
        "The broker is up: TLS everywhere, its CA, signing key and admin credential created on first start",
        &[
            format!("gRPC  {grpc_url}"),
            format!("HTTPS {http_url}  (JWKS, metadata, health, metrics)"),
            format!("data  {}", data_dir.display()),
        ],
        json!({"grpc": grpc_url, "http": http_url, "data_dir": data_dir}),
    );

    let ca = broker.ca_pem.clone();
    let admin_cert = std::fs::read_to_string(data_dir.join("admin.pem"))?;
    let admin_key = std::fs::read_to_string(data_dir.join("admin-key.pem"))?;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(
        taskpass_proto::connect(&grpc_url, &ca, Some((&admin_cert, &admin_key))).await?,
    );
    let channel = taskpass_proto::connect(&grpc_url, &ca, None).await?;
    let mut agent = pb::agent_service_client::AgentServiceClient::new(channel);

    let registered = admin
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::Agent {
                name: "ticket-summariser".into(),
                owner: "support-platform@example.com".into(),
                purpose: "summarise open support tickets".into(),
                oidc: vec![pb::OidcBinding {
                    issuer: issuer.issuer().into(),
                    subject: SUBJECT.into(),
                }],
                audiences: vec![AUDIENCE.into()],
                scopes: vec!["tickets:read".into(), "tickets:comment".into()],
                max_ttl_seconds: 300,
                review_every_days: 90,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .agent
        .context("no agent in the answer")?;
    story.step(
        "An operator registers the agent (mTLS with the admin credential)",
        &[
            format!("{} owned by {}", registered.agent_id, registered.owner),
            format!("proved by OIDC {} = {SUBJECT}", issuer.issuer()),
            format!(
                "may call {AUDIENCE} with scopes {} for at most {} s",
                registered.scopes.join(", "),
                registered.max_ttl_seconds
            ),
        ],
        json!({"agent_id": registered.agent_id}),
    );

    let (csr, validator_key) = crate::conn::key_and_csr()?;
    let added = admin
        .add_validator(pb::AddValidatorRequest {
            name: "tickets-api".into(),
            audiences: vec![AUDIENCE.into()],
            csr_pem: csr,
            days: 1,
        })
        .await?
        .into_inner();
    let mut validator = pb::validation_service_client::ValidationServiceClient::new(
        taskpass_proto::connect(
            &grpc_url,
            &ca,
            Some((&added.certificate_pem, &validator_key)),
        )
        .await?,
    );
    story.step(
        "The operator registers the downstream API as a validator of that audience",
        &[format!(
            "{} may introspect {AUDIENCE} tokens and follow revocations",
            added.validator_id
        )],
        json!({"validator_id": added.validator_id}),
    );

    let task = agent
        .start_task(pb::StartTaskRequest {
            attestation: attestation(&issuer),
            purpose: "summarise this morning's open tickets".into(),
            audiences: vec![AUDIENCE.into()],
            scopes: vec!["tickets:read".into()],
            max_duration_seconds: 600,
            subject_token: String::new(),
        })
        .await?
        .into_inner()
        .task
        .context("no task in the answer")?;
    let denied = agent
        .start_task(pb::StartTaskRequest {
            attestation: attestation(&issuer),
            purpose: "try for more".into(),
            audiences: vec![AUDIENCE.into()],
            scopes: vec!["tickets:delete".into()],
            ..Default::default()
        })
        .await;
    let denial = match denied {
        Err(s) if s.code() == tonic::Code::PermissionDenied => s.message().to_owned(),
        other => bail!("asking for tickets:delete should be PERMISSION_DENIED, got {other:?}"),
    };
    story.step(
        "The agent attests with its OIDC token and opens a task",
        &[
            format!(
                "{} open, scopes {}, deadline in {} s",
                task.task_id,
                task.scopes.join(","),
                task.expires_at - task.created_at
            ),
            format!("asking for tickets:delete instead: PERMISSION_DENIED ({denial})"),
        ],
        json!({"task_id": task.task_id, "denied": denial}),
    );

    let issued = agent
        .issue_token(pb::IssueTokenRequest {
            attestation: attestation(&issuer),
            task_id: task.task_id.clone(),
            audience: AUDIENCE.into(),
            scopes: vec![],
            ttl_seconds: 120,
            dpop_jkt: String::new(),
        })
        .await?
        .into_inner();
    let payload = issued
        .access_token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .context("the token's payload is not JSON")?;
    story.step(
        "The agent gets a just-in-time token for one audience of the task",
        &[
            format!(
                "{} expires in {} s",
                issued.token_id,
                issued.expires_at - payload["iat"].as_i64().unwrap_or(0)
            ),
            format!("claims {payload}"),
        ],
        json!({"token_id": issued.token_id, "claims": payload}),
    );

    let (status, jwks) = https_get(&format!("{http_url}/.well-known/jwks.json"), &ca).await?;
    ensure!(status == 200, "JWKS endpoint answered {status}");
    let verifier = taskpass_verify::Verifier::new(
        broker.issuer.clone(),
        taskpass_verify::KeySet::from_json(&jwks)?,
    );
    let verified = verifier.verify(&issued.access_token, AUDIENCE)?;
    let intro = validator
        .introspect(pb::IntrospectRequest {
            token: issued.access_token.clone(),
        })
        .await?
        .into_inner();
    ensure!(intro.active, "a fresh token should introspect active");
    story.step(
        "The downstream API verifies it offline against the JWKS (fetched over HTTPS) and by introspection",
        &[
            format!("taskpass-verify: valid; client {} task {} scopes {}", verified.client_id, verified.task_id, verified.scopes.join(",")),
            "Introspect: active".into(),
        ],
        json!({"offline": "valid", "introspect_active": intro.active}),
    );

    // The downstream API itself: the example service, behind the taskpass-verify layer, with
    // a verifier that follows the broker's revocation stream with the validator credential.
    let live = taskpass_verify::Verifier::connect(taskpass_verify::LiveConfig::new(
        grpc_url.clone(),
        broker.issuer.clone(),
        ca.clone(),
        added.certificate_pem.clone(),
        validator_key.clone(),
    ))
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_url = format!("http://{}/tickets", listener.local_addr()?);
    let api =
        tokio::spawn(
            async move { axum::serve(listener, protected_api::app(live, AUDIENCE)).await },
        );
    let bearer = format!("Bearer {}", issued.access_token);
    let served = http_get(&api_url, &[("authorization", &bearer)]).await?;
    ensure!(
        served.status == 200,
        "the protected API should serve a live token, answered {}: {}",
        served.status,
        served.body
    );
    let anonymous = http_get(&api_url, &[]).await?;
    story.step(
        "The agent calls the protected API (examples/protected-api) with its token",
        &[
            format!("GET {api_url} with the token: {}", served.status),
            format!(
                "without it: {} WWW-Authenticate: {}",
                anonymous.status,
                anonymous
                    .headers
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
            ),
        ],
        json!({"api": api_url, "status": served.status, "anonymous_status": anonymous.status}),
    );

    let mut watch = validator
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    let done = agent
        .complete_task(pb::CompleteTaskRequest {
            attestation: attestation(&issuer),
            task_id: task.task_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let completed = std::time::Instant::now();
    let refused = loop {
        let answer = http_get(&api_url, &[("authorization", &bearer)]).await?;
        if answer.status == 401 {
            break answer;
        }
        ensure!(
            completed.elapsed() < std::time::Duration::from_secs(1),
            "the protected API still served the token 1 s after the task completed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    };
    let refused_after = completed.elapsed();
    api.abort();
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
        .await
        .context("no revocation event within 5 s")?
        .context("revocation stream ended")??;
    story.step(
        "The agent completes the task: every token of it is revoked at once",
        &[
            format!("{} revoked token(s)", done.revoked_tokens),
            format!(
                "validators' revocation stream: #{} {} {} ({})",
                event.sequence,
                pb::RevocationKind::try_from(event.kind)
                    .map(|k| k.as_str_name())
                    .unwrap_or("?"),
                event.id,
                event.reason
            ),
            format!(
                "the protected API refuses the token {:.1} ms later: {} {}",
                refused_after.as_secs_f64() * 1000.0,
                refused.status,
                refused
                    .headers
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
            ),
        ],
        json!({"revoked_tokens": done.revoked_tokens, "event_sequence": event.sequence,
               "api_refused_after_ms": refused_after.as_secs_f64() * 1000.0}),
    );

    let intro = validator
        .introspect(pb::IntrospectRequest {
            token: issued.access_token.clone(),
        })
        .await?
        .into_inner();
    ensure!(
        !intro.active,
        "a token of a completed task must be inactive"
    );
    let again = agent
        .issue_token(pb::IssueTokenRequest {
            attestation: attestation(&issuer),
            task_id: task.task_id.clone(),
            audience: AUDIENCE.into(),
            ..Default::default()
        })
        .await;
    let refused = match again {
        Err(s) if s.code() == tonic::Code::FailedPrecondition => s.message().to_owned(),
        other => bail!("a token for a completed task should be FAILED_PRECONDITION, got {other:?}"),
    };
    story.step(
        "The token is dead",
        &[
            format!("Introspect: inactive ({})", intro.inactive_reason),
            format!("another token for the task: FAILED_PRECONDITION ({refused})"),
        ],
        json!({"inactive_reason": intro.inactive_reason}),
    );

    // The second path: an agent with no platform OIDC token attests with a certificate.
    let name = "nightly-reporter";
    let reporter = admin
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::Agent {
                name: name.into(),
                owner: "data-platform@example.com".into(),
                purpose: "nightly ticket statistics".into(),
                x509: vec![format!("spiffe://dev.local/agent/{name}")],
                audiences: vec![AUDIENCE.into()],
                scopes: vec!["tickets:read".into()],
                max_ttl_seconds: 300,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .agent
        .context("no agent in the answer")?;
    let (csr, key) = crate::conn::key_and_csr()?;
    let cert = admin
        .issue_agent_certificate(pb::IssueAgentCertificateRequest {
            name: name.into(),
            csr_pem: csr,
            hours: 1,
        })
        .await?
        .into_inner();
    let mut mtls_agent = pb::agent_service_client::AgentServiceClient::new(
        taskpass_proto::connect(&grpc_url, &ca, Some((&cert.certificate_pem, &key))).await?,
    );
    let mtls = || Some(crate::conn::mtls_attestation());
    let night = mtls_agent
        .start_task(pb::StartTaskRequest {
            attestation: mtls(),
            purpose: "count last night's tickets".into(),
            audiences: vec![AUDIENCE.into()],
            scopes: vec!["tickets:read".into()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .task
        .context("no task in the answer")?;
    let bound = mtls_agent
        .issue_token(pb::IssueTokenRequest {
            attestation: mtls(),
            task_id: night.task_id.clone(),
            audience: AUDIENCE.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let leaf_der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(cert.certificate_pem.as_bytes())?.to_vec()
    };
    let held = verifier.verify_held(
        &bound.access_token,
        AUDIENCE,
        taskpass_verify::Holder::Certificate(&leaf_der),
    )?;
    let thumbprint = match &held.claims.cnf {
        Some(taskpass_core::Confirmation::Certificate(t)) => t.clone(),
        other => bail!("a token under mTLS attestation should be certificate-bound, got {other:?}"),
    };
    let stolen = match verifier.verify(&bound.access_token, AUDIENCE) {
        Err(e) => e.reason(),
        Ok(_) => bail!("a bound token presented without its certificate was accepted"),
    };
    mtls_agent
        .complete_task(pb::CompleteTaskRequest {
            attestation: mtls(),
            task_id: night.task_id.clone(),
            ..Default::default()
        })
        .await?;
    story.step(
        "A second agent has no OIDC token: it attests with a client certificate, and its tokens are bound to it",
        &[
            format!("{} proved by certificate {}", reporter.agent_id, cert.spiffe_id),
            format!("certificate serial {} from the broker CA (only a CSR left the agent)", cert.serial),
            format!("token cnf x5t#S256 = {thumbprint} (RFC 8705)"),
            "taskpass-verify with the agent's certificate: valid".into(),
            format!("the same token without the certificate: refused ({stolen})"),
        ],
        json!({"agent_id": reporter.agent_id, "serial": cert.serial, "cnf_x5t_s256": thumbprint}),
    );

    let tail = admin
        .tail_audit(pb::TailAuditRequest { limit: 20 })
        .await?
        .into_inner()
        .entries;
    let verify = admin
        .verify_audit(pb::VerifyAuditRequest {})
        .await?
        .into_inner();
    ensure!(verify.ok, "audit chain broken: {}", verify.problem);
    let mut lines: Vec<String> = tail.iter().map(crate::output::audit_line).collect();
    lines.push(format!(
        "chain intact: {} entries, head {}",
        verify.entries, verify.head_hash
    ));
    story.step(
        "Every decision is in the hash-chained audit log",
        &lines,
        json!({"entries": verify.entries, "head_hash": verify.head_hash}),
    );

    broker.shutdown().await;
    match output {
        Output::Json => println!("{}", json!({"ok": true, "steps": story.steps})),
        Output::Text => println!(
            "\nDone. Run your own: `taskpassd --dev`, then `taskpass --data-dir taskpass-data agent list`."
        ),
    }
    Ok(())
}
