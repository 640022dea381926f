"""The two hot HTTP routes without FastAPI's per-request machinery: ``POST /v2/models/{name}[/versions/{v}]/infer``
and ``POST /v1/classify``.

Why: these carry almost every request under load, and FastAPI spends more CPU per request routing through its
route table, solving the dependencies (auth, data plane) and wrapping the call in its exception layers than the
conversion of a one-stream request costs. This ASGI layer sits in front of the FastAPI app and answers exactly
those requests itself, with the same functions the FastAPI routes use (auth, body reading, parsing, rendering,
the error table), so answers and errors are identical. Anything else passes through to FastAPI untouched,
including these paths with a query string (FastAPI validates query parameters), other methods (405), a trailing
slash (redirect) and a ``root_path``. The FastAPI routes stay registered: they document the API (OpenAPI) and
serve what this layer passes on.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from pydantic import TypeAdapter
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..auth import Authenticator
from ..dataplane import DataPlane
from ..settings import Settings
from .deps import inflate_body
from .errors import error_response
from .schemas import ClassifyResponse

_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_HEADERS = (b"authorization", b"content-encoding", b"inference-header-content-length")
_CLASSIFY_RESPONSE = TypeAdapter(ClassifyResponse)


class _Route(NamedTuple):
    """What the metrics middleware reads from ``scope["route"]``: the route's path template (as FastAPI's)."""

    path: str


_INFER_ROUTE = _Route("/v2/models/{name}/infer")
_INFER_VERSION_ROUTE = _Route("/v2/models/{name}/versions/{version}/infer")
_CLASSIFY_ROUTE = _Route("/v1/classify")


class HotRoutes:
    """ASGI layer answering the v2 infer and native classify POSTs directly (see the module docstring)."""

    def __init__(self, app: ASGIApp, plane: DataPlane, settings: Settings,
                 auth: Authenticator | None = None) -> None:
        self.app = app
        self.plane = plane
        self.settings = settings
        self.auth = auth if auth is not None else Authenticator.from_settings(settings, plane.metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("query_string") \
                or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/v1/classify":
            scope["route"] = _CLASSIFY_ROUTE
            await self._answer(self._classify, (), scope, receive, send)
            return
        match = _INFER.fullmatch(path) if path.startswith("/v2/models/") else None
        if match is None:
            await self.app(scope, receive, send)
            return
        name, version = match.groups()
        scope["route"] = _INFER_VERSION_ROUTE if version is not None else _INFER_ROUTE
        await self._answer(self._infer, (name, version), scope, receive, send)

    async def _answer(self, handler: Any, args: tuple, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[bytes, str] = {}
        for key, value in scope["headers"]:
            if key in _HEADERS and key not in headers:
                headers[key] = value.decode("latin-1")
        try:
            device = await self.auth.authenticate(headers.get(b"authorization")) if self.auth.enabled else None
            body = await _read(receive)
            if body is None:  # the client went away
                return
            body = inflate_body(body, headers.get(b"content-encoding"), self.settings.max_body_bytes)
            # the client identity: the token's device name, else the mTLS identity (tls.ClientIdentityMiddleware)
            client = device or (scope.get("state") or {}).get("client_identity")
            response = await handler(body, headers, client, *args)
        except Exception as exc:  # noqa: BLE001 - every error is answered through the error table
            response = error_response(exc)
        await response(scope, receive, send)

    async def _infer(self, body: bytes, headers: dict[bytes, str], client: str | None, name: str,
                     version: str | None) -> Any:
        from .v2 import parse_infer_request, render_infer_response

        request, binary_default = parse_infer_request(body, headers.get(b"inference-header-content-length"),
                                                      name, version)
        return render_infer_response(await self.plane.infer(request, client=client), request, binary_default)

    async def _classify(self, body: bytes, headers: dict[bytes, str], client: str | None) -> Any:
        from .native import classify_body

        # validated and dumped by the response model, as FastAPI does for the route
        result = await self.plane.classify(body, client=client)
        body_model = _CLASSIFY_RESPONSE.validate_python(classify_body(result))
        return Response(_CLASSIFY_RESPONSE.dump_json(body_model, by_alias=True), media_type="application/json")


async def _read(receive: Receive) -> bytes | None:
    """The whole request body (the body-limit middleware's receive raises 413 past the limit); None when the
    client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)

