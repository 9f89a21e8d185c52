//! Token status lists read by an independent implementation: the Python snippet of
//! `docs/validating-tokens.md`, run as written with PyJWT and zlib, fetches the list over real
//! HTTPS from the broker, verifies its signature against the JWKS and decodes each token's bit:
//! revoked tokens (by id, by task, by agent) are 1, live ones 0.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{BROKER_ISSUER, https_get};

/// The first ```python block of the doc: what integrators copy.
fn doc_snippet() -> String {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/validating-tokens.md"),
    )
    .unwrap();
    let start = doc.find("```python\n").unwrap() + "```python\n".len();
    let len = doc[start..].find("```").unwrap();
    doc[start..start + len].to_owned()
}

const HARNESS: &str = r#"
import json, ssl, sys, urllib.request
from snippet import check_token

jwks = json.load(open(sys.argv[1]))
issuer, http_url, ca, audience = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
context = ssl.create_default_context(cafile=ca)

def fetch(url):
    # The tokens name the broker by its issuer; this test reaches it at its loopback address.
    assert url.startswith(issuer + "/statuslists/"), url
    with urllib.request.urlopen(http_url + url[len(issuer):], context=context) as r:
        assert r.headers["Content-Type"] == "application/statuslist+jwt", r.headers
        return r.read()

for line in sys.stdin:
    name, token = line.split()
    try:
        claims = check_token(token, jwks, audience, issuer, fetch)
        print(name, "valid", claims["status"]["status_list"]["idx"])
    except Exception as e:
        print(name, "refused", type(e).__name__, str(e).replace(" ", "_"))
"#;

#[tokio::test]
async fn pyjwt_and_zlib_read_the_status_lists() {
    if !pyjwt_available() {
        return;
    }
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "py-a", "sub-a")
        .await
        .unwrap();
    register(&mut env.admin, &env.issuer, "py-b", "sub-b")
        .await
        .unwrap();
    let mut tokens = Vec::new();
    let mut tasks = Vec::new();
    for (name, subject) in [
        ("live", "sub-a"),
        ("by-id", "sub-a"),
        ("by-task", "sub-a"),
        ("by-agent", "sub-b"),
    ] {
        let task = start(&mut env.agent, &env.issuer, subject, &["read"])
            .await
            .unwrap();
        let t = issue(&mut env.agent, &env.issuer, subject, &task.task_id)
            .await
            .unwrap();
        tokens.push((name, t));
        tasks.push(task);
    }
    env.admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: tokens[1].1.token_id.clone(),
            reason: "leaked".into(),
        })
        .await
        .unwrap();
    env.agent
        .complete_task(pb::CompleteTaskRequest {
            attestation: att(&env.issuer, "sub-a"),
            task_id: tasks[2].task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    env.admin
        .set_agent_state(pb::SetAgentStateRequest {
            name: "py-b".into(),
            state: pb::AgentState::Suspended.into(),
            reason: "test".into(),
        })
        .await
        .unwrap();

    let (_, jwks) = https_get(
        &format!("{}/.well-known/jwks.json", env.broker.http_url),
        &env.broker.ca_pem,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("snippet.py"), doc_snippet()).unwrap();
    std::fs::write(dir.path().join("harness.py"), HARNESS).unwrap();
    std::fs::write(dir.path().join("jwks.json"), &jwks).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &env.broker.ca_pem).unwrap();
    let input: String = tokens
        .iter()
        .map(|(name, t)| format!("{name} {}\n", t.access_token))
        .chain(std::iter::once(format!(
            "forged {}x\n",
            tokens[0].1.access_token
        )))
        .collect();
    let mut child = Command::new("python3")
        .current_dir(dir.path())
        .arg("harness.py")
        .arg("jwks.json")
        .arg(BROKER_ISSUER)
        .arg(&env.broker.http_url)
        .arg("ca.pem")
        .arg(API)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(lines[0][..2], ["live", "valid"], "{stdout}");
    for (i, name) in ["by-id", "by-task", "by-agent"].iter().enumerate() {
        let l = &lines[i + 1];
        assert_eq!(l[..2], [*name, "refused"], "{stdout}");
        assert!(l[3].contains("revoked"), "{stdout}");
    }
    assert_eq!(lines[4][..2], ["forged", "refused"], "{stdout}");
    assert!(
        !lines[4][3].contains("revoked"),
        "a bad signature is not a status: {stdout}"
    );

    // An unknown or non-canonical list is 404.
    for bad in ["7", "01", "x", "-1", "99999999999999999999"] {
        let (status, _) = https_get(
            &format!("{}/statuslists/{bad}", env.broker.http_url),
            &env.broker.ca_pem,
        )
        .await
        .unwrap();
        assert_eq!(status, 404, "{bad}");
    }
}

#[tokio::test]
async fn positions_are_not_given_twice_across_a_restart() {
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "restarter", "sub-r")
        .await
        .unwrap();
    let idx_of = |token: &str| {
        let claims = taskpass_core::jwt::SignedToken::parse(token)
            .unwrap()
            .claims()
            .unwrap();
        let s = claims.status.unwrap().status_list;
        (s.uri, s.idx)
    };
    let task = start(&mut env.agent, &env.issuer, "sub-r", &["read"])
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let t = issue(&mut env.agent, &env.issuer, "sub-r", &task.task_id)
            .await
            .unwrap();
        assert!(seen.insert(idx_of(&t.access_token)));
    }
    env.broker.restart().await.unwrap();
    let mut agent = env.broker.agent().await.unwrap();
    for _ in 0..3 {
        let t = issue(&mut agent, &env.issuer, "sub-r", &task.task_id)
            .await
            .unwrap();
        assert!(
            seen.insert(idx_of(&t.access_token)),
            "a position was given twice"
        );
    }
    assert_eq!(seen.len(), 6);
}

/// The Rust SDK in status-list mode, against the real broker over HTTPS: valid tokens pass,
/// a token revoked by id, by task or by agent is refused once its list's `ttl` has run out,
/// and once the broker is gone and the budget past the `ttl` has run out, every token is.
#[tokio::test]
async fn the_sdk_refuses_revoked_tokens_from_the_lists() {
    use taskpass_verify::{StatusListConfig, Verifier, VerifyError};
    let mut env = Env::start_with("[validation]\nstatus_list_ttl_seconds = 1\n")
        .await
        .unwrap();
    register(&mut env.admin, &env.issuer, "sl-a", "sub-a")
        .await
        .unwrap();
    let task = start(&mut env.agent, &env.issuer, "sub-a", &["read"])
        .await
        .unwrap();
    let other = start(&mut env.agent, &env.issuer, "sub-a", &["read"])
        .await
        .unwrap();
    let by_id = issue(&mut env.agent, &env.issuer, "sub-a", &task.task_id)
        .await
        .unwrap();
    let live = issue(&mut env.agent, &env.issuer, "sub-a", &task.task_id)
        .await
        .unwrap();
    let by_task = issue(&mut env.agent, &env.issuer, "sub-a", &other.task_id)
        .await
        .unwrap();

    let config = StatusListConfig::new(BROKER_ISSUER)
        .with_base_url(env.broker.http_url.clone())
        .with_ca_pem(env.broker.ca_pem.clone())
        .with_staleness_budget(std::time::Duration::from_secs(1));
    let v = Verifier::with_status_lists(config).await.unwrap();
    let none = taskpass_verify::Holder::Nothing;
    for t in [&by_id, &live, &by_task] {
        v.verify_request(&t.access_token, API, none).await.unwrap();
        // Now held: the synchronous call reads the same list.
        v.verify(&t.access_token, API).unwrap();
    }
    let status = v.revocation_status().unwrap();
    assert!(status.current && status.connected, "{status:?}");
    assert_eq!(status.tracked, 1, "one list holds all three");

    env.admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: by_id.token_id.clone(),
            reason: "leaked".into(),
        })
        .await
        .unwrap();
    env.agent
        .complete_task(pb::CompleteTaskRequest {
            attestation: att(&env.issuer, "sub-a"),
            task_id: other.task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Within the list's ttl (1 s) and the broker's rebuild (half of it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let a = v.verify_request(&by_id.access_token, API, none).await;
        let b = v.verify_request(&by_task.access_token, API, none).await;
        if let (Err(a), Err(b)) = (&a, &b) {
            assert_eq!(*a, VerifyError::Revoked("revoked"));
            assert_eq!(*b, VerifyError::Revoked("revoked"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not refused: {a:?} {b:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    v.verify_request(&live.access_token, API, none)
        .await
        .unwrap();
    // A forged token never reaches the lists.
    let forged = format!("{}x", live.access_token);
    let e = v.verify_request(&forged, API, none).await.unwrap_err();
    assert!(
        matches!(e, VerifyError::Malformed | VerifyError::BadSignature),
        "{e:?}"
    );

    // The broker goes away: the list held is used for its ttl plus the budget, then not.
    env.broker.kill9().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        v.verify_request(&live.access_token, API, none)
            .await
            .unwrap_err(),
        VerifyError::Stale
    );
    assert_eq!(
        v.verify(&live.access_token, API).unwrap_err(),
        VerifyError::Stale
    );
    let status = v.revocation_status().unwrap();
    assert!(!status.current, "{status:?}");
    assert!(status.last_error.is_some(), "{status:?}");
    assert!(
        v.metrics_text()
            .contains("taskpass_verifier_revocations_current 0"),
        "{}",
        v.metrics_text()
    );
}

/// The Status List Token check, on the broker's real list: accepted as served; refused
/// when fetched from another uri, for another issuer, when expired, or altered.
#[tokio::test]
async fn a_status_list_token_is_verified_before_it_is_read() {
    use taskpass_verify::{KeySet, StatusList};
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "sl-b", "sub-b")
        .await
        .unwrap();
    let task = start(&mut env.agent, &env.issuer, "sub-b", &["read"])
        .await
        .unwrap();
    issue(&mut env.agent, &env.issuer, "sub-b", &task.task_id)
        .await
        .unwrap();
    let get = |path: &str| {
        let url = format!("{}{path}", env.broker.http_url);
        let ca = env.broker.ca_pem.clone();
        async move { https_get(&url, &ca).await.unwrap().1 }
    };
    let keys = KeySet::from_json(&get("/.well-known/jwks.json").await).unwrap();
    let jwt = get("/statuslists/0").await;
    let uri = format!("{BROKER_ISSUER}/statuslists/0");
    let now = taskpass_core::Clock::now(&taskpass_core::SystemClock);
    let list = StatusList::verify(&jwt, &keys, BROKER_ISSUER, &uri, now, 5).unwrap();
    assert_eq!(list.len(), 16_384);
    assert_eq!(list.status(0), Some(0));
    assert_eq!(list.ttl(), std::time::Duration::from_secs(30));

    let refused = |jwt: &str, issuer: &str, uri: &str, now: i64| {
        StatusList::verify(jwt, &keys, issuer, uri, now, 5).unwrap_err()
    };
    let other_uri = format!("{BROKER_ISSUER}/statuslists/1");
    assert!(
        refused(&jwt, BROKER_ISSUER, &other_uri, now)
            .to_string()
            .contains("sub")
    );
    assert!(
        refused(&jwt, "https://other.example", &uri, now)
            .to_string()
            .contains("issuer")
    );
    assert!(
        refused(&jwt, BROKER_ISSUER, &uri, now + 3600)
            .to_string()
            .contains("expired")
    );
    // A bit flipped in the payload, re-encoded: the signature no longer holds.
    let parts: Vec<&str> = jwt.split('.').collect();
    let payload = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1])
            .unwrap(),
    )
    .unwrap()
    .replace("\"ttl\":30", "\"ttl\":300");
    let altered = format!(
        "{}.{}.{}",
        parts[0],
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload),
        parts[2]
    );
    assert!(
        refused(&altered, BROKER_ISSUER, &uri, now)
            .to_string()
            .contains("signature")
    );
    // An access token is not a status list.
    let t = issue(&mut env.agent, &env.issuer, "sub-b", &task.task_id)
        .await
        .unwrap();
    assert!(
        refused(&t.access_token, BROKER_ISSUER, &uri, now)
            .to_string()
            .contains("type")
    );
    assert!(
        refused("garbage", BROKER_ISSUER, &uri, now)
            .to_string()
            .contains("malformed")
    );
}
