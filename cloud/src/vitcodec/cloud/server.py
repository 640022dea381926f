"""The server process: HTTP (uvicorn) and gRPC (grpc.aio) in one event loop, sharing one data plane and one
batching engine, built from a `Settings` object (no import-time side effects).

Lifecycle: `start()` binds both ports and serves at once (liveness true, readiness false), then loads the
models in a worker thread; readiness turns true (HTTP ``/v2/health/ready``, gRPC ``ServerReady`` and the
health service) when every model is loaded. `stop()` drains: readiness false, no new connections or RPCs,
in-flight requests finish (bounded by ``graceful_timeout_s``), batch queues empty, then threads stop.
SIGTERM and SIGINT trigger `stop()` in `serve()`; SIGHUP re-reads the TLS certificate files (`reload_tls`) and the
device credentials file (`reload_credentials`, which a poll of the file's mtime also calls when it changes).

`BackgroundServer` runs the same server in a thread with its own loop (tests, benchmarks, notebooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import signal
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import uvicorn

from .archive import ArchiveStore, archive_from_settings
from .auth import Authenticator
from .backends import make_loader
from .batching import BatchingEngine
from .credentials import CredentialsError
from .dataplane import DataPlane
from .grpc import GrpcTransport, build_grpc_server
from .metrics import Metrics
from .repository import ModelRepository
from .rest import create_app
from .settings import Settings
from .tls import (
    AccessLogIdentity,
    ClientIdentityMiddleware,
    PeerIdentities,
    ServerTls,
    TlsConfigError,
    tls_http_protocol,
)

log = logging.getLogger("vitcodec.cloud.server")


def resolve_event_loop(choice: str) -> str:
    """'auto' -> 'uvloop' when it is installed, else 'asyncio'; an explicit 'uvloop' must be installed."""
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise RuntimeError("event loop 'uvloop' was asked for but uvloop is not installed (pip install uvloop)")
    return "uvloop" if choice == "uvloop" or (choice == "auto" and installed) else "asyncio"


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    if resolve_event_loop(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_event_loop(main: Coroutine[Any, Any, Any], choice: str) -> Any:
    """`asyncio.run` on the chosen loop (uvloop's C loop costs less per callback than asyncio's)."""
    if resolve_event_loop(choice) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the CloudServer stops both transports together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say so, and without it every
    # keep-alive response whose headers and body leave in two writes waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"HTTP cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _http_protocol_class(choice: str) -> type:
    """The uvicorn HTTP protocol class `uvicorn.Config(http=choice)` would pick."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    return import_from_string(HTTP_PROTOCOLS[choice])


class CloudServer:
    def __init__(self, settings: Settings, repository: ModelRepository | None = None) -> None:
        self.settings = settings
        # first: a bad certificate file stops the start before any model is looked at
        self.tls: ServerTls | None = ServerTls.from_settings(settings)
        self.peers = PeerIdentities()
        self._access_filter: AccessLogIdentity | None = None
        self.metrics = Metrics()
        # then the credentials file: one that does not parse stops the start too (CredentialsError)
        self.auth = Authenticator.from_settings(settings, self.metrics)
        self._credentials_task: asyncio.Task | None = None
        self.repository = repository or ModelRepository(
            settings.model_repo or None, settings.models or None, device=settings.device,
            loader=make_loader(settings.backend, settings.device, settings.intra_op_threads))
        self.engine: BatchingEngine | None = None
        self.plane: DataPlane | None = None
        self.archive: ArchiveStore | None = None
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task | None = None
        self._grpc: GrpcTransport | None = None
        self._load_task: asyncio.Task | None = None
        self._stopped: asyncio.Event | None = None
        self.http_port = 0
        self.grpc_port = 0

    # -- addresses -----------------------------------------------------------------------------------
    def _client_host(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if host == "::":
            return "[::1]"
        return f"[{host}]" if ":" in host else host

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self._client_host()}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://{self._client_host()}:{self.grpc_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self._client_host()}:{self.grpc_port}"

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self._stopped = asyncio.Event()
        self.engine = BatchingEngine(s, self.metrics)
        if s.archive is not None:  # opened by its writer thread: a broken path degrades it, never stops the start
            self.archive = archive_from_settings(s, self.metrics)
            self.archive.start()
        self.plane = DataPlane(self.repository, self.engine, self.metrics,
                               max_streams_per_request=s.max_streams_per_request, max_tokens_factor=s.max_tokens_factor,
                               archive=self.archive)
        app = create_app(self.plane, s, self.auth)
        http: Any = s.http_parser
        tls_options: dict[str, Any] = {}
        if self.tls is not None:
            app = ClientIdentityMiddleware(app, self.peers)
            http = tls_http_protocol(_http_protocol_class(s.http_parser), self.peers)
            tls_options["ssl_context_factory"] = self.tls.ssl_context_factory
        if s.access_log and ((self.tls is not None and self.tls.mutual) or self.auth.store is not None):
            self._access_filter = AccessLogIdentity(self.peers)  # device names and mTLS identities
            logging.getLogger("uvicorn.access").addFilter(self._access_filter)
        sock = _bind(s.host, s.http_port)
        self.http_port = sock.getsockname()[1]
        # uvicorn annotates timeout_graceful_shutdown as int, but only hands it to asyncio.timeout (any seconds)
        config = uvicorn.Config(app, lifespan="off", log_config=None, log_level=s.log_level.lower(),
                                access_log=s.access_log,
                                timeout_graceful_shutdown=s.graceful_timeout_s,  # pyright: ignore[reportArgumentType]
                                server_header=False, http=http, **tls_options)
        self._http = _Uvicorn(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]), name="vitcodec-http")
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise RuntimeError("HTTP server exited during startup")
            await asyncio.sleep(0.01)
        try:
            self._grpc = build_grpc_server(self.plane, s,
                                           credentials=self.tls.grpc_credentials() if self.tls else None,
                                           auth=self.auth)
        except Exception:
            self._http.should_exit = True
            await self._http_task
            raise
        self.grpc_port = self._grpc.port
        await self._grpc.server.start()
        await self._grpc.set_serving(False)
        log.info("serving HTTP on %s and gRPC on %s%s; loading %d model(s)", self.http_url, self.grpc_url,
                 "" if self.tls is None else " (mutual TLS)" if self.tls.mutual else " (TLS)",
                 len(self.repository.entries()))
        self._load_task = asyncio.create_task(self._load_models(), name="vitcodec-load")
        if self.auth.store is not None and s.credentials_poll_s > 0:
            self._credentials_task = asyncio.create_task(self._watch_credentials(s.credentials_poll_s),
                                                         name="vitcodec-credentials")

    async def _watch_credentials(self, every_s: float) -> None:
        """Reload the credentials file when its mtime (size, inode) changes; a bad file is reported once."""
        store = self.auth.store
        assert store is not None
        while True:
            await asyncio.sleep(every_s)
            try:
                if store.changed():
                    self.reload_credentials()
            except Exception:  # noqa: BLE001 - the watch must outlive any surprise
                log.exception("checking the credentials file for changes failed")

    async def _load_models(self) -> None:
        loop = asyncio.get_running_loop()
        import torch

        torch.set_num_threads(self.settings.intra_op_threads)
        await loop.run_in_executor(None, self.repository.load_all)
        for entry in self.repository.entries():
            self.metrics.model_ready.labels(entry.name, entry.version).set(1 if entry.ready else 0)
        if self.plane is not None and self.plane.ready() and self._grpc is not None:
            await self._grpc.set_serving(True)
            log.info("ready: %s", ", ".join(f"{e.name} v{e.version}" for e in self.repository.entries()))
        elif not self.repository.entries():
            log.error("no models to serve in %s", [str(r) for r in self.repository.roots])

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.plane and self.plane.ready()):
            if self._load_task is not None and self._load_task.done():
                self._load_task.result()
                if self.plane is None or not self.plane.ready():
                    states = ", ".join(f"{e.name}: {e.state.value} {e.reason}" for e in self.repository.entries())
                    raise RuntimeError(f"models failed to load ({states or 'no models found'})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready after {timeout} s")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Graceful: readiness false, stop accepting, let in-flight requests finish, drain queues."""
        if self.plane is None or self._stopped is None or self._stopped.is_set():
            return
        log.info("shutting down: draining in-flight requests (at most %.0f s)", self.settings.graceful_timeout_s)
        self.plane.draining = True
        if self._credentials_task is not None:
            self._credentials_task.cancel()
        waits = []
        if self._grpc is not None:
            await self._grpc.set_serving(False)
            await self._grpc.health.enter_graceful_shutdown()
            waits.append(self._grpc.server.stop(self.settings.graceful_timeout_s))
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            waits.append(self._http_task)
        await asyncio.gather(*waits, return_exceptions=True)
        if self._load_task is not None:
            with contextlib.suppress(Exception):
                await self._load_task
        if self.engine is not None:
            await self.engine.close()
        if self.archive is not None:  # after the queues: every answer given is queued; write it, then stop
            await asyncio.to_thread(self.archive.close)
        if self._access_filter is not None:
            logging.getLogger("uvicorn.access").removeFilter(self._access_filter)
            self._access_filter = None
        self._stopped.set()
        log.info("stopped")

    def reload_tls(self) -> bool:
        """Re-read the TLS certificate, key and client CA (SIGHUP): new connections on both transports use
        them. A file that does not work is logged and the old certificate stays. Call on the server's loop."""
        if self.tls is None:
            log.warning("reload asked for, but the server does not use TLS")
            return False
        try:
            self.tls.reload()
        except TlsConfigError as exc:
            log.error("TLS reload failed, still serving the previous certificate: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s (new connections use it)", self.tls.cert)
        return True

    def reload_credentials(self) -> bool:
        """Re-read the device credentials file (SIGHUP, or its mtime changed): from the next request on, removed
        devices are refused and added ones accepted. A file that does not parse is logged and the previous
        credentials stay. Call on the server's loop."""
        store = self.auth.store
        if store is None:
            log.warning("credentials reload asked for, but the server has no credentials file")
            return False
        try:
            added, removed = store.reload()
        except CredentialsError as exc:
            log.error("credentials reload failed, still using the previous credentials (%d devices): %s",
                      len(store.names), exc)
            return False
        log.info("credentials reloaded from %s: %d devices (added: %s; removed: %s)", store.path,
                 len(store.names), ", ".join(added) or "none", ", ".join(removed) or "none")
        return True

    def _on_sighup(self) -> None:
        if self.tls is not None:
            self.reload_tls()
        if self.auth.store is not None:
            self.reload_credentials()

    async def serve(self) -> None:
        """Start, serve until SIGTERM/SIGINT (or `stop()`), then shut down gracefully; SIGHUP reloads the TLS
        files and the credentials file."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        if self.tls is not None or self.auth.store is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            waiter = asyncio.create_task(stop.wait())
            done_http = self._http_task
            if done_http is None:  # start() sets it, or raises
                raise RuntimeError("the HTTP server was not started")
            await asyncio.wait({waiter, done_http}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)


class BackgroundServer:
    """A CloudServer on its own event loop in a daemon thread: ``with BackgroundServer(settings) as srv:``
    then talk to ``srv.http_url`` / ``srv.grpc_target``."""

    def __init__(self, settings: Settings, repository: ModelRepository | None = None, *,
                 wait_ready: bool = True, ready_timeout: float = 120.0) -> None:
        self.server = CloudServer(settings, repository)
        self._wait_ready = wait_ready
        self._ready_timeout = ready_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> BackgroundServer:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                loop = new_event_loop(self.server.settings.event_loop)
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as exc:  # report to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="vitcodec-server", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        if self._wait_ready:
            self.call(self.server.wait_ready(self._ready_timeout))
        return self

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        try:
            self.call(self.server.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def reload_tls(self) -> bool:
        """`CloudServer.reload_tls` on the server's loop (what SIGHUP does to ``vitcodec-cloud serve``)."""
        async def reload() -> bool:
            return self.server.reload_tls()

        return bool(self.call(reload()))

    def reload_credentials(self) -> bool:
        """`CloudServer.reload_credentials` on the server's loop (what SIGHUP does to ``vitcodec-cloud serve``)."""
        async def reload() -> bool:
            return self.server.reload_credentials()

        return bool(self.call(reload()))

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    @property
    def grpc_target(self) -> str:
        return self.server.grpc_target

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
