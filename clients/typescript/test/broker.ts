// A real broker for the tests: taskpassd from the workspace build, trusting a platform OIDC
// issuer whose key this file holds (a static jwks_file), agents registered with the real CLI.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { SignJWT, exportJWK, generateKeyPair } from "jose";

// dist/test/broker.js -> the repository root.
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const BIN = process.env.TASKPASS_BIN_DIR ?? join(ROOT, "target", "debug");
export const PLATFORM = "https://platform.test";
export const API = "https://api.test";
export const OTHER_API = "https://other.test";

export interface Broker {
  url: string;
  grpcUrl: string;
  caPem: string;
  dataDir: string;
  attestation(subject: string, ttl?: number): Promise<string>;
  register(name: string, subject: string, opts?: { scopes?: string[]; audiences?: string[] }): void;
  cli(...args: string[]): unknown;
  stop(): Promise<void>;
}

export async function startBroker(): Promise<Broker> {
  if (!existsSync(join(BIN, "taskpassd"))) throw new Error(`${BIN}/taskpassd is missing: run cargo build --workspace --bins`);
  const tmp = mkdtempSync(join(tmpdir(), "taskpass-ts-"));
  const { publicKey, privateKey } = await generateKeyPair("ES256");
  const jwk = { ...(await exportJWK(publicKey)), kid: "platform-1", alg: "ES256", use: "sig" };
  writeFileSync(join(tmp, "platform-jwks.json"), JSON.stringify({ keys: [jwk] }));
  const data = join(tmp, "data");
  writeFileSync(
    join(tmp, "taskpass.toml"),
    `[server]
listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
data_dir = "${data}"
trust_domain = "example.org"

[[attestation.oidc]]
issuer = "${PLATFORM}"
audiences = ["taskpass"]
jwks_file = "${join(tmp, "platform-jwks.json")}"

[limits]
agent_requests_per_second = 0

[validation]
status_list_ttl_seconds = 1
`,
  );
  const proc: ChildProcess = spawn(join(BIN, "taskpassd"), ["--config", join(tmp, "taskpass.toml")], {
    stdio: ["ignore", "inherit", "inherit"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  const endpoint = join(data, "broker.json");
  const deadline = Date.now() + 30_000;
  while (!existsSync(endpoint)) {
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error("taskpassd did not start");
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, 50));
  const doc = JSON.parse(readFileSync(endpoint, "utf8")) as { http: string; grpc: string };
  const cli = (...args: string[]) => {
    const out = execFileSync(join(BIN, "taskpass"), ["--data-dir", data, "--output", "json", ...args], { encoding: "utf8" });
    return out.trim() ? JSON.parse(out) : {};
  };
  return {
    url: doc.http,
    grpcUrl: doc.grpc,
    caPem: readFileSync(join(data, "ca.pem"), "utf8"),
    dataDir: data,
    async attestation(subject: string, ttl = 300) {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ jti: randomUUID() })
        .setProtectedHeader({ alg: "ES256", kid: "platform-1" })
        .setIssuer(PLATFORM)
        .setSubject(subject)
        .setAudience("taskpass")
        .setIssuedAt(now)
        .setNotBefore(now - 5)
        .setExpirationTime(now + ttl)
        .sign(privateKey);
    },
    register(name, subject, opts = {}) {
      const args = ["agent", "register", name, "--owner", "team-ts", "--purpose", "node --test", "--oidc", `${PLATFORM}=${subject}`, "--max-ttl", "600"];
      for (const a of opts.audiences ?? [API]) args.push("--audience", a);
      for (const s of opts.scopes ?? ["read", "write"]) args.push("--scope", s);
      cli(...args);
    },
    cli,
    async stop() {
      proc.kill("SIGTERM");
      await new Promise((r) => proc.once("exit", r));
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

export const BIN_DIR = BIN;

export function fresh(prefix: string): { name: string; subject: string } {
  const name = `${prefix}-${randomUUID().slice(0, 8)}`;
  return { name, subject: `sub-${name}` };
}
