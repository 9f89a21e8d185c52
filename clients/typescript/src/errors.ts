/** The broker refused a call: `code` is the gRPC code name, `status` the HTTP status. */
export class TaskpassError extends Error {
  readonly code: string;
  readonly status: number;
  constructor(message: string, code = "UNKNOWN", status = 0) {
    super(message);
    this.name = "TaskpassError";
    this.code = code;
    this.status = status;
  }
}

/** A token presented to an API is not valid; `reason` is a short stable string
 * (`expired`, `wrong_audience`, `revoked`, ...). */
export class InvalidTokenError extends Error {
  readonly reason: string;
  constructor(reason: string, message?: string) {
    super(message ?? reason);
    this.name = "InvalidTokenError";
    this.reason = reason;
  }
}

/** The error for an error answer of the broker's JSON API. */
export function fromAnswer(status: number, body: unknown): TaskpassError {
  const err = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  const code = typeof err?.code === "string" ? err.code : "UNKNOWN";
  const message = typeof err?.message === "string" ? err.message : `HTTP ${status}`;
  return new TaskpassError(message, code, status);
}
