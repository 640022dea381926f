"""`ModelPackage` writes what it reads: the manifest bytes every package holds, files replaced whole, and
manifests it could not read back refused before anything is written. torch-free, like the layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vitcodec.packages import (
    CLOUD_FILES,
    EDGE_FILES,
    MANIFEST,
    PACKAGE_FORMAT,
    ModelNotFoundError,
    ModelPackage,
    iter_packages,
    zoo_root,
)
from vitcodec.packages.package import manifest_bytes


def _manifest(**changes: object) -> dict:
    manifest = {
        "format": PACKAGE_FORMAT, "name": "tiny", "version": 1, "labels": ["a", "b"],
        "input": {"size": [28, 28], "channels": 1, "mean": [0.5], "std": [0.5], "stride": 8},
        "compress": True, "quality": 2, "model_id": "01020304",
        "files": {"encoder": "encoder.onnx", "weights": "weights.pt"},
    }
    return manifest | changes


def test_every_zoo_manifest_is_what_the_writer_writes() -> None:
    """Re-writing a shipped package's manifest changes no byte (so neither its model id nor its hash)."""
    packages = iter_packages(zoo_root())
    assert len(packages) >= 4
    for package in packages:
        assert manifest_bytes(package.manifest) == (package.path / MANIFEST).read_bytes(), package.path


def test_write_then_open_round_trips(tmp_path: Path) -> None:
    seen: list[str] = []

    def weights(path: Path) -> None:  # as torch.save: it records the file's own name
        seen.append(path.name)
        path.write_bytes(b"w" * 10)

    package = ModelPackage.write(tmp_path / "tiny" / "1", _manifest(), {"encoder": b"onnx", "weights": weights})
    assert seen == ["weights.pt"]
    assert (package.path / "encoder.onnx").read_bytes() == b"onnx"
    assert package.file("weights").read_bytes() == b"w" * 10
    assert (package.name, package.version, package.model_id) == ("tiny", 1, bytes([1, 2, 3, 4]))
    assert ModelPackage.open(package.path).manifest == _manifest()
    assert sorted(p.name for p in package.path.iterdir()) == ["encoder.onnx", MANIFEST, "weights.pt"]


def test_rewrite_keeps_the_files_order_and_adds_new_keys(tmp_path: Path) -> None:
    package = ModelPackage.write(tmp_path / "p", _manifest(), {"encoder": b"e", "weights": b"w"})
    before = (package.path / MANIFEST).read_bytes()
    assert package.rewrite().path == package.path
    assert (package.path / MANIFEST).read_bytes() == before  # nothing changed, no byte changed

    package = package.rewrite({**package.manifest, "metrics": {"top1": 0.9}},
                              files={"classifier": ("classifier.onnx", b"c"), "weights": ("weights.pt", b"W")})
    assert list(package.manifest["files"]) == ["encoder", "weights", "classifier"]
    assert package.manifest["metrics"] == {"top1": 0.9}
    assert package.file("classifier").read_bytes() == b"c" and package.file("weights").read_bytes() == b"W"
    assert json.loads((package.path / MANIFEST).read_text()) == package.manifest
    assert sorted(p.name for p in package.path.iterdir()) == [
        "classifier.onnx", "encoder.onnx", MANIFEST, "weights.pt"]  # no staging folder left behind


@pytest.mark.parametrize("change, message", [
    ({"format": 2}, "format"),
    ({"input": {"size": [28, 28]}}, "read back"),
    ({"model_id": "not hex"}, "read back"),
    ({"files": {"encoder": "../encoder.onnx", "weights": "weights.pt"}}, "plain file names"),
    ({"files": {"encoder": "..", "weights": "weights.pt"}}, "plain file names"),
    ({"files": {"encoder": MANIFEST, "weights": "weights.pt"}}, MANIFEST),
])
def test_unreadable_manifests_are_refused_before_writing(tmp_path: Path, change: dict, message: str) -> None:
    target = tmp_path / "p"
    with pytest.raises(ValueError, match=message):
        ModelPackage.write(target, _manifest(**change), {"encoder": b"e", "weights": b"w"})
    assert not target.exists()


def test_contents_must_match_the_files_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ"):
        ModelPackage.write(tmp_path / "p", _manifest(), {"encoder": b"e"})


def test_an_existing_folder_is_replaced_only_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "p"
    ModelPackage.write(target, _manifest(), {"encoder": b"e", "weights": b"w"})
    (target / "stale.onnx").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        ModelPackage.write(target, _manifest(), {"encoder": b"e", "weights": b"w"})
    ModelPackage.write(target, _manifest(), {"encoder": b"e2", "weights": b"w"}, overwrite=True)
    assert not (target / "stale.onnx").exists() and (target / "encoder.onnx").read_bytes() == b"e2"


def test_a_failed_file_write_leaves_the_old_file(tmp_path: Path) -> None:
    package = ModelPackage.write(tmp_path / "p", _manifest(), {"encoder": b"e", "weights": b"w"})

    def broken(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        package.rewrite(files={"weights": ("weights.pt", broken)})
    assert package.file("weights").read_bytes() == b"w"
    assert sorted(p.name for p in package.path.iterdir()) == ["encoder.onnx", MANIFEST, "weights.pt"]


def test_a_missing_cloud_file_says_so(tmp_path: Path) -> None:
    package = ModelPackage.write(tmp_path / "p", _manifest(), {"encoder": b"e", "weights": b"w"})
    package.file("weights").unlink()
    with pytest.raises(ModelNotFoundError, match="edge install"):
        package.file("weights")
    assert set(EDGE_FILES).isdisjoint(CLOUD_FILES)


def test_the_edge_files_are_all_a_device_needs(tmp_path: Path) -> None:
    """A copy of the default zoo package holding only its manifest and `EDGE_FILES` (no weights.pt, no
    classifier.onnx) is found, encodes, and makes the very stream the whole package makes: what an edge
    install must carry of the zoo."""
    import shutil

    import numpy as np
    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.packages import DEFAULT_MODEL, resolve_model

    full = max((p for p in iter_packages(zoo_root()) if p.name == DEFAULT_MODEL), key=lambda p: p.version)
    edge_only = tmp_path / full.name / str(full.version)
    edge_only.mkdir(parents=True)
    for name in (MANIFEST, *(full.manifest["files"][key] for key in EDGE_FILES)):
        shutil.copy(full.path / name, edge_only / name)
    package = resolve_model(full.name, roots=[tmp_path])
    assert package.path == edge_only and package.model_id == full.model_id
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    ours = [r.stream for r in EdgeEncoder(package, threads=1).encode_pixels(images)]
    assert ours == [r.stream for r in EdgeEncoder(full, threads=1).encode_pixels(images)]
    for key in CLOUD_FILES:
        with pytest.raises(ModelNotFoundError, match="edge install"):
            package.file(key)
