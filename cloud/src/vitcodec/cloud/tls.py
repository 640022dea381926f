"""TLS and mutual TLS for both transports, from one set of PEM files (``--tls-cert``, ``--tls-key``,
``--tls-client-ca``).

- The files are read and checked before anything binds: a missing, unreadable or non-PEM file, or a key that
  does not match its certificate, is one `TlsConfigError` line.
- HTTP: uvicorn serves with an `ssl.SSLContext` this module owns (`ServerTls.context`).
- gRPC: `grpc.dynamic_ssl_server_credentials`, whose certificate fetcher gRPC calls before every new
  handshake; it hands over the configuration a reload prepared (once), else None (no change).
- `ServerTls.reload()` (SIGHUP in ``serve``) re-reads the files, checks them on a scratch context and only
  then swaps them in: new HTTP connections get the new certificate (`load_cert_chain` on the live context; new
  connections copy it, open ones keep theirs), new gRPC connections too (the fetcher). A broken new set
  raises `TlsConfigError` and the old certificate stays. The client CA is replaced on gRPC; on HTTP, an
  `SSLContext` can only add CA certificates (`load_verify_locations`), so a reload adds the new CAs and a
  removed CA stays trusted by HTTP until a restart.
- The client identity of an mTLS connection is the certificate's subject common name, or its first DNS
  subject alternative name when it has no CN: `request.state.client_identity` over HTTP
  (`ClientIdentityMiddleware`), `grpc_client_identity(context)` over gRPC; both access logs show it.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitcodec.tls_files import load_cert_chain

from .auth import CURRENT_DEVICE
from .files import read_config_file

log = logging.getLogger("vitcodec.cloud.tls")


class TlsConfigError(ValueError):
    """The TLS files cannot be used; the message is one line naming the file and what is wrong."""


def _read(path: Path, what: str) -> bytes:
    return read_config_file(path, what, TlsConfigError)


class _Material:
    """The PEM bytes of one certificate set, checked: the pair matches, the CA file holds certificates."""

    def __init__(self, cert_path: Path, key_path: Path, client_ca_path: Path | None) -> None:
        self.cert_path, self.key_path, self.client_ca_path = Path(cert_path), Path(key_path), client_ca_path
        self.cert = _read(self.cert_path, "TLS certificate")
        self.key = _read(self.key_path, "TLS key")
        self.client_ca = _read(Path(client_ca_path), "TLS client CA") if client_ca_path else None
        if b"-----BEGIN CERTIFICATE-----" not in self.cert:
            raise TlsConfigError(f"TLS certificate {self.cert_path}: not a PEM certificate "
                                 "(no '-----BEGIN CERTIFICATE-----')")
        if b"PRIVATE KEY-----" not in self.key:
            raise TlsConfigError(f"TLS key {self.key_path}: not a PEM private key (no '-----BEGIN ... PRIVATE "
                                 "KEY-----')")
        if self.client_ca is not None and b"-----BEGIN CERTIFICATE-----" not in self.client_ca:
            raise TlsConfigError(f"TLS client CA {client_ca_path}: not a PEM certificate "
                                 "(no '-----BEGIN CERTIFICATE-----')")
        load_into(new_server_context(), self)  # raises TlsConfigError when the set does not work

    def grpc_configuration(self) -> Any:
        import grpc

        return grpc.ssl_server_certificate_configuration([(self.key, self.cert)], root_certificates=self.client_ca)


def new_server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def load_into(context: ssl.SSLContext, material: _Material) -> None:
    """Certificate, key and (when given) the client CA of `material` into `context`, as one-line errors."""
    load_cert_chain(context, material.cert_path, material.key_path, cert_what="TLS certificate",
                    key_what="TLS key", error=TlsConfigError)
    if material.client_ca is not None:
        try:
            context.load_verify_locations(cadata=material.client_ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise TlsConfigError(f"TLS client CA {material.client_ca_path}: cannot be used "
                                 f"({getattr(exc, 'reason', None) or exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED


class ServerTls:
    """The server's TLS state: the uvicorn context, the gRPC credentials and the reload."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = Path(cert), Path(key), Path(client_ca) if client_ca else None
        material = _Material(self.cert, self.key, self.client_ca)
        self.context = new_server_context()
        load_into(self.context, material)
        self._initial_grpc = material.grpc_configuration()
        self._pending_grpc: Any = None
        self._lock = threading.Lock()
        self.reloads = 0

    @classmethod
    def from_settings(cls, settings: Any) -> ServerTls | None:
        if settings.tls_cert is None:
            return None
        return cls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)

    @property
    def mutual(self) -> bool:
        """Do clients need a certificate (mTLS)?"""
        return self.client_ca is not None

    def ssl_context_factory(self, config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        """uvicorn's ``ssl_context_factory``: always this object's context (the one `reload` updates)."""
        return self.context

    def grpc_credentials(self) -> Any:
        import grpc

        return grpc.dynamic_ssl_server_credentials(self._initial_grpc, self._fetch_grpc,
                                                   require_client_authentication=self.mutual)

    def _fetch_grpc(self) -> Any:
        """Called by gRPC (its own threads) before each new handshake: the reloaded configuration once, then
        None (keep the current one)."""
        with self._lock:
            pending, self._pending_grpc = self._pending_grpc, None
        return pending

    def reload(self) -> None:
        """Re-read the files; on success new connections on both transports use them. Call it on the thread
        that runs the HTTP server's event loop (the context must not change under a handshake being set up).
        Raises `TlsConfigError` (the old certificate stays) when the new files do not work."""
        material = _Material(self.cert, self.key, self.client_ca)
        load_into(self.context, material)
        configuration = material.grpc_configuration()
        with self._lock:
            self._pending_grpc = configuration
        self.reloads += 1


# -- client identity -----------------------------------------------------------------------------------------

def identity_from_peercert(peercert: dict[str, Any] | None) -> str | None:
    """Subject CN, else the first DNS subject alternative name, of an `ssl.SSLSocket.getpeercert()` dict."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName" and value:
                return str(value)
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS" and value:
            return str(value)
    return None


def grpc_client_identity(context: Any) -> str | None:
    """The client identity of a gRPC call (subject CN, else first DNS SAN); None without a client certificate."""
    try:
        auth = context.auth_context() or {}
    except Exception:  # noqa: BLE001 - a context without transport security
        return None
    for key in ("x509_common_name", "peer_dns", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            if value:
                return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


class PeerIdentities:
    """Client identity per open HTTP connection, keyed by the client address (host, port)."""

    def __init__(self) -> None:
        self._by_addr: dict[tuple[Any, ...], str] = {}

    def add(self, addr: tuple[Any, ...], identity: str) -> None:
        self._by_addr[tuple(addr)] = identity

    def discard(self, addr: tuple[Any, ...]) -> None:
        self._by_addr.pop(tuple(addr), None)

    def get(self, addr: Any) -> str | None:
        return self._by_addr.get(tuple(addr)) if addr else None

    def get_text(self, host_port: str) -> str | None:
        """Identity of a connection written as uvicorn's access log writes it ("host:port")."""
        host, _, port = host_port.rpartition(":")
        return self._by_addr.get((host, int(port))) if port.isdigit() else None


def tls_http_protocol(base: type, peers: PeerIdentities) -> type:
    """A subclass of uvicorn's HTTP protocol class `base` that records each connection's client identity
    (asyncio calls ``connection_made`` once the TLS handshake is done, so the peer certificate is known)."""

    class TlsHttpProtocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            identity = identity_from_peercert(transport.get_extra_info("peercert"))
            if identity and self.client:
                peers.add(self.client, identity)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.client:
                peers.discard(self.client)
            super().connection_lost(exc)

    TlsHttpProtocol.__name__ = TlsHttpProtocol.__qualname__ = f"Tls{base.__name__}"
    return TlsHttpProtocol


class ClientIdentityMiddleware:
    """Puts the connection's client identity into ``scope["state"]["client_identity"]`` (FastAPI:
    ``request.state.client_identity``; None without a client certificate)."""

    def __init__(self, app: Any, peers: PeerIdentities) -> None:
        self.app, self.peers = app, peers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            state = scope.get("state")
            if state is None:
                state = scope["state"] = {}
            state["client_identity"] = self.peers.get(scope.get("client"))
        await self.app(scope, receive, send)


class AccessLogIdentity(logging.Filter):
    """On uvicorn's access logger: writes the client identity after the client address,
    ``127.0.0.1:50412 [edge-7] - "POST /v1/classify HTTP/1.1" 200``: the device name of the request's token
    (``--credentials``; uvicorn logs from the request's own task, where `auth.CURRENT_DEVICE` holds it), else
    the connection's mTLS identity."""

    def __init__(self, peers: PeerIdentities) -> None:
        super().__init__()
        self.peers = peers

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and isinstance(args[0], str) and "[" not in args[0]:
            identity = CURRENT_DEVICE.get() or self.peers.get_text(args[0])
            if identity:
                record.args = (f"{args[0]} [{identity}]", *args[1:])
        return True

