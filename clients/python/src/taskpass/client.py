"""Agents: open a task, get its tokens, complete it.

.. code-block:: python

    import taskpass

    client = taskpass.AsyncClient(
        "https://taskpass.example.org",
        attestation=taskpass.FileAttestation("/var/run/secrets/tokens/taskpass"),
    )
    async with client.task(purpose="triage ticket 4711",
                           audiences=["https://tickets.example.com"],
                           scopes=["tickets:read"]) as task:
        async with httpx.AsyncClient(auth=task.httpx_auth("https://tickets.example.com")) as http:
            await http.get("https://tickets.example.com/v1/tickets/4711")
    # the task is completed here (recorded as failed if the block raised): its tokens are revoked

The client speaks the broker's JSON API (``docs/http-api.md``) over HTTPS.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from .attestation import Attestation, read_async, read_sync
from .errors import FailedPrecondition, TaskpassError, Unavailable, from_answer

log = logging.getLogger("taskpass")

#: A cached token is fetched again once less than this share of its lifetime is left...
REFRESH_FRACTION = 0.25
#: ...or less than this many seconds, whichever comes first.
REFRESH_MARGIN_SECONDS = 30.0
#: How often a task waiting for approval is asked about.
APPROVAL_POLL_SECONDS = 1.0


def _require_open(info: "TaskInfo") -> None:
    if info.state != "open":
        raise FailedPrecondition(
            f"task {info.task_id} is {info.state} (approval {info.approval_id or 'answered'}): it was not approved"
        )


@dataclass(frozen=True)
class Token:
    """An access token for one audience."""

    access_token: str
    token_id: str
    audience: str
    scopes: tuple[str, ...]
    #: The broker's ``exp`` (Unix seconds).
    expires_at: int
    #: Seconds it had left when it arrived.
    lifetime: float = 0.0
    #: When it arrived, on this process's monotonic clock: freshness never depends on the
    #: wall clock agreeing with the broker's.
    received: float = field(default_factory=time.monotonic)

    def fresh(self, now: float | None = None) -> bool:
        """Whether it is far enough from its expiry to be handed out again (``now``: a
        :func:`time.monotonic` reading)."""
        now = time.monotonic() if now is None else now
        lifetime = max(self.lifetime, 1.0)
        margin = min(REFRESH_MARGIN_SECONDS, lifetime * REFRESH_FRACTION)
        return now < self.received + lifetime - margin

    def __repr__(self) -> str:  # never the token itself
        return f"Token(token_id={self.token_id!r}, audience={self.audience!r}, expires_at={self.expires_at})"


@dataclass(frozen=True)
class TaskInfo:
    """A task as the broker reports it."""

    task_id: str
    agent_id: str
    state: str
    purpose: str
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    created_at: int
    expires_at: int
    implicit: bool = False
    #: Set while the task waits for a human's approval.
    approval_id: str = ""
    #: Why it needs (or needed) approval.
    approval_why: str = ""
    #: The approver, once approved.
    approved_by: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TaskInfo":
        return cls(
            task_id=d["task_id"],
            agent_id=d["agent_id"],
            state=d["state"],
            purpose=d["purpose"],
            audiences=tuple(d.get("audiences", ())),
            scopes=tuple(d.get("scopes", ())),
            created_at=int(d["created_at"]),
            expires_at=int(d["expires_at"]),
            implicit=bool(d.get("implicit", False)),
            approval_id=str(d.get("approval_id", "")),
            approval_why=str(d.get("approval_why", "")),
            approved_by=str(d.get("approved_by", "")),
        )


def _verify(ca: str | ssl.SSLContext | bool | None) -> ssl.SSLContext | bool:
    """httpx's ``verify``: a CA file becomes a context trusting it alone."""
    if ca is None:
        return True
    if isinstance(ca, str):
        return ssl.create_default_context(cafile=ca)
    return ca


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def _answer(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code != 200:
        raise from_answer(resp.status_code, body)
    if not isinstance(body, dict):
        raise TaskpassError(f"the broker answered HTTP 200 without a JSON object ({resp.url})")
    return body


def _key(audience: str, scopes: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    return audience, tuple(sorted(set(scopes or ())))


def _token(body: dict[str, Any], audience: str) -> Token:
    expires_at = int(body["expires_at"])
    return Token(
        access_token=body["access_token"],
        token_id=body["token_id"],
        audience=audience,
        scopes=tuple(body.get("scopes", ())),
        expires_at=expires_at,
        lifetime=float(body.get("expires_in", expires_at - time.time())),
    )


def _over(task: "AsyncTask | Task") -> FailedPrecondition:
    return FailedPrecondition(f"task {task.id} is completed: start a new task to get tokens")


def _origin(url: str) -> str | None:
    u = httpx.URL(url)
    if u.scheme not in ("http", "https") or not u.host:
        return None
    port = u.port or (443 if u.scheme == "https" else 80)
    return f"{u.scheme}://{u.host}:{port}"


def _failure(exc: BaseException | None) -> dict[str, Any]:
    if exc is None:
        return {}
    return {"failed": True, "failure": type(exc).__name__[:256]}


class _Base:
    def __init__(
        self,
        url: str,
        attestation: Attestation,
        ca: str | ssl.SSLContext | bool | None,
        cert: tuple[str, str] | None,
        timeout: float,
    ) -> None:
        self.url = url.rstrip("/")
        self.attestation = attestation
        self._verify = _verify(ca)
        if cert is not None:
            # The agent's client certificate, for mTLS attestation.
            ctx = self._verify if isinstance(self._verify, ssl.SSLContext) else ssl.create_default_context()
            ctx.load_cert_chain(cert[0], cert[1])
            self._verify = ctx
        self._cert = cert
        self._timeout = timeout
        if attestation is None and cert is None:
            raise ValueError(
                "give an attestation (a token source) or a client certificate (cert=(cert.pem, key.pem))"
            )


class AsyncClient(_Base):
    """An agent's connection to the broker, for asyncio code.

    ``url`` is the broker's HTTPS address; ``attestation`` where the agent's platform token
    comes from (:class:`~taskpass.FileAttestation`, :class:`~taskpass.EnvAttestation`, a
    callable, or ``None`` to attest with ``cert``, the agent's client certificate and key
    files); ``ca`` the CA file to trust (the broker's ``ca.pem``; default: the system's).
    """

    def __init__(
        self,
        url: str,
        attestation: Attestation = None,
        *,
        ca: str | ssl.SSLContext | bool | None = None,
        cert: tuple[str, str] | None = None,
        timeout: float = 10.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(url, attestation, ca, cert, timeout)
        self._http = http or httpx.AsyncClient(verify=self._verify, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        token = await read_async(self.attestation)
        try:
            resp = await self._http.request(
                method, self.url + path, json=body, headers=_headers(token)
            )
        except httpx.TransportError as e:
            raise Unavailable(f"cannot reach the broker at {self.url}: {e}") from e
        return _answer(resp)

    async def start_task(
        self,
        *,
        purpose: str,
        audiences: Sequence[str],
        scopes: Sequence[str] = (),
        max_duration_seconds: int = 0,
        approval_timeout: float | None = None,
    ) -> "AsyncTask":
        """Opens a task; complete it with :meth:`AsyncTask.complete` (or use :meth:`task`).

        A task that needs a human's approval comes back ``pending_approval``; with
        ``approval_timeout`` (seconds) this waits for the answer and returns the open task,
        or raises :class:`FailedPrecondition` when it was denied or the wait ran out."""
        body = await self._call(
            "POST",
            "/v1/tasks",
            {
                "purpose": purpose,
                "audiences": list(audiences),
                "scopes": list(scopes),
                "max_duration_seconds": max_duration_seconds,
            },
        )
        task = AsyncTask(self, TaskInfo.from_json(body))
        if approval_timeout is not None and task.info.state == "pending_approval":
            deadline = time.monotonic() + approval_timeout
            while task.info.state == "pending_approval":
                if time.monotonic() >= deadline:
                    raise FailedPrecondition(
                        f"task {task.id} still waits for approval {task.info.approval_id} after {approval_timeout} s"
                    )
                await asyncio.sleep(min(APPROVAL_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
                await task.refresh()
            _require_open(task.info)
        return task

    def task(
        self,
        *,
        purpose: str,
        audiences: Sequence[str],
        scopes: Sequence[str] = (),
        max_duration_seconds: int = 0,
        approval_timeout: float | None = None,
    ) -> "_AsyncTaskScope":
        """``async with client.task(...) as task:`` opens a task and completes it on exit,
        recording a failure when the block raised."""
        return _AsyncTaskScope(
            self,
            dict(
                purpose=purpose,
                audiences=audiences,
                scopes=scopes,
                max_duration_seconds=max_duration_seconds,
                approval_timeout=approval_timeout,
            ),
        )


class _AsyncTaskScope:
    def __init__(self, client: AsyncClient, args: dict[str, Any]) -> None:
        self._client = client
        self._args = args
        self._task: AsyncTask | None = None

    async def __aenter__(self) -> "AsyncTask":
        self._task = await self._client.start_task(**self._args)
        return self._task

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        assert self._task is not None
        await self._task._finish(exc)


class AsyncTask:
    """An open task: its tokens, cached per (audience, scopes) and fetched again before they
    expire."""

    def __init__(self, client: AsyncClient, info: TaskInfo) -> None:
        self._client = client
        self.info = info
        self._tokens: dict[tuple[str, tuple[str, ...]], Token] = {}
        self._locks: dict[tuple[str, tuple[str, ...]], asyncio.Lock] = {}
        self.completed = False

    @property
    def id(self) -> str:
        return self.info.task_id

    def __repr__(self) -> str:
        return f"AsyncTask({self.id!r})"

    async def token(self, audience: str, scopes: Sequence[str] | None = None) -> str:
        """An access token for ``audience`` (default scopes: all of the task's)."""
        return (await self.token_info(audience, scopes)).access_token

    async def token_info(self, audience: str, scopes: Sequence[str] | None = None) -> Token:
        if self.completed:
            raise _over(self)
        key = _key(audience, scopes)
        cached = self._tokens.get(key)
        if cached is not None and cached.fresh():
            return cached
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.fresh():
                return cached
            body = await self._client._call(
                "POST",
                f"/v1/tasks/{self.id}/tokens",
                {"audience": audience, "scopes": list(key[1])},
            )
            if self.completed:  # completed while this fetch ran: its tokens are revoked
                raise _over(self)
            t = _token(body, audience)
            self._tokens[key] = t
            return t

    async def refresh(self) -> TaskInfo:
        """The task as the broker sees it now."""
        self.info = TaskInfo.from_json(await self._client._call("GET", f"/v1/tasks/{self.id}"))
        return self.info

    async def complete(self, *, failed: BaseException | None = None) -> int:
        """Completes the task: every token it holds is revoked. ``failed``: the exception
        that ended the work, recorded as its failure. Returns how many tokens were revoked."""
        body = await self._client._call("POST", f"/v1/tasks/{self.id}/complete", _failure(failed))
        self.completed = True
        self._tokens.clear()
        return int(body.get("revoked_tokens", 0))

    async def _finish(self, exc: BaseException | None) -> None:
        try:
            await self.complete(failed=exc)
        except FailedPrecondition as e:
            # Already over (expired, revoked by an operator): its tokens are revoked anyway.
            log.warning("taskpass: task %s could not be completed: %s", self.id, e)
            self.completed = True
        except TaskpassError:
            if exc is None:
                raise
            log.exception("taskpass: task %s could not be completed", self.id)

    def httpx_auth(
        self, audience: str, scopes: Sequence[str] | None = None, *, origin: str | None = None
    ) -> "TaskAuth":
        """An ``httpx`` auth (also usable with ``httpx2``, which the MCP SDK uses) that sends
        this task's token for ``audience``, fetched again before it expires, to ``origin``
        only (default: the audience's own, when it is a URL): requests elsewhere (an OAuth
        discovery, a redirect) go without it."""
        return _auth(self, audience, scopes, origin)


class TaskAuth(httpx.Auth):
    """``Authorization: Bearer <task token>`` on the requests to one origin; with an async
    task, only the async flow works, with a sync one only the sync flow."""

    def __init__(
        self,
        task: "AsyncTask | Task",
        audience: str,
        scopes: Sequence[str] | None,
        origin: str | None = None,
    ) -> None:
        self._task = task
        self._audience = audience
        self._scopes = scopes
        self._origin = _origin(origin or audience)
        if self._origin is None:
            raise ValueError(
                f"audience {audience!r} is not a URL: say where its token may be sent with origin=..."
            )

    def __repr__(self) -> str:
        return f"TaskAuth(task={self._task.id!r}, audience={self._audience!r}, origin={self._origin!r})"

    def _for_us(self, request: Any) -> bool:
        return _origin(str(request.url)) == self._origin

    def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        if not isinstance(self._task, Task):
            raise RuntimeError("this auth belongs to an async task: use an async HTTP client")
        if self._for_us(request):
            request.headers["Authorization"] = "Bearer " + self._task.token(self._audience, self._scopes)
        yield request

    async def async_auth_flow(self, request: Any) -> AsyncIterator[Any]:
        if self._for_us(request):
            if isinstance(self._task, AsyncTask):
                token = await self._task.token(self._audience, self._scopes)
            else:
                token = await asyncio.to_thread(self._task.token, self._audience, self._scopes)
            request.headers["Authorization"] = "Bearer " + token
        yield request


try:  # Register with httpx2's Auth too, so the MCP SDK's isinstance checks accept it.
    import httpx2 as _httpx2  # type: ignore[import-not-found]

    class _Httpx2TaskAuth(TaskAuth, _httpx2.Auth):  # type: ignore[misc]
        pass

    _AUTH_CLASS: type[TaskAuth] = _Httpx2TaskAuth
except Exception:  # pragma: no cover - httpx2 not installed
    _AUTH_CLASS = TaskAuth


def _auth(
    task: "AsyncTask | Task", audience: str, scopes: Sequence[str] | None, origin: str | None
) -> TaskAuth:
    return _AUTH_CLASS(task, audience, scopes, origin)


class Client(_Base):
    """:class:`AsyncClient` for synchronous code: ``with client.task(...) as task:``."""

    def __init__(
        self,
        url: str,
        attestation: Attestation = None,
        *,
        ca: str | ssl.SSLContext | bool | None = None,
        cert: tuple[str, str] | None = None,
        timeout: float = 10.0,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(url, attestation, ca, cert, timeout)
        self._http = http or httpx.Client(verify=self._verify, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        token = read_sync(self.attestation)
        try:
            resp = self._http.request(method, self.url + path, json=body, headers=_headers(token))
        except httpx.TransportError as e:
            raise Unavailable(f"cannot reach the broker at {self.url}: {e}") from e
        return _answer(resp)

    def start_task(
        self,
        *,
        purpose: str,
        audiences: Sequence[str],
        scopes: Sequence[str] = (),
        max_duration_seconds: int = 0,
        approval_timeout: float | None = None,
    ) -> "Task":
        """As :meth:`AsyncClient.start_task`."""
        body = self._call(
            "POST",
            "/v1/tasks",
            {
                "purpose": purpose,
                "audiences": list(audiences),
                "scopes": list(scopes),
                "max_duration_seconds": max_duration_seconds,
            },
        )
        task = Task(self, TaskInfo.from_json(body))
        if approval_timeout is not None and task.info.state == "pending_approval":
            deadline = time.monotonic() + approval_timeout
            while task.info.state == "pending_approval":
                if time.monotonic() >= deadline:
                    raise FailedPrecondition(
                        f"task {task.id} still waits for approval {task.info.approval_id} after {approval_timeout} s"
                    )
                time.sleep(min(APPROVAL_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
                task.refresh()
            _require_open(task.info)
        return task

    def task(
        self,
        *,
        purpose: str,
        audiences: Sequence[str],
        scopes: Sequence[str] = (),
        max_duration_seconds: int = 0,
        approval_timeout: float | None = None,
    ) -> "_TaskScope":
        return _TaskScope(
            self,
            dict(
                purpose=purpose,
                audiences=audiences,
                scopes=scopes,
                max_duration_seconds=max_duration_seconds,
                approval_timeout=approval_timeout,
            ),
        )


class _TaskScope:
    def __init__(self, client: Client, args: dict[str, Any]) -> None:
        self._client = client
        self._args = args
        self._task: Task | None = None

    def __enter__(self) -> "Task":
        self._task = self._client.start_task(**self._args)
        return self._task

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        assert self._task is not None
        self._task._finish(exc)


class Task:
    """:class:`AsyncTask` for synchronous code (thread-safe)."""

    def __init__(self, client: Client, info: TaskInfo) -> None:
        self._client = client
        self.info = info
        self._tokens: dict[tuple[str, tuple[str, ...]], Token] = {}
        self._lock = threading.Lock()
        self.completed = False

    @property
    def id(self) -> str:
        return self.info.task_id

    def __repr__(self) -> str:
        return f"Task({self.id!r})"

    def token(self, audience: str, scopes: Sequence[str] | None = None) -> str:
        return self.token_info(audience, scopes).access_token

    def token_info(self, audience: str, scopes: Sequence[str] | None = None) -> Token:
        key = _key(audience, scopes)
        with self._lock:
            if self.completed:
                raise _over(self)
            cached = self._tokens.get(key)
            if cached is not None and cached.fresh():
                return cached
            body = self._client._call(
                "POST",
                f"/v1/tasks/{self.id}/tokens",
                {"audience": audience, "scopes": list(key[1])},
            )
            t = _token(body, audience)
            self._tokens[key] = t
            return t

    def refresh(self) -> TaskInfo:
        self.info = TaskInfo.from_json(self._client._call("GET", f"/v1/tasks/{self.id}"))
        return self.info

    def complete(self, *, failed: BaseException | None = None) -> int:
        body = self._client._call("POST", f"/v1/tasks/{self.id}/complete", _failure(failed))
        self.completed = True
        with self._lock:
            self._tokens.clear()
        return int(body.get("revoked_tokens", 0))

    def _finish(self, exc: BaseException | None) -> None:
        try:
            self.complete(failed=exc)
        except FailedPrecondition as e:
            log.warning("taskpass: task %s could not be completed: %s", self.id, e)
            self.completed = True
        except TaskpassError:
            if exc is None:
                raise
            log.exception("taskpass: task %s could not be completed", self.id)

    def httpx_auth(
        self, audience: str, scopes: Sequence[str] | None = None, *, origin: str | None = None
    ) -> TaskAuth:
        return _auth(self, audience, scopes, origin)


__all__ = [
    "AsyncClient",
    "AsyncTask",
    "Client",
    "Task",
    "TaskAuth",
    "TaskInfo",
    "Token",
]
