"""``vitcodec-cloud decode``: classify one bitstream file on this machine, the server's decode-and-classify
path without a server (`vitcodec.models.inference.CloudModel`: entropy decoding, the ViT on ŷ, pixels only
with ``--reconstruct``). Registered on the app in ``cloud/cli.py``; it needs the server install only.

Exit status 1 when the file is missing, damaged, not a vitcodec stream or made for another model, 2 when the
model cannot be found or loaded; either way one ``error:`` line, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from vitcodec.console import error_line

if TYPE_CHECKING:
    import numpy as np
    from vitcodec.models.inference import CloudModel, DecodedStream, Prediction
    from vitcodec.packages import ModelPackage

console = Console()


def decode(
    file: Path = typer.Argument(..., help="A .vcb bitstream written by `vitcodec-edge encode`."),
    model: str | None = typer.Option(None, help="Zoo name or package path (default: found by the stream's "
                                        "model id)."),
    top_k: int = typer.Option(5, min=1, help="How many classes to list."),
    reconstruct: Path | None = typer.Option(None, help="Also decode pixels and write this PNG."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Classify a bitstream file on this machine, without a server and without decoding pixels; reconstruct
    only when asked.

    Exit status 1 when the file is missing, damaged, not a vitcodec stream or made for another model, 2 when
    the model cannot be found or loaded; either way one error line, no traceback.
    """
    from vitcodec.codec.errors import CodecError

    data = _read_stream_file(file)
    package = _stream_package(file, data, model)
    cloud = _load_cloud_model(package)
    try:
        decoded, probs, novelty = cloud.analyse_streams([data])
    except CodecError as exc:
        _stop(f"{file}: {exc}")
    result = _decode_result(file, package.name, decoded[0], cloud.predictions(probs, top_k)[0])
    if novelty is not None:  # calibrated packages only
        result["novelty"] = float(novelty[0])
        result["out_of_distribution"] = bool(novelty[0] > 1.0)
    if reconstruct:
        pixels = cloud.reconstruct_latents(decoded[0].y_hat[None], decoded[0].header.image_size)[0]
        _write_png(reconstruct, pixels)
        result["reconstruction"] = str(reconstruct)
    if as_json:
        print(json.dumps(result))
    else:
        _print_decode_result(result)


def _stop(message: str, code: int = 1) -> NoReturn:
    """One error line (never wrapped at the terminal width) and the exit status."""
    error_line(message)
    raise typer.Exit(code)


def _read_stream_file(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except IsADirectoryError:
        _stop(f"{file}: is a folder, not a bitstream file")
    except FileNotFoundError:
        _stop(f"{file}: no such file")
    except OSError as exc:
        _stop(f"{file}: cannot read ({exc.strerror or exc})")


def _stream_package(file: Path, data: bytes, model: str | None) -> ModelPackage:
    """The package that decodes this stream: ``--model``, else found by the header's model id.

    The container's integrity is checked first, so that a damaged model id reads as damage, not as an
    unknown model; a named model must be the one the stream was made for.
    """
    from vitcodec.codec.bitstream import read_stream_info
    from vitcodec.codec.errors import CodecError
    from vitcodec.packages import ModelNotFoundError, describe_mismatch, find_by_model_id, resolve_model

    try:
        header = read_stream_info(data).header
    except CodecError as exc:
        _stop(f"{file}: {exc}")
    try:
        package = resolve_model(model) if model else find_by_model_id(header.model_id)
    except ModelNotFoundError as exc:
        if model:
            _stop(str(exc), 2)
        _stop(f"{file}: {exc}; pass --model explicitly")  # a stream for a model not installed here
    if package.compresses and header.model_id != package.model_id:
        _stop(f"{file}: {describe_mismatch(package, header.model_id)}")
    return package


def _load_cloud_model(package: ModelPackage) -> CloudModel:
    """torch is imported only now, so bad input is refused without loading models; load errors exit 2."""
    from vitcodec.models.inference import CloudModel  # torch, no compressai: the server install has it
    from vitcodec.packages import ModelNotFoundError

    try:
        return CloudModel(package)
    except (ModelNotFoundError, ValueError) as exc:
        _stop(str(exc), 2)
    except Exception as exc:  # noqa: BLE001 - a damaged package (weights file, manifest) is reported, not traced
        _stop(f"model {package.name} ({package.path}) cannot be loaded: {exc.__class__.__name__}: "
              f"{' '.join(str(exc).split())[:300]}", 2)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from vitcodec.outputs import encode_png

    try:
        path.write_bytes(encode_png(pixels))
    except OSError as exc:
        _stop(f"{path}: cannot write the reconstruction ({exc.strerror or exc})")


def _decode_result(file: Path, model_name: str, decoded: DecodedStream, pred: Prediction) -> dict[str, Any]:
    from vitcodec.outputs import bits_per_pixel

    h, w = decoded.header.image_size
    return {"file": str(file), "model": model_name, "bytes": decoded.num_bytes,
            "bpp": bits_per_pixel(decoded.num_bytes, (h, w)), "image_size": [h, w],
            "top_k": [{"label": lab, "index": idx, "probability": p}
                      for lab, idx, p in zip(pred.top_labels, pred.top_indices, pred.top_probs)]}


def _print_decode_result(result: dict[str, Any]) -> None:
    h, w = result["image_size"]
    console.print(f"{result['file']}: {result['model']}, {result['bytes']} bytes ({result['bpp']:.3f} bpp), {h}x{w}",
                  highlight=False, soft_wrap=True)
    for entry in result["top_k"]:
        console.print(f"  {entry['probability']:7.2%}  {entry['label']}", highlight=False)
    if "novelty" in result:
        verdict = "unlike the training data" if result["out_of_distribution"] else "like the training data"
        console.print(f"  novelty {result['novelty']:.2f} ({verdict}; above 1.00 is out of distribution)",
                      highlight=False)
    if "reconstruction" in result:
        console.print(f"reconstruction written to {result['reconstruction']}", highlight=False, soft_wrap=True)
