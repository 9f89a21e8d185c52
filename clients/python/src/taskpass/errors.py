"""Errors from the broker, one class per gRPC code it answers with."""

from __future__ import annotations


class TaskpassError(Exception):
    """The broker refused a call. ``code`` is the gRPC code name (``PERMISSION_DENIED``),
    ``status`` the HTTP status, and the message says what to do about it."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None, status: int = 0) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.status = status
        self.message = message


class Unauthenticated(TaskpassError):
    """The attestation is missing, malformed, expired, untrusted or matches no agent."""

    code = "UNAUTHENTICATED"


class PermissionDenied(TaskpassError):
    """Attested, but policy or the agent's allow-lists say no; the message names the rule."""

    code = "PERMISSION_DENIED"


class InvalidArgument(TaskpassError):
    """The request is malformed."""

    code = "INVALID_ARGUMENT"


class NotFound(TaskpassError):
    """No such task for this agent."""

    code = "NOT_FOUND"


class FailedPrecondition(TaskpassError):
    """The task is not open (completed, expired, revoked) or the agent is suspended."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(TaskpassError):
    """A size or rate limit."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(TaskpassError):
    """The broker cannot answer now (its store cannot write, an issuer's keys cannot be
    fetched, or it cannot be reached): retry."""

    code = "UNAVAILABLE"


class InvalidToken(Exception):
    """A token presented to an API is not valid; ``reason`` is a short stable string
    (``expired``, ``wrong_audience``, ``revoked``, ...)."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


_BY_CODE = {
    cls.code: cls
    for cls in (
        Unauthenticated,
        PermissionDenied,
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
    )
}


def from_answer(status: int, body: object) -> TaskpassError:
    """The error for an error answer of the broker's JSON API."""
    code, message = "UNKNOWN", f"HTTP {status}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", code))
        message = str(body["error"].get("message", message))
    cls = _BY_CODE.get(code, TaskpassError)
    if cls is TaskpassError:
        return TaskpassError(message, code=code, status=status)
    return cls(message, status=status)
