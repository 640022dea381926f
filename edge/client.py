"""Clients for the vitcodec cloud server, over HTTP (httpx) or gRPC (grpcio). No torch: this runs on devices.

The two clients mirror each other (same method names and results), as Triton's clients do; `connect(url)`
picks one from the URL scheme (``http://``, ``https://`` or ``grpc://``). Both use the server's native API,
which routes each bitstream to its model by the model id in the stream's header.

- Retries with exponential backoff and jitter on transient failures only: connection errors, HTTP 429/502/
  503/504, gRPC UNAVAILABLE (the server says 503/UNAVAILABLE while models load, when a queue is full and
  while draining for shutdown). A bad stream (400), a wrong model (409/404) or a missing token (401) fail at
  once.
- `classify_many` keeps at most `concurrency` requests in flight: a thread pool over one connection pool
  (HTTP), or one bidirectional stream with a bounded window (gRPC).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import httpx

from vitcodec.protos import grpc_service_pb2 as v2_pb
from vitcodec.protos import grpc_service_pb2_grpc as v2_grpc
from vitcodec.protos import vitcodec_pb2 as pb
from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc
from vitcodec.results import ClassifyResult, ClassScore, ReconstructResult

__all__ = [
    "ClientError",
    "ClassScore",
    "ClassifyResult",
    "ReconstructResult",
    "RetryPolicy",
    "HttpClient",
    "GrpcClient",
    "connect",
]

T = TypeVar("T")

_RETRY_HTTP = {429, 502, 503, 504}
_RETRY_GRPC = {grpc.StatusCode.UNAVAILABLE}
_HTTP_FOR_GRPC = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "NOT_FOUND": 404, "FAILED_PRECONDITION": 409,
                  "RESOURCE_EXHAUSTED": 413, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "INTERNAL": 500}


class ClientError(Exception):
    """The server refused a request (or could not be reached). `status` is the HTTP status, `code` the gRPC
    status name; both are set whichever transport was used."""

    def __init__(self, message: str, status: int = 0, code: str = "UNKNOWN", retryable: bool = False) -> None:
        super().__init__(message)
        self.message, self.status, self.code, self.retryable = message, status, code, retryable


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # tries in all, the first included
    backoff_s: float = 0.1  # first pause; doubles each time
    max_backoff_s: float = 2.0

    def pause(self, attempt: int) -> float:
        """Pause before try number `attempt + 1` (full jitter)."""
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * (2 ** attempt)))

    def run(self, call: Callable[[], T]) -> T:
        for attempt in range(self.attempts):
            try:
                return call()
            except ClientError as exc:
                if not exc.retryable or attempt == self.attempts - 1:
                    raise
                time.sleep(self.pause(attempt))
        raise AssertionError("unreachable")


class _Base:
    retry: RetryPolicy

    def classify(self, stream: bytes, model: str | None = None, top_k: int = 5) -> ClassifyResult:
        raise NotImplementedError

    def classify_many(self, streams: Iterable[bytes], concurrency: int = 8, model: str | None = None,
                      top_k: int = 5) -> Iterator[tuple[int, ClassifyResult | ClientError]]:
        """Classify many streams, at most `concurrency` at a time; yields (index, result or error) as each
        completes. Errors are yielded, not raised, so one bad stream does not stop a batch."""
        raise NotImplementedError

    def __enter__(self) -> _Base:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()  # type: ignore[attr-defined]


# -- HTTP ---------------------------------------------------------------------------------------------------

def _result_from_json(body: dict[str, Any], latency_ms: float) -> ClassifyResult:
    top = [ClassScore(int(t["index"]), str(t["label"]), float(t["probability"])) for t in body["top_k"]]
    return ClassifyResult(model=body["model"], version=str(body["version"]), model_id=body["model_id"], top=top,
                          num_bytes=int(body["bytes"]), header_bytes=int(body["header_bytes"]),
                          image_size=tuple(body["image_size"]), timings_ms=dict(body.get("timings_ms", {})),
                          latency_ms=latency_ms, novelty=_optional_float(body.get("novelty")))


def _optional_float(value: Any) -> float | None:
    """A novelty from a reply: None when the server sent none (uncalibrated model, or an older server)."""
    return None if value is None else float(value)


class HttpClient(_Base):
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, max_connections: int = 64) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  limits=httpx.Limits(max_connections=max_connections,
                                                      max_keepalive_connections=max_connections))

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        def once() -> httpx.Response:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise ClientError(f"cannot reach {self.url}: {type(exc).__name__}: {exc}", 0, "UNAVAILABLE",
                                  retryable=True) from None
            if response.status_code >= 400:
                try:
                    body = response.json()
                    message, code = body.get("error", response.text), body.get("code", "UNKNOWN")
                except ValueError:
                    message, code = response.text or response.reason_phrase, "UNKNOWN"
                raise ClientError(message, response.status_code, code,
                                  retryable=response.status_code in _RETRY_HTTP)
            return response

        return self.retry.run(once)

    def live(self) -> bool:
        try:
            return self._http.get("/v2/health/live").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        try:
            return self._http.get("/v2/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    def models(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/models").json()["models"]

    def classify(self, stream: bytes, model: str | None = None, top_k: int = 5) -> ClassifyResult:
        params: dict[str, Any] = {"top_k": top_k}
        if model:
            params["model"] = model
        t0 = time.perf_counter()
        response = self._request("POST", "/v1/classify", content=bytes(stream), params=params,
                                 headers={"Content-Type": "application/octet-stream"})
        return _result_from_json(response.json(), (time.perf_counter() - t0) * 1e3)

    def classify_many(self, streams: Iterable[bytes], concurrency: int = 8, model: str | None = None,
                      top_k: int = 5) -> Iterator[tuple[int, ClassifyResult | ClientError]]:
        with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="vitcodec-send") as pool:
            futures = {pool.submit(self.classify, s, model, top_k): i for i, s in enumerate(streams)}
            for future in as_completed(futures):
                try:
                    yield futures[future], future.result()
                except ClientError as exc:
                    yield futures[future], exc

    def reconstruct(self, stream: bytes, model: str | None = None) -> ReconstructResult:
        t0 = time.perf_counter()
        response = self._request("POST", "/v1/reconstruct", content=bytes(stream),
                                 params={"model": model} if model else None,
                                 headers={"Content-Type": "application/octet-stream"})
        h, _, w = response.headers.get("x-vitcodec-image-size", "0x0").partition("x")
        return ReconstructResult(model=response.headers.get("x-vitcodec-model", ""),
                                 version=response.headers.get("x-vitcodec-model-version", ""), png=response.content,
                                 image_size=(int(h), int(w)), num_bytes=len(stream),
                                 latency_ms=(time.perf_counter() - t0) * 1e3)


# -- gRPC ---------------------------------------------------------------------------------------------------

def _result_from_proto(msg: pb.ClassifyResponse, latency_ms: float) -> ClassifyResult:
    top = [ClassScore(int(t.index), t.label, float(t.probability)) for t in msg.top]
    return ClassifyResult(model=msg.model, version=msg.version, model_id=msg.model_id, top=top,
                          num_bytes=msg.num_bytes, header_bytes=msg.header_bytes, image_size=(msg.height, msg.width),
                          timings_ms=dict(msg.timings_ms), latency_ms=latency_ms,
                          novelty=msg.novelty if msg.HasField("novelty") else None)


def _grpc_error(exc: grpc.RpcError) -> ClientError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return ClientError(details or code.name, _HTTP_FOR_GRPC.get(code.name, 500), code.name,
                       retryable=code in _RETRY_GRPC)


class GrpcClient(_Base):
    def __init__(self, target: str, token: str | None = None, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        self._stub = pb_grpc.VitCodecStub(self._channel)
        self._v2 = v2_grpc.GRPCInferenceServiceStub(self._channel)  # probes (open even with a token)

    def close(self) -> None:
        self._channel.close()

    def _unary(self, method: Callable[..., Any], request: Any) -> Any:
        def once() -> Any:
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                raise _grpc_error(exc) from None

        return self.retry.run(once)

    def ready(self) -> bool:
        try:
            return self._v2.ServerReady(v2_pb.ServerReadyRequest(), timeout=5).ready
        except grpc.RpcError:
            return False

    def live(self) -> bool:
        try:
            return self._v2.ServerLive(v2_pb.ServerLiveRequest(), timeout=5).live
        except grpc.RpcError:
            return False

    def models(self) -> list[dict[str, Any]]:
        reply = self._unary(self._stub.ListModels, pb.ListModelsRequest())
        return [{"name": m.name, "version": m.version, "model_id": m.model_id, "state": m.state, "ready": m.ready,
                 "quality": None if m.quality < 0 else m.quality, "labels": list(m.labels),
                 "input_size": [m.height, m.width], "channels": m.channels} for m in reply.models]

    def classify(self, stream: bytes, model: str | None = None, top_k: int = 5) -> ClassifyResult:
        t0 = time.perf_counter()
        reply = self._unary(self._stub.Classify, pb.ClassifyRequest(stream=bytes(stream), model=model or "",
                                                                    top_k=top_k))
        return _result_from_proto(reply, (time.perf_counter() - t0) * 1e3)

    def classify_many(self, streams: Iterable[bytes], concurrency: int = 8, model: str | None = None,
                      top_k: int = 5) -> Iterator[tuple[int, ClassifyResult | ClientError]]:
        """One ClassifyStream call with at most `concurrency` requests in flight; if the stream itself breaks
        on a transient error, the unanswered requests are sent again on a new stream (with backoff)."""
        pending = dict(enumerate(bytes(s) for s in streams))
        last = self.retry.attempts - 1
        for attempt in range(self.retry.attempts):
            if not pending:
                return
            window = _Window(max(1, concurrency))
            call = self._stub.ClassifyStream(window.requests(sorted(pending.items()), model, top_k),
                                             metadata=self._metadata)
            try:
                for reply in call:
                    window.release()
                    index = int(reply.id)
                    if reply.HasField("error"):
                        err = reply.error
                        error = ClientError(err.message, err.http_status, err.code,
                                            retryable=err.code == "UNAVAILABLE")
                        if error.retryable and attempt < last:
                            continue  # stays pending: sent again on the next stream
                        pending.pop(index, None)
                        yield index, error
                    else:
                        pending.pop(index, None)
                        yield index, _result_from_proto(reply, window.latency_ms(index))
            except grpc.RpcError as exc:
                error = _grpc_error(exc)
                if not error.retryable or attempt == last:
                    for index in sorted(pending):
                        yield index, error
                    pending.clear()
                    return
            finally:
                window.close()
                call.cancel()
            if pending:
                time.sleep(self.retry.pause(attempt))

    def reconstruct(self, stream: bytes, model: str | None = None) -> ReconstructResult:
        t0 = time.perf_counter()
        reply = self._unary(self._stub.Reconstruct, pb.ReconstructRequest(stream=bytes(stream), model=model or ""))
        return ReconstructResult(model=reply.model, version=reply.version, png=reply.png,
                                 image_size=(reply.height, reply.width), num_bytes=reply.num_bytes,
                                 timings_ms=dict(reply.timings_ms), latency_ms=(time.perf_counter() - t0) * 1e3)


class _Window:
    """Flow control for one ClassifyStream call: the request generator (run by grpc in its own thread) waits
    while `size` requests are unanswered; each reply frees a slot."""

    def __init__(self, size: int) -> None:
        self._slots = threading.Semaphore(size)
        self._closed = threading.Event()
        self._sent_at: dict[int, float] = {}

    def requests(self, items: list[tuple[int, bytes]], model: str | None,
                 top_k: int) -> Iterator[pb.ClassifyRequest]:
        for index, stream in items:
            while not self._slots.acquire(timeout=0.1):
                if self._closed.is_set():
                    return
            if self._closed.is_set():
                return
            self._sent_at[index] = time.perf_counter()
            yield pb.ClassifyRequest(stream=stream, model=model or "", top_k=top_k, id=str(index))

    def release(self) -> None:
        self._slots.release()

    def latency_ms(self, index: int) -> float:
        now = time.perf_counter()
        return (now - self._sent_at.get(index, now)) * 1e3

    def close(self) -> None:
        self._closed.set()


def connect(url: str, token: str | None = None, timeout: float = 30.0,
            retry: RetryPolicy | None = None) -> HttpClient | GrpcClient:
    """A client for ``http://HOST:PORT``, ``https://HOST:PORT`` or ``grpc://HOST:PORT``."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme in ("http", "https"):
        return HttpClient(url if "://" in url else f"http://{url}", token, timeout, retry)
    if parts.scheme == "grpc":
        if not parts.hostname or not parts.port:
            raise ValueError(f"a gRPC server URL needs a host and a port: grpc://HOST:PORT, got {url!r}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return GrpcClient(f"{host}:{parts.port}", token, timeout, retry)
    raise ValueError(f"unsupported server URL {url!r}: use http://HOST:PORT or grpc://HOST:PORT")
