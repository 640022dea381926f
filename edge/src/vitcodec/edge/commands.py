"""``vitcodec-edge encode`` and ``vitcodec-edge inspect``: images to ``.vcb`` bitstream files, and what a
bitstream file holds. Registered on the app in ``edge/cli.py``; no torch, as everything under ``edge/``.

The logic (`collect_images`, `plan_outputs`, `encode_batches`, `encode_files`, `inspect_stream`) is the library
module ``edge/images.py``, plain Python that returns rows; the two commands only print them. Exit codes: 0 all
went well; 1 some file could not be encoded or is not a usable bitstream (one ``error:`` line each on stderr);
2 nothing was done (bad arguments, missing input, unknown model).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from vitcodec.console import abort, error_line, stderr_console, table_console
from vitcodec.edge.images import (
    DEFAULT_BATCH,
    EdgeInputError,
    EncodedFile,
    collect_images,
    encode_files,
    inspect_stream,
    load_encoder,
    plan_outputs,
)

# --- printing -----------------------------------------------------------------------------------------


def _size(hw: tuple[int, int] | None) -> str:
    return f"{hw[1]}x{hw[0]}" if hw else ""


def _print_encode_table(rows: list[EncodedFile], model_name: str, model_id: str) -> None:
    table = Table(title=None)
    for name, justify in (("file", "left"), ("size", "right"), ("bytes", "right"), ("bpp", "right"),
                          ("output", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        if row.error is not None:
            table.add_row(escape(str(row.source)), _size(row.source_size), "", "", "[red]failed[/red]")
        else:
            size = _size(row.source_size)
            if row.source_size != row.image_size:
                size += f" -> {_size(row.image_size)}"
            table.add_row(escape(str(row.source)), size, str(row.num_bytes), f"{row.bpp:.3f}",
                          escape(str(row.output)))
    console = table_console()
    console.print(table)
    done = [r for r in rows if r.error is None]
    if done:
        total = sum(r.num_bytes for r in done)
        console.print(f"{len(done)} of {len(rows)} images encoded with {model_name} (model {model_id}): "
                      f"{total} bytes, {total / len(done):.1f} bytes/image, "
                      f"{sum(r.bpp for r in done) / len(done):.3f} bpp, "
                      f"{sum(r.encode_ms for r in done) / len(done):.1f} ms/image", soft_wrap=True)


# --- commands -----------------------------------------------------------------------------------------


def encode(
    paths: list[Path] = typer.Argument(..., help="Images or folders of images (searched recursively)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the .vcb files (created if missing)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name or package path (default "
                                        "fmnist-q2)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image on stdout."),
    threads: int | None = typer.Option(None, "--threads", "-t", min=1, help="ONNX Runtime intra-op threads "
                                          "(default: its own choice)."),
    batch_size: int = typer.Option(DEFAULT_BATCH, "--batch-size", min=1, help="Images per encoder call."),
) -> None:
    """Encode images into bitstreams: one OUT/<name>.vcb per image, with bytes and bpp per file.

    Any format PIL reads; images are converted to the model's input (grey or RGB, size) as its manifest says.
    Exit status 1 when some image could not be encoded (one error line each), 2 on bad arguments.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        images = collect_images(paths)
        outputs = plan_outputs(images, output)
        encoder = load_encoder(model, threads)
        output.mkdir(parents=True, exist_ok=True)
    except EdgeInputError as exc:
        abort(str(exc))
    except OSError as exc:
        abort(f"{output}: cannot create the output folder ({exc.strerror or exc})")
    err = stderr_console()
    show = len(images) > 1 and err.is_terminal and not as_json
    progress = Progress(TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=not show)

    def done(row: EncodedFile) -> None:
        progress.advance(task)
        if as_json:
            sys.stdout.write(json.dumps(row.as_dict()) + "\n")
            sys.stdout.flush()

    with progress:
        task = progress.add_task("encoding", total=len(images))
        rows = encode_files(encoder, [source for source, _ in images], outputs, batch_size, done)
    for row in rows:
        if row.error is not None:
            error_line(row.error)
    if not as_json and any(row.error is None for row in rows):
        _print_encode_table(rows, encoder.package.name, encoder.model_id.hex())
    if any(row.error is not None for row in rows):
        raise typer.Exit(1)


def inspect(
    files: list[Path] = typer.Argument(..., help="Bitstream (.vcb) files."),
    model: str | None = typer.Option(None, "--model", "-m", help="Also check that each stream is for this "
                                        "model (name or package path)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file on stdout."),
) -> None:
    """Print a bitstream's header and byte budget; checks its checksum, decodes nothing.

    Fields: format version, model id (and the installed model it is for), quality, image size, latent shape,
    header/z/y/total bytes and bpp. Exit status 1 when a file is missing, damaged, not a vitcodec stream or (with
    --model) for another model.
    """
    from vitcodec.codec.errors import CodecError, ModelMismatchError
    from vitcodec.packages import ModelNotFoundError, describe_mismatch, resolve_model

    expected = None
    if model is not None:
        try:
            expected = resolve_model(model)
        except ModelNotFoundError as exc:
            abort(str(exc))
    console = Console(highlight=False, soft_wrap=True)
    failed = False
    for file in files:
        try:
            data = file.read_bytes()
            result = inspect_stream(data, expected=expected)
        except IsADirectoryError:
            message = "is a folder, not a bitstream file"
        except FileNotFoundError:
            message = "no such file"
        except OSError as exc:
            message = f"cannot read ({exc.strerror or exc})"
        except ModelMismatchError as exc:
            if expected is None:  # inspect_stream checks the model only when it is given one
                raise
            message = describe_mismatch(expected, exc.actual_id)
        except CodecError as exc:
            message = str(exc)
        else:
            result = {"file": str(file), **result}
            if as_json:
                sys.stdout.write(json.dumps(result) + "\n")
            else:
                _print_inspection(console, result)
            continue
        failed = True
        error_line(f"{file}: {message}")
    if failed:
        raise typer.Exit(1)


def _print_inspection(console: Console, r: dict[str, Any]) -> None:
    owner = r["model"]
    belongs = f"{owner['name']} version {owner['version']} ({owner['path']})" if owner else "not installed here"
    h, w = r["image_size"]
    lines = [
        ("format version", str(r["format_version"])),
        ("model id", f"{r['model_id']}  {belongs}"),
        ("quality", str(r["quality"])),
        ("image size", f"{w}x{h} (W x H)"),
        ("latent shape", f"{r['latent_shape'][1]}x{r['latent_shape'][0]}"),
        ("bytes", f"{r['total_bytes']} = header {r['header_bytes']} + z {r['z_bytes']} + y {r['y_bytes']}"),
        ("bpp", f"{r['bpp']:.4f}"),
    ]
    console.print(escape(r["file"]))
    for key, value in lines:
        console.print(f"  {key:<15} {escape(value)}")
