"""Server settings: one pydantic-settings object, read from ``VITCODEC_*`` environment variables, a ``.env``
file, or given directly (the CLI's flags override the environment)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything ``vitcodec-cloud serve`` can be told. Environment variable = ``VITCODEC_`` + field name."""

    model_config = SettingsConfigDict(env_prefix="VITCODEC_", env_file=None, extra="ignore",
                                      protected_namespaces=())

    model_repo: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Model repositories (<repo>/<name>/<version>/manifest.json); several joined by the OS path "
                    "separator. Empty: the bundled zoo.")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Serve only these model names (default: every compressing model found).")
    host: str = Field(default="0.0.0.0", description="Address both transports bind to.")
    http_port: int = Field(default=8000, ge=0, le=65535, description="HTTP port (0: any free port).")
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="gRPC port (0: any free port).")
    device: str = Field(default="cpu", description="Torch device for the networks: cpu, cuda, cuda:1, ...")
    backend: Literal["torch", "onnxruntime", "onnxruntime-int8"] = Field(
        default="torch",
        description="Runtime of the batched classifier forward (decoding and reconstruction stay torch): torch, "
                    "onnxruntime (the package's classifier.onnx), or onnxruntime-int8 (its linear layers in int8, "
                    "quantised at load: about 2x faster, top-1 within 0.1 point).")
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Most streams in one batched forward.")
    max_queue_delay_ms: float = Field(
        default=2.0, ge=0.0, le=10_000.0,
        description="Longest a stream waits for others to fill its batch once the model is free.")
    max_queue_size: int = Field(
        default=4096, ge=1, description="Streams waiting per model and kind before new ones are refused (503).")
    max_streams_per_request: int = Field(
        default=4096, ge=1,
        description="Most bitstreams in one v2 infer request (a BYTES tensor); more is refused (400).")
    max_tokens_factor: float = Field(
        default=4.0, ge=1.0, le=64.0,
        description="Largest latent grid accepted, as a multiple of the tokens the model was trained with (images "
                    "of other sizes are served with resampled position embeddings; 4 = twice the side).")
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024,
        description="Largest request body (HTTP) or message (gRPC) accepted; 413 above.")
    auth_token: SecretStr | None = Field(
        default=None,
        description="When set, every call except liveness/readiness needs 'Authorization: Bearer <token>'.")
    credentials: Path | None = Field(
        default=None, description="Device credentials file (one line per device: NAME CREATED HASH; written by "
                                  "'vitcodec-cloud credentials'): every call except liveness/readiness then needs a "
                                  "device's token (or auth_token, when both are set), and the device name becomes the "
                                  "client identity. Re-read when it changes and on SIGHUP.")
    credentials_poll_s: float = Field(
        default=2.0, ge=0.0, le=3600.0, description="How often the credentials file's mtime is checked for a reload "
                                                    "(0: only on SIGHUP).")
    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate (chain) of the server: both transports then speak TLS only (HTTPS and "
                    "gRPC over TLS, same ports). Needs tls_key. Re-read on SIGHUP.")
    tls_key: Path | None = Field(default=None, description="PEM private key (unencrypted) of tls_cert.")
    tls_client_ca: Path | None = Field(
        default=None,
        description="PEM CA certificate(s): with it, both transports require a client certificate signed by "
                    "one of them (mutual TLS); the client identity is its subject CN, else its first DNS SAN.")
    png_workers: int = Field(
        default=2, ge=0, le=256,
        description="Threads for PNG encoding of reconstructions (entropy decoding runs batched in the model's "
                    "compute thread). 0 encodes on the event loop.")
    torch_threads: int = Field(
        default=0, ge=0, description="Intra-op threads of torch (and ONNX Runtime); 0: one fewer than the CPUs this "
                                     "process may use (at least 1), leaving a core to the event loop and gRPC.")
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto",
        description="Event loop of both transports: uvloop (auto: when installed; the cloud extra installs "
                    "it) cuts per-request loop overhead; asyncio is the standard library's.")
    http_parser: Literal["auto", "h11", "httptools"] = Field(
        default="auto",
        description="uvicorn's HTTP/1.1 implementation: httptools (auto: when installed; the cloud extra "
                    "installs it) parses in C; h11 is pure Python.")
    graceful_timeout_s: float = Field(
        default=30.0, ge=0.0, description="How long shutdown waits for in-flight requests.")
    archive: str | None = Field(
        default=None,
        description="The archive: every classified stream is kept once (by content hash) with its answer, and "
                    "the answers carry its id. A SQLite file path, or a postgresql://USER@HOST:PORT/DB URL "
                    "(several server replicas sharing one archive). None: no archive.")
    archive_max_age_days: float | None = Field(
        default=None, gt=0.0, description="Archive retention: entries older than this are deleted (None: kept).")
    archive_max_mb: float | None = Field(
        default=None, gt=0.0,
        description="Archive retention: the oldest entries are deleted while the database uses more "
                    "than this many MiB (None: no limit).")
    archive_flush_ms: float = Field(
        default=50.0, gt=0.0, le=10_000.0, description="Archive writes are committed in batches at most this often: a "
                                                       "SIGKILL loses at most this window of answers.")
    archive_flush_entries: int = Field(default=256, ge=1, description="...or as soon as this many entries wait.")
    log_level: str = Field(default="info", description="Python logging level for the server's loggers.")
    access_log: bool = Field(default=False, description="Log every HTTP request (uvicorn's access log).")

    @field_validator("model_repo", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, (str, os.PathLike)):
            return [p for p in str(value).split(os.pathsep) if p]
        return value

    @field_validator("archive", mode="before")
    @classmethod
    def _archive_location(cls, value: object) -> object:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str) and "://" in value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"archive must be a SQLite file path or a postgresql:// URL, got {value!r}")
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _tls_files_together(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (--tls-cert FILE --tls-key FILE)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return self

    @property
    def token(self) -> str | None:
        return self.auth_token.get_secret_value() if self.auth_token else None

    @property
    def intra_op_threads(self) -> int:
        """The model's intra-op threads. By default one core stays free for the transports: on 2 cores under
        perf_analyzer one thread served 1.16-1.41x the inferences of two (docs/benchmarks.md), because the
        model's pool and the event loop otherwise fight for the same cores."""
        if self.torch_threads:
            return self.torch_threads
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cpus - 1)
