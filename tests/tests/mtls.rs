//! mTLS attestation over real TLS handshakes on loopback: an agent proves itself with a client
//! certificate naming its SPIFFE id, its tokens are bound to that certificate (RFC 8705), and
//! every bad certificate is refused UNAUTHENTICATED with its reason and nothing recorded. An
//! external CA trusted for agents cannot produce an operator.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};
use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_verify::{Holder, KeySet, Verifier, VerifyError};
use tonic::Code;
use tonic::transport::Channel;

type AgentClient = pb::agent_service_client::AgentServiceClient<Channel>;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    key_pem: String,
}

/// The broker's own CA, from its data dir.
fn broker_ca(env: &Env) -> Ca {
    let dir = env.broker.data_dir();
    let pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let key_pem = std::fs::read_to_string(dir.join("ca-key.pem")).unwrap();
    let key = KeyPair::from_pem(&key_pem).unwrap();
    Ca {
        issuer: Issuer::from_ca_cert_pem(&pem, key).unwrap(),
        pem,
        key_pem,
    }
}

/// A CA of the test's own, as a SPIRE server or corporate PKI would be.
fn other_ca(name: &str) -> Ca {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    let key_pem = key.serialize_pem();
    Ca {
        issuer: Issuer::new(p, key),
        pem: cert.pem(),
        key_pem,
    }
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

/// A client certificate for `uri` signed by `ca`, valid 2020-2100 with clientAuth; `edit`
/// changes what a case needs.
fn leaf(ca: &Ca, uri: &str, edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "agent");
    p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2100, 1, 1);
    edit(&mut p);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// A certificate for agent `name` from the broker (IssueAgentCertificate), key made here.
async fn issued(env: &mut Env, name: &str) -> (Leaf, String) {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let r = env
        .admin
        .issue_agent_certificate(pb::IssueAgentCertificateRequest {
            name: name.into(),
            csr_pem: csr,
            hours: 0,
        })
        .await
        .unwrap()
        .into_inner();
    (pem_leaf(&r.certificate_pem, key.serialize_pem()), r.serial)
}

fn pem_leaf(cert_pem: &str, key_pem: String) -> Leaf {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .unwrap()
        .to_vec();
    Leaf {
        cert_pem: cert_pem.to_owned(),
        key_pem,
        der,
    }
}

async fn connect_as(env: &Env, cert_pem: &str, key_pem: &str) -> anyhow::Result<AgentClient> {
    let ch = taskpass_proto::connect(
        &env.broker.grpc_url,
        &env.broker.ca_pem,
        Some((cert_pem, key_pem)),
    )
    .await?;
    Ok(AgentClient::new(ch))
}

fn mtls() -> Option<pb::Attestation> {
    Some(pb::Attestation {
        method: Some(pb::attestation::Method::Mtls(pb::MtlsAttestation {})),
    })
}

async fn start_mtls(agent: &mut AgentClient) -> Result<pb::Task, tonic::Status> {
    Ok(agent
        .start_task(pb::StartTaskRequest {
            attestation: mtls(),
            purpose: "mtls test".into(),
            audiences: vec![API.into()],
            scopes: vec!["read".into()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .task
        .unwrap())
}

async fn register_x509(env: &mut Env, name: &str, spiffe_id: &str) -> Result<(), tonic::Status> {
    env.admin
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::Agent {
                name: name.into(),
                owner: "team".into(),
                purpose: "mtls test".into(),
                x509: vec![spiffe_id.into()],
                audiences: vec![API.into()],
                scopes: vec!["read".into(), "write".into()],
                ..Default::default()
            }),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_attests_with_its_certificate_and_its_tokens_are_bound_to_it() {
    let mut env = Env::start().await.unwrap();
    let id = "spiffe://example.org/agent/cert-bot";
    register_x509(&mut env, "cert-bot", id).await.unwrap();
    let ca = broker_ca(&env);
    let (cert, _) = issued(&mut env, "cert-bot").await;
    let mut agent = connect_as(&env, &cert.cert_pem, &cert.key_pem)
        .await
        .unwrap();

    let task = start_mtls(&mut agent).await.unwrap();
    assert_eq!(task.agent_id, id);
    let issued = agent
        .issue_token(pb::IssueTokenRequest {
            attestation: mtls(),
            task_id: task.task_id.clone(),
            audience: API.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let thumbprint = taskpass_core::certificate_thumbprint(&cert.der);
    // One binding per token: no DPoP key on top of the certificate.
    let err = agent
        .issue_token(pb::IssueTokenRequest {
            attestation: mtls(),
            task_id: task.task_id.clone(),
            audience: API.into(),
            dpop_jkt: taskpass_core::sha256_b64url(b"a key"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Introspection reports the binding.
    let info = env
        .val
        .introspect(pb::IntrospectRequest {
            token: issued.access_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(info.active, "{info:?}");
    assert_eq!(info.cnf_x5t_s256, thumbprint);
    assert!(info.cnf_jkt.is_empty());

    // A validator accepts it only with the certificate it is bound to.
    let jwks = env
        .val
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    let verifier = Verifier::new(
        taskpass_testkit::BROKER_ISSUER,
        KeySet::from_json(&jwks).unwrap(),
    );
    let held = verifier
        .verify_held(&issued.access_token, API, Holder::Certificate(&cert.der))
        .unwrap();
    assert_eq!(held.subject, id);
    let other = leaf(&ca, id, |_| {});
    assert_eq!(
        verifier
            .verify_held(&issued.access_token, API, Holder::Certificate(&other.der))
            .unwrap_err(),
        VerifyError::WrongHolder
    );
    assert_eq!(
        verifier.verify(&issued.access_token, API).unwrap_err(),
        VerifyError::ProofRequired
    );

    // Several calls on one connection, and a second connection with the same certificate.
    agent
        .get_task(pb::GetTaskRequest {
            attestation: mtls(),
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap();
    let mut again = connect_as(&env, &cert.cert_pem, &cert.key_pem)
        .await
        .unwrap();
    again
        .complete_task(pb::CompleteTaskRequest {
            attestation: mtls(),
            task_id: task.task_id,
            ..Default::default()
        })
        .await
        .unwrap();

    // OIDC agents' tokens stay unbound.
    register(&mut env.admin, &env.issuer, "oidc-bot", "sub-oidc")
        .await
        .unwrap();
    let t = start(&mut env.agent, &env.issuer, "sub-oidc", &["read"])
        .await
        .unwrap();
    let token = issue(&mut env.agent, &env.issuer, "sub-oidc", &t.task_id)
        .await
        .unwrap();
    assert!(verifier.verify(&token.access_token, API).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_attestation_without_a_certificate_is_unauthenticated() {
    let mut env = Env::start().await.unwrap();
    let err = start_mtls(&mut env.agent).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("no client certificate"), "{err:?}");
}

/// Each bad certificate: UNAUTHENTICATED naming what is wrong, and no task recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_certificate_is_refused_with_its_reason() {
    let mut env = Env::start_with(
        "[limits]\nagent_requests_per_second = 0\nrefusal_audit_interval_seconds = 1\n",
    )
    .await
    .unwrap();
    let id = "spiffe://example.org/agent/cert-bot";
    register_x509(&mut env, "cert-bot", id).await.unwrap();
    let ca = broker_ca(&env);
    let stranger = other_ca("a CA nobody trusts");
    let before = audit_len_without_tallies(&mut env.admin).await.unwrap();

    let cases: Vec<(&str, Leaf, &str)> = vec![
        (
            "expired",
            leaf(&ca, id, |p| {
                p.not_before = date_time_ymd(2020, 1, 1);
                p.not_after = date_time_ymd(2021, 1, 1);
            }),
            "expired",
        ),
        (
            "not yet valid",
            leaf(&ca, id, |p| {
                p.not_before = date_time_ymd(2099, 1, 1);
                p.not_after = date_time_ymd(2100, 1, 1);
            }),
            "not valid yet",
        ),
        (
            "untrusted chain",
            leaf(&stranger, id, |_| {}),
            "does not lead to a certificate authority this broker trusts",
        ),
        (
            "a CA certificate as leaf",
            leaf(&ca, id, |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
            }),
            "is a CA certificate",
        ),
        (
            "no clientAuth",
            leaf(&ca, id, |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }),
            "no clientAuth",
        ),
        (
            "no URI SAN",
            leaf(&ca, id, |p| {
                p.subject_alt_names = vec![SanType::DnsName("agent.example".try_into().unwrap())];
            }),
            "0 URI SANs",
        ),
        (
            "two URI SANs",
            leaf(&ca, id, |p| {
                p.subject_alt_names.push(SanType::URI(
                    "spiffe://example.org/agent/other".try_into().unwrap(),
                ));
            }),
            "2 URI SANs",
        ),
        (
            "not a SPIFFE id",
            leaf(&ca, "https://example.org/agent/cert-bot", |_| {}),
            "is not a SPIFFE id",
        ),
        (
            "not canonical",
            leaf(&ca, "spiffe://EXAMPLE.org/agent/cert-bot", |_| {}),
            "is not a SPIFFE id",
        ),
        (
            "another trust domain",
            leaf(&ca, "spiffe://elsewhere.org/agent/cert-bot", |_| {}),
            "may not vouch for trust domain",
        ),
        (
            "a registered id from a CA that may not vouch for it",
            leaf(&stranger, id, |_| {}),
            "does not lead to a certificate authority",
        ),
        (
            "signed by the broker's CA but never issued through the broker",
            leaf(&ca, id, |_| {}),
            "not issued through this broker",
        ),
    ];
    for (case, cert, expect) in cases {
        let mut agent = connect_as(&env, &cert.cert_pem, &cert.key_pem)
            .await
            .unwrap_or_else(|e| panic!("{case}: the handshake must succeed: {e}"));
        let err = start_mtls(&mut agent).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{case}: {err:?}");
        assert!(err.message().contains(expect), "{case}: {err:?}");
    }

    // SHA-1, made by the openssl command line.
    let tmp = tempfile::tempdir().unwrap();
    let sha1 = openssl_leaf(tmp.path(), &ca, id, "sha1");
    let mut agent = connect_as(&env, &sha1.cert_pem, &sha1.key_pem)
        .await
        .unwrap();
    let err = start_mtls(&mut agent).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("SHA-1"), "{err:?}");

    // An RSA key under 2048 bits in the chain (here an intermediate; a leaf that weak cannot
    // even sign the TLS handshake with an accepted scheme).
    let weak = weak_rsa_chain(tmp.path(), &ca, id);
    let mut agent = connect_as(&env, &weak.cert_pem, &weak.key_pem)
        .await
        .unwrap();
    let err = start_mtls(&mut agent).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("1024-bit RSA key"), "{err:?}");

    // Refusals are tallied, never written one by one; no task was recorded.
    let tasks = env
        .admin
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "{tasks:?}");
    assert_eq!(
        audit_len_without_tallies(&mut env.admin).await.unwrap(),
        before
    );
}

/// A leaf (ECDSA) for `uri` under an RSA-1024 intermediate of `ca`, as one PEM chain.
fn weak_rsa_chain(dir: &Path, ca: &Ca, uri: &str) -> Leaf {
    let w = |name: &str, s: &str| {
        let p = dir.join(name);
        std::fs::write(&p, s).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let ca_pem = w("weak-ca.pem", &ca.pem);
    let ca_key = w("weak-ca-key.pem", &ca.key_pem);
    let int_ext = w(
        "int.cnf",
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,digitalSignature\n",
    );
    let leaf_ext = w(
        "leaf.cnf",
        &format!(
            "subjectAltName=URI:{uri}\nextendedKeyUsage=clientAuth\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        ),
    );
    let path = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-keyout",
        &path("int-key.pem"),
        "-subj",
        "/CN=weak intermediate",
        "-out",
        &path("int.csr"),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &path("int.csr"),
        "-CA",
        &ca_pem,
        "-CAkey",
        &ca_key,
        "-set_serial",
        "77",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        &int_ext,
        "-out",
        &path("int.pem"),
    ]);
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &path("weak-leaf-key.pem"),
        "-subj",
        "/CN=agent",
        "-out",
        &path("weak-leaf.csr"),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &path("weak-leaf.csr"),
        "-CA",
        &path("int.pem"),
        "-CAkey",
        &path("int-key.pem"),
        "-set_serial",
        "78",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        &leaf_ext,
        "-out",
        &path("weak-leaf.pem"),
    ]);
    let leaf = std::fs::read_to_string(path("weak-leaf.pem")).unwrap();
    let int = std::fs::read_to_string(path("int.pem")).unwrap();
    let mut leaf_only = pem_leaf(
        &leaf,
        std::fs::read_to_string(path("weak-leaf-key.pem")).unwrap(),
    );
    leaf_only.cert_pem = format!("{leaf}{int}");
    leaf_only
}

/// A certificate and key made by the openssl command line, signed by `ca`.
fn openssl_leaf(dir: &Path, ca: &Ca, uri: &str, digest: &str) -> Leaf {
    let w = |name: &str, s: &str| {
        let p = dir.join(name);
        std::fs::write(&p, s).unwrap();
        p
    };
    let ca_pem = w("ca.pem", &ca.pem);
    let ca_key = w("ca-key.pem", &ca.key_pem);
    let ext = w(
        "ext.cnf",
        &format!(
            "subjectAltName=URI:{uri}\nextendedKeyUsage=clientAuth\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        ),
    );
    let key = dir.join(format!("{digest}-key.pem"));
    let csr = dir.join(format!("{digest}.csr"));
    let cert = dir.join(format!("{digest}.pem"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p(&key),
        "-subj",
        "/CN=openssl agent",
        "-out",
        &p(&csr),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca_pem),
        "-CAkey",
        &p(&ca_key),
        "-set_serial",
        "4242",
        "-days",
        "2",
        &format!("-{digest}"),
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ]);
    let cert_pem = std::fs::read_to_string(&cert).unwrap();
    let der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    Leaf {
        key_pem: std::fs::read_to_string(&key).unwrap(),
        cert_pem,
        der,
    }
}

/// Interop: a key, CSR and certificate made by openssl are an agent's credential like any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_made_by_openssl_attests() {
    let mut env = Env::start().await.unwrap();
    let id = "spiffe://example.org/agent/openssl-bot";
    register_x509(&mut env, "openssl-bot", id).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (key, csr) = (tmp.path().join("key.pem"), tmp.path().join("req.csr"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .args(["-subj", "/CN=whatever the CSR asks for", "-out"])
        .arg(&csr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = env
        .admin
        .issue_agent_certificate(pb::IssueAgentCertificateRequest {
            name: "openssl-bot".into(),
            csr_pem: std::fs::read_to_string(&csr).unwrap(),
            hours: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spiffe_id, id);
    // openssl reads what the broker issued.
    let cert_path = tmp.path().join("cert.pem");
    std::fs::write(&cert_path, &r.certificate_pem).unwrap();
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("URI:{id}")), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");

    let cert = pem_leaf(&r.certificate_pem, std::fs::read_to_string(&key).unwrap());
    let mut agent = connect_as(&env, &cert.cert_pem, &cert.key_pem)
        .await
        .unwrap();
    let task = start_mtls(&mut agent).await.unwrap();
    assert_eq!(task.agent_id, id);

    // A CSR that does not verify, or of a refused key type, is refused.
    let bad = std::fs::read_to_string(&csr).unwrap().replace('A', "B");
    let err = env
        .admin
        .issue_agent_certificate(pb::IssueAgentCertificateRequest {
            name: "openssl-bot".into(),
            csr_pem: bad,
            hours: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = env
        .admin
        .issue_agent_certificate(pb::IssueAgentCertificateRequest {
            name: "openssl-bot".into(),
            csr_pem: std::fs::read_to_string(&csr).unwrap(),
            hours: 10_000,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("max_certificate_hours"), "{err:?}");
}

/// Renewal over mTLS; revocation refused on the very next call and streamed; offboarding
/// revokes every certificate of the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_and_revoke() {
    let mut env = Env::start().await.unwrap();
    let id = "spiffe://example.org/agent/renewer";
    register_x509(&mut env, "renewer", id).await.unwrap();
    let (first, first_serial) = issued(&mut env, "renewer").await;
    let mut agent = connect_as(&env, &first.cert_pem, &first.key_pem)
        .await
        .unwrap();
    let task = start_mtls(&mut agent).await.unwrap();
    let bound = agent
        .issue_token(pb::IssueTokenRequest {
            attestation: mtls(),
            task_id: task.task_id.clone(),
            audience: API.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let introspect = |val: &mut pb::validation_service_client::ValidationServiceClient<Channel>,
                      token: String| {
        let mut val = val.clone();
        async move {
            val.introspect(pb::IntrospectRequest { token })
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert!(
        introspect(&mut env.val, bound.access_token.clone())
            .await
            .active
    );

    // Renew with the current certificate: a new one for the same identity.
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let renewed = agent
        .renew_certificate(pb::RenewCertificateRequest { csr_pem: csr })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(renewed.serial, first_serial);
    let second = pem_leaf(&renewed.certificate_pem, key.serialize_pem());
    let mut agent2 = connect_as(&env, &second.cert_pem, &second.key_pem)
        .await
        .unwrap();
    assert_eq!(start_mtls(&mut agent2).await.unwrap().agent_id, id);
    // The old one stays valid until it expires.
    start_mtls(&mut agent).await.unwrap();
    // Renewal needs a certificate: none, or an expired one, is refused.
    let err = env
        .agent
        .renew_certificate(pb::RenewCertificateRequest {
            csr_pem: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let ca = broker_ca(&env);
    let expired = leaf(&ca, id, |p| {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    let mut stale = connect_as(&env, &expired.cert_pem, &expired.key_pem)
        .await
        .unwrap();
    let err = stale
        .renew_certificate(pb::RenewCertificateRequest {
            csr_pem: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("expired"), "{err:?}");

    // Revoke the first: the very next call on its open connection is refused.
    let revoked = env
        .admin
        .revoke_certificate(pb::RevokeCertificateRequest {
            serial: first_serial.clone(),
            reason: "key leaked".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let err = start_mtls(&mut agent).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("revoked"), "{err:?}");
    start_mtls(&mut agent2).await.unwrap();
    // ...and streamed to validators.
    let mut stream = env
        .val
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: revoked.sequence - 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ev = stream.message().await.unwrap().unwrap();
    assert_eq!(ev.kind, pb::RevocationKind::Certificate as i32);
    assert_eq!(ev.id, first_serial);
    // The event names the thumbprint its bound tokens carry, and they are inactive now.
    let i = introspect(&mut env.val, bound.access_token.clone()).await;
    assert!(!i.active);
    assert_eq!(i.inactive_reason, "certificate_revoked");
    use rustls_pki_types::pem::PemObject as _;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(first.cert_pem.as_bytes()).unwrap();
    assert_eq!(ev.thumbprint, taskpass_core::certificate_thumbprint(&der));
    // Bad serials are refused, a second revoke too.
    for serial in ["", "XYZ", "ABCDEF", &"a".repeat(41)] {
        let err = env
            .admin
            .revoke_certificate(pb::RevokeCertificateRequest {
                serial: serial.into(),
                reason: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{serial:?}: {err:?}");
    }
    let err = env
        .admin
        .revoke_certificate(pb::RevokeCertificateRequest {
            serial: first_serial.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // Offboarding revokes the rest.
    env.admin
        .set_agent_state(pb::SetAgentStateRequest {
            name: "renewer".into(),
            state: pb::AgentState::Offboarded.into(),
            reason: "gone".into(),
        })
        .await
        .unwrap();
    let certs = env
        .admin
        .list_certificates(pb::ListCertificatesRequest {
            name: "renewer".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .certificates;
    assert_eq!(certs.len(), 2);
    assert!(certs.iter().all(|c| c.revoked), "{certs:?}");
    assert!(start_mtls(&mut agent2).await.is_err());
    // And an offboarded agent gets no new certificate.
    let key = KeyPair::generate().unwrap();
    let err = env
        .admin
        .issue_agent_certificate(pb::IssueAgentCertificateRequest {
            name: "renewer".into(),
            csr_pem: CertificateParams::default()
                .serialize_request(&key)
                .unwrap()
                .pem()
                .unwrap(),
            hours: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

/// A CA trusted for agents (`[[attestation.x509]]`) vouches for its own trust domains only,
/// and never for an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_ca_vouches_for_its_domains_and_never_for_operators() {
    let spire = other_ca("SPIRE server CA");
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("spire-bundle.pem");
    std::fs::write(&bundle, &spire.pem).unwrap();
    let mut env = Env::start_with(&format!(
        "[[attestation.x509]]\nca_file = {:?}\ntrust_domains = [\"spire.example\"]\n",
        bundle.display().to_string()
    ))
    .await
    .unwrap();

    // An agent of the SPIRE trust domain attests with the SPIRE-issued certificate.
    let id = "spiffe://spire.example/ns/prod/sa/billing";
    register_x509(&mut env, "billing", id).await.unwrap();
    let svid = leaf(&spire, id, |_| {});
    let mut agent = connect_as(&env, &svid.cert_pem, &svid.key_pem)
        .await
        .unwrap();
    assert_eq!(
        start_mtls(&mut agent).await.unwrap().agent_id,
        "spiffe://example.org/agent/billing"
    );

    // A certificate the openssl command line made, from that CA: accepted too.
    let made = openssl_leaf(tmp.path(), &spire, id, "sha256");
    let mut agent = connect_as(&env, &made.cert_pem, &made.key_pem)
        .await
        .unwrap();
    assert_eq!(
        start_mtls(&mut agent).await.unwrap().agent_id,
        "spiffe://example.org/agent/billing"
    );

    // It may not vouch for the broker's own domain...
    let own = leaf(&spire, "spiffe://example.org/agent/billing", |_| {});
    let mut agent = connect_as(&env, &own.cert_pem, &own.key_pem).await.unwrap();
    let err = start_mtls(&mut agent).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("may not vouch for trust domain"),
        "{err:?}"
    );

    // ...and an operator certificate it mints opens nothing on the admin API.
    for uri in [
        "spiffe://example.org/operator/admin/mallory",
        "spiffe://spire.example/operator/admin/mallory",
    ] {
        let forged = leaf(&spire, uri, |_| {});
        let ch = taskpass_proto::connect(
            &env.broker.grpc_url,
            &env.broker.ca_pem,
            Some((&forged.cert_pem, &forged.key_pem)),
        )
        .await
        .unwrap();
        let mut admin = pb::admin_service_client::AdminServiceClient::new(ch);
        let err = admin
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{uri}: {err:?}");
    }

    // A SPIFFE id of a domain no CA vouches for cannot even be registered.
    let err = register_x509(&mut env, "nowhere", "spiffe://nowhere.example/agent/x")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // Nor can an operator's identity be bound to an agent.
    let err = register_x509(&mut env, "sneaky", "spiffe://example.org/operator/admin/x")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}
