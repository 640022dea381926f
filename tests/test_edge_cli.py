"""`vitcodec-edge encode` / `inspect` and `vitcodec-cloud decode` through their real entry points (typer apps in
process, and the installed console scripts), including every kind of bad input: each must end with one
``error:`` line naming the problem and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner
from vitcodec.codec.bitstream import StreamHeader, pack_stream, read_stream_info, unpack_stream
from vitcodec.codec.latent_codec import LatentCodec
from vitcodec.edge.cli import app as edge_app
from vitcodec.edge.encoder import EdgeEncoder

runner = CliRunner()


def edge(*args: str):
    return runner.invoke(edge_app, [str(a) for a in args])


def cloud(*args: str):
    from vitcodec.cloud.cli import app as cloud_app

    return runner.invoke(cloud_app, [str(a) for a in args])


def assert_one_line_error(result, *needles: str, code: int | None = None) -> str:
    """Non-zero exit, exactly one stderr line starting with 'error:' that contains every needle."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, (result.exit_code, result.stderr)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # handled, not a crash
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(autouse=True)
def _repository(monkeypatch, model_repo):
    """Let `inspect` and `decode` find the test models by id, as an installed repository."""
    monkeypatch.setenv("VITCODEC_MODEL_REPO", str(model_repo))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, fmnist_images) -> Path:
    """6 Fashion-MNIST images: PNGs, a JPEG in a subfolder, plus a non-image file that folders skip."""
    root = tmp_path_factory.mktemp("edge-images")
    pixels = fmnist_images[0]
    for i in range(5):
        Image.fromarray(pixels[i, :, :, 0]).save(root / f"img{i}.png")
    (root / "sub").mkdir()
    Image.fromarray(pixels[5, :, :, 0]).save(root / "sub" / "img5.jpg", quality=95)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, image_dir, package) -> tuple[Path, list[dict]]:
    """The image folder encoded once with --json (fmnist-q2)."""
    out = tmp_path_factory.mktemp("edge-out")
    result = edge("encode", image_dir, "--model", package.path, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return out, rows


# --- encode -------------------------------------------------------------------------------------------


def test_encode_writes_one_stream_per_image(encoded, image_dir, package):
    out, rows = encoded
    assert [Path(r["file"]).relative_to(image_dir).as_posix() for r in rows] == [
        "img0.png", "img1.png", "img2.png", "img3.png", "img4.png", "sub/img5.jpg"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.vcb")) == [
        "img0.vcb", "img1.vcb", "img2.vcb", "img3.vcb", "img4.vcb", "sub/img5.vcb"]
    encoder = EdgeEncoder(package)
    codec = LatentCodec.load(package.file("codec"))
    for row in rows:
        data = Path(row["output"]).read_bytes()
        info = read_stream_info(data)
        assert row["bytes"] == len(data) == info.total_bytes
        assert row["header_bytes"] + row["z_bytes"] + row["y_bytes"] == len(data)
        assert row["image_size"] == [28, 28] and row["source_size"] == [28, 28]
        assert row["bpp"] == pytest.approx(8 * len(data) / (28 * 28), abs=1e-6)
        assert info.header.model_id == package.model_id
        reference = encoder.encode_image(row["file"])  # the library, one image at a time
        assert data == reference.stream
        _, z, y = unpack_stream(data, package.model_id)
        assert np.array_equal(codec.decode(z, y, info.header.latent_shape), reference.y_hat)


def test_encode_table_and_threads(image_dir, package, tmp_path, encoded):
    result = edge("encode", image_dir / "img1.png", image_dir / "sub", "--model", package.path, "-o", tmp_path,
                  "--threads", "1", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    assert "img1.png" in result.stdout and "bpp" in result.stdout and "bytes" in result.stdout
    assert f"2 of 2 images encoded with {package.name}" in result.stdout
    assert result.stderr == ""
    out, _ = encoded  # a single thread and batches of one give the very same bytes
    assert (tmp_path / "img1.vcb").read_bytes() == (out / "img1.vcb").read_bytes()
    assert (tmp_path / "img5.vcb").read_bytes() == (out / "sub" / "img5.vcb").read_bytes()


def test_encode_converts_any_image_to_the_model_input(tmp_path, package):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 60, 3), dtype=np.uint8)).save(tmp_path / "photo.webp")
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(tmp_path / "small.png")
    Image.fromarray((rng.integers(0, 65536, (28, 28))).astype(np.uint16)).save(tmp_path / "deep.tiff")
    result = edge("encode", tmp_path / "photo.webp", tmp_path / "small.png", tmp_path / "deep.tiff",
                  "--model", package.path, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    rows = {Path(r["file"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["photo.webp"]["source_size"] == [90, 60] and rows["photo.webp"]["image_size"] == [28, 28]
    assert rows["small.png"]["source_size"] == [20, 20] and rows["small.png"]["image_size"] == [28, 28]
    assert all((tmp_path / "out" / f"{name}.vcb").is_file() for name in ("photo", "small", "deep"))


def test_encode_name_clashes(tmp_path, fmnist_images, package):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    pixels = fmnist_images[0][0, :, :, 0]
    Image.fromarray(pixels).save(tmp_path / "a" / "x.png")
    Image.fromarray(pixels).save(tmp_path / "a" / "x.jpg")
    Image.fromarray(pixels).save(tmp_path / "b" / "x.png")
    result = edge("encode", tmp_path / "a", "--model", package.path, "-o", tmp_path / "o1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o1").iterdir()) == ["x.jpg.vcb", "x.png.vcb"]
    # the same file twice is encoded once; two different files for one output name are refused
    result = edge("encode", tmp_path / "b" / "x.png", tmp_path / "b", "--model", package.path, "-o", tmp_path / "o2")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "o2").iterdir()] == ["x.vcb"]
    result = edge("encode", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "--model", package.path,
                  "-o", tmp_path / "o3")
    assert_one_line_error(result, "would both be written to", code=2)
    assert not (tmp_path / "o3").exists()


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory, image_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-images")
    png = (image_dir / "img0.png").read_bytes()
    files = {
        "garbage": (root / "garbage.png", b"\x89PNG\r\n\x1a\n this is not a PNG body"),
        "truncated": (root / "truncated.png", png[: len(png) // 2]),
        "text": (root / "readme.jpg", b"just some text\n"),
        "empty": (root / "empty.png", b""),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {key: path for key, (path, _) in files.items()}


@pytest.mark.parametrize("case", ["garbage", "truncated", "text", "empty"])
def test_encode_unreadable_image(bad_images, package, tmp_path, case):
    path = bad_images[case]
    result = edge("encode", path, "--model", package.path, "-o", tmp_path)
    assert_one_line_error(result, str(path), "not a readable image", code=1)
    assert list(tmp_path.iterdir()) == []


def test_encode_keeps_going_past_a_broken_image(bad_images, image_dir, package, tmp_path):
    result = edge("encode", image_dir / "img2.png", bad_images["garbage"], image_dir / "img3.png",
                  "--model", package.path, "-o", tmp_path, "--json")
    assert_one_line_error(result, "garbage.png", code=1)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert ["error" in r for r in rows] == [False, True, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img2.vcb", "img3.vcb"]


@pytest.mark.parametrize("case", ["missing", "empty folder", "unknown model", "output is a file"])
def test_encode_bad_arguments(case, image_dir, package, tmp_path):
    args = [image_dir / "img0.png", "--model", package.path, "-o", tmp_path / "out"]
    needle = {"missing": "no such file", "empty folder": "no images found", "unknown model": "unknown model",
              "output is a file": "cannot create the output folder"}[case]
    if case == "missing":
        args[0] = tmp_path / "nope.png"
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        args[0] = tmp_path / "empty"
    elif case == "unknown model":
        args[2] = "no-such-model"
    else:
        (tmp_path / "out").write_text("a file where the folder should be")
    assert_one_line_error(edge("encode", *args), needle, code=2)


# --- inspect ------------------------------------------------------------------------------------------


def test_inspect_reports_the_header(encoded, package):
    out, rows = encoded
    stream = out / "img0.vcb"
    data = stream.read_bytes()
    info = read_stream_info(data)
    result = edge("inspect", stream, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == {
        "file": str(stream), "format_version": 1, "model_id": package.model_id.hex(),
        "model": {"name": package.name, "version": package.version, "path": str(package.path)},
        "quality": package.quality, "image_size": [28, 28], "latent_shape": list(info.header.latent_shape),
        "header_bytes": info.header_bytes, "z_bytes": info.z_bytes, "y_bytes": info.y_bytes,
        "total_bytes": len(data), "bpp": round(8 * len(data) / 784, 6),
    }
    assert info.header_bytes <= 13  # the header is small: 12 bytes + 1 when z needs a 2-byte length
    result = edge("inspect", stream, out / "img1.vcb", "--model", package.name)
    assert result.exit_code == 0, result.output
    for text in ("format version", "model id", package.model_id.hex(), package.name, "quality", "28x28",
                 "latent shape", "header", "bpp", "img1.vcb"):
        assert text in result.stdout


def test_inspect_stream_of_a_model_not_installed(tmp_path):
    data = pack_stream(StreamHeader(b"\x01\x02\x03\x04", 7, (64, 48), (4, 3)), b"\x11" * 5, b"\x22" * 9)
    (tmp_path / "alien.vcb").write_bytes(data)
    result = edge("inspect", tmp_path / "alien.vcb", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"] is None and report["model_id"] == "01020304" and report["quality"] == 7
    assert report["image_size"] == [64, 48] and report["latent_shape"] == [4, 3]
    assert (report["z_bytes"], report["y_bytes"], report["total_bytes"]) == (5, 9, len(data))
    assert "not installed" in edge("inspect", tmp_path / "alien.vcb").stdout


# --- bad streams: inspect and decode ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_streams(tmp_path_factory, edge_streams, other_streams, image_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-streams")
    good = edge_streams[0]
    flipped_payload = bytearray(good)
    flipped_payload[len(good) // 2] ^= 0x10
    flipped_id = bytearray(good)
    flipped_id[2] ^= 0x01
    alien = pack_stream(StreamHeader(b"\xde\xad\xbe\xef", 2, (28, 28), (7, 7)), b"\x01\x02", b"\x03\x04\x05")
    files = {
        "truncated": good[: len(good) - 7],
        "truncated to 3 bytes": good[:3],
        "bit-flipped payload": bytes(flipped_payload),
        "bit-flipped model id": bytes(flipped_id),
        "empty": b"",
        "foreign png": (image_dir / "img0.png").read_bytes(),
        "foreign text": b"hello, world\n",
        "other model": other_streams[0],
        "model not installed": alien,
        "future version": bytes([0xB2]) + good[1:],
    }
    paths = {}
    for i, (case, data) in enumerate(files.items()):
        paths[case] = root / f"case{i}.vcb"
        paths[case].write_bytes(data)
    paths["missing"] = root / "missing.vcb"
    paths["folder"] = root
    return paths


STREAM_ERRORS = {  # case -> words the one error line must hold
    "truncated": ["checksum mismatch"],
    "truncated to 3 bytes": ["stream has 3 bytes"],
    "bit-flipped payload": ["checksum mismatch"],
    "bit-flipped model id": ["checksum mismatch"],
    "empty": ["empty stream"],
    "foreign png": ["not a vitcodec stream", "0x89"],
    "foreign text": ["not a vitcodec stream"],
    "future version": ["format version 2"],
    "missing": ["no such file"],
    "folder": ["is a folder"],
}


@pytest.mark.parametrize("case", sorted(STREAM_ERRORS))
@pytest.mark.parametrize("cli, command", [(edge, "inspect"), (cloud, "decode")], ids=["edge-inspect", "cloud-decode"])
def test_bad_stream_gives_one_line_error(bad_streams, case, cli, command):
    path = bad_streams[case]
    assert_one_line_error(cli(command, path), str(path), *STREAM_ERRORS[case], code=1)


def test_inspect_stream_for_another_model(bad_streams, package, other_package):
    path = bad_streams["other model"]
    line = assert_one_line_error(edge("inspect", path, "--model", package.path), str(path), code=1)
    assert f"stream is for model {other_package.model_id.hex()} ({other_package.name} version" in line
    assert f"not for {package.name} (model {package.model_id.hex()})" in line
    assert edge("inspect", path).exit_code == 0  # without --model it is just another installed model's stream


def test_inspect_reports_every_bad_file_and_still_prints_the_good_ones(bad_streams, encoded):
    out, _ = encoded
    result = edge("inspect", bad_streams["truncated"], out / "img0.vcb", bad_streams["foreign png"], "--json")
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 2 and len(result.stdout.splitlines()) == 1


def test_decode_stream_for_another_model(bad_streams, package, other_package):
    path = bad_streams["other model"]
    line = assert_one_line_error(cloud("decode", path, "--model", package.path), str(path), code=1)
    assert f"{other_package.name} version" in line and f"not for {package.name}" in line
    result = cloud("decode", path, "--json")  # found by its model id
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == other_package.name


def test_decode_model_not_installed_and_unknown_model(bad_streams, encoded):
    path = bad_streams["model not installed"]
    assert_one_line_error(cloud("decode", path), str(path), "no installed model has id deadbeef", code=1)
    out, _ = encoded
    assert_one_line_error(cloud("decode", out / "img0.vcb", "--model", "no-such-model"), "unknown model", code=2)


def test_decode_good_stream_and_unwritable_reconstruction(encoded, package, tmp_path):
    out, _ = encoded
    result = cloud("decode", out / "img0.vcb", "--json", "--top-k", "3", "--reconstruct", tmp_path / "r.png")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"] == package.name and len(report["top_k"]) == 3
    assert Image.open(tmp_path / "r.png").size == (28, 28)
    result = cloud("decode", out / "img0.vcb", "--reconstruct", tmp_path / "no" / "such" / "dir.png")
    assert_one_line_error(result, "cannot write the reconstruction", code=1)


# --- the installed console scripts --------------------------------------------------------------------


def _script(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: `make install` (pip install -e) creates the console scripts"
    return found


def test_console_scripts(encoded, bad_streams, bad_images, package, model_repo, tmp_path):
    env = {**os.environ, "VITCODEC_MODEL_REPO": str(model_repo), "COLUMNS": "60"}
    out, _ = encoded

    def run(*args):
        return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=300)

    ok = run(_script("vitcodec-edge"), "inspect", out / "img0.vcb", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["model"]["name"] == package.name, ok.stderr
    for args, needle in [
        ((_script("vitcodec-edge"), "inspect", bad_streams["bit-flipped payload"]), "checksum mismatch"),
        ((_script("vitcodec-edge"), "encode", bad_images["truncated"], "--model", package.path, "-o", tmp_path),
         "not a readable image"),
        ((_script("vitcodec-cloud"), "decode", bad_streams["foreign png"]), "not a vitcodec stream"),
    ]:
        proc = run(*args)
        lines = proc.stderr.splitlines()  # one line even on a narrow terminal (COLUMNS=60)
        assert proc.returncode == 1 and len(lines) == 1 and needle in lines[0], proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
