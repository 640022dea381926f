"""The benchmark scripts still run against the shipped zoo (tiny sizes: correctness of the script, not speed),
every one answers --help, and the results files they write carry their machine."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _results(path: Path, name: str) -> dict:
    """A results file as `common.write_results` writes it, checked for its frame; returns its figures."""
    document = json.loads(path.read_text())
    assert document["benchmark"] == name and document["format"] == 1
    assert {"cpu_model", "cores", "threads", "date", "commit", "dirty"} <= set(document["machine"])
    assert "json_out" not in document["arguments"]
    return document["results"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_answers_help(script: str, tmp_path: Path) -> None:
    """Run as a user runs it (its own folder first on sys.path, from elsewhere): imports and options parse."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_results_writer_records_the_machine_and_never_overwrites(tmp_path: Path) -> None:
    common = importlib.import_module("common")
    figures = {"rate": np.float32(2.5), "counts": np.arange(3), "missing": float("nan"), "where": tmp_path}
    args = argparse.Namespace(n=4, json_out=None)
    first = common.write_results("demo", figures, args, ["--n", "4"], path=tmp_path / "demo.json")
    document = json.loads(first.read_text())  # strict JSON: NaN would not parse as a number here
    assert document["results"] == {"rate": 2.5, "counts": [0, 1, 2], "missing": None, "where": str(tmp_path)}
    assert document["arguments"] == {"n": 4} and document["command"].endswith("--n 4")
    machine = document["machine"]
    assert machine["cpu_model"] and machine["threads"] >= 1 and machine["date"][:4].isdigit()
    assert machine["cores"] is None or machine["cores"] >= 1
    assert machine["commit"] is None or len(machine["commit"]) == 40
    # the default path: <name>_<date>.json in the folder, then _2, _3 ... instead of overwriting
    import datetime as dt

    day = dt.date(2026, 12, 5)
    path = common.default_results_path("demo", day, tmp_path)
    assert path.name == "demo_2026-12-05.json"
    path.write_text("{}")
    assert common.default_results_path("demo", day, tmp_path).name == "demo_2026-12-05_2.json"
    # --json-out is where a benchmark's parser puts the path
    parser = argparse.ArgumentParser()
    common.add_results_args(parser, "--json")
    assert parser.parse_args(["--json", "x.json"]).json_out == Path("x.json")


def test_bench_pipeline_prints_every_stage_and_ratio(capsys, tmp_path: Path) -> None:
    # no --threads: torch's thread count is process-wide and would slow the rest of the suite
    out_json = tmp_path / "pipeline.json"
    assert _load("bench_pipeline").main(["--model", "fmnist-q2", "--n", "8", "--batch", "4", "--repeats", "1",
                                         "--json-out", str(out_json)]) == 0
    out = capsys.readouterr().out
    for row in ("| entropy decode |", "| entropy decode, h_s once per batch |", "| ViT on latents |",
                "| ours end to end |", "| conventional end to end, h_s once per batch |",
                "| end to end, images/s |", "| end to end with h_s once per batch, images/s |"):
        assert row in out, row
    assert "tokens: ours 16, DeiT 16" in out
    figures = _results(out_json, "pipeline")
    assert figures["tokens"] == {"ours": 16, "deit": 16} and figures["n"] == 8
    assert set(figures["ratios"]) == {"end_to_end", "networks_only", "end_to_end_hs_once_per_batch"}
    assert all(v > 0 for v in figures["ms_per_image"].values())


def test_bench_hs_zoo_decoding_checks_engines_and_splits_the_time() -> None:
    pytest.importorskip("onnx")
    figures = _load("bench_hs").zoo_decoding(64, 32)  # raises if the engines decode differently
    assert figures["streams"] == 64 and figures["batch"] == 32 and figures["hs_format"] == 2
    assert set(figures["ms_per_stream"]) == {"decode_batch, default engine", "decode_batch, reference engine",
                                             "decode_batch, default engine, with the leftover check",
                                             "one stream at a time, default engine"}
    assert set(figures["breakdown_ms_per_stream"]) == {"z range decoding", "h_s", "y range decoding + ŷ"}
    assert all(v > 0 for v in figures["ms_per_stream"].values())


def _table_rows(out: str, first_cells: tuple[str, ...]) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in first_cells:
            rows[cells[0]] = cells
    return rows


def test_bench_server_sustained_counts_every_request_against_a_real_server(capsys, tmp_path: Path) -> None:
    """A short load on both transports through a real `vitcodec-cloud serve`: sent = answered, none lost."""
    out_json = tmp_path / "sustained.json"
    assert _load("bench_server").main(["--mode", "sustained", "--clients", "4", "--duration", "1", "--streams", "8",
                                       "--json-out", str(out_json)]) == 0
    out = capsys.readouterr().out
    rows = _table_rows(out, ("grpc", "rest"))
    assert set(rows) == {"grpc", "rest"}
    for cells in rows.values():
        sent, answered, lost = int(cells[3]), int(cells[4]), int(cells[5])
        assert sent == answered > 0 and lost == 0
        p50, p99 = float(cells[7]), float(cells[9])
        assert 0 < p50 <= p99
    assert "no request lost" in out
    figures = _results(out_json, "server_sustained")
    assert figures["lost"] == 0 and {r["transport"] for r in figures["rows"]} == {"grpc", "rest"}
    assert all(r["sent"] == r["answered"] > 0 for r in figures["rows"])


def test_bench_server_sweep_compares_with_the_raw_loop(capsys, tmp_path: Path) -> None:
    out_json = tmp_path / "sweep.json"
    args = ["--n", "16", "--clients", "2", "--repeats", "1", "--v2", "--json-out", str(out_json)]
    assert _load("bench_server").main(args) == 0
    rows = _table_rows(capsys.readouterr().out, ("torch",))
    assert rows and all(cells[-1].endswith("x") for cells in rows.values())
    figures = _results(out_json, "server_sweep")
    assert figures["api"] == "KServe v2 infer" and figures["raw_loop_images_per_s"]["torch"] > 0
    rows = [(r["transport"], r["clients"], r["answered"]) for r in figures["rows"]]
    assert rows == [("rest", 2, 16), ("grpc", 2, 16)]


def test_bench_server_modes_refuse_options_of_another_mode() -> None:
    bench = _load("bench_server")
    with pytest.raises(SystemExit):
        bench.parse_args(["--mode", "sweep", "--variant", "a=--threads 1"])
    assert bench.parse_args(["--mode", "sustained"]).clients == [64]
    paths = bench.parse_args(["--mode", "paths"])
    assert (paths.n, paths.streams) == (300, 16)


def test_bench_agent_runs_send_and_watch_on_the_same_images(capsys, tmp_path: Path) -> None:
    """Scan cost, then the same few images through `send` and through `watch` against one real server."""
    out_json = tmp_path / "agent.json"
    assert _load("bench_agent").main(["--n", "16", "--repeats", "2", "--timeout", "120",
                                      "--json-out", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "| one intake scan of 16 files |" in out
    for row in ("| `send` (one shot, nothing durable), images/s |",
                "| `watch` (outbox + fsynced results), images/s, from process start |", "| watch / send |"):
        assert row in out, row
    ratio = next(line for line in out.splitlines() if line.startswith("| watch / send |"))
    assert float(ratio.split("|")[2].strip().rstrip("x")) > 0
    figures = _results(out_json, "agent")
    assert figures["images"] == 16 and figures["send_images_per_s"] > 0 and figures["watch_images_per_s"] > 0


def test_server_variants_parse_and_export_a_commit(tmp_path) -> None:
    import os
    import subprocess
    import sys

    variants = importlib.import_module("server_variants")  # a dataclass module: imported by name (pythonpath)
    v = variants.parse_variant("uv=VITCODEC_EVENT_LOOP=uvloop --threads 1 --http-parser=h11")
    assert (v.label, v.env, v.args) == (
        "uv", {"VITCODEC_EVENT_LOOP": "uvloop"}, ["--threads", "1", "--http-parser=h11"])
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


def test_bench_server_paths_measures_every_path_on_two_variants(capsys, tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    out_json = tmp_path / "paths.json"
    args = ["--mode", "paths", "--model", "fmnist-q2", "--n", "4", "--rounds", "1", "--stream-n", "16",
            "--stream-window", "4", "--variant", "asyncio=--event-loop asyncio --http-parser h11", "--variant", "auto=",
            "--json-out", str(out_json)]
    assert importlib.import_module("bench_server").main(args) == 0
    out = capsys.readouterr().out
    for path in ("rest-v2-json", "rest-v2-binary", "rest-native", "grpc-v2", "grpc-native", "grpc-native-stream"):
        assert f"| asyncio | {path} |" in out and f"| auto | {path} |" in out, path
    assert "CPU ms per stream" in out and "64 in flight" not in out and "4 requests in flight" in out
    figures = _results(out_json, "server_paths")
    assert len(figures["rows"]) == 12 and [w["variant"] for w in figures["stream_window"]] == ["asyncio", "auto"]
