//! A tower layer for resource servers (axum, tonic, anything on `http`): it reads the access
//! token (`Authorization: Bearer`, or `Authorization: DPoP` with its `DPoP` proof), verifies
//! it with a [`Verifier`], puts the [`VerifiedToken`] in the request's extensions, and
//! answers what RFC 6750 says otherwise: 401 with `WWW-Authenticate: Bearer
//! error="invalid_token"`, 403 with `error="insufficient_scope"` and the scope needed. It can
//! serve RFC 9728 protected-resource metadata and name it in every 401 (`resource_metadata`),
//! which is what an MCP server must do: an MCP server behind this layer accepts Taskpass
//! tokens with no other code.
//!
//! gRPC requests (`content-type: application/grpc…`) get the same decision as a gRPC status
//! (UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE) in a trailers-only response.
//!
//! When the verifier cannot vouch for any token (its revocation state is stale, the broker is
//! unreachable for the fallback) the answer is 503 with `Retry-After`: not served, and not
//! blamed on the token, so clients do not throw good tokens away.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};

use crate::{DpopRequest, Holder, VerifiedToken, Verifier, VerifyError};

/// The path RFC 9728 puts protected-resource metadata at.
pub const RESOURCE_METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The body of this layer's responses: the inner service's, or its own.
pub type LayerBody<B> = Either<B, Full<Bytes>>;

/// The client certificate (DER) the connection presented, for tokens bound to it
/// (`cnf.x5t#S256`). A server that terminates mTLS itself inserts it into the request's
/// extensions before this layer runs; without it, certificate-bound tokens are refused.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Vec<u8>);

/// RFC 9728 metadata for this resource server.
#[derive(Debug, Clone)]
pub struct ResourceMetadata {
    /// `resource`: this API's identifier, its audience, e.g. `https://api.example.org`.
    pub resource: String,
    /// `authorization_servers`: the broker's issuer.
    pub authorization_servers: Vec<String>,
    /// `scopes_supported`.
    pub scopes_supported: Vec<String>,
}

#[derive(Debug, Clone)]
struct Settings {
    verifier: Arc<Verifier>,
    audience: String,
    scopes: Vec<String>,
    metadata: Option<ResourceMetadata>,
    /// scheme://host[:port] of the audience, to rebuild a DPoP proof's `htu`.
    origin: String,
}

/// Verifies every request's access token before the inner service sees it.
#[derive(Debug, Clone)]
pub struct BearerLayer(Arc<Settings>);

impl BearerLayer {
    /// Tokens must be for `audience` (this API, e.g. `https://api.example.org`).
    pub fn new(verifier: Arc<Verifier>, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        let origin = origin_of(&audience);
        Self(Arc::new(Settings {
            verifier,
            audience,
            scopes: Vec::new(),
            metadata: None,
            origin,
        }))
    }

    /// Every request also needs `scope` (repeat for several): 403 `insufficient_scope`
    /// otherwise.
    #[must_use]
    pub fn require_scope(self, scope: impl Into<String>) -> Self {
        self.edit(|s| s.scopes.push(scope.into()))
    }

    /// Serves `metadata` at [`RESOURCE_METADATA_PATH`] (followed by the resource's path, if it
    /// has one, as RFC 9728 §3.1 says; no token needed) and names it in every 401.
    #[must_use]
    pub fn with_resource_metadata(self, metadata: ResourceMetadata) -> Self {
        self.edit(|s| s.metadata = Some(metadata))
    }

    fn edit(self, f: impl FnOnce(&mut Settings)) -> Self {
        let mut s = Arc::unwrap_or_clone(self.0);
        f(&mut s);
        Self(Arc::new(s))
    }
}

impl<S> tower::Layer<S> for BearerLayer {
    type Service = Bearer<S>;

    fn layer(&self, inner: S) -> Bearer<S> {
        Bearer {
            inner,
            settings: Arc::clone(&self.0),
        }
    }
}

/// The service [`BearerLayer`] makes.
#[derive(Debug, Clone)]
pub struct Bearer<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S, B, ResBody> tower::Service<Request<B>> for Bearer<S>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<LayerBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The service that was polled ready serves this request; a fresh clone waits for the
        // next (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let settings = Arc::clone(&self.settings);
        Box::pin(async move {
            if let Some(meta) = &settings.metadata
                && req.uri().path() == metadata_path(&meta.resource)
            {
                return Ok(metadata_response(meta));
            }
            let grpc = is_grpc(&req);
            let decision = match presented(&settings, &req) {
                Ok(p) => authorize(&settings, p).await,
                Err(d) => Err(d),
            };
            match decision {
                Ok(token) => {
                    req.extensions_mut().insert(token);
                    let res = inner.call(req).await?;
                    Ok(res.map(Either::Left))
                }
                Err(denial) => Ok(denial.response(&settings, grpc)),
            }
        })
    }
}

/// Why a request is not served.
#[derive(Debug)]
enum Denial {
    /// No token at all.
    NoToken,
    /// A token that is not acceptable.
    Invalid(VerifyError),
    /// A good token without a scope the API needs.
    Scope(String),
    /// The verifier cannot vouch for any token now.
    Unavailable(VerifyError),
    /// The request is malformed (two Authorization headers, a bad scheme).
    BadRequest(&'static str),
}

/// What the request presented, read before any await (the body need not be `Sync`).
struct Presented {
    token: String,
    dpop_scheme: bool,
    proof: Option<String>,
    method: String,
    url: String,
    certificate: Option<Vec<u8>>,
}

fn presented<B>(settings: &Settings, req: &Request<B>) -> Result<Presented, Denial> {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Denial::NoToken);
    };
    if values.next().is_some() {
        return Err(Denial::BadRequest("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| Denial::BadRequest("Authorization is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(Denial::BadRequest("Authorization has no scheme"))?;
    let token = token.trim();
    let dpop_scheme = scheme.eq_ignore_ascii_case("DPoP");
    if !scheme.eq_ignore_ascii_case("Bearer") && !dpop_scheme {
        return Err(Denial::BadRequest(
            "Authorization scheme is not Bearer or DPoP",
        ));
    }
    if token.is_empty() {
        return Err(Denial::NoToken);
    }
    let mut proofs = req.headers().get_all("dpop").iter();
    let proof = match (proofs.next(), proofs.next()) {
        (Some(p), None) => Some(
            p.to_str()
                .map_err(|_| Denial::Invalid(VerifyError::InvalidProof("header")))?
                .to_owned(),
        ),
        (Some(_), Some(_)) => return Err(Denial::Invalid(VerifyError::InvalidProof("header"))),
        // RFC 9449 §7.1: the DPoP scheme needs its proof.
        (None, _) if dpop_scheme => return Err(Denial::Invalid(VerifyError::ProofRequired)),
        (None, _) => None,
    };
    Ok(Presented {
        token: token.to_owned(),
        dpop_scheme,
        proof,
        method: req.method().as_str().to_owned(),
        url: format!("{}{}", settings.origin, req.uri().path()),
        certificate: req
            .extensions()
            .get::<ClientCertificate>()
            .map(|c| c.0.clone()),
    })
}

async fn authorize(settings: &Settings, p: Presented) -> Result<VerifiedToken, Denial> {
    let holder = match (&p.proof, &p.certificate) {
        (Some(proof), _) => Holder::Dpop(DpopRequest {
            proof,
            method: &p.method,
            url: &p.url,
        }),
        (None, Some(c)) => Holder::Certificate(c),
        (None, None) => Holder::Nothing,
    };
    let verified = settings
        .verifier
        .verify_request(&p.token, &settings.audience, holder)
        .await
        .map_err(|e| match e {
            VerifyError::Stale | VerifyError::Unavailable(_) => Denial::Unavailable(e),
            e => Denial::Invalid(e),
        })?;
    // RFC 9449 §7.1: a DPoP-bound token comes with the DPoP scheme, never as a bearer token.
    if matches!(
        verified.claims.cnf,
        Some(taskpass_core::Confirmation::Key(_))
    ) && !p.dpop_scheme
    {
        return Err(Denial::Invalid(VerifyError::InvalidProof("scheme")));
    }
    if let Some(missing) = settings.scopes.iter().find(|s| !verified.has_scope(s)) {
        return Err(Denial::Scope(missing.clone()));
    }
    Ok(verified)
}

impl Denial {
    fn response<B>(&self, settings: &Settings, grpc: bool) -> Response<LayerBody<B>> {
        let meta = settings
            .metadata
            .as_ref()
            .map(|m| format!("{}{}", origin_of(&m.resource), metadata_path(&m.resource)));
        let mut challenge = String::from("Bearer");
        let mut param = |name: &str, value: &str| {
            let sep = if challenge.len() > "Bearer".len() {
                ","
            } else {
                ""
            };
            challenge.push_str(&format!("{sep} {name}=\"{}\"", quote(value)));
        };
        let (status, code, description) = match self {
            Self::NoToken => (
                StatusCode::UNAUTHORIZED,
                None,
                "an access token is required".to_owned(),
            ),
            Self::BadRequest(why) => (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                (*why).to_owned(),
            ),
            Self::Invalid(e) => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                e.to_string(),
            ),
            Self::Scope(s) => (
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                format!("the token does not grant {s}"),
            ),
            Self::Unavailable(e) => (StatusCode::SERVICE_UNAVAILABLE, None, e.to_string()),
        };
        if let Some(code) = code {
            param("error", code);
            param("error_description", &description);
        }
        if let Self::Scope(s) = self {
            param("scope", s);
        }
        if let Some(m) = &meta {
            param("resource_metadata", m);
        }
        let mut builder = Response::builder();
        if status != StatusCode::SERVICE_UNAVAILABLE {
            builder = builder.header(header::WWW_AUTHENTICATE, challenge);
        } else {
            builder = builder.header(header::RETRY_AFTER, "1");
        }
        let response = if grpc {
            let grpc_status = match status {
                StatusCode::UNAUTHORIZED => "16",
                StatusCode::FORBIDDEN => "7",
                StatusCode::BAD_REQUEST => "3",
                _ => "14",
            };
            builder
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", grpc_status)
                .header(
                    "grpc-message",
                    HeaderValue::from_str(&percent_encode(&description))
                        .unwrap_or_else(|_| HeaderValue::from_static("denied")),
                )
                .body(Either::Right(Full::new(Bytes::new())))
        } else {
            let body = serde_json::json!({
                "error": code.unwrap_or(if status == StatusCode::SERVICE_UNAVAILABLE {
                    "temporarily_unavailable"
                } else {
                    "unauthorized"
                }),
                "error_description": description,
            });
            builder
                .status(status)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CACHE_CONTROL, "no-store")
                .body(Either::Right(Full::new(Bytes::from(body.to_string()))))
        };
        response.unwrap_or_else(|_| {
            let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
    }
}

fn metadata_response<B>(m: &ResourceMetadata) -> Response<LayerBody<B>> {
    let body = serde_json::json!({
        "resource": m.resource,
        "authorization_servers": m.authorization_servers,
        "scopes_supported": m.scopes_supported,
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": ["EdDSA", "ES256"],
    });
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Where RFC 9728 §3.1 puts a resource's metadata: the well-known path, then the resource's own
/// path if it has one (`https://api.example/v1` → `/.well-known/oauth-protected-resource/v1`).
fn metadata_path(resource: &str) -> String {
    let path = &resource[origin_of(resource).len()..];
    let path = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_end_matches('/');
    format!("{RESOURCE_METADATA_PATH}{path}")
}

/// `scheme://host[:port]` of a URL (the whole string when it has no path).
fn origin_of(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url[..after_scheme + i].to_owned(),
        None => url.to_owned(),
    }
}

/// A quoted-string's content: no `"` or `\` unescaped, no control characters.
fn quote(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// gRPC's `grpc-message` encoding: percent-encode what is not printable ASCII.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_quoting() {
        assert_eq!(origin_of("https://api.example/v1/x"), "https://api.example");
        assert_eq!(
            origin_of("https://api.example:8443"),
            "https://api.example:8443"
        );
        assert_eq!(quote("a\"b\\c\n"), "a\\\"b\\\\c");
        assert_eq!(percent_encode("50% off é"), "50%25 off %C3%A9");
    }
}
