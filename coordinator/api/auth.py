"""The bearer token that guards the mutating endpoints, and the reads unless told otherwise.

Mutating endpoints (``POST``) need ``Authorization: Bearer <token>`` equal to
``SAGA_HTTP__TOKEN`` (compared in constant time); without it or with a wrong one they answer 401.
With no token configured they answer 403: mutations are refused, never open. Reads need the
token too when :attr:`HttpSettings.reads_need_token` (``SAGA_HTTP__TOKEN_FOR_READS``; by
default whenever a token is configured). ``/health``, ``/ready`` and the schema need no token.

:func:`require_token` and :func:`require_read_token` are the dependencies a router declares
(they also put the ``bearerToken`` scheme in the OpenAPI document). FastAPI reads and parses
the request before it solves dependencies, so such a router also uses :class:`TokenFirstRoute`
(or :class:`ReadTokenFirstRoute`), which runs the same check first: an anonymous caller gets
401 whatever its body or parameters, and the body of a request that would be refused is never
read.
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

__all__ = [
    "ReadTokenFirstRoute",
    "TokenFirstRoute",
    "bearer_scheme",
    "check_token",
    "require_read_token",
    "require_token",
]

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerToken",
    description="`SAGA_HTTP__TOKEN`. Without a configured token, mutating endpoints answer "
    "403; reads need it unless `SAGA_HTTP__TOKEN_FOR_READS=false` or no token is configured.",
)
"""Reads ``Authorization: Bearer <token>`` (None when absent or of another scheme)."""

_REALM = 'Bearer realm="saga-coordinator"'


def check_token(
    settings: HttpSettings,
    credentials: HTTPAuthorizationCredentials | None,
    *,
    read: bool = False,
) -> None:
    """Let the request through only with the configured token.

    Args:
        settings: The configured token.
        credentials: What the request carries.
        read: A read endpoint: only checked while :attr:`HttpSettings.reads_need_token`.

    Raises:
        ApiError: 403 ``mutations_disabled`` (``reads_disabled``) when no token is
            configured, 401 ``unauthorized`` without bearer credentials, 401 ``invalid_token``
            with a wrong token.
    """
    if read and not settings.reads_need_token:
        return
    token = settings.token.get_secret_value() if settings.token is not None else ""
    if not token:
        if read:
            raise ApiError(
                403,
                "reads_disabled",
                "reads need a token (SAGA_HTTP__TOKEN_FOR_READS) but none is configured "
                "(SAGA_HTTP__TOKEN)",
            )
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


async def require_read_token(
    settings: HttpSettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> None:
    """Dependency: a read carries the bearer token, if reads need it (see :func:`check_token`)."""
    check_token(settings, credentials, read=True)


class TokenFirstRoute(APIRoute):
    """Runs :func:`check_token` before FastAPI reads or validates the request.

    :func:`require_token` stays declared on the router too: it documents the scheme and guards
    any route added with another route class; the second check costs one comparison.
    """

    read = False

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        read = self.read

        async def token_first(request: Request) -> Response:
            check_token(get_settings(request), await bearer_scheme(request), read=read)
            return await handler(request)

        return token_first


class ReadTokenFirstRoute(TokenFirstRoute):
    """:class:`TokenFirstRoute` for reads: checks only while reads need the token."""

    read = True
