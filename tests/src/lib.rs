//! Helpers shared by the end-to-end tests in `tests/tests/`: they drive the real `taskpassd`
//! binary (through `taskpass_testkit::TestBroker`) and the real `taskpass` CLI.

use taskpass_proto::v1 as pb;
use taskpass_testkit::{ATTESTATION_AUDIENCE, DevIssuer};
use tonic::transport::Channel;

/// The audience test agents may call.
pub const API: &str = "https://api.example";

/// An attestation carrying a fresh OIDC token for `subject`.
pub fn att(issuer: &DevIssuer, subject: &str) -> Option<pb::Attestation> {
    Some(pb::Attestation {
        method: Some(pb::attestation::Method::OidcToken(issuer.token(
            subject,
            ATTESTATION_AUDIENCE,
            300,
        ))),
    })
}

/// An attestation carrying exactly `token`.
pub fn att_token(token: String) -> Option<pb::Attestation> {
    Some(pb::Attestation {
        method: Some(pb::attestation::Method::OidcToken(token)),
    })
}

/// Registers agent `name`, proved by `subject` at `issuer`, allowed audience [`API`] and
/// scopes `read`, `write`.
pub async fn register(
    admin: &mut pb::admin_service_client::AdminServiceClient<Channel>,
    issuer: &DevIssuer,
    name: &str,
    subject: &str,
) -> anyhow::Result<pb::Agent> {
    let r = admin
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::Agent {
                name: name.into(),
                owner: "team-e2e".into(),
                purpose: "end-to-end test".into(),
                oidc: vec![pb::OidcBinding {
                    issuer: issuer.issuer().into(),
                    subject: subject.into(),
                }],
                audiences: vec![API.into()],
                scopes: vec!["read".into(), "write".into()],
                max_ttl_seconds: 600,
                ..Default::default()
            }),
        })
        .await?;
    r.into_inner()
        .agent
        .ok_or_else(|| anyhow::anyhow!("no agent returned"))
}

/// Starts a task for `subject` on [`API`] with `scopes`.
pub async fn start(
    agent: &mut pb::agent_service_client::AgentServiceClient<Channel>,
    issuer: &DevIssuer,
    subject: &str,
    scopes: &[&str],
) -> Result<pb::Task, tonic::Status> {
    let r = agent
        .start_task(pb::StartTaskRequest {
            attestation: att(issuer, subject),
            purpose: "e2e".into(),
            audiences: vec![API.into()],
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            max_duration_seconds: 0,
            subject_token: String::new(),
        })
        .await?;
    r.into_inner()
        .task
        .ok_or_else(|| tonic::Status::internal("no task returned"))
}

/// Issues a token for the task.
pub async fn issue(
    agent: &mut pb::agent_service_client::AgentServiceClient<Channel>,
    issuer: &DevIssuer,
    subject: &str,
    task_id: &str,
) -> Result<pb::IssueTokenResponse, tonic::Status> {
    Ok(agent
        .issue_token(pb::IssueTokenRequest {
            attestation: att(issuer, subject),
            task_id: task_id.into(),
            audience: API.into(),
            scopes: vec![],
            ttl_seconds: 0,
            dpop_jkt: String::new(),
        })
        .await?
        .into_inner())
}

/// The number of audit entries other than operators' reads (to show that refused calls
/// changed nothing: counting them is itself an audited read).
pub async fn audit_len(
    admin: &mut pb::admin_service_client::AdminServiceClient<Channel>,
) -> anyhow::Result<u64> {
    let all = admin
        .tail_audit(pb::TailAuditRequest { limit: 10_000 })
        .await?
        .into_inner()
        .entries;
    Ok(all.iter().filter(|e| !is_read(e)).count() as u64)
}

/// The number of audit entries that are neither refusal tallies nor operators' reads (to
/// show that refused calls wrote nothing else).
pub async fn audit_len_without_tallies(
    admin: &mut pb::admin_service_client::AdminServiceClient<Channel>,
) -> anyhow::Result<u64> {
    let all = admin
        .tail_audit(pb::TailAuditRequest { limit: 10_000 })
        .await?
        .into_inner()
        .entries;
    Ok(all.iter().filter(|e| !is_tally(e) && !is_read(e)).count() as u64)
}

/// Whether an audit entry records an operator's read through the admin API.
pub fn is_read(e: &pb::AuditEntry) -> bool {
    e.action == "operator.read"
}

/// Whether an audit entry is the refusal tally's count of refusals.
pub fn is_tally(e: &pb::AuditEntry) -> bool {
    e.outcome == "deny" && e.detail.starts_with("count=")
}

/// Waits (up to 10 s) for the refusal tally to be written and returns the audit tail.
pub async fn tallied(
    admin: &mut pb::admin_service_client::AdminServiceClient<Channel>,
    what: impl Fn(&pb::AuditEntry) -> bool,
) -> anyhow::Result<Vec<pb::AuditEntry>> {
    for _ in 0..100 {
        let tail = admin
            .tail_audit(pb::TailAuditRequest { limit: 10_000 })
            .await?
            .into_inner()
            .entries;
        if tail.iter().any(|e| is_tally(e) && what(e)) {
            return Ok(tail);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("no refusal tally entry appeared in the audit log within 10 s")
}

/// The count a refusal tally entry holds.
pub fn tally_count(e: &pb::AuditEntry) -> u64 {
    e.detail
        .strip_prefix("count=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A started test world: a loopback OIDC issuer, a real `taskpassd` trusting it, and one
/// client of each kind.
#[derive(Debug)]
pub struct Env {
    /// The agents' OIDC issuer.
    pub issuer: DevIssuer,
    /// The broker process.
    pub broker: taskpass_testkit::TestBroker,
    /// Operator client (bootstrap admin credential).
    pub admin: pb::admin_service_client::AdminServiceClient<Channel>,
    /// Agent client.
    pub agent: pb::agent_service_client::AgentServiceClient<Channel>,
    /// Validator client.
    pub val: pb::validation_service_client::ValidationServiceClient<Channel>,
}

impl Env {
    /// Starts the issuer and a broker with the default test configuration.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with("").await
    }

    /// Like [`Env::start`] with extra broker TOML appended.
    pub async fn start_with(extra: &str) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let issuer = DevIssuer::start().await?;
        let broker = taskpass_testkit::TestBroker::start_with(&issuer, extra).await?;
        Ok(Self {
            admin: broker.admin().await?,
            agent: broker.agent().await?,
            val: broker.validation().await?,
            issuer,
            broker,
        })
    }
}

/// A validator credential from the admin API, with a key made here: `(cert_pem, key_pem)`.
pub async fn add_validator(
    admin: &mut pb::admin_service_client::AdminServiceClient<Channel>,
    name: &str,
    audiences: &[&str],
) -> anyhow::Result<(String, String)> {
    let (key, csr) = key_and_csr()?;
    let r = admin
        .add_validator(pb::AddValidatorRequest {
            name: name.into(),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            csr_pem: csr,
            days: 0,
        })
        .await?
        .into_inner();
    Ok((r.certificate_pem, key))
}

/// A validation client on its own connection, presenting `cert_pem` and `key_pem`.
pub async fn validation_as(
    broker: &taskpass_testkit::TestBroker,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<pb::validation_service_client::ValidationServiceClient<Channel>> {
    let ch = taskpass_proto::connect(&broker.grpc_url, &broker.ca_pem, Some((cert_pem, key_pem)))
        .await?;
    Ok(pb::validation_service_client::ValidationServiceClient::new(
        ch,
    ))
}

/// A fresh key (PEM) and a CSR (PEM) for it, as a client makes before asking the broker for a
/// certificate.
pub fn key_and_csr() -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    Ok((key.serialize_pem(), csr))
}

/// Whether `python3` with PyJWT and `cryptography` is here; in CI it must be (`tests/run.sh`
/// installs it), elsewhere a test may skip, saying so.
pub fn pyjwt_available() -> bool {
    let here = std::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        here || std::env::var_os("CI").is_none(),
        "PyJWT is required in CI: tests/run.sh installs it"
    );
    if !here {
        eprintln!(
            "SKIPPED: python3 with PyJWT and cryptography not found; `bash tests/run.sh` installs them"
        );
    }
    here
}

/// Registers agent `name`, proved by its certificate identity
/// `spiffe://example.org/agent/<name>` and allowed [`API`] with scope `read`, and issues it a
/// one-hour certificate from the broker's CA: `(the answer, key_pem)`.
pub async fn certified_agent(
    admin: &mut pb::admin_service_client::AdminServiceClient<Channel>,
    name: &str,
) -> anyhow::Result<(pb::IssueAgentCertificateResponse, String)> {
    admin
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::Agent {
                name: name.into(),
                owner: "team-e2e".into(),
                purpose: "end-to-end test".into(),
                x509: vec![format!("spiffe://example.org/agent/{name}")],
                audiences: vec![API.into()],
                scopes: vec!["read".into()],
                ..Default::default()
            }),
        })
        .await?;
    let (key, csr) = key_and_csr()?;
    let cert = admin
        .issue_agent_certificate(pb::IssueAgentCertificateRequest {
            name: name.into(),
            csr_pem: csr,
            hours: 1,
        })
        .await?
        .into_inner();
    Ok((cert, key))
}

/// A client's DPoP key (P-256) and the proofs it signs (RFC 9449).
#[derive(Debug)]
pub struct DpopKey {
    pair: ring::signature::EcdsaKeyPair,
}

impl DpopKey {
    /// A fresh key.
    pub fn new() -> Self {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        #[allow(clippy::unwrap_used, reason = "generating a key in a test")]
        let pair = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .and_then(|pkcs8| {
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .map_err(|_| ring::error::Unspecified)
            })
            .unwrap();
        Self { pair }
    }

    /// The public JWK.
    pub fn jwk(&self) -> serde_json::Value {
        use base64::Engine as _;
        use ring::signature::KeyPair as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let p = self.pair.public_key().as_ref();
        serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64.encode(&p[1..33]), "y": b64.encode(&p[33..65])})
    }

    /// Its RFC 7638 thumbprint (`cnf.jkt`): the members in lexicographic order, written out
    /// by hand (serde_json keeps insertion order when a dependency turns on preserve_order,
    /// as cedar-policy does, so `json!` is no canonical form).
    pub fn jkt(&self) -> String {
        let jwk = self.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
            jwk["x"], jwk["y"]
        );
        taskpass_core::sha256_b64url(canonical.as_bytes())
    }

    /// A proof for `method` `url`, now; with `token`, its `ath`.
    pub fn proof(&self, method: &str, url: &str, token: Option<&str>, jti: &str) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let h = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()});
        let mut c = serde_json::json!({"jti": jti, "htm": method, "htu": url, "iat": now});
        if let Some(t) = token {
            c["ath"] = taskpass_core::sha256_b64url(t.as_bytes()).into();
        }
        let input = format!(
            "{}.{}",
            b64.encode(h.to_string()),
            b64.encode(c.to_string())
        );
        #[allow(clippy::unwrap_used, reason = "signing in a test")]
        let sig = self
            .pair
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64.encode(sig.as_ref()))
    }
}

impl Default for DpopKey {
    fn default() -> Self {
        Self::new()
    }
}
