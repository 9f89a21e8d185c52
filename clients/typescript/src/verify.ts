import { inflateSync } from "node:zlib";
import { type JSONWebKeySet, type JWTPayload, createLocalJWKSet, decodeProtectedHeader, errors, jwtVerify } from "jose";
import { InvalidTokenError } from "./errors.js";
import { type TlsOptions, send } from "./http.js";

export const DEFAULT_LEEWAY_SECONDS = 5;
export const DEFAULT_MAX_LIFETIME_SECONDS = 86_400;
export const MIN_KEY_REFETCH_MS = 10_000;
export const DEFAULT_STALENESS_BUDGET_MS = 10_000;
const MAX_TOKEN_BYTES = 16 * 1024;
const MAX_LIST_BYTES = 1024 * 1024;

export interface VerifierOptions extends TlsOptions {
  /** The broker's issuer (`iss`). */
  issuer: string;
  /** This API's audience: tokens for any other are refused. */
  audience: string;
  /** Where the broker's HTTPS listener is reached (default: the issuer). */
  baseUrl?: string;
  leewaySeconds?: number;
  maxLifetimeSeconds?: number;
  /** How long past a list's `ttl` its copy serves while it cannot be fetched (ms). */
  stalenessBudgetMs?: number;
}

export interface Claims {
  subject: string;
  clientId: string;
  taskId: string;
  tokenId: string;
  audience: string;
  scopes: string[];
  issuedAt: number;
  expiresAt: number;
  actor?: string;
  raw: JWTPayload;
}

interface StatusList {
  fetched: number;
  ttlMs: number;
  exp: number;
  bits: number;
  statuses: Buffer;
}

/** Verifies Taskpass tokens with `jose`, the broker's JWKS and its token status lists, the
 * broker's own profile: `typ` at+jwt, `alg` EdDSA or ES256 pinned to its key, known `kid`
 * (the JWKS fetched again, at most every 10 s, on an unknown one), exact `iss`, `aud` this
 * API, `exp`/`nbf`/`iat` within a small leeway, a bounded lifetime, no `cnf` (this verifier
 * cannot check a holder), and a status-list entry that says valid. */
export class Verifier {
  readonly issuer: string;
  readonly audience: string;
  private readonly base: string;
  private readonly opts: VerifierOptions;
  private jwks?: ReturnType<typeof createLocalJWKSet>;
  private kids = new Map<string, string>();
  private lastKeyFetch = 0;
  private keysPending?: Promise<void>;
  private lists = new Map<number, StatusList>();
  private listsPending = new Map<number, Promise<StatusList>>();
  private readonly listUri: RegExp;

  constructor(opts: VerifierOptions) {
    this.issuer = opts.issuer.replace(/\/+$/, "");
    this.audience = opts.audience;
    this.base = (opts.baseUrl ?? opts.issuer).replace(/\/+$/, "");
    this.opts = opts;
    const escaped = this.issuer.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    this.listUri = new RegExp(`^${escaped}/statuslists/(0|[1-9][0-9]{0,15})$`);
  }

  private async fetchKeys(): Promise<void> {
    if (!this.keysPending) {
      this.keysPending = (async () => {
        this.lastKeyFetch = Date.now();
        const a = await send("GET", `${this.base}/.well-known/jwks.json`, this.opts);
        if (a.status !== 200) throw new Error(`the JWKS answered HTTP ${a.status}`);
        const set = JSON.parse(a.body) as JSONWebKeySet;
        const keys = (set.keys ?? []).filter((k) => typeof k.kid === "string" && !("d" in k));
        this.kids = new Map(keys.map((k) => [String(k.kid), String(k.alg ?? (k.kty === "OKP" ? "EdDSA" : "ES256"))]));
        this.jwks = createLocalJWKSet({ keys });
      })().finally(() => {
        this.keysPending = undefined;
      });
    }
    return this.keysPending;
  }

  private header(token: string, typ: string): { alg: string; kid: string } {
    if (token.length > MAX_TOKEN_BYTES) throw new InvalidTokenError("malformed", "token is larger than the size limit");
    let h;
    try {
      h = decodeProtectedHeader(token);
    } catch {
      throw new InvalidTokenError("malformed", "token is malformed");
    }
    const t = String(h.typ ?? "").toLowerCase();
    if (t !== typ && t !== `application/${typ}`) throw new InvalidTokenError("malformed", `token type is not ${typ}`);
    for (const f of ["crit", "jku", "jwk", "x5u", "x5c"]) {
      if (f in h) throw new InvalidTokenError("malformed", `token header parameter ${f} is not allowed`);
    }
    if (h.alg !== "EdDSA" && h.alg !== "ES256") throw new InvalidTokenError("bad_signature", "token algorithm is not accepted");
    if (typeof h.kid !== "string" || !h.kid) throw new InvalidTokenError("malformed", "token header has no key id");
    return { alg: h.alg, kid: h.kid };
  }

  private async keyFor(h: { alg: string; kid: string }): Promise<void> {
    if (!this.kids.has(h.kid) && (!this.jwks || Date.now() - this.lastKeyFetch >= MIN_KEY_REFETCH_MS)) {
      try {
        await this.fetchKeys();
      } catch (e) {
        throw new InvalidTokenError("unknown_key", `the broker's keys cannot be fetched: ${(e as Error).message}`);
      }
    }
    const alg = this.kids.get(h.kid);
    if (alg === undefined) throw new InvalidTokenError("unknown_key", "token key id is not in the key set");
    if (alg !== h.alg) throw new InvalidTokenError("bad_signature", "token algorithm is not the one its key is pinned to");
  }

  /** The token's claims, or an `InvalidTokenError` with its reason. */
  async verify(token: string): Promise<Claims> {
    const h = this.header(token, "at+jwt");
    await this.keyFor(h);
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.jwks!, {
        issuer: this.issuer,
        audience: this.audience,
        algorithms: [h.alg],
        clockTolerance: this.opts.leewaySeconds ?? DEFAULT_LEEWAY_SECONDS,
        requiredClaims: ["exp", "iat", "nbf", "sub", "jti"],
      }));
    } catch (e) {
      throw mapJoseError(e);
    }
    if (typeof payload.aud !== "string") throw new InvalidTokenError("malformed", "token aud must be one string");
    for (const c of ["client_id", "txn", "scope"]) {
      if (typeof payload[c] !== "string") throw new InvalidTokenError("malformed", `token claim ${c} is missing`);
    }
    const leeway = this.opts.leewaySeconds ?? DEFAULT_LEEWAY_SECONDS;
    if ((payload.iat as number) > Date.now() / 1000 + leeway) {
      throw new InvalidTokenError("not_yet_valid", "token is not yet valid");
    }
    const max = this.opts.maxLifetimeSeconds ?? DEFAULT_MAX_LIFETIME_SECONDS;
    if ((payload.exp as number) - (payload.iat as number) > max) {
      throw new InvalidTokenError("malformed", "token lifetime is longer than the broker's maximum");
    }
    if ("cnf" in payload) {
      throw new InvalidTokenError("proof_required", "token is bound to a certificate or key; this verifier cannot check its holder");
    }
    await this.checkStatus(payload);
    const act = payload.act as { sub?: string } | undefined;
    return {
      subject: payload.sub as string,
      clientId: payload.client_id as string,
      taskId: payload.txn as string,
      tokenId: payload.jti as string,
      audience: payload.aud,
      scopes: (payload.scope as string).split(" ").filter(Boolean),
      issuedAt: payload.iat as number,
      expiresAt: payload.exp as number,
      actor: act?.sub,
      raw: payload,
    };
  }

  private async checkStatus(payload: JWTPayload): Promise<void> {
    const ref = (payload.status as { status_list?: { idx?: unknown; uri?: unknown } } | undefined)?.status_list;
    if (!ref || typeof ref.idx !== "number" || !Number.isInteger(ref.idx) || typeof ref.uri !== "string") {
      throw new InvalidTokenError("malformed", "token has no status list entry");
    }
    const m = this.listUri.exec(ref.uri);
    if (!m) throw new InvalidTokenError("malformed", "token's status list is not one of the issuer's");
    const n = Number(m[1]);
    const list = await this.list(n);
    const bit = ref.idx * list.bits;
    const byte = list.statuses[Math.floor(bit / 8)];
    if (ref.idx < 0 || byte === undefined) throw new InvalidTokenError("malformed", "token's index is outside its status list");
    const status = (byte >> bit % 8) & ((1 << list.bits) - 1);
    if (status === 2) throw new InvalidTokenError("suspended", "token is suspended");
    if (status !== 0) throw new InvalidTokenError("revoked", "token is revoked");
  }

  private usable(n: number, fetchFailed: boolean): StatusList | undefined {
    const l = this.lists.get(n);
    if (!l) return undefined;
    const limit = l.ttlMs + (fetchFailed ? (this.opts.stalenessBudgetMs ?? DEFAULT_STALENESS_BUDGET_MS) : 0);
    return Date.now() - l.fetched < limit && Date.now() / 1000 < l.exp ? l : undefined;
  }

  private async list(n: number): Promise<StatusList> {
    const fresh = this.usable(n, false);
    if (fresh) return fresh;
    let p = this.listsPending.get(n);
    if (!p) {
      p = this.fetchList(n).finally(() => this.listsPending.delete(n));
      this.listsPending.set(n, p);
    }
    try {
      return await p;
    } catch (e) {
      const held = this.usable(n, true);
      if (held) return held;
      throw new InvalidTokenError("revocations_stale", `the status list cannot be read: ${(e as Error).message}`);
    }
  }

  private async fetchList(n: number): Promise<StatusList> {
    const a = await send("GET", `${this.base}/statuslists/${n}`, this.opts, { accept: "application/statuslist+jwt" });
    if (a.status !== 200) throw new Error(`HTTP ${a.status}`);
    const jwt = a.body.trim();
    const h = this.header(jwt, "statuslist+jwt");
    await this.keyFor(h);
    const { payload } = await jwtVerify(jwt, this.jwks!, {
      issuer: this.issuer,
      subject: `${this.issuer}/statuslists/${n}`,
      algorithms: [h.alg],
      clockTolerance: this.opts.leewaySeconds ?? DEFAULT_LEEWAY_SECONDS,
      requiredClaims: ["exp", "iat"],
    });
    const sl = payload.status_list as { bits?: unknown; lst?: unknown } | undefined;
    if (!sl || ![1, 2, 4, 8].includes(sl.bits as number) || typeof sl.lst !== "string") {
      throw new Error("the status list is malformed");
    }
    const statuses = inflateSync(Buffer.from(sl.lst, "base64url"), { maxOutputLength: MAX_LIST_BYTES });
    const ttl = typeof payload.ttl === "number" && payload.ttl > 0 ? Math.min(payload.ttl, 300) : 300;
    const list = { fetched: Date.now(), ttlMs: ttl * 1000, exp: payload.exp as number, bits: sl.bits as number, statuses };
    this.lists.set(n, list);
    return list;
  }

  /** The MCP TypeScript SDK's `OAuthTokenVerifier` (for `requireBearerAuth`): refused
   * tokens throw the SDK's `InvalidTokenError`, so the SDK answers 401 `invalid_token`. */
  mcpTokenVerifier(): {
    verifyAccessToken(token: string): Promise<{ token: string; clientId: string; scopes: string[]; expiresAt: number; resource?: URL; extra: Record<string, unknown> }>;
  } {
    return {
      verifyAccessToken: async (token: string) => {
        let c: Claims;
        try {
          c = await this.verify(token);
        } catch (e) {
          throw await mcpInvalidToken(e);
        }
        let resource: URL | undefined;
        try {
          resource = new URL(c.audience);
        } catch {
          resource = undefined;
        }
        return {
          token,
          clientId: c.clientId,
          scopes: c.scopes,
          expiresAt: c.expiresAt,
          resource,
          extra: { sub: c.subject, task_id: c.taskId, token_id: c.tokenId },
        };
      },
    };
  }
}

function mapJoseError(e: unknown): InvalidTokenError {
  if (e instanceof errors.JWTExpired) return new InvalidTokenError("expired", "token has expired");
  if (e instanceof errors.JWTClaimValidationFailed) {
    const reason =
      e.claim === "aud" ? "wrong_audience" : e.claim === "iss" ? "wrong_issuer" : e.claim === "nbf" || e.claim === "iat" ? "not_yet_valid" : "malformed";
    return new InvalidTokenError(reason, `token claim ${e.claim} is not acceptable`);
  }
  if (e instanceof errors.JWSSignatureVerificationFailed) return new InvalidTokenError("bad_signature", "token signature is invalid");
  return new InvalidTokenError("malformed", `token is malformed: ${(e as Error).message}`);
}

/** The MCP SDK's InvalidTokenError when the SDK is installed (it is a peer of the server
 * that uses this), else ours. */
async function mcpInvalidToken(e: unknown): Promise<Error> {
  const message = e instanceof Error ? e.message : String(e);
  try {
    const mod = (await import("@modelcontextprotocol/sdk/server/auth/errors.js")) as {
      InvalidTokenError: new (m: string) => Error;
    };
    return new mod.InvalidTokenError(message);
  } catch {
    return e instanceof Error ? e : new Error(message);
  }
}
