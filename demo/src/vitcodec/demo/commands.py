"""The demo's commands, built once: what ``make demo`` runs natively and ``docker-compose.yml`` runs in
containers (with the host ``cloud`` instead of ``127.0.0.1``; ``tests/test_deploy.py`` keeps them identical)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
OUT_DIR = Path("demo-out")


def serve_command(model: str, http_port: int, grpc_port: int) -> list[str]:
    return ["vitcodec-cloud", "serve", "--model", model, "--http-port", str(http_port),
            "--grpc-port", str(grpc_port)]


def send_command(paths: Sequence[str], server: str, model: str) -> list[str]:
    return ["vitcodec-edge", "send", *paths, "--server", server, "--model", model, "--json"]


def reconstruct_command(path: str, server: str, model: str, output: str) -> list[str]:
    return ["vitcodec-edge", "reconstruct", path, "--server", server, "--model", model, "--output", output]


def reconstruction_path(sample: str, out_dir: str | Path = OUT_DIR) -> str:
    return str(Path(out_dir) / f"{Path(sample).stem}-reconstructed.png")


def demo_commands(host: str, http_port: int, grpc_port: int, model: str, send_paths: Sequence[str],
                  reconstruct: str, out_dir: str | Path = OUT_DIR) -> dict[str, list[str]]:
    """Every command of the demo, in order: ``serve``, ``send_grpc``, ``send_rest``, ``reconstruct``. The
    server binds all interfaces (its default); the native demo adds ``--host 127.0.0.1`` to ``serve``."""
    http, grpc = f"http://{host}:{http_port}", f"grpc://{host}:{grpc_port}"
    return {
        "serve": serve_command(model, http_port, grpc_port),
        "send_grpc": send_command(send_paths, grpc, model),
        "send_rest": send_command(send_paths, http, model),
        "reconstruct": reconstruct_command(reconstruct, http, model, reconstruction_path(reconstruct, out_dir)),
    }


def show(argv: Sequence[str]) -> str:
    return shlex.join(argv)
