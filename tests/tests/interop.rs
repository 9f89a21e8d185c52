//! Tokens verify with an independent JOSE implementation: Python's PyJWT (with
//! `cryptography`), installed by `tests/run.sh`.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use taskpass_e2e::*;
use taskpass_testkit::{BROKER_ISSUER, https_get};

const SCRIPT: &str = r#"
import json, sys, jwt
jwks = json.load(open(sys.argv[1]))
token = open(sys.argv[2]).read().strip()
header = jwt.get_unverified_header(token)
assert header["alg"] == "EdDSA", header
assert header["typ"] == "at+jwt", header
key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["EdDSA"], audience=sys.argv[3],
                    issuer=sys.argv[4],
                    options={"require": ["exp", "iat", "nbf", "jti", "sub", "aud", "iss"]})
print(json.dumps(claims))
"#;

#[tokio::test]
async fn pyjwt_verifies_broker_tokens() {
    if !pyjwt_available() {
        return;
    }
    let Env {
        issuer,
        broker,
        mut admin,
        mut agent,
        ..
    } = Env::start().await.unwrap();
    let a = register(&mut admin, &issuer, "py", "sub-py").await.unwrap();
    let task = start(&mut agent, &issuer, "sub-py", &["read"])
        .await
        .unwrap();
    let tok = issue(&mut agent, &issuer, "sub-py", &task.task_id)
        .await
        .unwrap();
    let (_, jwks) = https_get(
        &format!("{}/.well-known/jwks.json", broker.http_url),
        &broker.ca_pem,
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (jwks_path, tok_path, bad_path, script) = (
        dir.path().join("jwks.json"),
        dir.path().join("token"),
        dir.path().join("bad"),
        dir.path().join("verify.py"),
    );
    std::fs::write(&jwks_path, &jwks).unwrap();
    std::fs::write(&tok_path, &tok.access_token).unwrap();
    let mut bad = tok.access_token.clone();
    let n = bad.len();
    bad.replace_range(
        n - 4..,
        if bad.ends_with("AAAA") {
            "BBBB"
        } else {
            "AAAA"
        },
    );
    std::fs::write(&bad_path, bad).unwrap();
    std::fs::write(&script, SCRIPT).unwrap();

    let run = |token: &std::path::Path, aud: &str| {
        Command::new("python3")
            .arg(&script)
            .arg(&jwks_path)
            .arg(token)
            .arg(aud)
            .arg(BROKER_ISSUER)
            .output()
            .unwrap()
    };
    let out = run(&tok_path, API);
    assert!(
        out.status.success(),
        "PyJWT refused a broker token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["client_id"], a.agent_id);
    assert_eq!(claims["txn"], task.task_id);
    assert_eq!(claims["jti"], tok.token_id);
    assert!(
        !run(&bad_path, API).status.success(),
        "PyJWT accepted a tampered token"
    );
    assert!(
        !run(&tok_path, "https://other.example").status.success(),
        "PyJWT accepted the wrong audience"
    );
}
