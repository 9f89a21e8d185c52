/**
 * Taskpass for TypeScript: agents get task-scoped, short-lived tokens; APIs verify them.
 *
 * ```ts
 * const tp = new Taskpass({ url: "https://taskpass.example.org",
 *                           attestation: fileAttestation("/var/run/secrets/tokens/taskpass") });
 * await tp.withTask({ purpose: "triage", audiences: [API], scopes: ["tickets:read"] }, async (task) => {
 *   const res = await task.fetch(`${API}/v1/tickets/4711`);
 * }); // completed here: every token of the task is revoked
 * ```
 */
export { envAttestation, fileAttestation, type Attestation } from "./attestation.js";
export {
  REFRESH_FRACTION,
  REFRESH_MARGIN_SECONDS,
  Task,
  Taskpass,
  isFresh,
  type McpAuthProvider,
  type TaskInfo,
  type TaskOptions,
  type TaskpassOptions,
  type Token,
} from "./client.js";
export { InvalidTokenError, TaskpassError } from "./errors.js";
export type { TlsOptions } from "./http.js";
export { Verifier, type Claims, type VerifierOptions } from "./verify.js";
