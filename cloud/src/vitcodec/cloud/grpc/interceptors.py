"""One server interceptor for the gRPC transport: bearer-token auth (same rule as HTTP), request metrics and,
with ``access_log``, one line per call (peer address, client identity, method, status). The client identity
is the device name of the call's token (``--credentials``), else the mTLS certificate's identity; the
servicers read it with `call_identity`.

Health checking, reflection and the v2 liveness/readiness RPCs stay open, like the HTTP probes."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from ..auth import CURRENT_DEVICE, Authenticator
from ..errors import Unauthorized, describe
from ..metrics import Metrics
from ..tls import grpc_client_identity

access_logger = logging.getLogger("vitcodec.cloud.grpc.access")

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
OPEN_METHODS = {"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"}
MEASURED_PREFIXES = ("/inference.", "/vitcodec.")

# A handler's behaviours on grpc.aio (grpc's annotations describe the sync server's): a coroutine function, and an
# async generator function over the requests' async iterator, both taking the aio context.
_AioUnaryUnary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
_AioStreamStream = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], AsyncIterator[Any]]


def call_identity(context: Any) -> str | None:
    """The client identity of the RPC being handled: its token's device name (set by the interceptor in the
    RPC's context), else its mTLS client certificate's identity; None when neither is known."""
    return CURRENT_DEVICE.get() or grpc_client_identity(context)


def _is_open(method: str) -> bool:
    return method in OPEN_METHODS or method.startswith(OPEN_PREFIXES)


def _rebuild(handler: grpc.RpcMethodHandler, unary_unary: Any = None, unary_stream: Any = None,
             stream_unary: Any = None, stream_stream: Any = None) -> grpc.RpcMethodHandler:
    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)


def _denied(handler: grpc.RpcMethodHandler, exc: Unauthorized) -> grpc.RpcMethodHandler:
    info = describe(exc)

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(info.grpc_code, info.message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(info.grpc_code, info.message)
        yield  # pragma: no cover - makes this an async generator

    return _rebuild(handler, deny, deny_stream, deny, deny_stream)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics, auth: Authenticator | str | None, access_log: bool = False) -> None:
        self.metrics = metrics
        self.auth = auth if isinstance(auth, Authenticator) else Authenticator(auth, None, metrics)
        self.access_log = access_log
        # method -> (its handler, the measured handler): built once per method, not once per call
        self._measured_handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        details = handler_call_details
        handler = await continuation(details)
        method = details.method
        if handler is None:
            return handler
        if self.auth.enabled and not _is_open(method):
            metadata = dict(details.invocation_metadata or ())
            # gRPC gives bytes only for binary ("-bin") metadata keys: this one is text
            header = cast("str | None", metadata.get("authorization"))
            try:  # sets CURRENT_DEVICE in this RPC's context, which its handler runs in
                await self.auth.authenticate(header)
            except Unauthorized as exc:
                self.metrics.observe_request("grpc", method, "UNAUTHENTICATED", 0.0, failed=True)
                return _denied(handler, exc)
        if not method.startswith(MEASURED_PREFIXES):
            return handler
        cached = self._measured_handlers.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._measured(handler, method))
            self._measured_handlers[method] = cached
        return cached[1]

    def _record(self, method: str, context: grpc.aio.ServicerContext, started: float,
                error: BaseException | None) -> None:
        code = context.code()
        if code is None:
            code = grpc.StatusCode.CANCELLED if error is not None and not isinstance(error, grpc.aio.AbortError) \
                else grpc.StatusCode.OK
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self.metrics.observe_request("grpc", method, name, time.perf_counter() - started, failed=name != "OK")
        if self.access_log:
            identity = call_identity(context)
            peer = context.peer() + (f" [{identity}]" if identity else "")
            access_logger.info('%s - "%s" %s', peer, method, name)

    def _measured(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        metrics, record = self.metrics, self._record
        inflight = metrics.inflight.labels("grpc")
        bytes_in = metrics.bytes_in.labels("grpc")

        if handler.unary_unary:
            call = cast(_AioUnaryUnary, handler.unary_unary)

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, error = time.perf_counter(), None
                inflight.inc()
                bytes_in.inc(request.ByteSize())
                try:
                    return await call(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    inflight.dec()
                    record(method, context, started, error)

            return _rebuild(handler, unary_unary=unary_unary)
        if handler.stream_stream:
            stream = cast(_AioStreamStream, handler.stream_stream)

            async def stream_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                started, error = time.perf_counter(), None
                inflight.inc()

                async def counted() -> AsyncIterator[Any]:
                    async for request in request_iterator:
                        bytes_in.inc(request.ByteSize())
                        yield request

                try:
                    async for response in stream(counted(), context):
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    inflight.dec()
                    record(method, context, started, error)

            return _rebuild(handler, stream_stream=stream_stream)
        return handler
