"""The token endpoint driven by an independent OAuth client library (authlib): discovery by
RFC 8414, the jwt-bearer grant and token exchange, and its RFC 6749 errors."""

from __future__ import annotations

import ssl

import httpx
import pytest
from authlib.integrations.httpx_client import OAuth2Client, OAuthError

import taskpass

from conftest import API, OTHER_API

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def discover(broker) -> dict:
    ctx = ssl.create_default_context(cafile=broker.ca)
    meta = httpx.get(broker.url + "/.well-known/oauth-authorization-server", verify=ctx).json()
    # RFC 8414 §3.3: the issuer is the URL the metadata was asked of.
    assert meta["issuer"] == broker.url
    return meta


def oauth_client(broker, name):
    # A public client: the grant's assertion authenticates it; client_id names the agent.
    return OAuth2Client(
        client_id=name,
        token_endpoint_auth_method="none",
        verify=ssl.create_default_context(cafile=broker.ca),
    )


async def test_authlib_gets_tokens_with_each_grant(broker, agent):
    name, subject = agent
    meta = discover(broker)
    assert JWT_BEARER in meta["grant_types_supported"]
    with oauth_client(broker, name) as client:
        token = client.fetch_token(
            meta["token_endpoint"],
            grant_type=JWT_BEARER,
            assertion=broker.attestation(subject),
            resource=API,
            scope="read",
        )
        assert token["token_type"] == "Bearer"
        assert token["scope"] == "read"
        assert token["expires_at"] > 0
        claims = await taskpass.AsyncVerifier(broker.url, API, ca=broker.ca).verify(token["access_token"])
        assert claims.task_id == token["task_id"]

        exchanged = client.fetch_token(
            meta["token_endpoint"],
            grant_type=TOKEN_EXCHANGE,
            subject_token=broker.attestation(subject),
            subject_token_type="urn:ietf:params:oauth:token-type:jwt",
            resource=API,
            scope="read write",
        )
        assert exchanged["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
        assert exchanged["scope"] == "read write"


@pytest.mark.parametrize(
    "params, error",
    [
        ({"resource": API, "scope": "admin"}, "invalid_scope"),
        ({"resource": OTHER_API, "scope": "read"}, "invalid_target"),
        ({"scope": "read"}, "invalid_target"),
        ({"resource": API, "scope": "read", "assertion": "garbage"}, "invalid_grant"),
        ({"resource": API, "scope": "read", "grant_type": "password"}, "unsupported_grant_type"),
        ({"resource": API, "scope": "read", "client_id": "someone-else"}, "invalid_client"),
    ],
)
def test_authlib_reads_the_errors(broker, agent, params, error):
    name, subject = agent
    meta = discover(broker)
    args = {"grant_type": JWT_BEARER, "assertion": broker.attestation(subject), **params}
    with oauth_client(broker, args.pop("client_id", name)) as client:
        with pytest.raises(OAuthError) as e:
            client.fetch_token(meta["token_endpoint"], **args)
    assert e.value.error == error, e.value
    assert e.value.description
