"""A server install has no training stack: `vitcodec-cloud serve` starts and classifies real streams (REST and
gRPC, both classifier backends) with compressai unimportable, and the training commands say which extra to
install instead of failing with a traceback.

compressai is installed in the dev venv, so it is made unimportable here: a ``sitecustomize`` on PYTHONPATH
puts a finder first on ``sys.meta_path`` that refuses it (as a missing package would be refused) and logs
every attempt with the process id. The log shows that the block works in a child process, and that the
server never even asked for compressai.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from vitcodec.cloud.process import ServerProcess, executable, free_port
from vitcodec.edge.client import ClientError, RetryPolicy, connect

BLOCKER = '''"""Test helper: compressai cannot be imported in this process; each attempt is logged with the pid."""
import os
import sys


class _RefuseCompressai:
    def find_spec(self, name, path=None, target=None):
        if name == "compressai" or name.startswith("compressai."):
            with open(os.environ["BLOCKED_IMPORTS_LOG"], "a") as log:
                log.write(f"{os.getpid()} {name}\\n")
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _RefuseCompressai())
'''


@pytest.fixture()
def no_compressai(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose Python processes cannot import compressai, and the log of their attempts."""
    site = tmp_path / "block-compressai"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    log = tmp_path / "blocked-imports.log"
    log.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITCODEC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["BLOCKED_IMPORTS_LOG"] = str(log)
    probe = subprocess.run([sys.executable, "-c", "import compressai"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr, probe.stderr
    (pid, name), = [line.split() for line in log.read_text().splitlines()]
    assert name == "compressai" and int(pid) != os.getpid()  # the block is active in a child process
    log.write_text("")
    return env, log


def _blocked_pids(log: Path) -> set[int]:
    return {int(line.split()[0]) for line in log.read_text().splitlines() if line.strip()}


def _reference_labels(package, streams: list[bytes]) -> list[int]:
    """The classes this process's own CloudModel gives the streams (torch, in-process)."""
    from vitcodec.models.inference import CloudModel

    _, probs = CloudModel(package).classify_streams(streams)
    return np.argmax(probs, axis=1).tolist()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_server_serves_without_compressai(no_compressai, model_repo, package, edge_streams, tmp_path, backend):
    env, log = no_compressai
    http_port, grpc_port = free_port(), free_port()
    server = ServerProcess(["vitcodec-cloud", "serve", "--model-repo", str(model_repo), "--model", "fmnist-q2",
                            "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                            "--backend", backend, "--log-level", "info"],
                           tmp_path / "serve.log", f"http://127.0.0.1:{http_port}", env=env)
    streams = list(edge_streams[:12])
    expected = _reference_labels(package, streams)
    server.start()
    try:
        server.wait_ready(240, model="fmnist-q2")
        retry = RetryPolicy(attempts=2, backoff_s=0.05)
        for url in (server.http_url, f"grpc://127.0.0.1:{grpc_port}"):
            with connect(url, retry=retry) as client:
                answers = dict(client.classify_many(streams, concurrency=4))
                assert sorted(answers) == list(range(len(streams))), url
                assert not [a for a in answers.values() if isinstance(a, ClientError)], url
                assert [answers[i].top[0].index for i in range(len(streams))] == expected, url
                assert all(a.model == "fmnist-q2" for a in answers.values())
                picture = client.reconstruct(streams[0])  # g_s and the aggregation load without compressai too
                assert picture.image_size == (28, 28) and picture.png.startswith(b"\x89PNG")
        assert server.proc is not None and server.proc.poll() is None, server.log_tail()
    finally:
        server.stop(30)
    assert server.pid not in _blocked_pids(log), log.read_text()  # the server never asked for compressai


@pytest.mark.timeout(180)
@pytest.mark.parametrize("argv", [
    ["train", "--data", "synthetic", "--max-steps", "1", "--out", "{tmp}/run"],
    ["export", "--model", "{tmp}/missing.pt", "--out", "{tmp}/repo", "--name", "x"],
    ["models"],
])
def test_training_commands_name_the_extra_without_compressai(no_compressai, tmp_path, argv):
    env, log = no_compressai
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    result = subprocess.run(executable(["vitcodec", *args]), env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 2, result.stderr
    assert "pip install './models[train]'" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one error line
    assert _blocked_pids(log)  # it failed because compressai was refused, not for another reason
