"""An MCP server whose tools need a Taskpass token: the official Python MCP SDK with
``taskpass.mcp.TaskpassTokenVerifier``. Revoked tokens (a completed task) are refused with
401 within the status list's ttl.

    TASKPASS_ISSUER=https://127.0.0.1:7444 TASKPASS_CA=taskpass-data/ca.pem \\
    MCP_PORT=8765 python examples/mcp-server/server.py
"""

import os

import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

import taskpass
from taskpass.mcp import TaskpassTokenVerifier

issuer = os.environ["TASKPASS_ISSUER"]
port = int(os.environ.get("MCP_PORT", "8765"))
resource = f"http://127.0.0.1:{port}/mcp"

mcp = MCPServer(
    "tickets",
    token_verifier=TaskpassTokenVerifier(
        taskpass.AsyncVerifier(issuer, resource, ca=os.environ.get("TASKPASS_CA"))
    ),
    auth=AuthSettings(
        issuer_url=issuer,
        resource_server_url=resource,
        required_scopes=["tickets:read"],
        validate_token_resource=True,
    ),
)


@mcp.tool()
def lookup_ticket(ticket_id: str) -> str:
    """Looks a ticket up."""
    caller = get_access_token()
    return f"ticket {ticket_id}: printer on fire (asked by {caller.client_id if caller else '?'})"


if __name__ == "__main__":
    print(f"MCP server on {resource}", flush=True)
    uvicorn.run(mcp.streamable_http_app(), host="127.0.0.1", port=port, log_level="warning")
