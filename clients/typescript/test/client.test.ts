// @taskpass/client against the real broker: tasks that complete themselves (a failure
// recorded when the body threw), `await using`, token caching and refresh, errors, the
// verifier with the status lists, oauth4webapi driving the token endpoint.
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import * as oauth from "oauth4webapi";
import { InvalidTokenError, Taskpass, TaskpassError, Verifier, isFresh } from "../src/index.js";
import { send } from "../src/http.js";
import { API, type Broker, OTHER_API, fresh, startBroker } from "./broker.js";

let broker: Broker;
before(async () => {
  broker = await startBroker();
});
after(async () => {
  await broker.stop();
});

function agent(prefix: string) {
  const a = fresh(prefix);
  broker.register(a.name, a.subject);
  const tp = new Taskpass({ url: broker.url, ca: broker.caPem, attestation: () => broker.attestation(a.subject) });
  return { ...a, tp };
}

async function refusedWithin(v: Verifier, token: string, reason: string, ms = 5000) {
  const start = Date.now();
  for (;;) {
    try {
      await v.verify(token);
    } catch (e) {
      assert.ok(e instanceof InvalidTokenError);
      assert.equal(e.reason, reason);
      return Date.now() - start;
    }
    assert.ok(Date.now() - start < ms, "never refused");
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("withTask completes the task and revokes its tokens", async () => {
  const { name, tp } = agent("ts-with");
  const v = new Verifier({ issuer: broker.url, audience: API, ca: broker.caPem });
  let token = "";
  const result = await tp.withTask({ purpose: "summarise", audiences: [API], scopes: ["read"] }, async (task) => {
    token = await task.token(API);
    assert.equal(await task.token(API), token, "cached");
    const c = await v.verify(token);
    assert.equal(c.taskId, task.id);
    assert.deepEqual(c.scopes, ["read"]);
    assert.ok(c.clientId.endsWith(`/agent/${name}`));
    assert.equal((await task.refresh()).state, "open");
    return 42;
  });
  assert.equal(result, 42);
  await refusedWithin(v, token, "revoked");
});

test("a body that throws is recorded as failed and rethrown", async () => {
  const { tp } = agent("ts-fail");
  let id = "";
  await assert.rejects(
    tp.withTask({ purpose: "doomed", audiences: [API], scopes: ["read"] }, async (task) => {
      id = task.id;
      await task.token(API);
      throw new RangeError("boom");
    }),
    RangeError,
  );
  const tail = broker.cli("audit", "tail") as { entries?: Array<Record<string, string>> } | Array<Record<string, string>>;
  const entries = Array.isArray(tail) ? tail : (tail.entries ?? []);
  const end = entries.find((e) => e.task_id === id && e.action === "complete_task");
  assert.ok(end, JSON.stringify(entries));
  assert.equal(end.reason, "agent_failed");
  assert.match(end.detail ?? "", /failure="RangeError"/);
});

test("await using completes the task at the end of the block", async () => {
  const { tp } = agent("ts-using");
  let task;
  {
    await using t = await tp.startTask({ purpose: "scoped", audiences: [API], scopes: ["read"] });
    task = t;
    await t.token(API);
  }
  assert.ok(task.completed);
  await assert.rejects(task.token(API, ["write"]), (e: unknown) => e instanceof TaskpassError && e.code === "FAILED_PRECONDITION");
});

test("tokens are fetched again before they expire, once for many callers", async () => {
  const { tp } = agent("ts-refresh");
  // (tp holds the attestation callable; JSON.stringify(tp) must not show it)
  const task = await tp.startTask({ purpose: "long", audiences: [API], scopes: ["read", "write"] });
  const first = await task.tokenInfo(API);
  assert.ok(isFresh(first));
  assert.ok(!isFresh(first, first.receivedMs + (first.lifetime - 10) * 1000), "near its end it is not handed out");
  // Logged or serialised, a task and its tokens show no secret.
  const { inspect } = await import("node:util");
  for (const shown of [inspect(task), JSON.stringify(task), inspect(first), JSON.stringify(first), inspect(tp), JSON.stringify(tp)]) {
    assert.ok(!shown.includes(first.accessToken) && !shown.includes("eyJ"), shown);
  }
  const same = await Promise.all(Array.from({ length: 20 }, () => task.token(API, ["read"])));
  assert.equal(new Set(same).size, 1);
  task.forgetTokens();
  const second = await task.tokenInfo(API);
  assert.notEqual(second.tokenId, first.tokenId);
  await task.complete();
});

test("errors carry the broker's code and message", async () => {
  const { tp } = agent("ts-err");
  await assert.rejects(
    tp.startTask({ purpose: "x", audiences: [OTHER_API], scopes: ["read"] }),
    (e: unknown) => e instanceof TaskpassError && e.code === "PERMISSION_DENIED" && e.status === 403,
  );
  const bad = new Taskpass({ url: broker.url, ca: broker.caPem, attestation: "garbage" });
  await assert.rejects(bad.startTask({ purpose: "x", audiences: [API] }), (e: unknown) => e instanceof TaskpassError && e.code === "UNAUTHENTICATED");
  const nowhere = new Taskpass({ url: "https://127.0.0.1:9", ca: broker.caPem, attestation: "x", timeoutMs: 2000 });
  await assert.rejects(nowhere.startTask({ purpose: "x", audiences: [API] }), (e: unknown) => e instanceof TaskpassError && e.code === "UNAVAILABLE");
});

test("the verifier refuses what it must", async () => {
  const { subject, tp } = agent("ts-verify");
  const v = new Verifier({ issuer: broker.url, audience: API, ca: broker.caPem });
  await tp.withTask({ purpose: "v", audiences: [API], scopes: ["read"] }, async (task) => {
    const token = await task.token(API);
    const cases: Array<[Verifier, string, string]> = [
      [new Verifier({ issuer: broker.url, audience: OTHER_API, ca: broker.caPem }), token, "wrong_audience"],
      [new Verifier({ issuer: "https://elsewhere.test", baseUrl: broker.url, audience: API, ca: broker.caPem }), token, "wrong_issuer"],
      [v, token.slice(0, -4) + (token.endsWith("AAAA") ? "BBBB" : "AAAA"), "bad_signature"],
      [v, "garbage", "malformed"],
      [v, await broker.attestation(subject), "malformed"],
      [v, "x".repeat(20000), "malformed"],
    ];
    for (const [verifier, t, reason] of cases) {
      await assert.rejects(verifier.verify(t), (e: unknown) => e instanceof InvalidTokenError && e.reason === reason, reason);
    }
  });
});

test("oauth4webapi discovers the broker and gets a token with the jwt-bearer grant", async () => {
  const { name, subject } = agent("ts-oauth");
  // oauth4webapi uses fetch; the broker's CA is private, so its requests go through node:https.
  const viaHttps = async (url: string, init: { method?: string; headers?: Headers | Record<string, string>; body?: unknown }) => {
    const headers: Record<string, string> = {};
    new Headers(init.headers as ConstructorParameters<typeof Headers>[0]).forEach((v, k) => (headers[k] = v));
    const a = await send(init.method ?? "GET", url, { ca: broker.caPem }, headers, init.body === undefined ? undefined : String(init.body));
    const h = new Headers();
    for (const [k, v] of Object.entries(a.headers)) if (typeof v === "string") h.set(k, v);
    return new Response(a.body, { status: a.status, headers: h });
  };
  const issuer = new URL(broker.url);
  const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, { [oauth.customFetch]: viaHttps, algorithm: "oauth2" }));
  assert.equal(as.token_endpoint, `${broker.url}/oauth/token`);
  const client: oauth.Client = { client_id: name };
  const res = await oauth.genericTokenEndpointRequest(
    as,
    client,
    oauth.None(),
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    { assertion: await broker.attestation(subject), resource: API, scope: "read" },
    { [oauth.customFetch]: viaHttps },
  );
  const token = await oauth.processGenericTokenEndpointResponse(as, client, res);
  assert.equal(token.token_type, "bearer");
  assert.equal(token.scope, "read");
  const c = await new Verifier({ issuer: broker.url, audience: API, ca: broker.caPem }).verify(token.access_token);
  assert.equal(c.taskId, token.task_id);

  const denied = await oauth.genericTokenEndpointRequest(
    as,
    client,
    oauth.None(),
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    { assertion: await broker.attestation(subject), resource: API, scope: "admin" },
    { [oauth.customFetch]: viaHttps },
  );
  await assert.rejects(oauth.processGenericTokenEndpointResponse(as, client, denied), (e: unknown) => e instanceof oauth.ResponseBodyError && e.error === "invalid_scope");
});

test("fetchFor sends the token to the resource's origin only", async () => {
  const { tp } = agent("ts-origin");
  const task = await tp.startTask({ purpose: "origin", audiences: [API], scopes: ["read"] });
  assert.throws(() => task.fetchFor("tickets-api"), /not a URL/);
  // A request elsewhere goes out without the token: here, to the broker, which answers 404
  // to a path it does not serve; what matters is that no token was fetched for it.
  const f = task.fetchFor(API);
  const before = task.toJSON();
  await assert.rejects(f("https://127.0.0.1:9/elsewhere"));
  assert.deepEqual(task.toJSON(), before);
  await task.complete();
  await assert.rejects(task.token(API), (e: unknown) => e instanceof TaskpassError && e.code === "FAILED_PRECONDITION");
});

test("a task waits for a human's approval with approvalTimeoutMs", async () => {
  const a = fresh("ts-pay");
  broker.cli(
    "agent", "register", a.name, "--owner", "team-ts", "--purpose", "node --test",
    "--oidc", `https://platform.test=${a.subject}`, "--audience", API,
    "--scope", "payments:write", "--approval-scope", "payments:write",
  );
  const creds = mkdtempSync(join(tmpdir(), "ts-approver-"));
  const approver = `ts-approver-${a.name.slice(-6)}`;
  broker.cli("operator", "issue", approver, "--role", "approver", "--out", creds);
  const asApprover = (...args: string[]) =>
    broker.cli("--cert", join(creds, `${approver}.pem`), "--key", join(creds, `${approver}-key.pem`), ...args);
  const tp = new Taskpass({ url: broker.url, ca: broker.caPem, attestation: () => broker.attestation(a.subject) });

  const pending = await tp.startTask({ purpose: "pay", audiences: [API], scopes: ["payments:write"] });
  assert.equal(pending.info.state, "pending_approval");
  assert.match(pending.info.approval_id ?? "", /^appr_/);
  await assert.rejects(pending.token(API), TaskpassError);
  asApprover("approval", "deny", pending.info.approval_id ?? "", "--reason", "not this one");

  const answer = (async () => {
    for (let i = 0; i < 100; i++) {
      const list = asApprover("approval", "list") as { approval_id: string; agent_name: string }[];
      const mine = list.find((x) => x.agent_name === a.name);
      if (mine) {
        asApprover("approval", "approve", mine.approval_id);
        return;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error("no approval appeared");
  })();
  await tp.withTask(
    { purpose: "pay", audiences: [API], scopes: ["payments:write"], approvalTimeoutMs: 20_000 },
    async (task) => {
      assert.equal(task.info.state, "open");
      assert.match(task.info.approved_by ?? "", /\/operator\/approver\//);
      assert.ok((await task.token(API)).length > 0);
    },
  );
  await answer;
});
