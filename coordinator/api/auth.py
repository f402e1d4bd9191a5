"""The bearer token that guards the mutating endpoints.

Mutating endpoints (``POST``) need ``Authorization: Bearer <token>`` equal to
``SAGA_HTTP__TOKEN`` (compared in constant time); without it or with a wrong one they answer 401.
With no token configured they answer 403: mutations are refused, never open. Reads, ``/health``
and ``/ready`` need no token.

:func:`require_token` is the dependency a mutating router declares (it also puts the
``bearerToken`` scheme in the OpenAPI document). FastAPI reads and parses the request body
before it solves dependencies, so such a router also uses :class:`TokenFirstRoute`, which runs
the same check first: an anonymous caller gets 401 whatever its body, and the body of a request
that would be refused is never read.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from coordinator.api.dependencies import HttpSettingsDep, get_settings
from coordinator.api.errors import ApiError
from coordinator.config import HttpSettings

__all__ = ["TokenFirstRoute", "bearer_scheme", "check_token", "require_token"]

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerToken",
    description="`SAGA_HTTP__TOKEN`. Without a configured token, mutating endpoints answer 403.",
)
"""Reads ``Authorization: Bearer <token>`` (None when absent or of another scheme)."""

_REALM = 'Bearer realm="saga-coordinator"'


def check_token(settings: HttpSettings, credentials: HTTPAuthorizationCredentials | None) -> None:
    """Let the request through only with the configured token.

    Raises:
        ApiError: 403 ``mutations_disabled`` when no token is configured, 401 ``unauthorized``
            without bearer credentials, 401 ``invalid_token`` with a wrong token.
    """
    token = settings.token.get_secret_value() if settings.token is not None else ""
    if not token:
        raise ApiError(
            403,
            "mutations_disabled",
            "mutating endpoints are disabled: no API token is configured (SAGA_HTTP__TOKEN)",
        )
    if credentials is None:
        raise ApiError(
            401,
            "unauthorized",
            "this endpoint needs 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": _REALM},
        )
    if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
        raise ApiError(
            401,
            "invalid_token",
            "the bearer token is not valid",
            {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
        )


async def require_token(
    settings: HttpSettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> None:
    """Dependency: the request carries the configured bearer token (see :func:`check_token`)."""
    check_token(settings, credentials)


class TokenFirstRoute(APIRoute):
    """Runs :func:`check_token` before FastAPI reads or validates the request.

    :func:`require_token` stays declared on the router too: it documents the scheme and guards
    any route added with another route class; the second check costs one comparison.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def token_first(request: Request) -> Response:
            check_token(get_settings(request), await bearer_scheme(request))
            return await handler(request)

        return token_first
