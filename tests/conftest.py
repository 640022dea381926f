"""Shared fixtures: a model repository with real packages, Fashion-MNIST test images, edge bitstreams, and a
factory for real cloud servers on 127.0.0.1 (random free ports), stopped at teardown.

The repository is the shipped zoo when it holds the compressing Fashion-MNIST models; otherwise packages are
exported once per session from the `jcc-fmnist-28` preset with untrained weights (real components, so
protocol tests are meaningful; accuracy is tested elsewhere).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ZOO_MODELS = ("fmnist-q1", "fmnist-q2", "fmnist-q3")
EXPORTED_MODELS = ("fmnist-q1", "fmnist-q2")  # two are enough for routing and mismatch tests


def _zoo_repository() -> Path | None:
    from vitcodec.packages import ModelNotFoundError, ModelPackage, zoo_root

    root = zoo_root()
    for name in ZOO_MODELS:
        try:
            versions = [p for p in (root / name).iterdir() if p.is_dir() and p.name.isdigit()]
            if not versions or not all(ModelPackage.open(v).compresses for v in versions):
                return None
        except (OSError, ModelNotFoundError):
            return None
    return root


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton-like repository holding at least fmnist-q1 and fmnist-q2 (compressing packages)."""
    zoo = _zoo_repository()
    if zoo is not None:
        return zoo
    torch = pytest.importorskip("torch")
    from vitcodec.models.export import export_package
    from vitcodec.models.registry import create_model

    root = tmp_path_factory.mktemp("model-repo")
    for seed, name in enumerate(EXPORTED_MODELS, start=1):
        torch.manual_seed(seed)  # different weights -> different model ids
        export_package(create_model("jcc-fmnist-28"), root, name=name, quality=int(name[-1]))
    return root


@pytest.fixture(scope="session")
def calibrated_repo() -> Path:
    """The zoo, whose compressed packages are calibrated (temperature and novelty statistics, since
    2026-12-04): the repository the novelty tests serve."""
    zoo = _zoo_repository()
    if zoo is None:
        pytest.skip("needs the trained zoo (packages/zoo)")
    from vitcodec.packages import ModelPackage

    assert ModelPackage.open(zoo / "fmnist-q2" / "1").manifest["config"].get("calibrated"), \
        "the zoo's fmnist-q2 is not calibrated: run `vitcodec calibrate --model fmnist-q2`"
    return zoo


@pytest.fixture(scope="session")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and a server certificate for 127.0.0.1/localhost made with trustme: ``ca.pem``, ``server.pem``,
    ``server.key`` in one folder."""
    trustme = pytest.importorskip("trustme")
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "server.key"))
    return folder


@pytest.fixture(scope="session")
def uncalibrated_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding the zoo's fmnist-q2 with its calibration taken out (no temperature, no novelty
    statistics, classifier.onnx without the novelty output): what every package exported before calibration
    looks like. Same model id as the zoo's fmnist-q2, so serve it on its own."""
    zoo = _zoo_repository()
    if zoo is None:
        pytest.skip("needs the trained zoo (packages/zoo)")
    torch = pytest.importorskip("torch")
    from vitcodec.models.export import add_classifier
    from vitcodec.packages import ModelPackage

    root = tmp_path_factory.mktemp("uncalibrated-repo")
    zoo_package = ModelPackage.open(zoo / "fmnist-q2" / "1")  # its cloud files live in the cloud's zoo
    package = ModelPackage.write(root / "fmnist-q2" / "1", zoo_package.manifest,
                                 {key: zoo_package.file(key).read_bytes() for key in zoo_package.manifest["files"]})
    manifest = {**package.manifest, "config": {**package.manifest["config"], "calibrated": False}}
    manifest.pop("calibration", None)
    state = torch.load(package.file("weights"), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("calibration.")}
    add_classifier(package.rewrite(manifest, files={"weights": ("weights.pt", lambda path: torch.save(state, path))}))
    return root


@pytest.fixture(scope="session")
def uncalibrated_server(start_server, uncalibrated_repo: Path) -> Any:
    """A server whose only model is an uncalibrated fmnist-q2."""
    return start_server(model_repo=[uncalibrated_repo])


@pytest.fixture(scope="session")
def package(model_repo: Path):
    """The default model's package (fmnist-q2)."""
    from vitcodec.packages import resolve_model

    return resolve_model("fmnist-q2", roots=[model_repo])


@pytest.fixture(scope="session")
def other_package(model_repo: Path):
    """A second model (fmnist-q1) whose streams the default model must refuse."""
    from vitcodec.packages import resolve_model

    return resolve_model("fmnist-q1", roots=[model_repo])


@pytest.fixture(scope="session")
def fmnist_images() -> tuple[np.ndarray, np.ndarray]:
    """32 Fashion-MNIST test images (uint8 (n, 28, 28, 1)) and labels; synthetic ones when the Debian package
    is missing."""
    def synthetic() -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (32, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 32)

    try:
        from vitcodec.models.data import DataError, load_fashion_mnist
    except ImportError:  # no training stack: DataError does not exist either
        return synthetic()
    try:
        images, labels = load_fashion_mnist("test")
        return images[:32, :, :, None].copy(), labels[:32].copy()
    except (ImportError, DataError, OSError):
        return synthetic()


@pytest.fixture(scope="session")
def edge_streams(package, fmnist_images) -> list[bytes]:
    """Bitstreams of the images, made by the real edge encoder (ONNX Runtime + codec) for fmnist-q2."""
    from vitcodec.edge.encoder import EdgeEncoder

    return [r.stream for r in EdgeEncoder(package).encode_pixels(fmnist_images[0])]


@pytest.fixture(scope="session")
def other_streams(other_package, fmnist_images) -> list[bytes]:
    """Bitstreams of the same images for fmnist-q1."""
    from vitcodec.edge.encoder import EdgeEncoder

    return [r.stream for r in EdgeEncoder(other_package).encode_pixels(fmnist_images[0][:4])]


@pytest.fixture(scope="session")
def start_server(model_repo: Path) -> Iterator[Callable[..., Any]]:
    """Factory: ``start_server(**settings)`` runs a real server in a background thread on 127.0.0.1 with random
    free ports and returns its `BackgroundServer` (``.http_url``, ``.grpc_target``, ``.server``). Every server
    started is stopped at the end of the session, or earlier with ``.stop()``."""
    from vitcodec.cloud.server import BackgroundServer
    from vitcodec.cloud.settings import Settings

    started: list[BackgroundServer] = []

    def start(repository: Any = None, wait_ready: bool = True, **overrides: Any) -> BackgroundServer:
        values = dict(model_repo=[model_repo], host="127.0.0.1", http_port=0, grpc_port=0, png_workers=2,
                      max_queue_delay_ms=10.0, max_batch_size=16, graceful_timeout_s=10.0, log_level="warning")
        values.update(overrides)
        server = BackgroundServer(Settings(_env_file=None, **values), repository, wait_ready=wait_ready)
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="session")
def cloud_server(start_server) -> Any:
    """The shared server: every model of the repository, no auth, a 64 KiB body limit."""
    return start_server(max_body_bytes=64 * 1024)


AUTH_TOKEN = "s3cret"


@pytest.fixture(scope="session")
def auth_server(start_server) -> Any:
    """A server that wants ``Authorization: Bearer s3cret`` (serving fmnist-q2 only)."""
    return start_server(auth_token=AUTH_TOKEN, models=["fmnist-q2"])


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A throwaway PostgreSQL server (tests/pg_cluster.py) for the archive tests, stopped at the end; skips
    without one, fails under CI."""
    from pg_cluster import cluster_or_skip

    cluster = cluster_or_skip()
    yield cluster
    cluster.destroy()


def scrape(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample over the series whose labels include `labels`."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture(scope="session")
def scrape_metrics() -> Callable[..., float]:
    return scrape


os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
