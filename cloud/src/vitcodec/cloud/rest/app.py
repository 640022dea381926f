"""The HTTP application: the FastAPI app (routers per concern, one error handler fed by `errors.describe`) behind
small pure-ASGI layers for request metrics, the body limit and the hot routes (fastpath.py). Built by
`create_app` from a data plane and settings; nothing at import time."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from vitcodec.version import __version__
from vitcodec.wire import GRPC_FOR_HTTP

from ..auth import Authenticator
from ..dataplane import DataPlane
from ..errors import ERROR_TABLE, PayloadTooLarge
from ..metrics import Metrics
from ..settings import Settings
from . import images, native, review, v2
from .errors import error_response
from .fastpath import HotRoutes
from .schemas import InferRequestBody

DESCRIPTION = """Classifies learned-compression bitstreams without decoding pixels, and reconstructs images on demand.

* **Open Inference Protocol (KServe v2)** under `/v2`: the input `BITSTREAM` (BYTES, shape [B]) holds B bitstreams;
  outputs `PROBABILITIES` (FP32, [B, classes]) and `LABEL` (BYTES, [B]). JSON and the binary-data extension.
* **Native** under `/v1`: POST one raw bitstream (`application/octet-stream`); the model is chosen by the model id in
  its header.
* Errors are `{"error": ..., "code": ...}` with the HTTP status of the server's error table (the gRPC API maps the
  same errors to the matching status codes).
"""


class MetricsMiddleware:
    """Counts requests, errors, latency and body bytes per route template (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.inflight = metrics.inflight.labels("http")  # looked up once, not per request
        self.bytes_in = metrics.bytes_in.labels("http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}
        received = {"bytes": 0}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        inflight = self.inflight
        inflight.inc()
        try:
            await self.app(scope, counting_receive, recording_send)
        finally:
            inflight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            code = status["code"]
            self.metrics.observe_request("http", f"{scope.get('method', '')} {endpoint}", str(code),
                                         time.perf_counter() - started, failed=code >= 400)
            self.bytes_in.inc(received["bytes"])


class BodyLimitMiddleware:
    """413 for any body over the limit, on every route: at once when Content-Length says so, else as soon as
    the streamed bytes pass it (the error surfaces from the route's body read and goes through the table)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                too_large = PayloadTooLarge(
                    f"request body of {int(value)} bytes is over the limit of {self.limit} bytes")
                await error_response(too_large)(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise PayloadTooLarge(f"request body is over the limit of {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def create_app(plane: DataPlane, settings: Settings, auth: Authenticator | None = None) -> ASGIApp:
    """The ASGI app uvicorn serves: metrics and the body limit around every request, the hot routes answered
    directly (fastpath.py), everything else by the FastAPI app. The three layers sit outside FastAPI, so the hot
    requests skip its own middleware stack too (error, telemetry and body-limit layers, exception handlers)."""
    auth = auth if auth is not None else Authenticator.from_settings(settings, plane.metrics)
    inner = HotRoutes(build_fastapi(plane, settings, auth), plane, settings, auth)
    # metrics outermost: it sees every answer, 413s included
    return MetricsMiddleware(BodyLimitMiddleware(inner, settings.max_body_bytes), plane.metrics)


def build_fastapi(plane: DataPlane, settings: Settings, auth: Authenticator | None = None) -> FastAPI:
    """Every route, documented (OpenAPI), with the error table as exception handlers."""
    app = FastAPI(title="vitcodec cloud", version=__version__, description=DESCRIPTION,
                  openapi_tags=[{"name": "v2", "description": "Open Inference Protocol (KServe v2)"},
                                {"name": "v2 health", "description": "Probes; never need a token"},
                                {"name": "native", "description": "vitcodec's own bitstream API"},
                                {"name": "archive", "description": "The classified streams the server kept "
                                                                   "(--archive)"},
                                {"name": "operations", "description": "Prometheus metrics"}])
    app.state.plane = plane
    app.state.settings = settings
    app.state.auth = auth if auth is not None else Authenticator.from_settings(settings, plane.metrics)
    app.include_router(v2.health_router)
    app.include_router(v2.router)
    app.include_router(native.router)
    app.include_router(images.router)
    app.include_router(review.router)  # the review page (/ui), HTML for browsers
    app.include_router(native.ops_router)

    async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    for exc_class in ERROR_TABLE:  # domain errors: answered by the table, never re-raised
        app.add_exception_handler(exc_class, _domain_error)
    app.add_exception_handler(Exception, _domain_error)  # bugs: 500 with a generic message, traceback logged

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', 'invalid')}",
                             "code": "INVALID_ARGUMENT"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = GRPC_FOR_HTTP.get(exc.status_code)
        return JSONResponse({"error": str(exc.detail), "code": code.name if code else "UNKNOWN"},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes, tags=app.openapi_tags)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            extra = InferRequestBody.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(extra.pop("$defs", {}))
            components["InferRequestBody"] = extra
            cached: dict[str, Any] = json.loads(json.dumps(schema))
            app.openapi_schema = cached
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
