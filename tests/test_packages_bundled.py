"""The bundled zoo split by side: manifests and edge files in vitcodec-packages, cloud files in the folder
vitcodec-cloud registers (entry-point group ``vitcodec.zoo``), found by `ModelPackage.file` as if whole."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vitcodec.cloud import bundled_zoo
from vitcodec.packages import CLOUD_FILES, EDGE_FILES, MANIFEST, ModelPackage, iter_packages, zoo_root
from vitcodec.packages.bundled import companion_dirs, companion_roots
from vitcodec.packages.split_zoo import split_zoo

INPUT = {"size": [28, 28], "channels": 1, "mean": [0.5], "std": [0.5], "stride": 8}
FILES = {"codec": "codec.npz", "encoder": "encoder.onnx", "weights": "weights.pt", "classifier": "classifier.onnx"}


def _manifest(name: str) -> dict:
    return {"format": 1, "name": name, "version": 1, "model_id": "ab" * 8, "input": INPUT, "files": FILES}


def test_the_bundled_zoo_keeps_its_cloud_files_in_the_registered_folder() -> None:
    cloud_root = bundled_zoo.zoo_root()
    assert cloud_root in companion_roots()
    packages = iter_packages(zoo_root())
    assert packages
    for package in packages:
        names = package.manifest["files"]
        assert package.companions == (cloud_root / package.name / str(package.version),), package.name
        for key in names:
            home = package.companions[0] if key in CLOUD_FILES else package.path
            assert package.file(key) == home / names[key], (package.name, key)
            assert not (package.path / names[key]).exists() or key not in CLOUD_FILES
        assert sorted(p.name for p in package.companions[0].iterdir()) == sorted(
            names[key] for key in CLOUD_FILES if key in names)  # nothing of the edge's in the cloud's folder


def test_a_package_outside_the_zoo_has_no_companions(tmp_path: Path) -> None:
    package = ModelPackage.write(tmp_path / "m" / "1", _manifest("m"), {key: key.encode() for key in FILES})
    assert package.companions == () and companion_dirs(tmp_path / "m" / "1") == ()
    assert all(package.file(key).parent == package.path for key in FILES)


def test_split_zoo_moves_only_the_cloud_files(tmp_path: Path) -> None:
    zoo, cloud = tmp_path / "zoo", tmp_path / "cloud"
    for name in ("a", "b"):
        ModelPackage.write(zoo / name / "1", _manifest(name), {key: f"{name}-{key}".encode() for key in FILES})
    moved = split_zoo(zoo, cloud)
    assert sorted(p.relative_to(cloud).as_posix() for p in moved) == sorted(
        f"{name}/1/{FILES[key]}" for name in ("a", "b") for key in CLOUD_FILES)
    edge_side = sorted([MANIFEST, *(FILES[key] for key in EDGE_FILES)])
    for name in ("a", "b"):
        assert sorted(p.name for p in (zoo / name / "1").iterdir()) == edge_side
        assert (cloud / name / "1" / "weights.pt").read_bytes() == f"{name}-weights".encode()
    assert split_zoo(zoo, cloud) == []  # a second run finds nothing left to move


def test_rewrite_writes_each_file_where_the_package_keeps_it(tmp_path: Path) -> None:
    """A cloud file is rewritten in the companion folder that holds it; a new cloud file goes beside the
    others (classifier.onnx points into weights.pt by a relative name); an edge file stays in the package."""
    zoo, cloud = tmp_path / "zoo", tmp_path / "cloud"
    files = {k: v for k, v in FILES.items() if k != "classifier"}
    manifest = {**_manifest("a"), "files": files}
    ModelPackage.write(zoo / "a" / "1", manifest, {key: b"old" for key in files})
    split_zoo(zoo, cloud)
    package = dataclasses.replace(ModelPackage.open(zoo / "a" / "1"), companions=(cloud / "a" / "1",))
    package.rewrite(files={"weights": ("weights.pt", b"new"), "classifier": ("classifier.onnx", b"graph"),
                           "codec": ("codec.npz", b"codec")})
    assert sorted(p.name for p in (cloud / "a" / "1").iterdir()) == ["classifier.onnx", "weights.pt"]
    assert (cloud / "a" / "1" / "weights.pt").read_bytes() == b"new"
    assert sorted(p.name for p in (zoo / "a" / "1").iterdir()) == ["codec.npz", "encoder.onnx", MANIFEST]
    assert (zoo / "a" / "1" / "codec.npz").read_bytes() == b"codec"
