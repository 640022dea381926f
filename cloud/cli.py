"""``vitcodec-cloud``: run the inference server.

    vitcodec-cloud serve [--model-repo DIR] [--http-port 8000] [--grpc-port 8001] [--device cpu|cuda] ...

Every option also reads a ``VITCODEC_*`` environment variable (see `vitcodec.cloud.settings.Settings`); a flag
given on the command line wins.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(name="vitcodec-cloud", help="vitcodec cloud inference server (KServe v2 + native API, HTTP "
                  "and gRPC).", no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """vitcodec cloud inference server."""


@app.command()
def serve(
    model_repo: Optional[list[Path]] = typer.Option(
        None, "--model-repo", help="Model repository (<repo>/<name>/<version>/); repeat for several. "
                                   "Default: the bundled zoo."),
    model: Optional[list[str]] = typer.Option(None, "--model", help="Serve only this model name; repeatable."),
    host: Optional[str] = typer.Option(None, "--host", help="Bind address (default 0.0.0.0)."),
    http_port: Optional[int] = typer.Option(None, "--http-port", help="HTTP port (default 8000; 0 = any)."),
    grpc_port: Optional[int] = typer.Option(None, "--grpc-port", help="gRPC port (default 8001; 0 = any)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default cpu)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Classifier runtime: torch or onnxruntime."),
    torch_threads: Optional[int] = typer.Option(None, "--threads",
                                                help="Intra-op threads of the model (default: CPUs - 1, at least 1)."),
    max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size", help="Streams per batch (default 32)."),
    max_queue_delay_ms: Optional[float] = typer.Option(None, "--max-queue-delay-ms",
                                                       help="Batching delay (default 2 ms)."),
    max_body_bytes: Optional[int] = typer.Option(None, "--max-body-bytes", help="Request size limit (default 8 MiB)."),
    png_workers: Optional[int] = typer.Option(None, "--png-workers",
                                              help="PNG-encoding threads for reconstructions (default 2; 0 = on the "
                                                   "event loop)."),
    auth_token: Optional[str] = typer.Option(None, "--auth-token", envvar="VITCODEC_AUTH_TOKEN", show_envvar=False,
                                             help="Require 'Authorization: Bearer <token>' (or VITCODEC_AUTH_TOKEN)."),
    event_loop: Optional[str] = typer.Option(None, "--event-loop",
                                             help="auto (uvloop when installed), asyncio or uvloop."),
    http_parser: Optional[str] = typer.Option(None, "--http-parser",
                                              help="auto (httptools when installed), h11 or httptools."),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="debug, info, warning, error."),
    access_log: Optional[bool] = typer.Option(None, "--access-log/--no-access-log", help="Log every HTTP request."),
) -> None:
    """Serve every model of the repository over HTTP and gRPC until SIGTERM/SIGINT (then drain gracefully)."""
    from pydantic import ValidationError

    from vitcodec.cloud.server import CloudServer, run_event_loop
    from vitcodec.cloud.settings import Settings

    overrides: dict[str, Any] = {
        "model_repo": model_repo or None, "models": model or None, "host": host, "http_port": http_port,
        "grpc_port": grpc_port, "device": device, "backend": backend, "torch_threads": torch_threads,
        "max_batch_size": max_batch_size,
        "max_queue_delay_ms": max_queue_delay_ms, "max_body_bytes": max_body_bytes,
        "png_workers": png_workers, "event_loop": event_loop, "http_parser": http_parser, "auth_token": auth_token, "log_level": log_level, "access_log": access_log,
    }
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"error: invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = CloudServer(settings)
    if not server.repository.entries():
        roots = ", ".join(str(r) for r in server.repository.roots)
        typer.echo(f"error: no compressing model packages found in {roots}", err=True)
        raise typer.Exit(2)
    try:
        run_event_loop(server.serve(), settings.event_loop)
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
