// A TypeScript agent: attests with its platform token, opens a task, calls a protected HTTP
// API and an MCP tool with the task's tokens, and completes the task (which revokes them).
//
//   (cd clients/typescript && npm ci && npm run build)
//   TASKPASS_URL=https://127.0.0.1:7444 TASKPASS_CA=taskpass-data/ca.pem \
//   TASKPASS_TOKEN_FILE=/var/run/secrets/tokens/taskpass \
//   API_URL=http://127.0.0.1:8080 API_AUDIENCE=https://tickets.example.com \
//   MCP_URL=http://127.0.0.1:8765/mcp node examples/typescript-agent/agent.mjs
import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { Taskpass, fileAttestation } from "@taskpass/client";

const { API_URL, API_AUDIENCE, MCP_URL } = process.env;
const tp = new Taskpass({
  url: process.env.TASKPASS_URL,
  ca: process.env.TASKPASS_CA ? readFileSync(process.env.TASKPASS_CA, "utf8") : undefined,
  attestation: fileAttestation(process.env.TASKPASS_TOKEN_FILE),
});

await tp.withTask({ purpose: "triage ticket 4711", audiences: [API_AUDIENCE, MCP_URL], scopes: ["tickets:read"] }, async (task) => {
  console.log("task", task.id);
  const r = await task.fetch(`${API_URL}/tickets`, {}, API_AUDIENCE);
  console.log("GET /tickets ->", r.status, (await r.text()).trim());
  if (!r.ok) throw new Error(`the API answered ${r.status}`);
  const mcp = new Client({ name: "example-agent", version: "0.1.0" });
  await mcp.connect(new StreamableHTTPClientTransport(new URL(MCP_URL), { authProvider: task.authProvider(MCP_URL) }));
  const result = await mcp.callTool({ name: "lookup_ticket", arguments: { ticket_id: "4711" } });
  console.log("MCP lookup_ticket ->", result.content[0].text);
  await mcp.close();
});
console.log("task completed: its tokens are revoked");
