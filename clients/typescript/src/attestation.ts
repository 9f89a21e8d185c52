import { readFileSync, statSync } from "node:fs";

/** Where an agent's attestation (its platform's OIDC token) comes from: read again for every
 * call to the broker, so a rotated Kubernetes projected token is picked up. `undefined`:
 * attest with the client certificate (mTLS). */
export type Attestation = string | (() => string | Promise<string>) | undefined;

/** A token in a file (a Kubernetes projected service-account token): read again when the
 * file changes. */
export function fileAttestation(path: string): () => string {
  let seen = "";
  let token = "";
  return () => {
    const st = statSync(path);
    const stamp = `${st.mtimeMs}:${st.size}`;
    if (stamp !== seen) {
      token = readFileSync(path, "utf8").trim();
      seen = stamp;
    }
    if (!token) throw new Error(`attestation file ${path} is empty`);
    return token;
  };
}

/** A token in an environment variable, read at each use. */
export function envAttestation(name: string): () => string {
  return () => {
    const token = (process.env[name] ?? "").trim();
    if (!token) throw new Error(`environment variable ${name} holds no attestation token`);
    return token;
  };
}

export async function readAttestation(a: Attestation): Promise<string | undefined> {
  if (a === undefined || typeof a === "string") return a;
  return await a();
}
