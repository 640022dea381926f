"""Clients for the vitcodec cloud server, over HTTP (httpx) or gRPC (grpcio). No torch: this runs on devices.

The two clients mirror each other (same method names and results), as Triton's clients do; `connect(url)`
picks one from the URL scheme: ``http://``, ``https://``, ``grpc://`` or ``grpcs://`` (gRPC over TLS). Both use
the server's native API, which routes each bitstream to its model by the model id in the stream's header.

- TLS (`TlsOptions`): the server's certificate is checked against ``ca_cert`` (else the system's CAs) and the
  URL's host name; ``client_cert``/``client_key`` answer a server that wants client certificates (mTLS). A
  TLS problem (untrusted or expired certificate, wrong name, certificate refused, TLS on one side only) is a
  `TlsFailure` with one clear message and is never retried.
- Retries by time (`RetryPolicy`): transient failures only (connection refused or reset, timeouts, HTTP 429/
  502/503/504, gRPC UNAVAILABLE; the server says 503/UNAVAILABLE while models load, when a queue is full and
  while draining), with capped exponential backoff and full jitter, for at most ``total_s`` seconds (30 by
  default) since the call began or, in `classify_many`, since the last answer; 429 and 503 honour
  Retry-After. A bad stream (400), a wrong model (409/404), a too large body (413) or a missing token (401)
  fail at once.
- `classify_many` keeps at most `concurrency` requests in flight: a thread pool over one connection pool
  (HTTP), or one bidirectional stream with a bounded window (gRPC).
"""

from __future__ import annotations

import email.utils
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import grpc
import httpx
from vitcodec.file_errors import unreadable_reason
from vitcodec.protos import grpc_service_pb2 as v2_pb
from vitcodec.protos import grpc_service_pb2_grpc as v2_grpc
from vitcodec.protos import vitcodec_pb2 as pb
from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc
from vitcodec.results import ClassifyResult, ClassScore, ReconstructResult
from vitcodec.tls_files import load_cert_chain
from vitcodec.wire import NO_ANSWER, RETRY_AFTER_HTTP, Backoff, http_for_grpc, is_retryable

__all__ = [
    "ClientError",
    "TlsFailure",
    "ClassScore",
    "ClassifyResult",
    "ReconstructResult",
    "RetryPolicy",
    "TlsOptions",
    "HttpClient",
    "GrpcClient",
    "connect",
]

T = TypeVar("T")



class ClientError(Exception):
    """The server refused a request (or could not be reached). `status` is the HTTP status, `code` the gRPC
    status name; both are set whichever transport was used. `retry_after`: seconds the server asked to wait
    (HTTP Retry-After), or None."""

    def __init__(self, message: str, status: int = NO_ANSWER, code: str = "UNKNOWN", retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.code, self.retryable = message, status, code, retryable
        self.retry_after = retry_after

    def _gave_up(self, tries: int, seconds: float) -> None:
        self.message = f"{self.message} (gave up after {tries} tries in {seconds:.1f} s)"
        self.args = (self.message,)


class TlsFailure(ClientError):
    """A TLS problem between this client and the server: its certificate is not trusted or not for this host
    name, it refused (or wanted) a client certificate, or only one side speaks TLS. Never retried (status 0,
    code UNAVAILABLE)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, NO_ANSWER, "UNAVAILABLE", retryable=False)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of transient failures (`ClientError.retryable`, by the rules of `vitcodec.wire`): capped
    exponential backoff with full jitter (`vitcodec.wire.Backoff`), for at most `total_s` seconds in all (the
    time budget), and at most `attempts` tries when that is set (``attempts=1``: no retries). A Retry-After
    longer than what is left of the budget ends the retries."""

    attempts: int | None = None  # tries in all, the first included; None: as many as the budget allows
    backoff_s: float = 0.1  # first pause; doubles each time
    max_backoff_s: float = 2.0
    total_s: float = 30.0  # time budget, from the first try (or from the `since` clock given to `run`)

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.backoff_s, self.max_backoff_s, floor=0.0)

    def pause(self, attempt: int) -> float:
        """Pause before try number `attempt + 1` (full jitter)."""
        return self.backoff.delay(attempt + 1)

    def next_pause(self, tries: int, since: float, error: ClientError) -> float | None:
        """Seconds to wait before trying again after `tries` failed tries, the budget counted from `since`
        (a `time.monotonic()`); None: give up."""
        if not error.retryable or (self.attempts is not None and tries >= self.attempts):
            return None
        remaining = self.total_s - (time.monotonic() - since)
        if remaining <= 0:
            return None
        wait = self.pause(max(0, tries - 1))
        if error.retry_after is not None:
            if error.retry_after > remaining:
                return None
            wait = max(wait, error.retry_after)
        return min(wait, remaining)

    def run(self, call: Callable[[], T], since: Callable[[], float] | None = None) -> T:
        """`call()` until it succeeds, fails for good, or the budget is spent (counted from the first try, or
        from ``since()``, a shared clock such as the time of the last answer of a batch)."""
        started = time.monotonic()
        tries = 0
        while True:
            try:
                return call()
            except ClientError as exc:
                tries += 1
                wait = self.next_pause(tries, since() if since is not None else started, exc)
                if wait is None:
                    if tries > 1:
                        exc._gave_up(tries, time.monotonic() - started)
                    raise
                time.sleep(wait)


class _Progress:
    """A shared retry clock: the time of the last answer (or of the start), for a batch of calls."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def mark(self) -> None:
        self.last = time.monotonic()

    def get(self) -> float:
        return self.last


# -- TLS ----------------------------------------------------------------------------------------------------

def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path}: {unreadable_reason(exc)}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{what} {path}: not a PEM file")
    return data


@dataclass(frozen=True)
class TlsOptions:
    """TLS settings of a client: ``ca_cert`` (PEM; default: the system's CAs) checks the server's
    certificate; ``client_cert`` and ``client_key`` (PEM; the key may be in the certificate file) are this
    device's certificate for servers that want one (mTLS)."""

    ca_cert: str | os.PathLike[str] | None = None
    client_cert: str | os.PathLike[str] | None = None
    client_key: str | os.PathLike[str] | None = None

    @property
    def empty(self) -> bool:
        return not (self.ca_cert or self.client_cert or self.client_key)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context (certificate and host name checked); ValueError, one line, for unusable files."""
        if self.client_key and not self.client_cert:
            raise ValueError("a client key needs its client certificate (--client-cert)")
        if self.ca_cert:
            ca = _read_pem(self.ca_cert, "CA certificate")
            try:
                context = ssl.create_default_context(cadata=ca.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(f"CA certificate {self.ca_cert}: cannot be used "
                                 f"({getattr(exc, 'reason', None) or exc})") from None
        else:
            context = ssl.create_default_context()
        if self.client_cert:
            _read_pem(self.client_cert, "client certificate")
            if self.client_key:
                _read_pem(self.client_key, "client key")
            load_cert_chain(context, self.client_cert, self.client_key, cert_what="client certificate",
                            key_what="client key")
        return context

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        root = _read_pem(self.ca_cert, "CA certificate") if self.ca_cert else None
        if self.client_cert:
            chain = _read_pem(self.client_cert, "client certificate")
            key = _read_pem(self.client_key, "client key") if self.client_key else chain
            return grpc.ssl_channel_credentials(root, key, chain)
        return grpc.ssl_channel_credentials(root)


def _ssl_error_in(exc: BaseException) -> ssl.SSLError | None:
    """The `ssl.SSLError` behind a transport exception (httpx wraps httpcore's, which wraps the ssl one)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST",
            "UNKNOWN_PROTOCOL", "UNEXPECTED_RECORD")
_CERT_REFUSED = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "DECRYPT_ERROR", "ACCESS_DENIED",
                 "UNSUPPORTED_CERTIFICATE", "CERTIFICATE_REVOKED", "CERTIFICATE_EXPIRED")


def _tls_message(text: str, where: str, plain_scheme: str, verify_message: str | None = None) -> str:
    """One line saying what went wrong in a TLS handshake with `where`, from OpenSSL's reason text."""
    upper = text.upper().replace(" ", "_")
    detail = verify_message or text
    if verify_message or "CERTIFICATE_VERIFY_FAILED" in upper:
        lowered = detail.lower()
        if "expired" in lowered:
            return (f"TLS: the certificate of {where} has expired ({detail.rstrip('.')}); the server needs a "
                    "renewed certificate (or this device's clock is wrong)")
        if "not yet valid" in lowered:
            return (f"TLS: the certificate of {where} is not yet valid ({detail.rstrip('.')}); check this "
                    "device's clock")
        if "hostname mismatch" in lowered or "ip address mismatch" in lowered or "peer name" in lowered:
            return (f"TLS: the certificate of {where} is not valid for that name ({detail.rstrip('.')}); "
                    "use a host name the certificate holds")
        return (f"TLS: the certificate of {where} is not trusted ({detail.rstrip('.')}); pass the CA that "
                "signed it with --ca-cert")
    if "PEER_NAME" in upper or "NOT_IN_PEER_CERTIFICATE" in upper:
        return f"TLS: the certificate of {where} is not valid for that name ({text}); use a host name it holds"
    if "CERTIFICATE_REQUIRED" in upper:
        return f"TLS: {where} requires a client certificate (--client-cert and --client-key)"
    if "CERTIFICATE_EXPIRED" in upper:
        return f"TLS: {where} refused the client certificate: it has expired ({text}); renew it"
    if any(key in upper for key in _CERT_REFUSED):
        return (f"TLS: {where} refused the client certificate ({text}); it accepts only certificates signed by "
                "its client CA")
    if any(key in upper for key in _NOT_TLS):
        return f"TLS: {where} does not speak TLS ({text}); use {plain_scheme}://{where}"
    return f"TLS handshake with {where} failed: {text}"


def _ssl_message(exc: ssl.SSLError, where: str, plain_scheme: str) -> str:
    verify = getattr(exc, "verify_message", None) if isinstance(exc, ssl.SSLCertVerificationError) else None
    return _tls_message(exc.reason or str(exc), where, plain_scheme, verify or None)


def _client_cert_dates_problem(path: str | os.PathLike[str] | None) -> str | None:
    """Why this client's own certificate file is outside its validity period ("... expired on <date>"), or
    None (valid, no file, or unreadable). A server refusing an expired certificate just closes the connection,
    so the client can only learn the reason from its own file."""
    if not path:
        return None
    try:  # CPython's own decoder (the first certificate of the PEM file); private, hence the broad except
        decoded = ssl._ssl._test_decode_cert(os.fspath(path))  # type: ignore[attr-defined]
        not_before, not_after = decoded["notBefore"], decoded["notAfter"]
        starts, ends = ssl.cert_time_to_seconds(not_before), ssl.cert_time_to_seconds(not_after)
    except Exception:  # noqa: BLE001
        return None
    now = time.time()
    if now > ends:
        return f"this client's certificate {path} expired on {not_after}; renew it"
    if now < starts:
        return f"this client's certificate {path} is not valid before {not_before}; check this device's clock"
    return None


def _probe_tls(host: str, port: int, context: ssl.SSLContext | None, secure_scheme: str, plain_scheme: str,
               has_client_cert: bool = False, timeout: float = 2.0,
               client_cert: str | os.PathLike[str] | None = None) -> str | None:
    """Why a connection to host:port was closed without a word, when TLS is the reason; None otherwise.

    Without `context` (a plaintext client): does the port speak TLS? With it: does the handshake fail, or does
    the server close the connection right after it? (A TLS 1.3 server checks the client's certificate after
    the client has finished its handshake, then sends an alert or just closes; a server that accepted the
    client waits for its request.)"""
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host.strip("[]"), port), timeout=timeout)
    except OSError:
        return None
    with sock:
        probe = context
        if probe is None:
            probe = ssl.create_default_context()
            probe.check_hostname = False
            probe.verify_mode = ssl.CERT_NONE
        try:
            with probe.wrap_socket(sock, server_hostname=host.strip("[]")) as tls:
                if context is None:
                    return f"TLS: {where} speaks TLS, this client does not; use {secure_scheme}://{where}"
                tls.settimeout(min(timeout, 1.0))
                try:
                    data = tls.recv(1)
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionError):
                    data = b""
                except ssl.SSLError as exc:
                    return _ssl_message(exc, where, plain_scheme)
                except OSError:  # a timeout: the server waits for a request, TLS is fine
                    return None
                if data:
                    return None
                dates = _client_cert_dates_problem(client_cert) if has_client_cert else None
                if dates:
                    return (f"TLS: {where} closed the connection right after the handshake: it refused this "
                            f"client's certificate: {dates}")
                if has_client_cert:
                    return (f"TLS: {where} closed the connection right after the handshake: it refused this "
                            "client's certificate (it accepts only certificates signed by its client CA)")
                return (f"TLS: {where} closed the connection right after the handshake: it requires a client "
                        "certificate (--client-cert and --client-key)")
        except ssl.SSLError as exc:
            return None if context is None else _ssl_message(exc, where, plain_scheme)
        except OSError:
            return None


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


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
                          latency_ms=latency_ms, novelty=_optional_float(body.get("novelty")),
                          archive_id=body.get("id") or None, client=body.get("client") or None)


def _optional_float(value: Any) -> float | None:
    """A novelty from a reply: None when the server sent none (uncalibrated model, or an older server)."""
    return None if value is None else float(value)


class HttpClient(_Base):
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, max_connections: int = 64, tls: TlsOptions | None = None) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        parts = urlsplit(self.url)
        self._secure = parts.scheme == "https"
        if tls is not None and not tls.empty and not self._secure:
            raise ValueError(f"TLS options (CA, client certificate) need an https:// server URL, got {url!r}")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._secure else 80)
        self._where = f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
        self._ssl = (tls or TlsOptions()).ssl_context() if self._secure else None
        self._has_client_cert = bool(tls and tls.client_cert)
        self._client_cert = tls.client_cert if tls else None
        self._answered = False  # a TLS problem shows on the first request; later failures are not probed
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  verify=self._ssl if self._ssl is not None else True,
                                  limits=httpx.Limits(max_connections=max_connections,
                                                      max_keepalive_connections=max_connections))

    def close(self) -> None:
        self._http.close()

    def _transport_error(self, exc: httpx.TransportError) -> ClientError:
        cause = _ssl_error_in(exc)
        if cause is not None:
            return TlsFailure(_ssl_message(cause, self._where, "http"))
        if not self._answered and isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            # closed without a word: a TLS port spoken to in plaintext, or a refused client certificate
            diagnosis = _probe_tls(self._host, self._port, self._ssl, "https", "http", self._has_client_cert,
                                   client_cert=self._client_cert)
            if diagnosis:
                return TlsFailure(diagnosis)
        return ClientError(f"cannot reach {self.url}: {type(exc).__name__}: {exc}", NO_ANSWER, "UNAVAILABLE",
                           retryable=True)

    def _request(self, method: str, path: str, since: Callable[[], float] | None = None,
                 **kwargs: Any) -> httpx.Response:
        def once() -> httpx.Response:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise self._transport_error(exc) from None
            self._answered = True
            if response.status_code >= 400:
                try:
                    body = response.json()
                    message, code = body.get("error", response.text), body.get("code", "UNKNOWN")
                except ValueError:
                    message, code = response.text or response.reason_phrase, "UNKNOWN"
                retry_after = None
                if response.status_code in RETRY_AFTER_HTTP:
                    retry_after = _parse_retry_after(response.headers.get("retry-after"))
                raise ClientError(message, response.status_code, code,
                                  retryable=is_retryable(response.status_code), retry_after=retry_after)
            return response

        return self.retry.run(once, since)

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
        return self._classify(stream, model, top_k)

    def _classify(self, stream: bytes, model: str | None, top_k: int,
                  progress: _Progress | None = None) -> ClassifyResult:
        params: dict[str, Any] = {"top_k": top_k}
        if model:
            params["model"] = model
        t0 = time.perf_counter()
        response = self._request("POST", "/v1/classify", progress.get if progress else None,
                                 content=bytes(stream), params=params,
                                 headers={"Content-Type": "application/octet-stream"})
        if progress is not None:
            progress.mark()
        return _result_from_json(response.json(), (time.perf_counter() - t0) * 1e3)

    def classify_many(self, streams: Iterable[bytes], concurrency: int = 8, model: str | None = None,
                      top_k: int = 5) -> Iterator[tuple[int, ClassifyResult | ClientError]]:
        """The retry budget is shared: it counts from the last answer of the batch, so an outage fails the
        queued streams once the budget has passed instead of spending it again on each."""
        progress = _Progress()
        with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="vitcodec-send") as pool:
            futures = {pool.submit(self._classify, s, model, top_k, progress): i for i, s in enumerate(streams)}
            try:
                for future in as_completed(futures):
                    try:
                        yield futures[future], future.result()
                    except ClientError as exc:
                        yield futures[future], exc
            finally:  # the caller stopped early: send no more
                for future in futures:
                    future.cancel()

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

    def reconstruct_archived(self, image_id: str) -> ReconstructResult:
        """The server's reconstruction of a stream it archived (the `archive_id` of a classify answer)."""
        t0 = time.perf_counter()
        response = self._request("GET", f"/v1/images/{quote(image_id, safe='')}/reconstruction")
        h, _, w = response.headers.get("x-vitcodec-image-size", "0x0").partition("x")
        return ReconstructResult(model=response.headers.get("x-vitcodec-model", ""),
                                 version=response.headers.get("x-vitcodec-model-version", ""), png=response.content,
                                 image_size=(int(h), int(w)), latency_ms=(time.perf_counter() - t0) * 1e3)


# -- gRPC ---------------------------------------------------------------------------------------------------

def _result_from_proto(msg: pb.ClassifyResponse, latency_ms: float) -> ClassifyResult:
    top = [ClassScore(int(t.index), t.label, float(t.probability)) for t in msg.top]
    return ClassifyResult(model=msg.model, version=msg.version, model_id=msg.model_id, top=top,
                          num_bytes=msg.num_bytes, header_bytes=msg.header_bytes, image_size=(msg.height, msg.width),
                          timings_ms=dict(msg.timings_ms), latency_ms=latency_ms,
                          novelty=msg.novelty if msg.HasField("novelty") else None,
                          archive_id=msg.archive_id or None, client=msg.client or None)


def _grpc_error(exc: grpc.RpcError) -> ClientError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return ClientError(details or code.name, http_for_grpc(code.name), code.name,
                       retryable=is_retryable(code=code.name))


_GRPC_TLS_WORDS = ("handshake", "SSL_ERROR", "CERTIFICATE_VERIFY_FAILED", "peer certificate", "TSI_")
_GRPC_SILENT_CLOSE = ("Socket closed", "Connection reset", "Broken pipe", "Connection closed", "end of file",
                      "failed to connect to all addresses")


class GrpcClient(_Base):
    def __init__(self, target: str, token: str | None = None, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, max_message_bytes: int = 64 * 1024 * 1024,
                 tls: TlsOptions | None = None) -> None:
        """`tls`: None for a plaintext channel (grpc://), `TlsOptions` for TLS (grpcs://; an empty one checks the
        server against the system's CAs)."""
        self.target = target
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        host, _, port = target.rpartition(":")
        self._host, self._port = host or target, int(port) if port.isdigit() else 443
        self._ssl = tls.ssl_context() if tls is not None else None  # checks the files now; used by the probe
        self._has_client_cert = bool(tls and tls.client_cert)
        self._client_cert = tls.client_cert if tls else None
        self._answered = False
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   # reconnect as often as our own retries try (gRPC's backoff otherwise grows to minutes)
                   ("grpc.initial_reconnect_backoff_ms", max(100, int(self.retry.backoff_s * 1000))),
                   ("grpc.max_reconnect_backoff_ms", max(1000, int(self.retry.max_backoff_s * 1000)))]
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, tls.grpc_credentials(), options=options)
        self._stub = pb_grpc.VitCodecStub(self._channel)
        self._v2 = v2_grpc.GRPCInferenceServiceStub(self._channel)  # probes (open even with a token)

    def close(self) -> None:
        self._channel.close()

    def _error(self, exc: grpc.RpcError) -> ClientError:
        """The `ClientError` for a failed call; a TLS problem (said by gRPC, or found by a probe when the
        connection was only closed) becomes a `TlsFailure`."""
        error = _grpc_error(exc)
        if self._answered or error.code not in ("UNAVAILABLE", "UNKNOWN"):
            return error
        where = f"{self._host}:{self._port}"
        if self._ssl is not None and any(word.lower() in error.message.lower() for word in _GRPC_TLS_WORDS):
            return TlsFailure(_tls_message(_grpc_tls_reason(error.message), where, "grpc",
                                           _verify_detail(error.message)))
        if "Connection refused" not in error.message and any(w in error.message for w in _GRPC_SILENT_CLOSE):
            diagnosis = _probe_tls(self._host, self._port, self._ssl, "grpcs", "grpc", self._has_client_cert,
                                   client_cert=self._client_cert)
            if diagnosis:
                return TlsFailure(diagnosis)
        return error

    def _unary(self, method: Callable[..., Any], request: Any) -> Any:
        def once() -> Any:
            try:
                reply = method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                raise self._error(exc) from None
            self._answered = True
            return reply

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
        on a transient error, the unanswered requests are sent again on a new stream (with backoff), for at
        most the retry budget since the last answer."""
        pending = dict(enumerate(bytes(s) for s in streams))
        progress = time.monotonic()  # the last answer (or the start): the retry budget counts from here
        last_error: dict[int, ClientError] = {}
        tries = 0  # streams in a row that left requests unanswered
        while pending:
            window = _Window(max(1, concurrency))
            call = self._stub.ClassifyStream(window.requests(sorted(pending.items()), model, top_k),
                                             metadata=self._metadata)
            failure: ClientError | None = None
            try:
                for reply in call:
                    window.release()
                    self._answered = True
                    index = int(reply.id)
                    if reply.HasField("error"):
                        err = reply.error
                        error = ClientError(err.message, err.http_status, err.code,
                                            retryable=is_retryable(code=err.code))
                        if self.retry.next_pause(tries + 1, progress, error) is not None:
                            last_error[index] = error
                            continue  # stays pending: sent again on the next stream
                        pending.pop(index, None)
                        yield index, error
                    else:
                        pending.pop(index, None)
                        progress, tries = time.monotonic(), 0
                        yield index, _result_from_proto(reply, window.latency_ms(index))
            except grpc.RpcError as exc:
                failure = self._error(exc)
            finally:
                window.close()
                call.cancel()
            if not pending:
                return
            tries += 1
            reason = failure or ClientError("the stream ended before every request was answered", 503,
                                            "UNAVAILABLE", retryable=True)
            wait = self.retry.next_pause(tries, progress, reason)
            if wait is None:
                if failure is not None and tries > 1:
                    failure._gave_up(tries, time.monotonic() - progress)
                for index in sorted(pending):
                    yield index, failure or last_error.get(index, reason)
                return
            time.sleep(wait)

    def reconstruct(self, stream: bytes, model: str | None = None) -> ReconstructResult:
        t0 = time.perf_counter()
        reply = self._unary(self._stub.Reconstruct, pb.ReconstructRequest(stream=bytes(stream), model=model or ""))
        return ReconstructResult(model=reply.model, version=reply.version, png=reply.png,
                                 image_size=(reply.height, reply.width), num_bytes=reply.num_bytes,
                                 timings_ms=dict(reply.timings_ms), latency_ms=(time.perf_counter() - t0) * 1e3)

    def reconstruct_archived(self, image_id: str) -> ReconstructResult:
        """The server's reconstruction of a stream it archived (the `archive_id` of a classify answer)."""
        t0 = time.perf_counter()
        reply = self._unary(self._stub.GetReconstruction, pb.GetReconstructionRequest(id=image_id))
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


def _grpc_tls_reason(message: str) -> str:
    """The telling part of a gRPC TLS error: the host name complaint, or OpenSSL's reason code."""
    found = re.search(r"Peer name \S+ is not in peer certificate", message)
    if found:
        return found.group(0)
    found = re.search(r"OPENSSL_internal:([A-Z0-9_]+)", message)
    if found:
        return found.group(1)
    return message.rpartition("last error: ")[2] or message


def _verify_detail(message: str) -> str | None:
    """The certificate check's own words in a gRPC TLS error ("... CERTIFICATE_VERIFY_FAILED: unable to get
    local issuer certificate: OK"), or None."""
    _, found, rest = message.partition("CERTIFICATE_VERIFY_FAILED: ")
    if not found:
        return None
    return rest.rsplit(": OK", 1)[0].strip() or None


TOKEN_ENV = "VITCODEC_AUTH_TOKEN"  # the server's name for its token; one name on both sides
DEPRECATED_TOKEN_ENV = "VITCODEC_TOKEN"  # what the edge read before: still read, after TOKEN_ENV


def env_token(token: str | None = None) -> str | None:
    """`token` when given, else ``VITCODEC_AUTH_TOKEN``, else the deprecated ``VITCODEC_TOKEN``; None when
    none is set (the CLIs' ``--token``)."""
    return token or os.environ.get(TOKEN_ENV) or os.environ.get(DEPRECATED_TOKEN_ENV) or None


def connect(url: str, token: str | None = None, timeout: float = 30.0,
            retry: RetryPolicy | None = None, tls: TlsOptions | None = None) -> HttpClient | GrpcClient:
    """A client for ``http://HOST:PORT``, ``https://HOST:PORT``, ``grpc://HOST:PORT`` or ``grpcs://HOST:PORT``.

    `tls` (CA, client certificate) is for the TLS schemes only; ValueError (one line) for a bad URL or an
    unusable certificate file."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = parts.scheme
    if tls is not None and not tls.empty and scheme not in ("https", "grpcs"):
        raise ValueError(f"TLS options (CA, client certificate) need an https:// or grpcs:// server URL, "
                         f"got {url!r}")
    if scheme in ("http", "https"):
        return HttpClient(url if "://" in url else f"http://{url}", token, timeout, retry, tls=tls)
    if scheme in ("grpc", "grpcs"):
        if not parts.hostname or not parts.port:
            raise ValueError(f"a gRPC server URL needs a host and a port: {scheme}://HOST:PORT, got {url!r}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return GrpcClient(f"{host}:{parts.port}", token, timeout, retry,
                          tls=(tls or TlsOptions()) if scheme == "grpcs" else None)
    raise ValueError(f"unsupported server URL {url!r}: use http://, https://, grpc:// or grpcs://HOST:PORT")
