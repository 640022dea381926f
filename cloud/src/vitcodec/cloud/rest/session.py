"""The review page's browser session. A browser cannot send ``Authorization: Bearer`` with a page load or an
``<img>``, so with a bearer token configured, ``POST /ui/login`` (the token, from a form) sets a cookie that
stands in for it: HttpOnly, SameSite=Strict, Secure over HTTPS, and valid until the browser closes.

The cookie holds an HMAC of the server's token, never the token itself: it cannot be turned back into the
token, and changing the token logs every browser out. It is accepted only on reads (GET and HEAD, so on the
review pages and the archive's GET routes that the pages load, ``/v1/images/{id}/reconstruction`` above all);
anything that changes state (DELETE, classify) still needs the header.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from ..errors import Unauthorized
from .deps import require_auth

COOKIE_NAME = "vitcodec_session"
READ_METHODS = frozenset({"GET", "HEAD"})
_PURPOSE = b"vitcodec review page session v1"


def session_value(token: str) -> str:
    """The cookie's value for a token (an HMAC keyed by it, hex)."""
    return hmac.new(token.encode(), _PURPOSE, hashlib.sha256).hexdigest()


def token_matches(candidate: str, token: str) -> bool:
    """Constant-time comparison of a submitted token with the server's."""
    return hmac.compare_digest(candidate.strip().encode(), token.encode())


def server_token(request: Request) -> str | None:
    return request.app.state.settings.token


def has_session(request: Request) -> bool:
    """True when the request carries a valid session cookie; always False without a configured token (then
    there is nothing to log in to, and `require_auth` alone decides)."""
    token = server_token(request)
    cookie = request.cookies.get(COOKIE_NAME)
    if not token or not cookie:
        return False
    return hmac.compare_digest(cookie.encode(), session_value(token).encode())


async def authorized(request: Request) -> bool:
    """Whether a read may go ahead: a valid session cookie, or whatever `require_auth` accepts (the bearer
    header; anything at all on a server without a token)."""
    if request.method in READ_METHODS and has_session(request):
        return True
    try:
        await require_auth(request)
    except Unauthorized:
        return False
    return True


async def require_auth_or_session(request: Request) -> None:
    """`require_auth`, or on a read, a valid session cookie instead (the archive's routes, so that the review
    page's thumbnails load in a browser)."""
    if request.method in READ_METHODS and has_session(request):
        return
    await require_auth(request)
