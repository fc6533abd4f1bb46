"""Who may call what: API keys on the HTTP side.

- Admin routes always need an active ``admin`` key (401 without one, 403 for an inference key).
- Inference routes need an active key (either scope) whenever any active key exists or the
  server binds to a non-loopback address; a key limited to some models gets 403 for others.
- An inference request with a key that has ``rpm``/``tpm`` set is counted against them
  (:mod:`lmaas.gateway.ratelimit`, from the cached key info, no database query): 429 once
  used up; the ``x-ratelimit-*`` headers go on the response either way.
- With no active key, a server bound to a non-loopback address refuses to start
  (:meth:`Authenticator.check_startup`).
- The job runner the gateway started presents the gateway's runner token (from this machine
  only, :meth:`Authenticator.trust_runner`) and names the key that owns its job in
  ``X-Lmaas-Job-Owner``: the request is then that key's, with its model list and rate limits
  (a revoked owner key gets 401). An empty owner is a job of an open server. A runner actor
  on a Ray node presents its run's secret instead, accepted from any address while the run
  lasts (:mod:`lmaas.jobs.ray_runners`), and may name only the owner of a job it holds (its
  lease; empty only for an open server's job): 403 for any other key, the local admin's
  included (a positive answer is kept ``_HELD_TTL`` seconds).
- The local admin token `lmaas serve` wrote under its home (:mod:`lmaas.local_admin`) is an
  admin key for loopback clients only (:meth:`Authenticator.trust_local_admin`); from
  elsewhere it is refused (401), so remote administration needs a real key.

Which rule applies is fixed by the route a request matched (it declares the ``AdminKey`` or
``InferenceKey`` alias of ``gateway/deps.py``), never by a URL rebuilt from the ``Host``
header. Keys are never logged and never appear in an error message.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Callable
from typing import Final

import anyio.to_thread
from fastapi import Request

from lmaas.errors import AuthenticationError, LmaasError, PermissionDeniedError
from lmaas.gateway.ratelimit import KeyRateLimiter
from lmaas.keys import KeyInfo, KeyStore
from lmaas.local_admin import LOCAL_ADMIN, TOKEN_PREFIX
from lmaas.protocol.jobs import JOB_OWNER_HEADER

CREATE_ADMIN_KEY_HINT: Final = "lmaas keys create --scope admin --name NAME"
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})
# How long the key a job runs as is taken from memory before it is read again.
_OWNER_TTL: Final = 5.0
_HELD_TTL: Final = 5.0
_LOCAL_RUNNER: Final = ""  # the runner beside the gateway, as _runner_of names it


class InsecureStartupError(LmaasError, ValueError):
    """The server would accept unauthenticated requests from the network."""

    status_code = 500
    error_type = "server_error"
    default_code = "insecure_startup"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``, IPv6 possibly in brackets) only accepts
    connections from this machine. Unknown host names count as not loopback."""
    host = host.strip().lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def presented_key(request: Request) -> str | None:
    """The key from ``Authorization: Bearer <key>``, else from ``X-API-Key``, else ``None``."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise AuthenticationError(
                "the Authorization header must read 'Bearer <API key>'",
                code="invalid_authorization_header",
            )
        return credentials.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class Authenticator:
    """Applies the key rules for one server; kept on ``app.state.auth``."""

    def __init__(
        self, keys: KeyStore, *, bind_host: str, limiter: KeyRateLimiter | None = None
    ) -> None:
        self._keys = keys
        self._limiter = limiter
        self._bind_host = bind_host
        self._loopback = is_loopback(bind_host)
        self._runner_token: str | None = None
        self._remote_runner: Callable[[str], str | None] = lambda token: None
        self._holds_owner: Callable[[str, str | None], bool] = lambda runner, owner: False
        self._local_token: str | None = None
        self._owners: dict[str, tuple[KeyInfo, float]] = {}
        self._held: dict[tuple[str, str | None], float] = {}

    @property
    def keys(self) -> KeyStore:
        return self._keys

    def trust_runner(
        self,
        token: str,
        remote: Callable[[str], str | None] | None = None,
        holds_owner: Callable[[str, str | None], bool] | None = None,
    ) -> None:
        """Accept ``token`` from this machine as the job runner's (see the module doc), and
        from anywhere a token ``remote`` names the runner actor of (a Ray runner's secret),
        acting only for a key ``holds_owner(runner, key id)`` (blocking) says is the owner
        of a job that runner holds."""
        self._runner_token = token
        if remote is not None:
            self._remote_runner = remote
        if holds_owner is not None:
            self._holds_owner = holds_owner

    def trust_local_admin(self, token: str) -> None:
        """Accept ``token`` from loopback clients as an admin key (see the module doc)."""
        self._local_token = token

    def _local_admin(self, request: Request, key: str) -> KeyInfo | None:
        """The local admin key when ``key`` is the local token (401 from another machine)."""
        token = self._local_token
        if token is None or not key.startswith(TOKEN_PREFIX):
            return None
        if not hmac.compare_digest(key.encode(), token.encode()):
            return None  # an old server's token: refused below as any unknown key
        client = request.client.host if request.client is not None else ""
        # Behind a proxy the peer may be loopback for everyone: a forwarded request is remote.
        forwarded = "x-forwarded-for" in request.headers or "forwarded" in request.headers
        if not is_loopback(client) or forwarded:
            raise AuthenticationError(
                "the local admin token is accepted from this machine only; use an API key",
                code="local_token_not_local",
            )
        return LOCAL_ADMIN

    def check_startup(self) -> None:
        """Raise :class:`InsecureStartupError` when binding to a non-loopback address while no
        active key exists (anyone on the network could use the models). Blocking I/O."""
        if self._loopback or self._keys.count_active() > 0:
            return
        raise InsecureStartupError(
            f"refusing to serve on {self._bind_host!r} without an API key: anyone who can reach "
            f"it could use it. Create a key first with `{CREATE_ADMIN_KEY_HINT}` (and "
            "`--scope inference` keys for clients), or bind to 127.0.0.1"
        )

    async def authenticate_admin(self, request: Request) -> KeyInfo:
        """The caller's active admin key: 401 without a valid key, 403 for an inference key."""
        key = presented_key(request)
        if key is None:
            raise AuthenticationError(
                "admin routes need an admin API key (Authorization: Bearer <key>); "
                f"create one with `{CREATE_ADMIN_KEY_HINT}`",
                code="missing_api_key",
            )
        info = self._local_admin(request, key) or await self._verify(key)
        if not info.is_admin:
            raise PermissionDeniedError(
                f"API key {info.id} has scope {info.scope!r}; this route needs an admin key"
            )
        request.state.api_key = info
        return info

    async def authenticate_inference(
        self, request: Request, model: str | None = None
    ) -> KeyInfo | None:
        """The caller's active key, or ``None`` when the server is open (no active key and a
        loopback bind; any presented key is then ignored, as clients such as the ``openai`` SDK
        always send one). With ``model``, also checks the key may use it (403). A job
        runner's request is its job owner's."""
        runner = self._runner_of(request)
        if runner is not None:
            owner = await self._job_owner(request, runner)
            request.state.api_key = owner
            if owner is not None:
                if model is not None:
                    self.authorize_model(owner, model)
                await self._admit(request, owner)
            return owner
        if await self._is_open():
            request.state.api_key = None
            return None
        key = presented_key(request)
        if key is None:
            raise AuthenticationError(
                "this server needs an API key: send Authorization: Bearer <key>",
                code="missing_api_key",
            )
        info = self._local_admin(request, key) or await self._verify(key)
        if model is not None:
            self.authorize_model(info, model)
        request.state.api_key = info
        await self._admit(request, info)
        return info

    async def _admit(self, request: Request, info: KeyInfo) -> None:
        """Count the request against the key's rate limits (429 when used up); the
        middleware adds ``response_headers`` to the response and charges the tokens used."""
        limiter = self._limiter
        if limiter is None or (info.rpm is None and info.tpm is None):
            return
        request.state.response_headers = await limiter.admit(info)
        if info.tpm is not None:

            async def charge(tokens: int) -> None:
                await limiter.charge_tokens(info, tokens)

            request.state.charge_tokens = charge

    @staticmethod
    def authorize_model(key: KeyInfo | None, model: str) -> None:
        """403 unless ``key`` may use ``model`` (``None``: an open server, anything goes)."""
        if key is not None and not key.allows_model(model):
            raise PermissionDeniedError(
                f"API key {key.id} may not use model {model!r}", param="model"
            )

    def _runner_of(self, request: Request) -> str | None:
        """The runner a request comes from: the id of the runner actor whose secret it
        carries, ``_LOCAL_RUNNER`` when it carries the runner token from this machine; None:
        not a runner's."""
        token = self._runner_token
        authorization = request.headers.get("authorization", "")
        if token is None or not authorization.startswith("Bearer "):
            return None
        given = authorization[7:].strip()
        remote = self._remote_runner(given) if given else None
        if remote:
            return remote
        if not hmac.compare_digest(given.encode(), token.encode()):
            return None
        client = request.client.host if request.client is not None else ""
        return _LOCAL_RUNNER if is_loopback(client) or client == self._bind_host else None

    async def _job_owner(self, request: Request, runner: str) -> KeyInfo | None:
        owner = request.headers.get(JOB_OWNER_HEADER, "").strip()
        if runner != _LOCAL_RUNNER:
            await self._check_held(runner, owner or None)
        if not owner:
            return None
        if owner == LOCAL_ADMIN.id and self._local_token is not None:
            return LOCAL_ADMIN
        cached = self._owners.get(owner)
        if cached is not None and cached[1] > time.monotonic():
            info = cached[0]
        else:
            try:
                info = await anyio.to_thread.run_sync(self._keys.get, owner)
            except LmaasError:
                raise AuthenticationError("the API key that owns this job is gone") from None
            if len(self._owners) > 1024:
                self._owners.clear()
            self._owners[owner] = (info, time.monotonic() + _OWNER_TTL)
        if not info.active:
            raise AuthenticationError(
                f"API key {info.id}, which owns this job, has been revoked",
                code="api_key_revoked",
            )
        return info

    async def _check_held(self, runner: str, owner: str | None) -> None:
        """403 unless runner actor ``runner`` holds a job ``owner`` owns (None: an open
        server's job)."""
        now = time.monotonic()
        if self._held.get((runner, owner), 0.0) > now:
            return
        if not await anyio.to_thread.run_sync(self._holds_owner, runner, owner):
            whose = "an open server's job" if owner is None else f"a job of key {owner[:64]!r}"
            raise PermissionDeniedError(
                f"job runner {runner} holds no {whose}", code="not_a_held_job"
            )
        if len(self._held) > 1024:
            self._held.clear()
        self._held[(runner, owner)] = now + _HELD_TTL

    async def _is_open(self) -> bool:
        if not self._loopback:
            return False
        cached = self._keys.cached_count_active()
        if cached is not None:
            return cached == 0
        return await anyio.to_thread.run_sync(self._keys.count_active) == 0

    async def _verify(self, key: str) -> KeyInfo:
        info = self._keys.cached_verify(key)
        if info is not None:
            return info
        return await anyio.to_thread.run_sync(self._keys.verify, key)


def _authenticator(request: Request) -> Authenticator:
    return request.app.state.auth  # type: ignore[no-any-return]


async def require_admin(request: Request) -> KeyInfo:
    return await _authenticator(request).authenticate_admin(request)


async def sees_internals(request: Request) -> bool:
    """Whether the caller may see operational detail (replica errors, restarts, nodes): on
    an open server anyone, else only an active admin key; never raises."""
    auth = _authenticator(request)
    if await auth._is_open():
        return True
    try:
        await auth.authenticate_admin(request)
    except LmaasError:
        return False
    return True


async def require_metrics_key(request: Request) -> None:
    """An admin key for ``/metrics`` when ``metrics.require_key`` is on (401/403 without)."""
    if request.app.state.settings.metrics.require_key:
        await _authenticator(request).authenticate_admin(request)


async def require_inference(request: Request) -> KeyInfo | None:
    """Key check only: routes whose model is in the body call
    :meth:`Authenticator.authorize_model` once they have parsed it."""
    return await _authenticator(request).authenticate_inference(request)
