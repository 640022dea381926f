"""The benchmark scripts still run against the shipped zoo (tiny sizes: correctness of the script, not speed)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_pipeline_prints_every_stage_and_ratio(capsys) -> None:
    # no --threads: torch's thread count is process-wide and would slow the rest of the suite
    assert _load("bench_pipeline").main(["--model", "fmnist-q2", "--n", "8", "--batch", "4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("| entropy decode |", "| entropy decode, h_s once per batch |", "| ViT on latents |",
                "| ours end to end |", "| conventional end to end, h_s once per batch |",
                "| end to end, images/s |", "| end to end with h_s once per batch, images/s |"):
        assert row in out, row
    assert "tokens: ours 16, DeiT 16" in out


def test_bench_hs_zoo_decoding_checks_engines_and_splits_the_time() -> None:
    pytest.importorskip("onnx")
    figures = _load("bench_hs").zoo_decoding(64, 32, 1)  # raises if the engines decode differently
    assert figures["streams"] == 64 and figures["batch"] == 32
    assert set(figures["ms_per_stream"]) == {"decode_batch, int8 engine", "decode_batch, float64 reference",
                                             "one stream at a time, int8 engine"}
    assert set(figures["breakdown_ms_per_stream"]) == {"z range decoding", "h_s", "y range decoding + ŷ"}
    assert all(v > 0 for v in figures["ms_per_stream"].values())


def _table_rows(out: str, first_cells: tuple[str, ...]) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in first_cells:
            rows[cells[0]] = cells
    return rows


def test_bench_load_counts_every_request_against_a_real_server(capsys) -> None:
    """A short load on both transports through a real `vitcodec-cloud serve`: sent = answered, none lost."""
    assert _load("bench_load").main(["--clients", "4", "--duration", "1", "--streams", "8"]) == 0
    out = capsys.readouterr().out
    rows = _table_rows(out, ("grpc", "rest"))
    assert set(rows) == {"grpc", "rest"}
    for cells in rows.values():
        sent, answered, lost = int(cells[3]), int(cells[4]), int(cells[5])
        assert sent == answered > 0 and lost == 0
        p50, p99 = float(cells[7]), float(cells[9])
        assert 0 < p50 <= p99
    assert "no request lost" in out


def test_bench_agent_runs_send_and_watch_on_the_same_images(capsys) -> None:
    """Scan cost, then the same few images through `send` and through `watch` against one real server."""
    assert _load("bench_agent").main(["--n", "16", "--repeats", "2", "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert "| one intake scan of 16 files |" in out
    for row in ("| `send` (one shot, nothing durable), images/s |",
                "| `watch` (outbox + fsynced results), images/s, from process start |", "| watch / send |"):
        assert row in out, row
    ratio = next(line for line in out.splitlines() if line.startswith("| watch / send |"))
    assert float(ratio.split("|")[2].strip().rstrip("x")) > 0


def test_server_variants_parse_and_export_a_commit(tmp_path) -> None:
    import os
    import subprocess
    import sys

    variants = importlib.import_module("server_variants")  # a dataclass module: imported by name (pythonpath)
    v = variants.parse_variant("uv=VITCODEC_EVENT_LOOP=uvloop --threads 1 --http-parser=h11")
    assert (v.label, v.env, v.args) == ("uv", {"VITCODEC_EVENT_LOOP": "uvloop"}, ["--threads", "1", "--http-parser=h11"])
    assert variants.parse_variant("plain=").describe() == "(defaults)"
    with pytest.raises(ValueError, match="LABEL=SPEC"):
        variants.parse_variant("no-label")
    root = variants.export_ref("HEAD", tmp_path / "tree")
    assert (root / "vitcodec" / "cloud" / "rest" / "app.py").is_file()
    assert (root / "vitcodec" / "codec" / "bitstream.py").is_file()
    found = subprocess.run([sys.executable, "-c", "import vitcodec.cloud.rest.app as m; print(m.__file__)"],
                           env={**os.environ, "PYTHONPATH": str(root)}, cwd=tmp_path, capture_output=True, text=True,
                           check=True)  # cwd: not the checkout, whose vitcodec/ folder would come first
    assert found.stdout.strip() == str(root / "vitcodec" / "cloud" / "rest" / "app.py")


def test_bench_transport_measures_every_path_on_two_variants(capsys) -> None:
    pytest.importorskip("grpc")
    args = ["--model", "fmnist-q2", "--n", "4", "--rounds", "1", "--stream-n", "16", "--stream-window", "4",
            "--variant", "asyncio=--event-loop asyncio --http-parser h11", "--variant", "auto="]
    assert importlib.import_module("bench_transport").main(args) == 0
    out = capsys.readouterr().out
    for path in ("rest-v2-json", "rest-v2-binary", "rest-native", "grpc-v2", "grpc-native", "grpc-native-stream"):
        assert f"| asyncio | {path} |" in out and f"| auto | {path} |" in out, path
    assert "CPU ms per stream" in out and "64 in flight" not in out and "4 requests in flight" in out
