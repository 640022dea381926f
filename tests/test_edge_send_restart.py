"""`vitcodec-edge send` (the real CLI, a subprocess) across a server restart: the server (a real
``vitcodec-cloud serve`` subprocess with TLS on both ports, certificates made here with trustme) is killed with
SIGKILL partway through a batch and started again on the same ports about a second later; with the default
``--retry-for`` every image is answered exactly once and none fails, over gRPC (``grpcs://``) and over HTTPS.

The issue's scenario is 3,000 images; 600 Fashion-MNIST test images keep each run well under a minute on two
busy cores while still killing the server with hundreds of images in flight or queued. Every wait has a
deadline.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from agent_processes import child_env, sample_images, wait_for, write_pngs
from vitcodec.cloud import process

pytest.importorskip("trustme")

pytestmark = pytest.mark.slow

N = int(os.environ.get("VITCODEC_RESTART_IMAGES", "600"))  # the scenario: VITCODEC_RESTART_IMAGES=3000
KILL_AFTER = 120  # streams the first server has classified when it is killed
CONCURRENCY = "2"  # fewer in flight than the default 8: the batch lasts long enough to be cut in the middle
SEND_DEADLINE_S = 240.0


@pytest.fixture(scope="module")
def pki(server_pki):
    return server_pki


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    return write_pngs(sample_images(N), folder), folder


def tls_server(model_repo: Path, pki: Path, log_dir: Path) -> process.ServerProcess:
    """`vitcodec-cloud serve` with TLS (cloud/process.py), on ports chosen once so that it comes back on the same
    ones."""
    return process.ServerProcess.serving(
        model_repo, "fmnist-q2", log_dir / "server.log", "--log-level", "warning", "--tls-cert",
        str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), env=child_env(model_repo),
        ssl_context=ssl.create_default_context(cafile=str(pki / "ca.pem")))


def streams_classified(server: process.ServerProcess) -> int:
    """Bitstreams this server process has classified (its /metrics), 0 while it cannot answer."""
    try:
        with urllib.request.urlopen(server.http_url + "/metrics", timeout=2, context=server.ssl_context) as r:
            text = r.read().decode()
    except OSError:
        return 0
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vitcodec_streams_total{") and 'kind="classify"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


@pytest.mark.parametrize("transport", ["grpcs", "https"])
def test_send_survives_a_server_killed_and_restarted(transport, model_repo, pki, image_dir, tmp_path):
    sources, folder = image_dir
    server = tls_server(model_repo, pki, tmp_path).start_ready()
    url = server.grpc_url if transport == "grpcs" else server.http_url
    out, err = tmp_path / "send.jsonl", tmp_path / "send.err"
    argv = [sys.executable, "-m", "vitcodec.edge.cli", "send", str(folder), "--server", url, "--ca-cert",
            str(pki / "ca.pem"), "--json", "--concurrency", CONCURRENCY]  # --retry-for: the default (30 s)
    try:
        with out.open("wb") as stdout, err.open("wb") as stderr:
            send = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=child_env(model_repo))
        try:
            wait_for(lambda: streams_classified(server) >= KILL_AFTER or send.poll() is not None,
                     SEND_DEADLINE_S, f"{KILL_AFTER} answers", 0.02, lambda: err.read_text(errors="replace"))
            assert send.poll() is None, "send finished before the server could be killed"
            server.kill()
            killed_at = time.monotonic()
            time.sleep(1.0)
            server.start()  # back on the same ports ~1 s later; models load while send retries
            restarted_after = time.monotonic() - killed_at
            server.wait_ready(120.0, server.model)
            code = send.wait(SEND_DEADLINE_S)
        finally:
            if send.poll() is None:
                send.kill()
                send.wait(30)
    finally:
        server.stop(30.0)
    assert restarted_after < 3.0
    stderr_text = err.read_text(errors="replace")
    assert code == 0, stderr_text[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    files = [row["file"] for row in rows]
    assert len(rows) == N and len(set(files)) == N, (len(rows), len(set(files)))  # one answer per image
    assert set(files) == {str(p) for p in sources}
    failed = [row for row in rows if "error" in row]
    assert not failed, failed[:3]
    assert all(row["label"] and row["model"] == "fmnist-q2" for row in rows)
    assert "failed" not in stderr_text
