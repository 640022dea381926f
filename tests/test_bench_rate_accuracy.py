"""The rate–accuracy benchmark: its interpolation by hand, and a real run on a small slice (real codecs, a
really trained CNN, the shipped zoo's real bitstreams)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rate_accuracy.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_rate_accuracy", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_bytes_at_accuracy_interpolates_log_bytes_on_the_envelope() -> None:
    bench = _load()
    # (bytes, accuracy); the 300-byte point is dominated by the 200-byte one and leaves the envelope
    points = [(100.0, 0.80), (400.0, 0.90), (200.0, 0.86), (300.0, 0.85)]
    assert bench.envelope(points) == [(100.0, 0.80), (200.0, 0.86), (400.0, 0.90)]
    # halfway between 0.80 and 0.86 in accuracy -> the geometric mean of 100 and 200 bytes
    hit = bench.bytes_at_accuracy(points, 0.83)
    assert hit["where"] == "inside" and hit["bytes"] == pytest.approx(math.sqrt(100 * 200))
    assert bench.bytes_at_accuracy(points, 0.90) == {"bytes": pytest.approx(400.0), "where": "inside"}
    assert bench.bytes_at_accuracy(points, 0.95) == {"bytes": 400.0, "where": "above"}
    assert bench.bytes_at_accuracy(points, 0.70) == {"bytes": 100.0, "where": "below"}


def test_ratios_prefer_a_curve_that_reaches_the_accuracy() -> None:
    bench = _load()
    ours = [bench.OurPoint("m", top1=0.85, bytes_per_image=10.0, psnr=None, n=1, source="test")]
    bench.attach_ratios(ours, {"cheap but short": [(50.0, 0.70), (60.0, 0.80)],
                               "reaches": [(100.0, 0.80), (400.0, 0.90)]})
    assert ours[0].ratios["cheap but short"]["where"] == "above"
    assert ours[0].best["curve"] == "reaches"
    assert ours[0].best["ratio"] == pytest.approx(200.0 / 10.0)


def test_small_run_with_real_codecs_cnn_and_zoo(tmp_path: Path, capsys) -> None:
    bench = _load()
    out_json, plot = tmp_path / "ra.json", tmp_path / "ra.png"
    qualities = {"jpeg": (10, 50), "webp": (5, 50), "avif": (20, 60)}
    args = ["--limit", "256", "--epochs", "1", "--qualities", *(f"{c}={q[0]},{q[1]}" for c, q in qualities.items()),
            "--models", "fmnist-q1", "fmnist-q3", "fmnist-uncompressed", "--cache", str(tmp_path / "cache"),
            "--plot", str(plot), "--json", str(out_json), "--no-progress"]
    assert bench.main(args) == 0
    text = capsys.readouterr().out
    document = json.loads(out_json.read_text())
    assert document["benchmark"] == "rate_accuracy" and document["machine"]["cpu_model"]
    report = bench.read_report(out_json)
    assert report == document["results"]
    available = [c for c, ok in bench.available_codecs().items() if ok]
    assert {p["codec"] for p in report["codecs"]} == set(available)
    for codec in available:
        rows = sorted((p for p in report["codecs"] if p["codec"] == codec), key=lambda p: p["quality"])
        assert [p["quality"] for p in rows] == list(qualities[codec])
        assert rows[0]["bytes_per_image"] < rows[1]["bytes_per_image"], f"{codec}: bytes do not rise with quality"
        assert rows[0]["psnr"] < rows[1]["psnr"]
        for p in rows:
            assert 0.0 <= p["top1_raw"] <= 1.0 and 0.0 <= p["top1_finetuned"] <= 1.0
            assert f"| {bench.CODEC_NAMES[codec]} | {p['quality']} | {p['bytes_per_image']:.1f} |" in text
    if "avif" not in available:
        assert "Not available in this Pillow (not measured): AVIF" in text
    ours = {o["model"]: o for o in report["ours"]}
    assert set(ours) == {"fmnist-q1", "fmnist-q3", "fmnist-uncompressed"}
    for name in ("fmnist-q1", "fmnist-q3"):
        o = ours[name]
        assert o["source"] == "bitstreams" and o["n"] == 256 and 0.5 < o["top1"] <= 1.0
        assert 12 < o["bytes_per_image"] < 500  # the 12-byte header is counted
        curves = {f"{bench.CODEC_NAMES[c]}, {k} CNN" for c in available for k in ("raw", "fine-tuned")}
        assert set(o["ratios"]) == curves
        assert o["best"]["ratio"] > 0 and o["best"]["curve"] in o["ratios"]
        assert f"| `{name}` | bitstreams (n=256) |" in text
    assert ours["fmnist-uncompressed"]["bytes_per_image"] is None and not ours["fmnist-uncompressed"]["ratios"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the trained CNNs are cached: the raw one and one fine-tune per codec and quality
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1 + 2 * len(available)


def test_bad_qualities_are_one_line_errors() -> None:
    bench = _load()
    with pytest.raises(SystemExit, match="CODEC=Q1,Q2"):
        bench.parse_qualities(["gif=10"])
    with pytest.raises(SystemExit, match="0..100"):
        bench.parse_qualities(["jpeg=120"])


def test_codecs_from_reads_a_results_file_and_an_old_bare_report(tmp_path: Path) -> None:
    """`--codecs-from` takes both the bare report of 2026-12-01 (kept in benchmarks/results/) and a results file."""
    import common  # benchmarks/ is on pytest's pythonpath

    bench = _load()
    old = BENCH.parent / "results" / "rate_accuracy_codecs_2026-12-01.json"
    report = bench.read_report(old)
    assert report["codecs"] and 0.0 < report["raw_cnn_top1"] <= 1.0 and report["n_finetune"] > 0
    wrapped = common.write_results("rate_accuracy", report, None, [], path=tmp_path / "ra.json")
    assert json.loads(wrapped.read_text())["results"] == report
    assert bench.read_report(wrapped) == report
