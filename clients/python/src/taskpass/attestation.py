"""Where an agent's attestation (its platform's OIDC token) comes from.

An attestation source is anything with ``get() -> str``, or a plain callable returning the
token (or an awaitable of it). The token is read again for every call to the broker, so a
rotated Kubernetes projected token is picked up without a restart.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol, Union, runtime_checkable


@runtime_checkable
class AttestationSource(Protocol):
    """Gives the current attestation token."""

    def get(self) -> str: ...


class FileAttestation:
    """A token in a file, e.g. a Kubernetes projected service-account token
    (``/var/run/secrets/tokens/taskpass``): read again whenever the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int] | None = None
        self._token = ""

    def get(self) -> str:
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._seen:
            self._token = self.path.read_text().strip()
            self._seen = stamp
        if not self._token:
            raise ValueError(f"attestation file {self.path} is empty")
        return self._token

    def __repr__(self) -> str:
        return f"FileAttestation({str(self.path)!r})"


class EnvAttestation:
    """A token in an environment variable (read at each use)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def get(self) -> str:
        token = os.environ.get(self.name, "").strip()
        if not token:
            raise ValueError(f"environment variable {self.name} holds no attestation token")
        return token

    def __repr__(self) -> str:
        return f"EnvAttestation({self.name!r})"


Attestation = Union[
    AttestationSource, Callable[[], str], Callable[[], Awaitable[str]], str, None
]
"""What a client accepts as its attestation: a source, a callable, a token, or ``None`` to
attest with the client certificate of the connection (mTLS)."""


def read_sync(source: Attestation) -> str | None:
    """The token now, or ``None`` for mTLS attestation."""
    if source is None:
        return None
    if isinstance(source, str):
        return source
    if isinstance(source, AttestationSource):
        return source.get()
    value = source()
    if inspect.isawaitable(value):
        raise TypeError("an async attestation callable needs the AsyncClient")
    return str(value)


async def read_async(source: Attestation) -> str | None:
    """The token now, or ``None`` for mTLS attestation."""
    if source is None or isinstance(source, (str, AttestationSource)):
        return read_sync(source)
    value = source()
    if inspect.isawaitable(value):
        value = await value
    return str(value)
