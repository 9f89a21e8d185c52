"""A Python agent: attests with its platform token, opens a task, calls a protected HTTP API
and an MCP tool with the task's tokens, and completes the task (which revokes them).

    TASKPASS_URL=https://127.0.0.1:7444 TASKPASS_CA=taskpass-data/ca.pem \\
    TASKPASS_TOKEN_FILE=/var/run/secrets/tokens/taskpass \\
    API_URL=http://127.0.0.1:8080 API_AUDIENCE=https://tickets.example.com \\
    MCP_URL=http://127.0.0.1:8765/mcp python examples/python-agent/agent.py
"""

import asyncio
import os

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

import taskpass


async def main() -> None:
    api_url, api_aud, mcp_url = os.environ["API_URL"], os.environ["API_AUDIENCE"], os.environ["MCP_URL"]
    client = taskpass.AsyncClient(
        os.environ["TASKPASS_URL"],
        taskpass.FileAttestation(os.environ["TASKPASS_TOKEN_FILE"]),
        ca=os.environ.get("TASKPASS_CA"),
    )
    async with client.task(
        purpose="triage ticket 4711", audiences=[api_aud, mcp_url], scopes=["tickets:read"]
    ) as task:
        print("task", task.id)
        # The API is reached at API_URL; its token goes there and nowhere else.
        async with httpx.AsyncClient(auth=task.httpx_auth(api_aud, origin=api_url)) as http:
            r = await http.get(f"{api_url}/tickets")
            print("GET /tickets ->", r.status_code, r.text.strip())
            r.raise_for_status()
        async with httpx2.AsyncClient(auth=task.httpx_auth(mcp_url)) as http:
            async with Client(streamable_http_client(mcp_url, http_client=http)) as mcp:
                result = await mcp.call_tool("lookup_ticket", {"ticket_id": "4711"})
                print("MCP lookup_ticket ->", result.content[0].text)
    print("task completed: its tokens are revoked")
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
