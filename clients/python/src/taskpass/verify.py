"""APIs: verify the Taskpass tokens agents present, with PyJWT, the broker's JWKS and its
token status lists (draft-ietf-oauth-status-list), over plain HTTPS.

.. code-block:: python

    verifier = taskpass.AsyncVerifier("https://taskpass.example.org",
                                      audience="https://tickets.example.com")
    claims = await verifier.verify(bearer)          # raises taskpass.InvalidToken
    if "tickets:read" not in claims.scopes: ...     # 403

The checks are the broker's own profile: a compact JWS with ``typ`` at+jwt, ``alg`` EdDSA or
ES256 and the one its key is pinned to, a known ``kid`` (the JWKS is fetched again, at most
every 10 s, on an unknown one), exact ``iss``, ``aud`` equal to this API, ``exp``/``nbf``/
``iat`` within a small leeway, a lifetime no longer than the broker's maximum, no ``cnf`` (a
bound token needs its holder checked, which this verifier cannot do), and a status-list entry
that says valid. Revocations reach it within the list's ``ttl`` (30 s by default).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from .errors import InvalidToken

#: Clock skew allowed on ``exp``, ``nbf`` and ``iat``, seconds.
DEFAULT_LEEWAY = 5
#: The longest lifetime (exp - iat) accepted, seconds: the broker's ``tokens.max_ttl_seconds``.
DEFAULT_MAX_LIFETIME = 86_400
#: The least time between two JWKS fetches caused by unknown ``kid``s, seconds.
MIN_KEY_REFETCH = 10.0
#: How long past a list's ``ttl`` its copy serves while it cannot be fetched, seconds.
DEFAULT_STALENESS_BUDGET = 10.0
MAX_TOKEN_BYTES = 16 * 1024
MAX_LIST_BYTES = 1024 * 1024
_ALGS = ("EdDSA", "ES256")


@dataclass(frozen=True)
class Claims:
    """A token that passed every check."""

    subject: str
    client_id: str
    task_id: str
    token_id: str
    audience: str
    scopes: tuple[str, ...]
    issued_at: int
    expires_at: int
    actor: str | None
    raw: dict[str, Any] = field(repr=False)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass
class _List:
    fetched: float
    ttl: float
    exp: int
    bits: int
    statuses: bytes

    def status(self, idx: int) -> int | None:
        bit = idx * self.bits
        if idx < 0 or bit // 8 >= len(self.statuses):
            return None
        return (self.statuses[bit // 8] >> (bit % 8)) & ((1 << self.bits) - 1)


class _Core:
    def __init__(
        self,
        issuer: str,
        audience: str,
        base_url: str | None,
        leeway: int,
        max_lifetime: int,
        staleness_budget: float,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.base_url = (base_url or issuer).rstrip("/")
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self.budget = staleness_budget
        self.keys: dict[str, jwt.PyJWK] = {}
        self.last_key_fetch = 0.0
        self.lists: dict[int, _List] = {}
        #: When each list last failed to be fetched, and why (monotonic seconds).
        self.failed: dict[int, tuple[float, InvalidToken]] = {}
        self._list_re = re.compile(re.escape(self.issuer) + r"/statuslists/(0|[1-9][0-9]{0,18})")

    # The JWKS.
    def load_keys(self, doc: Any) -> None:
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise InvalidToken("unknown_key", "the broker's JWKS has no keys array")
        keys = {}
        for k in doc["keys"]:
            if not isinstance(k, dict) or "kid" not in k or "d" in k:
                continue
            try:
                keys[str(k["kid"])] = jwt.PyJWK(k)
            except jwt.PyJWTError:
                continue
        self.keys = keys
        self.last_key_fetch = time.monotonic()

    def may_refetch(self) -> bool:
        return time.monotonic() - self.last_key_fetch >= MIN_KEY_REFETCH

    def header(self, token: str, typ: str) -> tuple[dict[str, Any], str]:
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("malformed", "token is larger than the size limit")
        try:
            h = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidToken("malformed", f"token is malformed: {e}") from None
        t = str(h.get("typ", "")).lower()
        if t not in (typ, "application/" + typ):
            raise InvalidToken("malformed", f"token type is not {typ}")
        for forbidden in ("crit", "jku", "jwk", "x5u", "x5c"):
            if forbidden in h:
                raise InvalidToken("malformed", f"token header parameter {forbidden} is not allowed")
        if h.get("alg") not in _ALGS:
            raise InvalidToken("bad_signature", "token algorithm is not accepted")
        kid = h.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("malformed", "token header has no key id")
        return h, kid

    def key_for(self, h: dict[str, Any], kid: str) -> jwt.PyJWK:
        key = self.keys.get(kid)
        if key is None:
            raise InvalidToken("unknown_key", "token key id is not in the key set")
        if key.algorithm_name != h["alg"]:
            raise InvalidToken("bad_signature", "token algorithm is not the one its key is pinned to")
        return key

    def claims(self, token: str, key: jwt.PyJWK, now: float) -> dict[str, Any]:
        try:
            c = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired", "token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("not_yet_valid", "token is not yet valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong_audience", "token audience does not match") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong_issuer", "token issuer is not the trusted issuer") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad_signature", "token signature is invalid") from None
        except jwt.PyJWTError as e:
            raise InvalidToken("malformed", f"token is malformed: {e}") from None
        if not isinstance(c.get("aud"), str):
            raise InvalidToken("malformed", "token aud must be one string")
        for name in ("client_id", "txn", "scope"):
            if not isinstance(c.get(name), str):
                raise InvalidToken("malformed", f"token claim {name} is missing")
        if c["iat"] > now + self.leeway:
            raise InvalidToken("not_yet_valid", "token is not yet valid")
        if c["exp"] - c["iat"] > self.max_lifetime:
            raise InvalidToken("malformed", "token lifetime is longer than the broker's maximum")
        if "cnf" in c:
            raise InvalidToken(
                "proof_required",
                "token is bound to a certificate or key; this verifier cannot check its holder",
            )
        return c

    def locate(self, c: dict[str, Any]) -> tuple[int, int]:
        ref = (c.get("status") or {}).get("status_list") if isinstance(c.get("status"), dict) else None
        if not isinstance(ref, dict) or not isinstance(ref.get("idx"), int) or not isinstance(ref.get("uri"), str):
            raise InvalidToken("malformed", "token has no status list entry")
        m = self._list_re.fullmatch(ref["uri"])
        if m is None:
            # Only the broker's own lists are ever fetched.
            raise InvalidToken("malformed", "token's status list is not one of the issuer's")
        return int(m.group(1)), ref["idx"]

    def usable(self, n: int, fetch_failed: bool) -> _List | None:
        lst = self.lists.get(n)
        if lst is None:
            return None
        age = time.monotonic() - lst.fetched
        limit = lst.ttl + (self.budget if fetch_failed else 0)
        return lst if age < limit and time.time() < lst.exp else None

    def read_list(self, n: int, body: str, now: float) -> _List:
        uri = f"{self.issuer}/statuslists/{n}"
        h, kid = self.header(body.strip(), "statuslist+jwt")
        key = self.key_for(h, kid)
        try:
            c = jwt.decode(
                body.strip(),
                key,
                algorithms=[key.algorithm_name],
                issuer=self.issuer,
                subject=uri,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub"], "verify_aud": False},
            )
        except jwt.PyJWTError as e:
            raise InvalidToken("revocations_stale", f"the status list is not acceptable: {e}") from None
        sl = c.get("status_list")
        if not isinstance(sl, dict) or sl.get("bits") not in (1, 2, 4, 8) or not isinstance(sl.get("lst"), str):
            raise InvalidToken("revocations_stale", "the status list is malformed")
        try:
            raw = jwt.utils.base64url_decode(sl["lst"])
            statuses = zlib.decompressobj().decompress(raw, MAX_LIST_BYTES + 1)
        except (zlib.error, ValueError):
            raise InvalidToken("revocations_stale", "the status list is not base64url ZLIB") from None
        if len(statuses) > MAX_LIST_BYTES:
            raise InvalidToken("revocations_stale", "the status list is larger than the size limit")
        ttl = c.get("ttl", 300)
        ttl = float(min(ttl, 300)) if isinstance(ttl, int) and ttl > 0 else 300.0
        lst = _List(time.monotonic(), ttl, int(c["exp"]), int(sl["bits"]), statuses)
        self.lists[n] = lst
        return lst

    def recent_failure(self, n: int) -> InvalidToken | None:
        f = self.failed.get(n)
        return f[1] if f is not None and time.monotonic() - f[0] < FETCH_BACKOFF else None

    def record_failure(self, n: int, e: Exception) -> InvalidToken:
        err = e if isinstance(e, InvalidToken) else InvalidToken(
            "revocations_stale", f"the status list cannot be read: {e}"
        )
        if len(self.failed) > 1024:
            self.failed.clear()
        self.failed[n] = (time.monotonic(), err)
        return err

    @staticmethod
    def judge(lst: _List, idx: int) -> None:
        s = lst.status(idx)
        if s is None:
            raise InvalidToken("malformed", "token's index is outside its status list")
        if s == 2:
            raise InvalidToken("suspended", "token is suspended")
        if s != 0:
            raise InvalidToken("revoked", "token is revoked")

    @staticmethod
    def result(c: dict[str, Any]) -> Claims:
        act = c.get("act")
        return Claims(
            subject=c["sub"],
            client_id=c["client_id"],
            task_id=c["txn"],
            token_id=c["jti"],
            audience=c["aud"],
            scopes=tuple(s for s in c["scope"].split(" ") if s),
            issued_at=int(c["iat"]),
            expires_at=int(c["exp"]),
            actor=act.get("sub") if isinstance(act, dict) else None,
            raw=c,
        )


def _verify(ca: str | bool | None) -> "ssl.SSLContext | bool":
    if ca is None:
        return True
    if isinstance(ca, str):
        return ssl.create_default_context(cafile=ca)
    return ca


#: How long a failed fetch of a list is not tried again, seconds.
FETCH_BACKOFF = 1.0
MAX_JWKS_BYTES = 256 * 1024
MAX_LIST_TOKEN_BYTES = 256 * 1024


def _check_status(resp: httpx.Response, what: str) -> None:
    if resp.status_code != 200:
        raise InvalidToken("revocations_stale", f"{what}: HTTP {resp.status_code}")


def _too_big(what: str, limit: int) -> InvalidToken:
    return InvalidToken("revocations_stale", f"{what} is larger than {limit} bytes")


async def _aget(http: httpx.AsyncClient, url: str, what: str, limit: int, accept: str) -> str:
    """GETs at most ``limit`` bytes."""
    async with http.stream("GET", url, headers={"accept": accept}) as resp:
        _check_status(resp, what)
        body = bytearray()
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise _too_big(what, limit)
    return body.decode("utf-8", "replace")


def _get(http: httpx.Client, url: str, what: str, limit: int, accept: str) -> str:
    with http.stream("GET", url, headers={"accept": accept}) as resp:
        _check_status(resp, what)
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise _too_big(what, limit)
    return body.decode("utf-8", "replace")


class AsyncVerifier:
    """Verifies tokens for ``audience`` issued by ``issuer``; ``base_url`` is where the
    broker's HTTPS listener is reached (default: the issuer), ``ca`` the CA file to trust."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        base_url: str | None = None,
        ca: str | bool | None = None,
        leeway: int = DEFAULT_LEEWAY,
        max_lifetime: int = DEFAULT_MAX_LIFETIME,
        staleness_budget: float = DEFAULT_STALENESS_BUDGET,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._core = _Core(issuer, audience, base_url, leeway, max_lifetime, staleness_budget)
        self._http = http or httpx.AsyncClient(verify=_verify(ca), timeout=5.0)
        self._keys_lock = asyncio.Lock()
        self._list_lock = asyncio.Lock()

    @property
    def audience(self) -> str:
        return self._core.audience

    @property
    def issuer(self) -> str:
        return self._core.issuer

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _fetch_keys(self, kid: str) -> None:
        core = self._core
        async with self._keys_lock:
            # Another caller may have fetched them while this one waited.
            if kid in core.keys or (core.keys and not core.may_refetch()):
                return
            core.last_key_fetch = time.monotonic()
            body = await _aget(self._http, core.base_url + "/.well-known/jwks.json", "the JWKS",
                               MAX_JWKS_BYTES, "application/json")
            core.load_keys(json.loads(body))

    async def verify(self, token: str) -> Claims:
        """The token's claims, or :class:`~taskpass.InvalidToken` with its reason."""
        core = self._core
        h, kid = core.header(token, "at+jwt")
        if kid not in core.keys and (not core.keys or core.may_refetch()):
            try:
                await self._fetch_keys(kid)
            except (httpx.HTTPError, ValueError, InvalidToken) as e:
                raise InvalidToken("unknown_key", f"the broker's keys cannot be fetched: {e}") from None
        c = core.claims(token, core.key_for(h, kid), time.time())
        n, idx = core.locate(c)
        lst = core.usable(n, False)
        if lst is None:
            lst = await self._list(n)
        core.judge(lst, idx)
        return core.result(c)

    async def _list(self, n: int) -> _List:
        core = self._core
        async with self._list_lock:
            lst = core.usable(n, False)
            if lst is not None:
                return lst
            err = core.recent_failure(n)
            if err is None:
                try:
                    body = await _aget(self._http, f"{core.base_url}/statuslists/{n}", "the status list",
                                       MAX_LIST_TOKEN_BYTES, "application/statuslist+jwt")
                    return core.read_list(n, body, time.time())
                except (httpx.HTTPError, InvalidToken) as e:
                    err = core.record_failure(n, e)
        held = core.usable(n, True)
        if held is None:
            raise err
        return held


class Verifier:
    """:class:`AsyncVerifier` for synchronous code (thread-safe)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        base_url: str | None = None,
        ca: str | bool | None = None,
        leeway: int = DEFAULT_LEEWAY,
        max_lifetime: int = DEFAULT_MAX_LIFETIME,
        staleness_budget: float = DEFAULT_STALENESS_BUDGET,
        http: httpx.Client | None = None,
    ) -> None:
        self._core = _Core(issuer, audience, base_url, leeway, max_lifetime, staleness_budget)
        self._http = http or httpx.Client(verify=_verify(ca), timeout=5.0)
        self._lock = threading.Lock()
        self._keys_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def verify(self, token: str) -> Claims:
        core = self._core
        h, kid = core.header(token, "at+jwt")
        if kid not in core.keys and (not core.keys or core.may_refetch()):
            with self._keys_lock:
                if kid not in core.keys and (not core.keys or core.may_refetch()):
                    core.last_key_fetch = time.monotonic()
                    try:
                        body = _get(self._http, core.base_url + "/.well-known/jwks.json", "the JWKS",
                                    MAX_JWKS_BYTES, "application/json")
                        core.load_keys(json.loads(body))
                    except (httpx.HTTPError, ValueError, InvalidToken) as e:
                        raise InvalidToken("unknown_key", f"the broker's keys cannot be fetched: {e}") from None
        c = core.claims(token, core.key_for(h, kid), time.time())
        n, idx = core.locate(c)
        lst = core.usable(n, False)
        if lst is None:
            with self._lock:
                lst = core.usable(n, False)
                err = core.recent_failure(n) if lst is None else None
                if lst is None and err is None:
                    try:
                        body = _get(self._http, f"{core.base_url}/statuslists/{n}", "the status list",
                                    MAX_LIST_TOKEN_BYTES, "application/statuslist+jwt")
                        lst = core.read_list(n, body, time.time())
                    except (httpx.HTTPError, InvalidToken) as e:
                        err = core.record_failure(n, e)
            if lst is None:
                lst = core.usable(n, True)
                if lst is None:
                    raise err if err is not None else InvalidToken("revocations_stale")
        core.judge(lst, idx)
        return core.result(c)
