"""MCP end to end with the official Python SDK: an MCP server whose tokens are checked by
``taskpass.mcp.TaskpassTokenVerifier``, a client whose token comes from a Taskpass task. The
tool call succeeds while the task is open and is refused with 401 within a second after it
completes."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx2
import pytest
import uvicorn
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

import taskpass
from taskpass.mcp import TaskpassTokenVerifier


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def mcp_server(broker):
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    verifier = taskpass.AsyncVerifier(broker.url, resource, ca=broker.ca)
    server = MCPServer(
        "tickets",
        token_verifier=TaskpassTokenVerifier(verifier),
        auth=AuthSettings(
            issuer_url=broker.url,
            resource_server_url=resource,
            required_scopes=["read"],
            validate_token_resource=True,
        ),
    )

    @server.tool()
    def whoami() -> str:
        """Who is calling."""
        tok = get_access_token()
        return tok.client_id if tok else "nobody"

    web = uvicorn.Server(uvicorn.Config(server.streamable_http_app(), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(web.serve())
    while not web.started:
        await asyncio.sleep(0.02)
    yield resource
    web.should_exit = True
    await task
    await verifier.aclose()


async def call(resource: str, auth) -> str:
    async with httpx2.AsyncClient(auth=auth) as http:
        async with Client(streamable_http_client(resource, http_client=http)) as c:
            r = await c.call_tool("whoami", {})
            return r.content[0].text


async def test_an_mcp_tool_call_lives_as_long_as_the_task(broker, mcp_server):
    resource = mcp_server
    name, subject = "py-mcp-" + str(int(time.time() * 1000) % 100000), "sub-mcp"
    broker.register(name, subject + name, scopes=("read",), audiences=(resource,))
    async with taskpass.AsyncClient(broker.url, lambda: broker.attestation(subject + name), ca=broker.ca) as client:
        task = await client.start_task(purpose="mcp call", audiences=[resource], scopes=["read"])
        auth = task.httpx_auth(resource)
        assert (await call(resource, auth)).endswith("/agent/" + name)
        # The server advertises the broker as its authorization server (RFC 9728).
        async with httpx2.AsyncClient() as h:
            r = await h.post(resource, json={})
            assert r.status_code == 401
            assert "resource_metadata=" in r.headers["www-authenticate"]
            prm = (await h.get(resource.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"))).json()
            assert prm["authorization_servers"][0].rstrip("/") == broker.url
        token = await task.token(resource)
        await task.complete()
        # Within a second (the broker's lists live 1 s here), the same token is refused.
        start = time.monotonic()
        static = _Static(token)
        while not await refused(resource, static):
            assert time.monotonic() - start < 3, "still accepted"
            await asyncio.sleep(0.1)
        assert time.monotonic() - start < 2.5
        async with httpx2.AsyncClient() as h:
            r = await h.post(resource, json={}, headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 401
            assert 'error="invalid_token"' in r.headers["www-authenticate"]


async def refused(resource: str, auth) -> bool:
    failed = False
    try:
        await call(resource, auth)
    except* MCPError:
        failed = True
    return failed


class _Static(httpx2.Auth):
    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request):
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request
