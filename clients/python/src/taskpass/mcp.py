"""MCP: a ``TokenVerifier`` for the Python MCP SDK's resource servers, backed by
:class:`taskpass.AsyncVerifier`, and the client side's auth.

Server::

    from mcp.server.auth.settings import AuthSettings
    from mcp.server.mcpserver import MCPServer
    from taskpass.mcp import TaskpassTokenVerifier

    mcp = MCPServer(
        "tickets",
        token_verifier=TaskpassTokenVerifier(
            taskpass.AsyncVerifier("https://taskpass.example.org", audience=RESOURCE)),
        auth=AuthSettings(issuer_url="https://taskpass.example.org",
                          resource_server_url=RESOURCE, required_scopes=["tickets:read"],
                          validate_token_resource=True),
    )

Client: ``httpx2.AsyncClient(auth=task.httpx_auth(RESOURCE))`` handed to
``streamable_http_client(RESOURCE, http_client=...)``.
"""

from __future__ import annotations

import logging

from mcp.server.auth.provider import AccessToken

from .errors import InvalidToken
from .verify import AsyncVerifier

log = logging.getLogger("taskpass")


class TaskpassTokenVerifier:
    """The MCP SDK's ``TokenVerifier``: a token that fails any Taskpass check (or is
    revoked) is ``None``, which the SDK answers with 401 ``invalid_token``."""

    def __init__(self, verifier: AsyncVerifier) -> None:
        self.verifier = verifier

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            claims = await self.verifier.verify(token)
        except InvalidToken as e:
            log.info("taskpass: token refused: %s", e.reason)
            return None
        return AccessToken(
            token=token,
            client_id=claims.client_id,
            scopes=list(claims.scopes),
            expires_at=claims.expires_at,
            resource=claims.audience,
            subject=claims.subject,
            claims=claims.raw,
        )
