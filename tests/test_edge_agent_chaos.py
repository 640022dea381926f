"""Reliability of `vitcodec-edge watch` with real processes: 1,000 Fashion-MNIST images each, while the server is
killed (-9) and comes back 12 s later, while the agent itself is killed (-9) twice and restarted, and through a
TCP proxy that drops and stalls connections. After each: every image has exactly one answer in the results
file, none is missing, the outbox is empty. Every wait has a deadline.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from agent_processes import (
    AgentProcess,
    ChaosProxy,
    assert_exactly_once,
    count_lines,
    model_server,
    sample_images,
    wait_for,
    write_pngs,
)

pytestmark = pytest.mark.slow

N = 1000
FINISH_S = 240.0  # generous: 1,000 answers take ~15 s on 2 busy cores
FAST_RETRY = ["--poll", "0.2", "--settle", "0.2", "--timeout", "3", "--max-backoff", "1", "--status-interval", "2",
              "--json"]


@pytest.fixture(scope="module")
def images():
    return sample_images(N)


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    """One server process shared by the tests that do not kill it."""
    proc = model_server(model_repo, tmp_path_factory.mktemp("server-logs")).start_ready()
    yield proc
    proc.stop()


def _agent(model_repo: Path, tmp: Path, inbox: Path, url: str, *extra: str) -> AgentProcess:
    args = [str(inbox), "--server", url, "--outbox", str(tmp / "outbox"), "--results", str(tmp / "results.jsonl"),
            *FAST_RETRY, *extra]
    return AgentProcess(args, model_repo, tmp)


def _finish(agent: AgentProcess, results: Path, n: int = N) -> None:
    agent.wait_started()
    wait_for(lambda: count_lines(results) >= n, FINISH_S, f"{n} answers", 0.25, agent.log)
    assert agent.terminate() == 0, agent.log()


def test_server_killed_and_back_after_12_s(model_repo, tmp_path, images):
    server = model_server(model_repo, tmp_path).start_ready()
    inbox = tmp_path / "inbox"
    sources = write_pngs(images[: N // 2], inbox)  # half there before the agent starts, half while it runs
    agent = _agent(model_repo, tmp_path, inbox, server.http_url).start()
    results = tmp_path / "results.jsonl"
    try:
        sources += write_pngs(images[N // 2:], inbox, start=N // 2)
        wait_for(lambda: count_lines(results) >= 200, FINISH_S, "200 answers", 0.1, agent.log)
        server.kill()
        time.sleep(1)  # answers already on their way when the server died
        answered_at_kill = count_lines(results)
        time.sleep(11)
        assert agent.proc.poll() is None, agent.log()
        assert count_lines(results) == answered_at_kill  # nothing answered while the server was gone
        server.start_ready()
        _finish(agent, results)
    finally:
        agent.kill()
        server.stop()
    assert answered_at_kill < N
    assert_exactly_once(results, sources, tmp_path / "outbox")
    log = agent.log(tail=0)
    assert '"event": "server_unreachable"' in log and '"event": "server_reachable"' in log


def test_agent_killed_twice_and_restarted(model_repo, tmp_path, images, server):
    inbox = tmp_path / "inbox"
    sources = write_pngs(images, inbox)
    done = tmp_path / "done"
    agent = _agent(model_repo, tmp_path, inbox, server.grpc_url, "--source", "move", "--done-dir", str(done))
    results = tmp_path / "results.jsonl"
    try:
        for threshold in (250, 600):
            agent.start()
            wait_for(lambda threshold=threshold: count_lines(results) >= threshold, FINISH_S, f"{threshold} answers",
                     0.05, agent.log)
            agent.kill()
        agent.start()
        _finish(agent, results)
    finally:
        agent.kill()
    assert agent.starts == 3
    assert_exactly_once(results, sources, tmp_path / "outbox")
    assert not list(inbox.rglob("*.png"))  # every source moved once its stream was safe
    assert sorted(p.name for p in done.rglob("*.png")) == sorted(p.name for p in sources)


def test_proxy_drops_and_stalls_connections(model_repo, tmp_path, images, server):
    inbox = tmp_path / "inbox"
    sources = write_pngs(images, inbox)
    proxy = ChaosProxy(server.grpc_port, period_s=1.5, stall_s=4.0, seed=13)
    proxy.chaos.set()
    agent = _agent(model_repo, tmp_path, inbox, f"grpc://127.0.0.1:{proxy.port}", "--source", "delete")
    results = tmp_path / "results.jsonl"
    try:
        agent.start()
        time.sleep(20)  # 20 s of chaos, then a clean network to finish
        proxy.chaos.clear()
        _finish(agent, results)
    finally:
        agent.kill()
        proxy.close()
    assert proxy.stats["dropped"] > 0 and proxy.stats["stalls"] > 0, proxy.stats
    assert_exactly_once(results, sources, tmp_path / "outbox")
    assert not list(inbox.rglob("*.png"))
