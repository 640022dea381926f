"""The edge installs and runs without torch: a wheel of the project installed with its base dependencies only,
in a fresh venv, encodes a PNG with `vitcodec-edge encode`; the stream decodes in this (cloud) environment to
exactly the latents the edge computed. Slow (builds a venv: ~25 s here, more on a busy machine)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from workloads import build_edge_venv, directory_bytes

PROJECT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "compressai", "timm", "onnx", "fastapi", "uvicorn")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory) -> Path:
    return build_edge_venv(tmp_path_factory.mktemp("edge-install"), PROJECT)


def run(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run outside the project folder, so that its sources cannot shadow the installed distribution, and
    without VITCODEC_MODEL_REPO, so that the default model is the one shipped in the wheel."""
    env = {k: v for k, v in os.environ.items() if k != "VITCODEC_MODEL_REPO"}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300,
                          cwd=cwd or Path(__file__).anchor, env=env)


def test_edge_venv_has_no_torch(edge_venv):
    python = edge_venv / "bin" / "python"
    for module in HEAVY:
        proc = run(python, "-c", f"import {module}")
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, (module, proc.stdout)
    assert directory_bytes(edge_venv) < 400 * 2**20  # the whole venv; torch alone is ~1 GB


def test_encode_in_the_edge_venv_decodes_in_the_cloud(edge_venv, package, fmnist_images, tmp_path):
    from vitcodec.models.inference import CloudModel

    png = tmp_path / "shirt.png"
    Image.fromarray(fmnist_images[0][3, :, :, 0]).save(png)
    out = tmp_path / "out"
    bin_dir = edge_venv / "bin"
    proc = run(bin_dir / "vitcodec-edge", "encode", png, "--model", package.path, "-o", out, "--json",
               "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    stream = (out / "shirt.vcb").read_bytes()
    assert row["bytes"] == len(stream) and row["output"] == str(out / "shirt.vcb")

    proc = run(bin_dir / "vitcodec-edge", "inspect", out / "shirt.vcb", "--model", package.path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model_id"] == package.model_id.hex()

    # the edge's own ŷ, from the library in the edge venv, and proof that nothing heavy was imported
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import vitcodec.edge.cli, vitcodec.edge.commands, vitcodec.edge.client
        from vitcodec.packages import resolve_model
        from vitcodec.edge.encoder import EdgeEncoder
        result = EdgeEncoder(resolve_model({str(package.path)!r}), threads=1).encode_image({str(png)!r})
        np.save({str(tmp_path / "y_hat.npy")!r}, result.y_hat)
        open({str(tmp_path / "lib.vcb")!r}, "wb").write(result.stream)
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        assert not heavy, heavy
        """)
    proc = run(bin_dir / "python", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "lib.vcb").read_bytes() == stream

    decoded = CloudModel(package).decode(stream)
    assert np.array_equal(decoded.y_hat, np.load(tmp_path / "y_hat.npy"))


def test_the_default_model_ships_in_the_wheel(edge_venv, fmnist_images, tmp_path):
    """With no --model and no VITCODEC_MODEL_REPO, the edge venv encodes with the zoo installed from the wheel
    (not this checkout's): the checkout's default package, byte for byte."""
    from vitcodec.packages import DEFAULT_MODEL, iter_packages, zoo_root

    shipped = [p for p in iter_packages(zoo_root()) if p.name == DEFAULT_MODEL]
    assert shipped, f"this checkout's zoo ({zoo_root()}) has no {DEFAULT_MODEL}"
    expected = max(shipped, key=lambda p: p.version)
    proc = run(edge_venv / "bin" / "python", "-c", "from vitcodec.packages import zoo_root; print(zoo_root())")
    assert proc.returncode == 0, proc.stderr
    installed_zoo = Path(proc.stdout.strip()).resolve()
    assert installed_zoo.is_relative_to(edge_venv.resolve()), installed_zoo  # the wheel's copy, not the checkout

    png = tmp_path / "shirt.png"
    Image.fromarray(fmnist_images[0][3, :, :, 0]).save(png)
    proc = run(edge_venv / "bin" / "vitcodec-edge", "encode", png, "-o", tmp_path / "default", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    proc = run(edge_venv / "bin" / "vitcodec-edge", "inspect", tmp_path / "default" / "shirt.vcb", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model_id"] == expected.model_id.hex()
    # and the wheel's copy is the checkout's: the same stream as with the checkout's package named explicitly
    proc = run(edge_venv / "bin" / "vitcodec-edge", "encode", png, "--model", expected.path, "-o",
               tmp_path / "explicit", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "default" / "shirt.vcb").read_bytes() == (tmp_path / "explicit" / "shirt.vcb").read_bytes()


def test_the_edge_install_carries_no_cloud_files(edge_venv):
    """The wheels of the edge install ship the bundled zoo's manifests and edge files (the default model whole,
    for a device), and none of its cloud files: ``weights.pt`` and ``classifier.onnx`` ship in vitcodec-cloud
    (docs/architecture.md, "Contracts")."""
    import zipfile

    from vitcodec.packages import CLOUD_FILES, DEFAULT_MODEL, EDGE_FILES, MANIFEST, iter_packages, zoo_root

    packages = iter_packages(zoo_root())
    cloud_names = {p.manifest["files"][key] for p in packages for key in CLOUD_FILES if key in p.manifest["files"]}
    assert cloud_names == {"weights.pt", "classifier.onnx"}, cloud_names  # what the checkout's zoo names
    wheels = sorted((edge_venv.parent / "wheels").glob("*.whl"))
    assert {w.name.split("-")[0] for w in wheels} >= {"vitcodec_edge", "vitcodec_packages"}, wheels
    members = [name for wheel in wheels for name in zipfile.ZipFile(wheel).namelist()]
    assert [m for m in members if Path(m).name in cloud_names] == []
    installed = [str(f) for f in edge_venv.rglob("*") if f.name in cloud_names]
    assert installed == []
    default = max((p for p in packages if p.name == DEFAULT_MODEL), key=lambda p: p.version)
    folder = f"vitcodec/packages/zoo/{default.name}/{default.version}"
    for name in (MANIFEST, *(default.manifest["files"][key] for key in EDGE_FILES)):
        assert f"{folder}/{name}" in members, name
    # the installed default model says what it lacks, rather than failing somewhere inside a loader
    script = ("from vitcodec.packages import resolve_model\n"
              "try:\n    resolve_model().file('weights')\nexcept LookupError as exc:\n    print(exc)")
    proc = run(edge_venv / "bin" / "python", "-c", script)
    assert proc.returncode == 0 and "an edge install does not carry it" in proc.stdout, proc.stdout + proc.stderr


def test_the_installed_edge_imports_from_the_repository_root(edge_venv):
    """Nothing at the repository root is named `vitcodec`, so a normal install imports the same from the root of a
    checkout as from anywhere else (docs/architecture.md, "Folders and distributions")."""
    script = "import vitcodec.edge.encoder as m; print(m.__file__)"
    for cwd in (PROJECT, Path(__file__).anchor):
        proc = run(edge_venv / "bin" / "python", "-c", script, cwd=Path(cwd))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().startswith(str(edge_venv)), proc.stdout
