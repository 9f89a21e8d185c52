import { request as httpsRequest } from "node:https";
import { URL } from "node:url";

/** How to reach an HTTPS server: the CA to trust and a client certificate, PEM. */
export interface TlsOptions {
  /** PEM of the CA(s) to trust (the broker's `ca.pem` contents); default: the system's. */
  ca?: string;
  /** PEM client certificate (mTLS attestation). */
  cert?: string;
  /** PEM key of `cert`. */
  key?: string;
  /** Milliseconds before a request is abandoned (default 10 000). */
  timeoutMs?: number;
}

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

const MAX_ANSWER_BYTES = 1024 * 1024;

/** One HTTPS request with `node:https` (so a private CA and client certificates work without
 * any dependency). The body is at most 1 MiB. */
export function send(
  method: string,
  url: string,
  tls: TlsOptions,
  headers: Record<string, string> = {},
  body?: string,
): Promise<Answer> {
  const u = new URL(url);
  if (u.protocol !== "https:") return Promise.reject(new Error(`${url} is not an https:// URL`));
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      u,
      {
        method,
        ca: tls.ca,
        cert: tls.cert,
        key: tls.key,
        headers: body === undefined ? headers : { ...headers, "content-length": Buffer.byteLength(body).toString() },
        timeout: tls.timeoutMs ?? 10_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > MAX_ANSWER_BYTES) {
            req.destroy(new Error(`the answer from ${u.origin} is larger than ${MAX_ANSWER_BYTES} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }),
        );
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`no answer from ${u.origin} within ${tls.timeoutMs ?? 10_000} ms`)));
    req.on("error", reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}
