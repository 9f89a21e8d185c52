//! The token signing keys: Ed25519 (`alg` EdDSA, pinned), the JWKS that publishes them, and
//! the verification the broker itself does for introspection.
//!
//! Keys have ids (RFC 7638 thumbprints) and the ring holds one active key plus any number of
//! published ones, so rotation with pre-publication and overlap slots in later.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
// aws-lc-rs rather than ring for the hot path: measured 1.5-3x ring's Ed25519 signing rate on
// these machines (signing was 30% of the broker's CPU under load), with the same API. ring
// remains the TLS provider.
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde_json::json;
use taskpass_core::AccessClaims;

use crate::pki::{PkiError, write_file};

/// The largest token the broker will look at in introspection.
pub use taskpass_core::jwt::MAX_TOKEN_BYTES;

/// One signing key.
struct SigningKey {
    kid: String,
    pair: Ed25519KeyPair,
    header_b64: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A published verification key.
#[derive(Debug, Clone)]
struct PublicKey {
    kid: String,
    x: Vec<u8>,
}

/// The broker's keys.
#[derive(Debug)]
pub struct KeyRing {
    active: SigningKey,
    published: Vec<PublicKey>,
}

/// Why the broker's own verification refused a token; the text is the introspection reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// Not a compact JWS of ours.
    Malformed,
    /// Signed by a key the broker does not hold.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
}

impl TokenProblem {
    /// The introspection `inactive_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
        }
    }
}

fn thumbprint(x: &[u8]) -> String {
    // RFC 7638: the required members in lexicographic order, no whitespace.
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, B64.encode(x));
    B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canonical.as_bytes(),
    ))
}

impl KeyRing {
    /// Loads the signing key from `path`, creating it (0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, PkiError> {
        let pkcs8 = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| {
                    PkiError::Cert {
                        what: "signing key",
                        detail: "the system random generator failed".into(),
                    }
                })?;
                write_file(path, doc.as_ref(), false)?;
                tracing::info!(path = %path.display(), "created the token signing key");
                doc.as_ref().to_vec()
            }
            Err(source) => {
                return Err(PkiError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::from_pkcs8(&pkcs8).map_err(|detail| PkiError::Cert {
            what: "signing key",
            detail: format!("{}: {detail}", path.display()),
        })
    }

    /// A ring with one key from its PKCS#8 bytes.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
        let x = pair.public_key().as_ref().to_vec();
        let kid = thumbprint(&x);
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
        let header_b64 = B64.encode(header.to_string());
        Ok(Self {
            published: vec![PublicKey {
                kid: kid.clone(),
                x,
            }],
            active: SigningKey {
                kid,
                pair,
                header_b64,
            },
        })
    }

    /// The active key's id.
    pub fn active_kid(&self) -> &str {
        &self.active.kid
    }

    /// Signs `claims` with the active key: a compact JWS. A claim set that cannot be
    /// serialised is an error, never a signature over nothing.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, serde_json::Error> {
        let payload = serde_json::to_vec(claims)?;
        let mut out =
            String::with_capacity(self.active.header_b64.len() + payload.len() * 4 / 3 + 100);
        out.push_str(&self.active.header_b64);
        out.push('.');
        B64.encode_string(&payload, &mut out);
        let sig = self.active.pair.sign(out.as_bytes());
        out.push('.');
        B64.encode_string(sig.as_ref(), &mut out);
        Ok(out)
    }

    /// Signs any JSON claims with the active key under header `typ` (a status list, say).
    pub fn sign_json(
        &self,
        typ: &str,
        claims: &serde_json::Value,
    ) -> Result<String, serde_json::Error> {
        let header = json!({"alg": "EdDSA", "typ": typ, "kid": self.active.kid});
        let mut out = B64.encode(serde_json::to_vec(&header)?);
        out.push('.');
        B64.encode_string(serde_json::to_vec(claims)?, &mut out);
        let sig = self.active.pair.sign(out.as_bytes());
        out.push('.');
        B64.encode_string(sig.as_ref(), &mut out);
        Ok(out)
    }

    /// The public keys as a JWKS document.
    pub fn jwks_json(&self) -> String {
        let keys: Vec<_> = self
            .published
            .iter()
            .map(|k| {
                json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(&k.x), "kid": k.kid,
                       "alg": "EdDSA", "use": "sig"})
            })
            .collect();
        json!({ "keys": keys }).to_string()
    }

    /// Verifies a token's signature with the broker's own keys and returns its claims. Expiry
    /// and revocation are the caller's to check.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenProblem> {
        use taskpass_core::jwt::{ProfileError, SignedToken, TokenAlg};
        let signed = SignedToken::parse(token).map_err(|e| match e {
            ProfileError::UnsupportedAlgorithm => TokenProblem::BadSignature,
            _ => TokenProblem::Malformed,
        })?;
        let key = self
            .published
            .iter()
            .find(|k| k.kid == signed.kid)
            .ok_or(TokenProblem::UnknownKey)?;
        // Every key of the broker's is Ed25519: a token naming another algorithm is not ours.
        if signed.alg != TokenAlg::EdDSA {
            return Err(TokenProblem::BadSignature);
        }
        UnparsedPublicKey::new(&ED25519, &key.x)
            .verify(signed.signing_input.as_bytes(), &signed.signature)
            .map_err(|_| TokenProblem::BadSignature)?;
        signed.claims().map_err(|_| TokenProblem::Malformed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "https://b".into(),
            sub: "spiffe://d/agent/a".into(),
            aud: "api".into(),
            exp: 2,
            iat: 1,
            nbf: 1,
            jti: "tok_1".into(),
            client_id: "spiffe://d/agent/a".into(),
            scope: "read".into(),
            txn: "task_1".into(),
            act: None,
            cnf: None,
            status: None,
            approved_by: None,
        }
    }

    #[test]
    fn sign_verify_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.p8");
        let ring = KeyRing::load_or_create(&path).unwrap();
        let again = KeyRing::load_or_create(&path).unwrap();
        assert_eq!(ring.active_kid(), again.active_kid(), "the key persists");
        let t = ring.sign(&claims()).unwrap();
        assert_eq!(again.verify(&t).unwrap(), claims());
        let jwks: serde_json::Value = serde_json::from_str(&ring.jwks_json()).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], ring.active_kid());
        assert!(jwks["keys"][0].get("d").is_none(), "no private part");

        let mut bad = t.clone();
        bad.replace_range(t.len() - 3.., "AAA");
        assert_eq!(ring.verify(&bad).unwrap_err(), TokenProblem::BadSignature);
        let other = KeyRing::from_pkcs8(
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .unwrap()
                .as_ref(),
        )
        .unwrap();
        assert_eq!(
            ring.verify(&other.sign(&claims()).unwrap()).unwrap_err(),
            TokenProblem::UnknownKey
        );
        for m in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert_eq!(
                ring.verify(m).unwrap_err(),
                TokenProblem::Malformed,
                "{m:.20}"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
