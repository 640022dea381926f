"""`vitcodec-cloud serve` as a real process: serves, answers, and exits cleanly on SIGTERM after draining."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_serve_command_runs_and_stops_on_sigterm(model_repo, edge_streams, tmp_path):
    http_port, grpc_port = _free_port(), _free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITCODEC_")}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vitcodec.cloud.cli", "serve", "--model-repo", str(model_repo), "--model",
             "fmnist-q2", "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
             "--log-level", "info"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        response = httpx.post(f"{url}/v1/classify", content=edge_streams[0], timeout=30)
        assert response.status_code == 200 and response.json()["model"] == "fmnist-q2"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        text = log.read_text()
        assert "shutting down" in text and "stopped" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_help_lists_the_options():
    from typer.testing import CliRunner
    from vitcodec.cloud.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--model-repo", "--http-port", "--grpc-port", "--device", "--max-batch-size", "--auth-token"):
        assert flag in result.stdout
