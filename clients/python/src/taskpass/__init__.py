"""Taskpass for Python: agents get task-scoped, short-lived tokens; APIs verify them.

Agents (:class:`AsyncClient`, :class:`Client`)::

    async with client.task(purpose=..., audiences=[...], scopes=[...]) as task:
        token = await task.token("https://tickets.example.com")

APIs (:class:`AsyncVerifier`, :class:`Verifier`; :mod:`taskpass.mcp` for MCP servers)::

    claims = await verifier.verify(bearer)
"""

from .attestation import AttestationSource, EnvAttestation, FileAttestation
from .client import AsyncClient, AsyncTask, Client, Task, TaskAuth, TaskInfo, Token
from .errors import (
    FailedPrecondition,
    InvalidArgument,
    InvalidToken,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TaskpassError,
    Unauthenticated,
    Unavailable,
)
from .verify import AsyncVerifier, Claims, Verifier

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncTask",
    "AsyncVerifier",
    "AttestationSource",
    "Claims",
    "Client",
    "EnvAttestation",
    "FailedPrecondition",
    "FileAttestation",
    "InvalidArgument",
    "InvalidToken",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Task",
    "TaskAuth",
    "TaskInfo",
    "TaskpassError",
    "Token",
    "Unauthenticated",
    "Unavailable",
    "Verifier",
]
