"""The shipped zoo: every package loads, round-trips real bitstreams exactly, and scores above a floor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vitcodec.packages import iter_packages, resolve_model, zoo_root
from vitcodec.models.evaluate import evaluate

ZOO = {p.name: p for p in iter_packages(zoo_root())}
EXPECTED = {"fmnist-uncompressed", "fmnist-q1", "fmnist-q2", "fmnist-q3"}
# Floors on a 500-image slice of the test split: far below the card's figures, far above chance (10 %).
# (The card: 91.4 / 87.8 / 89.5 / 90.6 %; a 500-image slice varies by about ±1.5 points.)
TOP1_FLOOR = {"fmnist-uncompressed": 0.87, "fmnist-q1": 0.84, "fmnist-q2": 0.85, "fmnist-q3": 0.87}


def test_zoo_is_complete_and_small() -> None:
    assert EXPECTED <= set(ZOO), f"zoo holds {sorted(ZOO)}"
    total = sum(f.stat().st_size for f in zoo_root().rglob("*") if f.is_file())
    assert total <= 20_000_000, f"zoo weighs {total / 1e6:.2f} MB (docs/architecture.md targets: 20 MB in all)"


def test_default_model_is_q2() -> None:
    assert resolve_model().name == "fmnist-q2"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_model_scores_above_floor_on_500_test_images(name: str) -> None:
    report = evaluate(name, "fashion-mnist", limit=500)
    assert report.n == 500
    assert report.top1 >= TOP1_FLOOR[name], report
    assert report.decode_failures == 0
    if ZOO[name].compresses:
        assert 0 < report.bytes_per_image < 200
        assert report.header_bytes == 12


def test_rates_increase_with_quality() -> None:
    """Card figures (measured on all 10k test images) must order q1 < q2 < q3 in bytes."""
    sizes = [ZOO[f"fmnist-q{q}"].manifest["metrics"]["bytes_per_image"] for q in (1, 2, 3)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3, sizes


def _card_metrics(name: str) -> dict:
    """Figures recorded by `vitcodec eval --record` on all 10k test images (the model card's source)."""
    metrics = ZOO[name].manifest["metrics"]
    assert metrics["n"] == 10000 and metrics["data"] == "fashion-mnist", metrics
    return metrics


def test_q1_operating_point_meets_design_target() -> None:
    """The zoo's q1 operating point (docs/models.md): within 4 points of the uncompressed model at <= 30 bytes per image, header included."""
    q1, reference = _card_metrics("fmnist-q1"), _card_metrics("fmnist-uncompressed")
    assert q1["bytes_per_image"] <= 30
    assert reference["top1"] - q1["top1"] <= 0.04


def test_q3_operating_point_meets_design_target() -> None:
    """The zoo's q3 operating point (docs/models.md): within 1 point of the uncompressed model."""
    q3, reference = _card_metrics("fmnist-q3"), _card_metrics("fmnist-uncompressed")
    assert reference["top1"] - q3["top1"] <= 0.01


def test_no_operating_point_is_dominated() -> None:
    """Along q1 -> q3 every extra byte buys accuracy (docs/models.md: operating points along the curve)."""
    points = [_card_metrics(f"fmnist-q{q}") for q in (1, 2, 3)]
    assert [p["top1"] for p in points] == sorted(p["top1"] for p in points)
    assert len({p["top1"] for p in points}) == 3, points


def test_top_point_reconstruction_stays_usable() -> None:
    """The most accurate compressed point still returns a usable image on demand: PSNR >= 24 dB."""
    assert _card_metrics("fmnist-q3")["psnr"] >= 24.0


def test_manifests_are_self_consistent() -> None:
    for pkg in ZOO.values():
        manifest = json.loads((pkg.path / "manifest.json").read_text())
        assert manifest["name"] == pkg.name
        if pkg.compresses:
            assert len(pkg.model_id) == 4
            assert {"encoder", "codec", "weights"} <= set(manifest["files"])
            assert np.isfinite(manifest["metrics"]["top1"])
