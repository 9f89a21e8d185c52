//! `POST /oauth/token` (RFC 6749 §3.2) and the RFC 8414 metadata that advertises it.
//!
//! The body is `application/x-www-form-urlencoded`, at most [`MAX_FORM_BYTES`]; a parameter
//! sent twice is refused (RFC 6749 §3.2), one sent empty is treated as absent, unknown ones
//! are ignored. Every answer is JSON with `Cache-Control: no-store`; bad input is a 400 (401
//! for failed client authentication) with an RFC 6749 §5.2 error, never a 500.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use taskpass_core::{Audience, Purpose, ScopeSet};

use super::{CLIENT_CREDENTIALS, Credential, Grant, JWT_BEARER, TOKEN_EXCHANGE};
use crate::broker::{Broker, Caller};
use crate::error::{ApiError, GrantCredential, OAuthError};

/// Where the token endpoint is served.
pub(crate) const TOKEN_PATH: &str = "/oauth/token";

/// Where the metadata is served (RFC 8414 §3, for an issuer without a path). Not the OpenID
/// Connect name: the broker is no OpenID provider, and a partial document there would mislead.
pub(crate) const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// The largest form body read, bytes: room for a few JWTs.
pub(crate) const MAX_FORM_BYTES: usize = 64 * 1024;

/// How many parameters a form may hold.
const MAX_PARAMETERS: usize = 32;

const JWT_SPIFFE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";
const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// `GET /.well-known/oauth-authorization-server`: RFC 8414 metadata.
pub(crate) async fn metadata(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    let issuer = b.issuer().trim_end_matches('/');
    let doc = serde_json::json!({
        "issuer": b.issuer(),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}{TOKEN_PATH}"),
        "grant_types_supported": [JWT_BEARER, TOKEN_EXCHANGE, CLIENT_CREDENTIALS],
        // `spiffe_jwt`: a JWT-SVID as client_assertion (client_assertion_type jwt-spiffe).
        "token_endpoint_auth_methods_supported": ["none", "tls_client_auth", "spiffe_jwt"],
        "tls_client_certificate_bound_access_tokens": true,
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA", "RS256", "PS256"],
        "response_types_supported": [],
        "scopes_supported": [],
        "access_token_signing_alg_values_supported": [b.signing_alg()],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "authorization_response_iss_parameter_supported": false,
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        doc.to_string(),
    )
}

/// `GET /.well-known/oauth-authorization-server/<path>`: the metadata of an issuer whose URL
/// has that path (RFC 8414 §3.1); any other path is 404.
pub(crate) async fn metadata_inserted(
    State(b): State<Arc<Broker>>,
    axum::extract::Path(path): axum::extract::Path<String>,
) -> Response {
    let issuer_path = b
        .issuer()
        .splitn(4, '/')
        .nth(3)
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    if issuer_path.is_empty() || path.trim_end_matches('/') != issuer_path {
        return (StatusCode::NOT_FOUND, "no such issuer\n").into_response();
    }
    metadata(State(b)).await.into_response()
}

/// `POST /oauth/token`.
pub(crate) async fn token(State(b): State<Arc<Broker>>, req: Request<Body>) -> Response {
    let start = Instant::now();
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_default();
    let span = tracing::info_span!(
        "oauth_token",
        agent_id = tracing::field::Empty,
        task_id = tracing::field::Empty
    );
    let (answer, code) = {
        let r = tracing::Instrument::instrument(answer(&b, &caller, req), span.clone()).await;
        match r {
            Ok(granted) => (granted, tonic::Code::Ok),
            Err(e) => {
                let code = match e.status {
                    401 => tonic::Code::Unauthenticated,
                    429 => tonic::Code::ResourceExhausted,
                    500 => tonic::Code::Internal,
                    503 => tonic::Code::Unavailable,
                    _ => tonic::Code::InvalidArgument,
                };
                span.in_scope(|| {
                    tracing::info!(error = e.error, description = %e.description, "token request refused");
                });
                (error_response(&e), code)
            }
        }
    };
    b.metrics().observe("OAuthToken", code, start.elapsed());
    answer
}

async fn answer(b: &Broker, caller: &Caller, req: Request<Body>) -> Result<Response, OAuthError> {
    let (parts, body) = req.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(OAuthError::bad(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return Err(OAuthError {
            status: 401,
            error: "invalid_client",
            description: "client secrets are not accepted: authenticate with the agent's client certificate (tls_client_auth) or a JWT-SVID client_assertion".into(),
        });
    }
    let body = http_body_util::Limited::new(body, MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|_| OAuthError {
            status: 413,
            error: "invalid_request",
            description: format!("the body is larger than {MAX_FORM_BYTES} bytes"),
        })?
        .to_bytes();
    let form = Form::parse(&body)?;
    let dpop = dpop_proof(b, &parts.headers)?;
    let grant = read_grant(&form, caller, dpop)?;
    let cred = match grant.grant_type {
        CLIENT_CREDENTIALS => GrantCredential::Client,
        TOKEN_EXCHANGE => GrantCredential::Exchanged,
        _ => GrantCredential::Assertion,
    };
    let issued_token_type = (grant.grant_type == TOKEN_EXCHANGE).then_some(TOKEN_TYPE_ACCESS_TOKEN);
    let granted = b
        .grant(caller, grant)
        .await
        .map_err(|e: ApiError| e.oauth(cred))?;
    let mut doc = serde_json::json!({
        "access_token": granted.access_token,
        "token_type": granted.token_type,
        "expires_in": granted.expires_in,
        "scope": granted.scope,
        "task_id": granted.task_id,
        "token_id": granted.token_id,
    });
    if let Some(t) = issued_token_type {
        doc["issued_token_type"] = t.into();
    }
    Ok((StatusCode::OK, no_store(), doc.to_string()).into_response())
}

fn no_store() -> [(header::HeaderName, &'static str); 3] {
    [
        (header::CONTENT_TYPE, "application/json"),
        (header::CACHE_CONTROL, "no-store"),
        (header::PRAGMA, "no-cache"),
    ]
}

fn error_response(e: &OAuthError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let doc = serde_json::json!({"error": e.error, "error_description": e.description});
    let mut resp = (status, no_store(), doc.to_string()).into_response();
    if e.status == 429 || e.status == 503 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    if e.status == 401 {
        // RFC 6749 §5.2: a 401 names the authentication scheme.
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"taskpass\""),
        );
    }
    resp
}

/// The form's parameters, each at most once; empty ones dropped.
struct Form(HashMap<String, String>);

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The names only: the values hold assertions and tokens.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Form {
    fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(body) {
            if v.is_empty() {
                continue;
            }
            if map.len() >= MAX_PARAMETERS {
                return Err(OAuthError::bad(
                    "invalid_request",
                    format!("the request has more than {MAX_PARAMETERS} parameters"),
                ));
            }
            if map.insert(k.clone().into_owned(), v.into_owned()).is_some() {
                // RFC 8707 allows several `resource`s; a Taskpass token has one audience.
                let error = if k == "resource" || k == "audience" {
                    "invalid_target"
                } else {
                    "invalid_request"
                };
                return Err(OAuthError::bad(
                    error,
                    format!("parameter {k} is sent more than once; a token has one {k}"),
                ));
            }
        }
        Ok(Self(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn required(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name).ok_or_else(|| {
            OAuthError::bad("invalid_request", format!("parameter {name} is missing"))
        })
    }
}

/// The DPoP proof, verified but not yet used up (that waits for the grant's authentication).
fn dpop_proof(
    b: &Broker,
    headers: &HeaderMap,
) -> Result<Option<taskpass_verify::DpopProof>, OAuthError> {
    let mut proofs = headers.get_all("dpop").iter();
    let Some(proof) = proofs.next() else {
        return Ok(None);
    };
    let invalid = |d: String| OAuthError::bad("invalid_dpop_proof", d);
    if proofs.next().is_some() {
        return Err(invalid("send one DPoP header".into()));
    }
    let proof = proof
        .to_str()
        .map_err(|_| invalid("the DPoP header is not ASCII".into()))?;
    let url = format!("{}{TOKEN_PATH}", b.issuer().trim_end_matches('/'));
    b.token_proofs
        .token_request(
            &taskpass_verify::DpopRequest {
                proof,
                method: "POST",
                url: &url,
            },
            b.now(),
        )
        .map(Some)
        .map_err(|e| invalid(format!("{e} (htu must be {url})")))
}

/// The grant the form asks for, checked for shape; nothing is verified yet.
fn read_grant(
    form: &Form,
    caller: &Caller,
    dpop: Option<taskpass_verify::DpopProof>,
) -> Result<Grant, OAuthError> {
    let grant_type = form.required("grant_type")?;
    let mut user_token = None;
    let (grant_type, credential) = match grant_type {
        JWT_BEARER => (
            JWT_BEARER,
            Credential::Jwt(form.required("assertion")?.to_owned()),
        ),
        TOKEN_EXCHANGE => {
            let subject = form.required("subject_token")?;
            jwt_token_type(form.required("subject_token_type")?, "subject_token_type")?;
            if let Some(t) = form.get("requested_token_type")
                && t != TOKEN_TYPE_ACCESS_TOKEN
            {
                return Err(OAuthError::bad(
                    "invalid_request",
                    format!("requested_token_type must be {TOKEN_TYPE_ACCESS_TOKEN}"),
                ));
            }
            // RFC 8693 §1.1: with an actor, the subject is the user the agent acts for.
            match form.get("actor_token") {
                Some(actor) => {
                    jwt_token_type(form.required("actor_token_type")?, "actor_token_type")?;
                    user_token = Some(super::Secret(subject.to_owned()));
                    (TOKEN_EXCHANGE, Credential::Jwt(actor.to_owned()))
                }
                None => (TOKEN_EXCHANGE, Credential::Jwt(subject.to_owned())),
            }
        }
        CLIENT_CREDENTIALS => {
            let credential = match (
                form.get("client_assertion_type"),
                form.get("client_assertion"),
            ) {
                (Some(JWT_SPIFFE), Some(a)) => Credential::Jwt(a.to_owned()),
                (Some(JWT_SPIFFE), None) => {
                    return Err(OAuthError::bad(
                        "invalid_request",
                        "parameter client_assertion is missing",
                    ));
                }
                (Some(other), _) => {
                    return Err(OAuthError {
                        status: 401,
                        error: "invalid_client",
                        description: format!(
                            "client_assertion_type {other:?} is not supported: use {JWT_SPIFFE}, or the agent's client certificate"
                        ),
                    });
                }
                (None, Some(_)) => {
                    return Err(OAuthError::bad(
                        "invalid_request",
                        "parameter client_assertion_type is missing",
                    ));
                }
                (None, None) if caller.certs.as_ref().is_some_and(|c| !c.is_empty()) => {
                    Credential::Certificate
                }
                (None, None) => {
                    return Err(OAuthError {
                        status: 401,
                        error: "invalid_client",
                        description: format!(
                            "client_credentials needs client authentication: the agent's client certificate on the connection (tls_client_auth) or a JWT-SVID as client_assertion ({JWT_SPIFFE})"
                        ),
                    });
                }
            };
            (CLIENT_CREDENTIALS, credential)
        }
        other => {
            return Err(OAuthError::bad(
                "unsupported_grant_type",
                format!(
                    "grant_type {other:?} is not supported: use {JWT_BEARER}, {TOKEN_EXCHANGE} or {CLIENT_CREDENTIALS}"
                ),
            ));
        }
    };
    if matches!(&credential, Credential::Jwt(j) if j.len() > crate::broker::MAX_ATTESTATION_BYTES) {
        return Err(OAuthError::bad(
            "invalid_grant",
            format!(
                "the attestation is larger than {} bytes",
                crate::broker::MAX_ATTESTATION_BYTES
            ),
        ));
    }
    let audience = match (form.get("resource"), form.get("audience")) {
        (Some(r), Some(a)) if r != a => {
            return Err(OAuthError::bad(
                "invalid_target",
                "resource and audience name different APIs; a token has one audience",
            ));
        }
        (Some(r), _) | (None, Some(r)) => r,
        (None, None) => {
            return Err(OAuthError::bad(
                "invalid_target",
                "parameter resource is missing: name the API the token is for (RFC 8707)",
            ));
        }
    };
    if audience.contains('#') {
        return Err(OAuthError::bad(
            "invalid_target",
            "resource must not have a fragment (RFC 8707 §2)",
        ));
    }
    let audience = Audience::parse(audience)
        .map_err(|e| OAuthError::bad("invalid_target", format!("resource: {e}")))?;
    let scopes: Vec<&str> = form
        .get("scope")
        .map(|s| s.split(' ').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let scopes = ScopeSet::parse(&scopes)
        .map_err(|e| OAuthError::bad("invalid_scope", format!("scope: {e}")))?;
    let task_id = form.get("task_id").map(str::to_owned);
    if task_id.is_none() && scopes.is_empty() {
        return Err(OAuthError::bad(
            "invalid_scope",
            "parameter scope is missing: name the scopes the token needs (or send task_id to use an open task's)",
        ));
    }
    if task_id.is_some() && user_token.is_some() {
        return Err(OAuthError::bad(
            "invalid_request",
            "actor_token with task_id: the task already says whom it acts for; send subject_token alone",
        ));
    }
    let purpose = form
        .get("purpose")
        .map(|p| {
            Purpose::parse(p)
                .map_err(|e| OAuthError::bad("invalid_request", format!("purpose: {e}")))
        })
        .transpose()?;
    Ok(Grant {
        grant_type,
        credential,
        user_token,
        client_id: form.get("client_id").map(str::to_owned),
        task_id,
        audience,
        scopes,
        purpose,
        dpop,
    })
}

fn jwt_token_type(t: &str, name: &str) -> Result<(), OAuthError> {
    if t == TOKEN_TYPE_JWT || t == TOKEN_TYPE_ID_TOKEN {
        Ok(())
    } else {
        Err(OAuthError::bad(
            "invalid_request",
            format!(
                "{name} must be {TOKEN_TYPE_JWT} or {TOKEN_TYPE_ID_TOKEN}: the platform's workload JWT"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_refused_and_empty_ones_dropped() {
        let f = Form::parse(b"a=1&b=&c=x%20y").unwrap();
        assert_eq!(f.get("a"), Some("1"));
        assert_eq!(f.get("b"), None);
        assert_eq!(f.get("c"), Some("x y"));
        let e = Form::parse(b"scope=a&scope=b").unwrap_err();
        assert_eq!(e.error, "invalid_request");
        let e = Form::parse(b"resource=https://a&resource=https://b").unwrap_err();
        assert_eq!(e.error, "invalid_target");
        let many: String = (0..40).map(|i| format!("p{i}=v&")).collect();
        assert_eq!(
            Form::parse(many.as_bytes()).unwrap_err().error,
            "invalid_request"
        );
    }
}
