"""Who is calling: an API key (``Authorization: Bearer`` or ``X-API-Key``) names a user.

    @router.get("/v1/sessions")
    async def sessions(user: CurrentUser) -> ...: ...

Authentication runs before anything that reads the caller's data, then the per-user
rate limit.  Every failure is the same 401 problem (with ``WWW-Authenticate``) whether
the key is malformed, unknown, wrong or revoked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from producer.gateway import metrics
from producer.gateway.problems import ApiProblem, unauthorized
from producer.gateway.state import gateway_of

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="`Authorization: Bearer tq_<prefix>_<secret>` (create one with "
    "`turnq keys create --user U`)",
)
api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="apiKey",
    description="the same key in an `X-API-Key` header",
)

MAX_KEY_CHARS = 200


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


async def authenticate_request(request: Request) -> str:
    """The caller's user id; raises a 401 or 429 problem.  Cached on the request."""
    cached = getattr(request.state, "user_id", None)
    if isinstance(cached, str):
        return cached
    return (await authenticate_caller(request)).user


@dataclass(frozen=True)
class Caller:
    user: str
    scopes: frozenset[str]

    @property
    def approver(self) -> bool:
        return "approver" in self.scopes


async def authenticate_caller(request: Request) -> Caller:
    """The caller's user and scopes; raises a 401 or 429 problem.  Cached on the request."""
    cached = getattr(request.state, "caller", None)
    if isinstance(cached, Caller):
        return cached
    key = key_from_headers(request.headers.get("authorization"), request.headers.get("x-api-key"))
    if key is None:
        raise unauthorized(
            "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            invalid=False,
        )
    gw = gateway_of(request)
    found = await gw.keys.caller(key) if len(key) <= MAX_KEY_CHARS else None
    if found is None:
        raise unauthorized("the API key is not valid (unknown, malformed or revoked)", invalid=True)
    user, scopes = found
    decision = await gw.limiter.hit(user)
    if not decision.allowed:
        metrics.RATE_LIMITED.inc()
        raise ApiProblem(
            429,
            "rate_limited",
            "Too many requests",
            f"rate limit of {gw.limiter.rate:g} requests/s (burst {gw.limiter.burst}) "
            f"exceeded; retry after {decision.retry_after_s} s",
            headers={"Retry-After": str(decision.retry_after_s)},
        )
    caller = Caller(user, scopes)
    request.state.user_id = user
    request.state.caller = caller
    return caller


async def current_user(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    _api_key: Annotated[str | None, Security(api_key_header)],
) -> str:
    # The two Security parameters only document the schemes in OpenAPI.
    return await authenticate_request(request)


async def current_caller(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    _api_key: Annotated[str | None, Security(api_key_header)],
) -> Caller:
    return await authenticate_caller(request)


CurrentUser = Annotated[str, Depends(current_user)]
CurrentCaller = Annotated[Caller, Depends(current_caller)]
