import { type Attestation, readAttestation } from "./attestation.js";
import { TaskpassError, fromAnswer } from "./errors.js";
import { type TlsOptions, send } from "./http.js";

/** A cached token is fetched again once less than this share of its lifetime is left... */
export const REFRESH_FRACTION = 0.25;
/** ...or less than this many seconds, whichever comes first. */
export const REFRESH_MARGIN_SECONDS = 30;

export interface TaskpassOptions extends TlsOptions {
  /** The broker's HTTPS address, e.g. `https://taskpass.example.org`. */
  url: string;
  /** The agent's platform token (a string, or a function returning it; see
   * `fileAttestation`, `envAttestation`); leave out to attest with `cert`/`key`. */
  attestation?: Attestation;
}

export interface TaskOptions {
  purpose: string;
  audiences: string[];
  scopes?: string[];
  maxDurationSeconds?: number;
  /** A task that needs a human's approval comes back `pending_approval`; with this, wait up
   * to so many milliseconds for the answer: the open task, or a `FAILED_PRECONDITION` error
   * when it was denied or the wait ran out. */
  approvalTimeoutMs?: number;
}

/** How often a task waiting for approval is asked about, milliseconds. */
export const APPROVAL_POLL_MS = 1000;

export interface TaskInfo {
  task_id: string;
  agent_id: string;
  state: string;
  purpose: string;
  audiences: string[];
  scopes: string[];
  created_at: number;
  expires_at: number;
  implicit: boolean;
  /** Set while the task waits for a human's approval. */
  approval_id?: string;
  /** Why it needs (or needed) approval. */
  approval_why?: string;
  /** The approver, once approved. */
  approved_by?: string;
}

export interface Token {
  readonly accessToken: string;
  tokenId: string;
  audience: string;
  scopes: string[];
  /** The broker's `exp` (Unix seconds). */
  expiresAt: number;
  /** Seconds it had left when it arrived. */
  lifetime: number;
  /** When it arrived, on this process's monotonic clock (`performance.now()`, ms): freshness
   * never depends on the wall clock agreeing with the broker's. */
  receivedMs: number;
}

/** Whether `t` is far enough from its expiry to be handed out again. */
export function isFresh(t: Token, nowMs = performance.now()): boolean {
  const lifetime = Math.max(t.lifetime, 1);
  const margin = Math.min(REFRESH_MARGIN_SECONDS, lifetime * REFRESH_FRACTION);
  return nowMs < t.receivedMs + (lifetime - margin) * 1000;
}

function originOf(url: string): string | undefined {
  try {
    const u = new URL(url);
    return u.protocol === "http:" || u.protocol === "https:" ? u.origin : undefined;
  } catch {
    return undefined;
  }
}

/** An agent's connection to the broker (its JSON API, `docs/http-api.md`). */
export class Taskpass {
  readonly url: string;
  // `#`: really private, so that logging or serialising the client shows no secret.
  readonly #options: TaskpassOptions;

  constructor(options: TaskpassOptions) {
    if (options.attestation === undefined && options.cert === undefined) {
      throw new Error("give an attestation (a token source) or a client certificate (cert and key)");
    }
    this.url = options.url.replace(/\/+$/, "");
    this.#options = options;
  }

  toJSON(): object {
    return { url: this.url };
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `Taskpass { url: ${JSON.stringify(this.url)} }`;
  }

  /** @internal */
  async call(method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
    const token = await readAttestation(this.#options.attestation);
    const headers: Record<string, string> = {};
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    let a;
    try {
      a = await send(method, this.url + path, this.#options, headers, body === undefined ? undefined : JSON.stringify(body));
    } catch (e) {
      throw new TaskpassError(`cannot reach the broker at ${this.url}: ${(e as Error).message}`, "UNAVAILABLE");
    }
    let parsed: unknown = null;
    try {
      parsed = JSON.parse(a.body);
    } catch {
      // an answer that is not JSON is reported by status below
    }
    if (a.status !== 200) throw fromAnswer(a.status, parsed);
    if (parsed === null || typeof parsed !== "object") {
      throw new TaskpassError(`the broker answered HTTP 200 without a JSON object`);
    }
    return parsed as Record<string, unknown>;
  }

  /** Opens a task; complete it with `task.complete()` (or use `withTask`, or `await using`). */
  async startTask(opts: TaskOptions): Promise<Task> {
    const body = await this.call("POST", "/v1/tasks", {
      purpose: opts.purpose,
      audiences: opts.audiences,
      scopes: opts.scopes ?? [],
      max_duration_seconds: opts.maxDurationSeconds ?? 0,
    });
    const task = new Task(this, body as unknown as TaskInfo);
    if (opts.approvalTimeoutMs !== undefined && task.info.state === "pending_approval") {
      const deadline = Date.now() + opts.approvalTimeoutMs;
      while (task.info.state === "pending_approval") {
        const left = deadline - Date.now();
        if (left <= 0) {
          throw new TaskpassError(
            `task ${task.id} still waits for approval ${task.info.approval_id ?? ""} after ${opts.approvalTimeoutMs} ms`,
            "FAILED_PRECONDITION",
          );
        }
        await new Promise((r) => setTimeout(r, Math.min(APPROVAL_POLL_MS, left)));
        await task.refresh();
      }
      if (task.info.state !== "open") {
        throw new TaskpassError(`task ${task.id} is ${task.info.state}: it was not approved`, "FAILED_PRECONDITION");
      }
    }
    return task;
  }

  /** Runs `fn` inside a task and completes it afterwards, recording a failure when `fn`
   * threw (the error is rethrown). Every token of the task is revoked when it returns. */
  async withTask<T>(opts: TaskOptions, fn: (task: Task) => Promise<T>): Promise<T> {
    const task = await this.startTask(opts);
    let result: T;
    try {
      result = await fn(task);
    } catch (e) {
      await task.finish(e);
      throw e;
    }
    await task.finish(undefined);
    return result;
  }
}

/** An open task: its tokens, cached per (audience, scopes) and fetched again before they
 * expire. */
export class Task {
  info: TaskInfo;
  completed = false;
  readonly #client: Taskpass;
  readonly #tokens = new Map<string, Token>();
  readonly #pending = new Map<string, Promise<Token>>();

  constructor(client: Taskpass, info: TaskInfo) {
    this.#client = client;
    this.info = info;
  }

  toJSON(): object {
    return { id: this.id, info: this.info, completed: this.completed };
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `Task { id: ${JSON.stringify(this.id)}, completed: ${this.completed} }`;
  }

  #over(): TaskpassError {
    return new TaskpassError(`task ${this.id} is completed: start a new task to get tokens`, "FAILED_PRECONDITION", 400);
  }

  get id(): string {
    return this.info.task_id;
  }

  /** An access token for `audience` (default scopes: all of the task's). */
  async token(audience: string, scopes?: string[]): Promise<string> {
    return (await this.tokenInfo(audience, scopes)).accessToken;
  }

  async tokenInfo(audience: string, scopes?: string[]): Promise<Token> {
    if (this.completed) throw this.#over();
    const wanted = [...new Set(scopes ?? [])].sort();
    const key = JSON.stringify([audience, wanted]);
    const cached = this.#tokens.get(key);
    if (cached && isFresh(cached)) return cached;
    // Many callers at once share one fetch.
    let p = this.#pending.get(key);
    if (!p) {
      p = (async () => {
        const b = await this.#client.call("POST", `/v1/tasks/${encodeURIComponent(this.id)}/tokens`, {
          audience,
          scopes: wanted,
        });
        // Completed while this fetch ran: its tokens are revoked.
        if (this.completed) throw this.#over();
        const expiresAt = Number(b.expires_at);
        const t = {
          tokenId: String(b.token_id),
          audience,
          scopes: (b.scopes as string[]) ?? [],
          expiresAt,
          lifetime: Number(b.expires_in ?? expiresAt - Date.now() / 1000),
          receivedMs: performance.now(),
        } as Token;
        // Not enumerable: a logged or serialised token shows no secret.
        Object.defineProperty(t, "accessToken", { value: String(b.access_token), enumerable: false });
        this.#tokens.set(key, t);
        return t;
      })().finally(() => this.#pending.delete(key));
      this.#pending.set(key, p);
    }
    return p;
  }

  /** Forgets the cached tokens (the next `token()` fetches a new one). */
  forgetTokens(): void {
    this.#tokens.clear();
  }

  /** The task as the broker sees it now. */
  async refresh(): Promise<TaskInfo> {
    this.info = (await this.#client.call("GET", `/v1/tasks/${encodeURIComponent(this.id)}`)) as unknown as TaskInfo;
    return this.info;
  }

  /** Completes the task, revoking its tokens; `failure`: what ended the work, recorded as its
   * failure. Returns how many tokens were revoked. */
  async complete(failure?: unknown): Promise<number> {
    const body =
      failure === undefined
        ? undefined
        : { failed: true, failure: (failure instanceof Error ? failure.name : typeof failure).slice(0, 256) };
    const b = await this.#client.call("POST", `/v1/tasks/${encodeURIComponent(this.id)}/complete`, body);
    this.completed = true;
    this.#tokens.clear();
    return Number(b.revoked_tokens ?? 0);
  }

  /** @internal Completes on the way out of a scope; a task already over is not an error. */
  async finish(failure: unknown): Promise<void> {
    try {
      await this.complete(failure);
    } catch (e) {
      if (e instanceof TaskpassError && e.code === "FAILED_PRECONDITION") {
        this.completed = true;
        return;
      }
      if (failure === undefined) throw e;
    }
  }

  /** `await using task = await tp.startTask(...)` completes it at the end of the block. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.completed) await this.finish(undefined);
  }

  /** `fetch` of `input` with this task's token for `audience` (default: the URL's origin);
   * redirects are not followed with the token on. */
  async fetch(input: string | URL, init: RequestInit = {}, audience?: string): Promise<Response> {
    const aud = audience ?? new URL(input.toString()).origin;
    const headers = new Headers(init.headers);
    headers.set("authorization", `Bearer ${await this.token(aud)}`);
    return fetch(input, { ...init, headers, redirect: "manual" });
  }

  /** A `fetch` for MCP transports (`new StreamableHTTPClientTransport(url, { fetch })`):
   * adds the token for `resource` to requests for `origin` (default: the resource's own;
   * anything else, an OAuth discovery or a redirect, goes without it) and, on a 401, fetches
   * a new one and retries once. */
  fetchFor(resource: string, origin?: string): (url: string | URL, init?: RequestInit) => Promise<Response> {
    const ours = originOf(origin ?? resource);
    if (ours === undefined) throw new Error(`resource ${resource} is not a URL: give the origin its token may go to`);
    return async (url, init = {}) => {
      if (originOf(url.toString()) !== ours) return fetch(url, init);
      const attempt = async () => {
        const headers = new Headers(init.headers);
        headers.set("authorization", `Bearer ${await this.token(resource)}`);
        // Never follow a redirect with the token on.
        return fetch(url, { ...init, headers, redirect: "manual" });
      };
      const first = await attempt();
      if (first.status !== 401 || this.completed) return first;
      await first.body?.cancel();
      this.forgetTokens();
      return attempt();
    };
  }

  /** The token as an MCP client auth provider for `resource`: both shapes at once, the MCP
   * TypeScript SDK's `OAuthClientProvider` (1.x: `tokens()`, non-interactive) and the minimal
   * `{ token(), onUnauthorized() }` that Mastra's MCP client and the 2.x transports take. */
  authProvider(resource: string): McpAuthProvider {
    return new TaskAuthProvider(this, resource);
  }
}

/** What `Task.authProvider` returns. */
export interface McpAuthProvider {
  token(): Promise<string | undefined>;
  onUnauthorized(): Promise<void>;
  tokens(): Promise<{ access_token: string; token_type: string; expires_in?: number; scope?: string }>;
  readonly redirectUrl: undefined;
  readonly clientMetadata: { redirect_uris: string[]; client_name: string; grant_types: string[] };
  clientInformation(): { client_id: string };
  saveTokens(tokens: unknown): void;
  redirectToAuthorization(url: URL): never;
  saveCodeVerifier(v: string): void;
  codeVerifier(): never;
}

class TaskAuthProvider implements McpAuthProvider {
  readonly redirectUrl = undefined;
  readonly clientMetadata = { redirect_uris: [] as string[], client_name: "taskpass", grant_types: ["client_credentials"] };
  readonly #task: Task;
  readonly #resource: string;
  constructor(task: Task, resource: string) {
    this.#task = task;
    this.#resource = resource;
  }

  async token(): Promise<string | undefined> {
    return this.#task.token(this.#resource);
  }

  async onUnauthorized(): Promise<void> {
    this.#task.forgetTokens();
  }

  async tokens() {
    const t = await this.#task.tokenInfo(this.#resource);
    return {
      access_token: t.accessToken,
      token_type: "Bearer",
      expires_in: Math.max(0, Math.floor(t.expiresAt - Date.now() / 1000)),
      scope: t.scopes.join(" "),
    };
  }

  clientInformation() {
    return { client_id: this.#task.info.agent_id };
  }

  saveTokens(): void {
    // Tokens live in the task's cache.
  }

  redirectToAuthorization(url: URL): never {
    throw new TaskpassError(
      `the MCP server refused the task's token (it asked for authorization at ${url.origin}): the task may be over, or the token lacks a scope`,
      "UNAUTHENTICATED",
      401,
    );
  }

  saveCodeVerifier(): void {}

  codeVerifier(): never {
    throw new TaskpassError("Taskpass tokens need no authorization code flow", "INVALID_ARGUMENT");
  }
}
