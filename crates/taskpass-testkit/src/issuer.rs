//! A real OIDC issuer on loopback, over HTTPS, for integration tests and `taskpass demo`.
//!
//! It serves `/.well-known/openid-configuration` (only `issuer` and `jwks_uri`, like a
//! Kubernetes service-account issuer) and `/jwks`, and mints tokens signed with RSA-2048, P-256
//! or Ed25519 keys — or deliberately broken ones, for forging tests. Signing uses aws-lc-rs
//! (RSA) and ring (ECDSA, Ed25519) directly, independently of the verifier's JWT library.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::signature::KeyPair as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::pki::TestCa;

/// How [`DevIssuer::token_with`] signs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, the current RSA-2048 key.
    #[default]
    Rs256,
    /// ECDSA P-256 with SHA-256, the current P-256 key.
    Es256,
    /// Ed25519, the current Ed25519 key.
    EdDsa,
    /// Unsigned: `"alg":"none"` and an empty signature.
    None_,
    /// `"alg":"HS256"`, HMAC keyed with the current RSA public key's PEM: the classic
    /// algorithm-confusion forgery.
    Hs256WithPublicKey,
}

/// Full control over a token, for forging tests.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    /// How to sign.
    pub alg: TokenAlg,
    /// The `kid` header; `None` means the signing key's own kid (the real one even when
    /// `sign_with_foreign_key`).
    pub kid: Option<String>,
    /// Leave the `kid` header out entirely.
    pub omit_kid: bool,
    /// Header parameters added last (they override `alg`, `typ` and `kid`).
    pub extra_header: Map<String, Value>,
    /// The claims, exactly as given.
    pub claims: Value,
    /// Sign with a key of the same type that is not in the JWKS, while claiming the real kid.
    pub sign_with_foreign_key: bool,
}

/// A private key that signs JWS.
enum Signer {
    Rsa(aws_lc_rs::signature::RsaKeyPair),
    Ec(ring::signature::EcdsaKeyPair),
    Ed(ring::signature::Ed25519KeyPair),
}

struct SigningKey {
    kid: String,
    signer: Signer,
    /// The public JWK (with `kid`, `alg`, `use`).
    jwk: Value,
    /// SPKI PEM of an RSA key (the HMAC secret of the confusion attack).
    public_pem: Option<String>,
}

impl SigningKey {
    fn rsa(kid: String) -> anyhow::Result<Self> {
        let pair = aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
        let public = pair.public_key();
        let parts = aws_lc_rs::signature::RsaPublicKeyComponents::<Vec<u8>>::from(public);
        let spki = public
            .as_der()
            .map_err(|_| anyhow::anyhow!("RSA public key encoding"))?;
        let jwk = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&parts.n), "e": URL_SAFE_NO_PAD.encode(&parts.e),
        });
        Ok(Self {
            kid,
            signer: Signer::Rsa(pair),
            jwk,
            public_pem: Some(pem("PUBLIC KEY", spki.as_ref())),
        })
    }

    fn ec(kid: String) -> anyhow::Result<Self> {
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map_err(|_| anyhow::anyhow!("P-256 key generation failed"))?;
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("P-256 key parsing failed"))?;
        let point = pair.public_key().as_ref();
        let (x, y) = point.get(1..).unwrap_or_default().split_at(32);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        });
        Ok(Self {
            kid,
            signer: Signer::Ec(pair),
            jwk,
            public_pem: None,
        })
    }

    fn ed(kid: String) -> anyhow::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("Ed25519 key generation failed"))?;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("Ed25519 key parsing failed"))?;
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        });
        Ok(Self {
            kid,
            signer: Signer::Ed(pair),
            jwk,
            public_pem: None,
        })
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.signer {
            Signer::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                let rng = aws_lc_rs::rand::SystemRandom::new();
                // Signing with a valid in-memory key only fails on allocation failure.
                if pair
                    .sign(
                        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                        &rng,
                        message,
                        &mut sig,
                    )
                    .is_err()
                {
                    sig.clear();
                }
                sig
            }
            Signer::Ec(pair) => pair
                .sign(&ring::rand::SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .unwrap_or_default(),
            Signer::Ed(pair) => pair.sign(message).as_ref().to_vec(),
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every key: the published ones (the last of each kind signs) and foreign look-alikes.
struct Keys {
    rsa: Vec<SigningKey>,
    ec: Vec<SigningKey>,
    ed: Vec<SigningKey>,
    foreign_rsa: SigningKey,
    foreign_ec: SigningKey,
    foreign_ed: SigningKey,
}

impl Keys {
    fn generate() -> anyhow::Result<Self> {
        Ok(Self {
            rsa: vec![SigningKey::rsa("rsa-1".into())?],
            ec: vec![SigningKey::ec("ec-1".into())?],
            ed: vec![SigningKey::ed("ed-1".into())?],
            foreign_rsa: SigningKey::rsa("foreign-rsa".into())?,
            foreign_ec: SigningKey::ec("foreign-ec".into())?,
            foreign_ed: SigningKey::ed("foreign-ed".into())?,
        })
    }

    fn current(list: &[SigningKey]) -> &SigningKey {
        // Each list starts with one key and only grows.
        #[expect(clippy::indexing_slicing, reason = "never empty")]
        &list[list.len() - 1]
    }

    /// The JWKS: the signature keys, plus an encryption key and a symmetric key a verifier
    /// must skip.
    fn jwks(&self) -> Value {
        let mut keys: Vec<Value> = self
            .rsa
            .iter()
            .chain(&self.ec)
            .chain(&self.ed)
            .map(|k| k.jwk.clone())
            .collect();
        let mut enc = self.foreign_ec.jwk.clone();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc-1");
        if let Some(m) = enc.as_object_mut() {
            m.remove("alg");
        }
        keys.push(enc);
        keys.push(json!({"kty": "oct", "kid": "hmac-1", "k": URL_SAFE_NO_PAD.encode(b"not a signing key")}));
        json!({ "keys": keys })
    }
}

struct Shared {
    issuer: String,
    keys: RwLock<Keys>,
    fetches: AtomicU64,
}

impl Shared {
    fn keys(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A loopback OIDC issuer over HTTPS, stopped when dropped.
pub struct DevIssuer {
    shared: Arc<Shared>,
    ca_pem: String,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.shared.issuer)
            .finish_non_exhaustive()
    }
}

impl Drop for DevIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl DevIssuer {
    /// Starts an issuer on `127.0.0.1:0` with its own CA; its URL is `https://127.0.0.1:<port>`
    /// and its certificate names `127.0.0.1` and `localhost`.
    pub async fn start() -> anyhow::Result<DevIssuer> {
        let ca = TestCa::new("taskpass dev issuer CA")?;
        let (cert_pem, key_pem) =
            ca.server_cert(&["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])?;
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("reading the issuer certificate")?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("reading the issuer key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let keys = tokio::task::spawn_blocking(Keys::generate).await??;
        let shared = Arc::new(Shared {
            issuer: format!("https://127.0.0.1:{}", addr.port()),
            keys: RwLock::new(keys),
            fetches: AtomicU64::new(0),
        });
        let server = tokio::spawn(serve(
            listener,
            TlsAcceptor::from(Arc::new(tls)),
            shared.clone(),
        ));
        Ok(DevIssuer {
            shared,
            ca_pem: ca.ca_pem(),
            addr,
            server,
        })
    }

    /// The issuer URL, the tokens' `iss`.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the JWKS is served.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.shared.issuer)
    }

    /// The CA certificate (PEM) that the issuer's server certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes [`DevIssuer::ca_pem`] to `path`.
    pub fn write_ca(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, &self.ca_pem)
    }

    /// The JWKS as served now, for `jwks_file` configurations.
    pub fn jwks_json(&self) -> String {
        self.shared.keys().jwks().to_string()
    }

    /// How many times `/jwks` has been served.
    pub fn jwks_fetches(&self) -> u64 {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// Standard claims: `iss`, `sub`, `aud`, `iat` and `nbf` now, `exp` in `ttl_secs`.
    pub fn claims(&self, subject: &str, audience: &str, ttl_secs: i64) -> Value {
        let now = unix_now();
        json!({
            "iss": self.shared.issuer, "sub": subject, "aud": audience,
            "iat": now, "nbf": now, "exp": now + ttl_secs,
        })
    }

    /// A valid RS256 token for `subject` and `audience`, living `ttl_secs`.
    pub fn token(&self, subject: &str, audience: &str, ttl_secs: i64) -> String {
        self.token_with(TokenSpec {
            claims: self.claims(subject, audience, ttl_secs),
            ..TokenSpec::default()
        })
    }

    /// A token exactly as `spec` says.
    pub fn token_with(&self, spec: TokenSpec) -> String {
        let keys = self.shared.keys();
        let (name, real, foreign) = match spec.alg {
            TokenAlg::Rs256 | TokenAlg::None_ | TokenAlg::Hs256WithPublicKey => {
                ("RS256", Keys::current(&keys.rsa), &keys.foreign_rsa)
            }
            TokenAlg::Es256 => ("ES256", Keys::current(&keys.ec), &keys.foreign_ec),
            TokenAlg::EdDsa => ("EdDSA", Keys::current(&keys.ed), &keys.foreign_ed),
        };
        let name = match spec.alg {
            TokenAlg::None_ => "none",
            TokenAlg::Hs256WithPublicKey => "HS256",
            _ => name,
        };
        let key = if spec.sign_with_foreign_key {
            foreign
        } else {
            real
        };
        let mut header = Map::new();
        header.insert("alg".into(), json!(name));
        header.insert("typ".into(), json!("JWT"));
        if !spec.omit_kid {
            header.insert(
                "kid".into(),
                json!(spec.kid.unwrap_or_else(|| real.kid.clone())),
            );
        }
        header.extend(spec.extra_header);
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
            URL_SAFE_NO_PAD.encode(spec.claims.to_string())
        );
        let signature = match spec.alg {
            TokenAlg::None_ => Vec::new(),
            TokenAlg::Hs256WithPublicKey => {
                let secret = key.public_pem.as_deref().unwrap_or_default();
                let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
                ring::hmac::sign(&hmac, signing_input.as_bytes())
                    .as_ref()
                    .to_vec()
            }
            _ => key.sign(signing_input.as_bytes()),
        };
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// Adds a new key of each type (new kids) and signs with them from now on; the JWKS keeps
    /// the old keys too.
    pub fn rotate(&self) {
        let mut keys = self
            .shared
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let n = keys.rsa.len() + 1;
        // Key generation only fails if the system RNG does, which no test survives anyway.
        match (
            SigningKey::rsa(format!("rsa-{n}")),
            SigningKey::ec(format!("ec-{n}")),
            SigningKey::ed(format!("ed-{n}")),
        ) {
            (Ok(rsa), Ok(ec), Ok(ed)) => {
                keys.rsa.push(rsa);
                keys.ec.push(ec);
                keys.ed.push(ed);
            }
            _ => tracing::error!("dev issuer key rotation failed"),
        }
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    // Connections live in the set, so aborting this task closes them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let acceptor = acceptor.clone();
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let service = hyper::service::service_fn(move |request| {
                            let response = route(&shared, &request);
                            async move { Ok::<_, Infallible>(response) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn route(shared: &Shared, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let body = match (request.method(), request.uri().path()) {
        (&Method::GET, "/.well-known/openid-configuration") => {
            json!({"issuer": shared.issuer, "jwks_uri": format!("{}/jwks", shared.issuer)})
        }
        (&Method::GET, "/jwks") => {
            shared.fetches.fetch_add(1, Ordering::SeqCst);
            shared.keys().jwks()
        }
        _ => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
