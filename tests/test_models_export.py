"""Exports: edge encoders store float16 weights but compute in float32 and match the float32 export; the
package writer writes the bytes export always wrote; classifier.onnx opens on its own in ONNX tools."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from vitcodec.models.export import onnx_encoder_bytes, store_weights_as_float16  # noqa: E402
from vitcodec.models.registry import create_model  # noqa: E402


@pytest.fixture(scope="module")
def encoders() -> tuple[bytes, bytes]:
    import torch

    torch.manual_seed(0)
    full = onnx_encoder_bytes(create_model("jcc-fmnist-28-s8").eval())
    return full, store_weights_as_float16(full)


def _run(model_bytes: bytes, image: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"]).run(None, {"image": image})


def test_float16_storage_halves_the_file_and_keeps_float32_io(encoders) -> None:
    full, half = encoders
    assert len(half) < 0.55 * len(full)
    graph = onnx.load_from_string(half).graph
    stored = {i.data_type for i in graph.initializer if np.prod(i.dims) >= 64}
    assert stored == {onnx.TensorProto.FLOAT16}
    assert sum(node.op_type == "Cast" for node in graph.node) >= 6  # every conv weight of g_a and h_a
    for value in (*graph.input, *graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_float16_storage_changes_latents_only_by_weight_rounding(encoders) -> None:
    full, half = encoders
    image = np.random.default_rng(1).normal(size=(4, 1, 32, 32)).astype(np.float32)
    for reference, rounded in zip(_run(full, image), _run(half, image)):
        assert reference.shape == rounded.shape and rounded.dtype == np.float32
        scale = float(np.abs(reference).max())
        assert scale > 0
        # float16 rounds each weight by at most 2^-11 relative; a few layers deep that stays well under 1 %
        assert float(np.abs(reference - rounded).max()) <= 0.01 * scale
        assert not np.array_equal(reference, rounded)  # the weights really were rounded


# What `export_package` wrote for the tiny package below before `ModelPackage` became the one writer (commit
# 464dd60, torch 2.14.1; h_s format 1, "fixed", the only one then): SHA-256 of each file (codec.npz: of its
# arrays; weights.pt: of its names, dtypes and shapes) and the model id. A change here changes the model ids of
# new exports; make it on purpose, never as a side effect.
GOLDEN_EXPORT = {
    "manifest.json": "55b7e68b93e62a6e38b39c23a2ab6e29c990f5f8ec53ff4037567607226370ae",
    "encoder.onnx": "aa2751cfb30029d412809849f326442503bd41bd5c20d3253aca5b939743071a",
    "weights.pt": "c534c006d7056d887f856b64329052c57bc059b9bf84b10430182daba4ee809f",  # its layout, see below
    "codec.npz": "24a23c0aad31783f71b2d7c36df7b4d76035fa9ffac3d894eefe77312aed3beb",
}
GOLDEN_MODEL_ID = "628c5efc"


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    import torch
    from vitcodec.models.export import export_package

    torch.manual_seed(1)
    # hs_format="fixed": the h_s format the golden bytes were written with (new exports default to int8)
    return export_package(create_model("jcc-fmnist-28-s8"), tmp_path_factory.mktemp("repo"), name="tiny",
                          hs_format="fixed")


def test_export_writes_the_same_bytes_as_before_the_package_writer(tmp_path) -> None:
    import hashlib

    import torch
    from vitcodec.models.export import export_package

    torch.manual_seed(1)
    model = create_model("jcc-fmnist-28-s8")
    tiny_package = export_package(model, tmp_path, name="tiny", hs_format="fixed")
    digests = {name: hashlib.sha256((tiny_package.path / name).read_bytes()).hexdigest()
               for name in ("manifest.json", "encoder.onnx")}
    with np.load(tiny_package.file("codec")) as npz:
        arrays = b"".join(key.encode() + npz[key].tobytes() for key in sorted(npz.files))
    digests["codec.npz"] = hashlib.sha256(arrays).hexdigest()
    # weights.pt: its layout (names, dtypes, shapes) against the golden, and every tensor exactly the network's
    # own, stored as the writer stores it. Not its bytes: the ViT's truncated-normal initialisation rounds its
    # last bits differently on different CPUs' vector units (the file matched on Intel, not on AMD).
    stored = torch.load(tiny_package.path / "weights.pt", weights_only=True)
    layout = "".join(f"{key}:{value.dtype}:{tuple(value.shape)};" for key, value in stored.items())
    digests["weights.pt"] = hashlib.sha256(layout.encode()).hexdigest()
    state = model.state_dict()
    for key, value in stored.items():
        assert torch.equal(value, state[key].to(value.dtype)), key
    assert digests == GOLDEN_EXPORT
    assert tiny_package.model_id.hex() == GOLDEN_MODEL_ID
    assert sorted(p.name for p in tiny_package.path.iterdir()) == [
        "classifier.onnx", "codec.npz", "encoder.onnx", "manifest.json", "weights.pt"]  # nothing left over


def test_classifier_onnx_opens_on_its_own_in_onnx_and_onnxruntime(tiny_package, tmp_path) -> None:
    """classifier.onnx holds its weights as external data pointing into weights.pt (no copy): `onnx.load`, the
    ONNX checker and a bare InferenceSession open it with nothing but the two files, and it computes what the
    torch model computes."""
    import shutil

    from vitcodec.models.inference import CloudModel

    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("classifier.onnx", "weights.pt"):  # nothing else of the package
        shutil.copy(tiny_package.path / name, alone / name)
    path = str(alone / "classifier.onnx")
    onnx.checker.check_model(path)  # the path form also checks that each external file exists
    graph = onnx.load(path)  # load_external_data=True: reads every tensor from weights.pt
    onnx.checker.check_model(graph)
    stored = onnx.load(path, load_external_data=False).graph.initializer
    external = [i for i in stored if i.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) >= 0.9 * len(stored)
    assert {e.value for i in external for e in i.external_data if e.key == "location"} == {"weights.pt"}
    assert all(int(dict((e.key, e.value) for e in i.external_data)["length"]) > 0 for i in external)
    assert (alone / "classifier.onnx").stat().st_size < 100_000  # the ~0.8 M ViT weights are not duplicated

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y_hat = np.random.default_rng(0).normal(0, 2, (3, 128, 4, 4)).astype(np.float32)
    probs = session.run(["probs"], {"y_hat": y_hat})[0]
    assert np.allclose(probs, CloudModel(tiny_package).classify_latents(y_hat), atol=1e-6)
    assert not np.allclose(probs, probs[:1])  # the inputs differ, so must the answers


def test_the_onnxruntime_backend_loads_the_exported_graph_and_needs_it(tiny_package, tmp_path) -> None:
    """The server's onnxruntime backend runs an exported package's classifier.onnx as it is (its agreement with
    torch is tests/test_cloud_backends.py's), and refuses a package without one, naming it."""
    import shutil

    from vitcodec.cloud.backends import make_loader
    from vitcodec.packages import ModelNotFoundError, ModelPackage

    served = make_loader("onnxruntime", "cpu")(tiny_package)
    y_hat = np.random.default_rng(0).normal(0, 2, (3, 128, 4, 4)).astype(np.float32)
    probs = served.classify_latents(y_hat)
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    copy = ModelPackage.open(shutil.copytree(tiny_package.path, tmp_path / "copy"))
    copy.file("classifier").unlink()
    with pytest.raises(ModelNotFoundError, match="classifier"):
        make_loader("onnxruntime", "cpu")(copy)


def _extents(path) -> list[tuple[str, str]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return sorted((i.name, dict((e.key, e.value) for e in i.external_data)["offset"]) for i in graph.initializer
                  if i.data_location == onnx.TensorProto.EXTERNAL)


def test_rewriting_the_weights_rebinds_the_classifier(tiny_package, tmp_path) -> None:
    """classifier.onnx points at byte ranges of weights.pt: after the weights are rewritten (as calibration
    does), `add_classifier` points it at the new ranges, and the graph computes with the new weights."""
    import shutil
    from functools import partial

    import torch
    from vitcodec.models.export import add_classifier
    from vitcodec.models.inference import CloudModel
    from vitcodec.packages import ModelPackage

    package = ModelPackage.open(shutil.copytree(tiny_package.path, tmp_path / "copy"))
    before = _extents(package.file("classifier"))
    state = torch.load(package.file("weights"), map_location="cpu", weights_only=True)
    state = {k: (-v if k == "vit.head.weight" else v) for k, v in reversed(state.items())}  # new order, offsets
    package = add_classifier(package.rewrite(files={"weights": ("weights.pt", partial(torch.save, state))}))
    assert _extents(package.file("classifier")) != before

    y_hat = np.random.default_rng(2).normal(0, 2, (2, 128, 4, 4)).astype(np.float32)
    session = ort.InferenceSession(str(package.file("classifier")), providers=["CPUExecutionProvider"])
    probs = session.run(["probs"], {"y_hat": y_hat})[0]
    assert np.allclose(probs, CloudModel(package).classify_latents(y_hat), atol=1e-6)
    assert not np.allclose(probs, CloudModel(tiny_package).classify_latents(y_hat), atol=1e-3)
