// MCP end to end with the official TypeScript SDK: an MCP server behind `requireBearerAuth`
// with the Taskpass verifier, a client whose token comes from `task.authProvider`. The tool
// call succeeds while the task is open and is refused with 401 within a second after it
// completes.
import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { requireBearerAuth } from "@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js";
import { getOAuthProtectedResourceMetadataUrl, mcpAuthMetadataRouter } from "@modelcontextprotocol/sdk/server/auth/router.js";
import { createMcpExpressApp } from "@modelcontextprotocol/sdk/server/express.js";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { Taskpass, Verifier } from "../src/index.js";
import { type Broker, fresh, startBroker } from "./broker.js";

let broker: Broker;
let server: import("node:http").Server;
let resource: URL;

before(async () => {
  broker = await startBroker();
  const app = createMcpExpressApp();
  server = await new Promise((r) => {
    const s = app.listen(0, "127.0.0.1", () => r(s));
  });
  resource = new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`);
  const verifier = new Verifier({ issuer: broker.url, audience: resource.href, ca: broker.caPem });
  app.use(
    mcpAuthMetadataRouter({
      oauthMetadata: {
        issuer: broker.url,
        authorization_endpoint: `${broker.url}/authorize`,
        token_endpoint: `${broker.url}/oauth/token`,
        response_types_supported: [],
      },
      resourceServerUrl: resource,
      scopesSupported: ["read"],
    }),
  );
  const bearer = requireBearerAuth({
    verifier: verifier.mcpTokenVerifier(),
    requiredScopes: ["read"],
    resourceMetadataUrl: getOAuthProtectedResourceMetadataUrl(resource),
  });
  app.post("/mcp", bearer, async (req, res) => {
    const mcp = new McpServer({ name: "tickets", version: "0.1.0" });
    mcp.registerTool("whoami", { description: "Who is calling" }, async (extra) => ({
      content: [{ type: "text", text: extra.authInfo?.clientId ?? "nobody" }],
    }));
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
    res.on("close", () => {
      void transport.close();
      void mcp.close();
    });
    await mcp.connect(transport);
    await transport.handleRequest(req, res, req.body);
  });
});

after(async () => {
  server.close();
  await broker.stop();
});

async function whoami(transport: StreamableHTTPClientTransport): Promise<string> {
  const client = new Client({ name: "agent", version: "0.1.0" });
  try {
    await client.connect(transport);
    const r = await client.callTool({ name: "whoami", arguments: {} });
    return (r.content as Array<{ text: string }>)[0]!.text;
  } finally {
    await client.close().catch(() => {});
  }
}

test("an MCP tool call lives as long as the task", async () => {
  const { name, subject } = fresh("ts-mcp");
  broker.register(name, subject, { audiences: [resource.href], scopes: ["read"] });
  const tp = new Taskpass({ url: broker.url, ca: broker.caPem, attestation: () => broker.attestation(subject) });
  const task = await tp.startTask({ purpose: "mcp call", audiences: [resource.href], scopes: ["read"] });
  assert.ok((await whoami(new StreamableHTTPClientTransport(resource, { authProvider: task.authProvider(resource.href) }))).endsWith(`/agent/${name}`));
  assert.ok((await whoami(new StreamableHTTPClientTransport(resource, { fetch: task.fetchFor(resource.href) }))).endsWith(`/agent/${name}`));
  const token = await task.token(resource.href);
  await task.complete();
  // Within a second (the broker's lists live 1 s here), the same token is refused with 401.
  const start = Date.now();
  for (;;) {
    const r = await fetch(resource, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json, text/event-stream" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" }),
    });
    if (r.status === 401) {
      assert.match(r.headers.get("www-authenticate") ?? "", /invalid_token/);
      break;
    }
    assert.ok(Date.now() - start < 3000, `still accepted: ${r.status}`);
    await new Promise((res) => setTimeout(res, 100));
  }
  assert.ok(Date.now() - start < 2500);
  // And through the SDK client: refused.
  const stale = { ...task.authProvider(resource.href), tokens: async () => ({ access_token: token, token_type: "Bearer" }) };
  await assert.rejects(whoami(new StreamableHTTPClientTransport(resource, { authProvider: stale as never })));
});

test("an MCP server behind the Rust tower layer takes Taskpass tokens with no extra code", async () => {
  const { spawn } = await import("node:child_process");
  const { mkdtempSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const { createServer } = await import("node:net");
  const { BIN_DIR } = await import("./broker.js");
  const audience = "https://tickets.example.com";
  const creds = mkdtempSync(join(tmpdir(), "tp-validator-"));
  broker.cli("validator", "add", "tickets-mcp", "--audience", audience, "--out", creds);
  const port: number = await new Promise((r) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => r(p));
    });
  });
  const api = spawn(join(BIN_DIR, "protected-api"), [
    "--broker", broker.grpcUrl, "--issuer", broker.url, "--credentials", creds, "--name", "tickets-mcp",
    "--audience", audience, "--listen", `127.0.0.1:${port}`,
  ], { stdio: ["ignore", "ignore", "inherit"] });
  try {
    const mcpUrl = new URL(`http://127.0.0.1:${port}/mcp`);
    for (let i = 0; ; i++) {
      try {
        await fetch(`http://127.0.0.1:${port}/metrics`);
        break;
      } catch {
        assert.ok(i < 300, "protected-api did not start");
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const { name, subject } = fresh("ts-rust-mcp");
    broker.register(name, subject, { audiences: [audience], scopes: ["tickets:read"] });
    const tp = new Taskpass({ url: broker.url, ca: broker.caPem, attestation: () => broker.attestation(subject) });
    const task = await tp.startTask({ purpose: "rust mcp", audiences: [audience], scopes: ["tickets:read"] });
    const client = new Client({ name: "agent", version: "0.1.0" });
    await client.connect(new StreamableHTTPClientTransport(mcpUrl, { authProvider: task.authProvider(audience) }));
    const tools = await client.listTools();
    assert.deepEqual(tools.tools.map((t) => t.name), ["lookup_ticket"]);
    const r = await client.callTool({ name: "lookup_ticket", arguments: { ticket_id: "4711" } });
    assert.match((r.content as Array<{ text: string }>)[0]!.text, new RegExp(`ticket 4711: .*agent/${name}`));
    await client.close();
    const token = await task.token(audience);
    await task.complete();
    // The layer follows the revocation stream: refused within a second.
    const start = Date.now();
    for (;;) {
      const res = await fetch(mcpUrl, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json", accept: "application/json, text/event-stream" },
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" }),
      });
      if (res.status === 401) {
        const h = res.headers.get("www-authenticate") ?? "";
        assert.match(h, /invalid_token/);
        assert.match(h, /resource_metadata=/);
        break;
      }
      assert.ok(Date.now() - start < 1000, `still accepted after ${Date.now() - start} ms: ${res.status}`);
      await new Promise((res) => setTimeout(res, 10));
    }
  } finally {
    api.kill("SIGTERM");
  }
});
