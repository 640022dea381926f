"""``vitcodec-edge``: the edge device's command line (no torch).

Commands: ``encode`` and ``inspect`` (``edge/commands.py``), ``watch`` (the store-and-forward agent,
``edge/agent/``), ``send`` (encode images and classify them on a vitcodec cloud server) and ``reconstruct``
(get the server's reconstruction of one image as PNG).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from vitcodec.console import abort, stderr_console, table_console
from vitcodec.edge import commands, images
from vitcodec.edge.agent.command import requeue, watch

app = typer.Typer(name="vitcodec-edge", help="vitcodec on the edge: encode images to bitstreams, send them to "
                  "the cloud for classification or reconstruction.", no_args_is_help=True,
                  add_completion=False)

# `encode` and `inspect` live in edge/commands.py (bitstream files on this device, no server involved).
app.command("encode")(commands.encode)
app.command("inspect")(commands.inspect)

# `watch`, the store-and-forward agent, and `requeue` (refused streams back to its outbox) live in edge/agent/
# (docs/edge-agent.md).
app.command("watch")(watch)
app.command("requeue")(requeue)

SEND_SUFFIXES = images.IMAGE_SUFFIXES | {images.STREAM_SUFFIX}  # what `send` picks up inside folders
_SERVER_HELP = "Cloud server: http://HOST:PORT, https://HOST:PORT, grpc://HOST:PORT or grpcs://HOST:PORT (TLS)."
_TOKEN_HELP = ("Bearer token, when the server wants one: the device's own token or the shared one (or set "
               "VITCODEC_AUTH_TOKEN; VITCODEC_TOKEN, deprecated, is still read).")
_RETRY_HELP = ("Retry transient failures (server unreachable or restarting, 429/502/503/504, gRPC UNAVAILABLE) "
               "with backoff for this many seconds in all (0: never retry).")


def ca_cert_option() -> Any:
    return typer.Option(None, "--ca-cert", envvar="VITCODEC_CA_CERT", show_envvar=False,
                        help="PEM CA certificate that signed the server's certificate (https://, grpcs://; default: "
                             "the system's CAs; or set VITCODEC_CA_CERT).")


def client_cert_option() -> Any:
    return typer.Option(None, "--client-cert", envvar="VITCODEC_CLIENT_CERT", show_envvar=False,
                        help="PEM certificate of this device, for servers that require one (mutual TLS; or set "
                             "VITCODEC_CLIENT_CERT).")


def client_key_option() -> Any:
    return typer.Option(None, "--client-key", envvar="VITCODEC_CLIENT_KEY", show_envvar=False,
                        help="PEM private key of --client-cert (or set VITCODEC_CLIENT_KEY; default: in the "
                             "certificate file).")


# The TLS options of `send` and `reconstruct`, made once (typer copies an option before using it, so sharing is safe).
CA_CERT_OPTION = ca_cert_option()
CLIENT_CERT_OPTION = client_cert_option()
CLIENT_KEY_OPTION = client_key_option()


def tls_options(ca_cert: Path | None, client_cert: Path | None, client_key: Path | None) -> Any:
    """The client's `TlsOptions`, or None when no TLS option was given."""
    from vitcodec.edge.client import TlsOptions

    options = TlsOptions(ca_cert, client_cert, client_key)
    return None if options.empty else options


def _is_intact_stream(data: bytes) -> bool:
    """A whole vitcodec bitstream (sent as is) rather than an image file (encoded first)?"""
    from vitcodec.codec.bitstream import looks_like_stream, read_stream_info
    from vitcodec.codec.errors import CodecError

    if not looks_like_stream(data):
        return False
    try:
        read_stream_info(data)
    except CodecError:
        return False
    return True


def _load_streams(files: list[Path], model: str | None, progress: Progress | None) -> tuple[list[bytes], list[str]]:
    """Encode image files with the model's edge encoder, in batches as ``encode`` does
    (`images.encode_batches`); files that already are bitstreams pass through.

    Returns the streams and, per file, an error message ("" when the file is usable).
    """
    streams: list[bytes] = [b""] * len(files)
    errors: list[str] = [""] * len(files)
    task = progress.add_task("encoding", total=len(files)) if progress else None
    to_encode: list[int] = []  # indexes of the files to encode
    for i, path in enumerate(files):
        data = path.read_bytes()
        if _is_intact_stream(data):
            streams[i] = data
            if progress is not None and task is not None:
                progress.advance(task)
        else:
            to_encode.append(i)
    if to_encode:
        try:
            encoder = images.load_encoder(model, None)
        except images.EdgeInputError as exc:
            abort(str(exc))
        for item in images.encode_batches(encoder, [files[i] for i in to_encode]):
            i = to_encode[item.index]
            if item.error is not None:
                errors[i] = item.error
            else:
                streams[i] = item.result.stream
            if progress is not None and task is not None:
                progress.advance(task)
    return streams, errors


def _token(token: str | None) -> str | None:
    from vitcodec.edge.client import env_token

    return env_token(token)


@app.command()
def send(
    paths: list[Path] = typer.Argument(..., help="Images, .vcb bitstream files, or folders of either."),
    server: str = typer.Option("http://127.0.0.1:8000", "--server", "-s", help=_SERVER_HELP),
    model: str | None = typer.Option(None, "--model", "-m", help="Model to encode with (default fmnist-q2)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1, max=1024, help="Requests in flight."),
    top_k: int = typer.Option(1, "--top-k", min=1, help="Classes to report per image (JSON output)."),
    token: str | None = typer.Option(None, "--token", help=_TOKEN_HELP),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds per request."),
    retry_for: float = typer.Option(30.0, "--retry-for", min=0.0, help=_RETRY_HELP),
    ca_cert: Path | None = CA_CERT_OPTION,
    client_cert: Path | None = CLIENT_CERT_OPTION,
    client_key: Path | None = CLIENT_KEY_OPTION,
    outbox: Path | None = typer.Option(None, "--outbox", help="Spool images that failed for a transient "
                                          "reason (server unreachable, timeouts, 5xx) into this outbox; "
                                          "`vitcodec-edge watch --outbox DIR` sends them later."),
) -> None:
    """Encode images on this device and classify them on the cloud server (bounded concurrency, retries).

    Exit status 1 when any image failed (each failed file is listed on stderr; a TLS failure is one error
    line), 2 on bad arguments."""
    from vitcodec.edge.client import ClientError, RetryPolicy, TlsFailure, connect

    if as_json and as_csv:
        abort("choose one of --json and --csv")
    try:
        files = [source for source, _ in images.collect_images(paths, SEND_SUFFIXES)]
    except images.EdgeInputError as exc:
        abort(str(exc))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=stderr_console(), transient=True)
    rows: list[dict[str, Any]] = [{} for _ in files]
    with progress:
        streams, read_errors = _load_streams(files, model, progress)
        try:
            client = connect(server, token=_token(token), timeout=timeout, retry=RetryPolicy(total_s=retry_for),
                             tls=tls_options(ca_cert, client_cert, client_key))
        except ValueError as exc:
            abort(str(exc))
        todo = [i for i, err in enumerate(read_errors) if not err]
        for i, err in enumerate(read_errors):
            if err:
                rows[i] = {"file": str(files[i]), "error": err}
        task = progress.add_task("classifying", total=len(todo))
        with client:
            for j, outcome in client.classify_many([streams[i] for i in todo], concurrency=concurrency,
                                                   top_k=top_k):
                i = todo[j]
                if isinstance(outcome, TlsFailure):  # no image can get through: say it once
                    progress.stop()
                    abort(outcome.message, 1)
                if isinstance(outcome, ClientError):
                    rows[i] = {"file": str(files[i]), "bytes": len(streams[i]), "error": outcome.message,
                               "status": outcome.status}
                else:
                    rows[i] = {"file": str(files[i]), **outcome.as_dict()}
                progress.advance(task)
    _print_rows(rows, as_json, as_csv, top_k)
    failed = [i for i, row in enumerate(rows) if "error" in row]
    if failed:
        _report_failures(files, streams, rows, failed, outbox, model)
        raise typer.Exit(1)


def _report_failures(files: list[Path], streams: list[bytes], rows: list[dict[str, Any]], failed: list[int],
                     outbox: Path | None, model: str | None) -> None:
    """One stderr line per failed file; with an outbox, spool those a later `watch` can still deliver."""
    from rich.markup import escape
    from vitcodec.wire import is_permanent

    err = stderr_console()
    for i in failed:
        err.print(f"[red]failed:[/red] {escape(str(files[i]))}: {escape(str(rows[i]['error']))}", soft_wrap=True)
    spool = [i for i in failed if "status" in rows[i] and not is_permanent(rows[i]["status"])]
    message = f"{len(failed)} of {len(rows)} images failed"
    if outbox is not None and spool:
        from vitcodec.edge.agent.outbox import spool_files

        try:
            spool_files(outbox, [files[i] for i in spool], [streams[i] for i in spool], model)
            message += (f"; {len(spool)} spooled to {outbox} (send them with: vitcodec-edge watch --outbox {outbox} "
                        "--server URL --results FILE)")
        except OSError as exc:
            message += f"; cannot spool to {outbox} ({exc.strerror or exc})"
    err.print(escape(message), soft_wrap=True)


UNFAMILIAR = "(unfamiliar)"  # after the label in the table: the image is unlike the model's training data
FAILED = "(failed)"  # in the label column of an image without an answer; the reason is in the error column


def _print_rows(rows: list[dict[str, Any]], as_json: bool, as_csv: bool, top_k: int) -> None:
    columns = ["file", "bytes", "bpp", "label", "confidence", "latency_ms", "model", "novelty",
               "out_of_distribution", "error"]
    if as_json:
        for row in rows:
            if top_k <= 1:
                row = {k: v for k, v in row.items() if k != "top_k"}
            sys.stdout.write(json.dumps(row) + "\n")
        return
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
        return
    # a calibrated model scores each image's novelty: show it, and flag the label of an unfamiliar image
    from rich.markup import escape

    novelty = any(row.get("novelty") is not None for row in rows)
    failed = any("error" in row for row in rows)  # an error gets its own column, never the label's
    table = Table(title=None)
    columns = [("file", "left"), ("bytes", "right"), ("bpp", "right"), ("label", "left"), ("confidence", "right"),
               ("latency", "right")] + [("novelty", "right")] * novelty + [("error", "left")] * failed
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        if "error" in row:
            cells = [escape(row["file"]), str(row.get("bytes", "")), "", f"[red]{FAILED}[/red]", "", ""]
        else:
            label = escape(row["label"]) + (f" [yellow]{UNFAMILIAR}[/yellow]" if row.get("out_of_distribution") else "")
            cells = [escape(row["file"]), str(row["bytes"]), f"{row['bpp']:.3f}", label, f"{row['confidence']:.3f}",
                     f"{row['latency_ms']:.1f} ms"]
        if novelty:
            cells.append("" if row.get("novelty") is None else f"{row['novelty']:.2f}")
        if failed:
            cells.append(f"[red]{escape(str(row['error']))}[/red]" if "error" in row else "")
        table.add_row(*cells)
    table_console().print(table)


@app.command()
def reconstruct(
    file: Path | None = typer.Argument(None, help="An image (encoded here first) or a bitstream file; or "
                                          "give --id."),
    image_id: str | None = typer.Option(None, "--id", help="Instead of FILE: the archive id of a stream the "
                                           "server kept (the archive_id of a classify answer)."),
    server: str = typer.Option("http://127.0.0.1:8000", "--server", "-s", help=_SERVER_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the PNG."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model to encode with (default fmnist-q2)."),
    token: str | None = typer.Option(None, "--token", help=_TOKEN_HELP),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds for the request."),
    retry_for: float = typer.Option(30.0, "--retry-for", min=0.0, help=_RETRY_HELP),
    ca_cert: Path | None = CA_CERT_OPTION,
    client_cert: Path | None = CLIENT_CERT_OPTION,
    client_key: Path | None = CLIENT_KEY_OPTION,
) -> None:
    """Ask the cloud server to reconstruct an image from its bitstream (a file here, or --id of one the server
    archived); writes a PNG of the original size."""
    from vitcodec.edge.client import ClientError, RetryPolicy, connect

    if (file is None) == (image_id is None):
        abort("give either FILE or --id ID (the archive id of a stream the server kept), not both")
    streams: list[bytes] = [b""]
    if file is not None:
        if not file.is_file():
            abort(f"{file}: no such file")
        streams, errors = _load_streams([file], model, None)
        if errors[0]:
            abort(errors[0])
    try:
        client = connect(server, token=_token(token), timeout=timeout, retry=RetryPolicy(total_s=retry_for),
                         tls=tls_options(ca_cert, client_cert, client_key))
    except ValueError as exc:
        abort(str(exc))
    with client:
        try:
            result = client.reconstruct(streams[0]) if image_id is None else client.reconstruct_archived(image_id)
        except ClientError as exc:
            abort(f"server answered {exc.status} {exc.code}: {exc.message}" if exc.status else exc.message, 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(result.png)
    h, w = result.image_size
    source = f"{len(streams[0])} bytes in" if image_id is None else f"archive id {image_id}"
    stderr_console().print(f"wrote {output} ({w}x{h}, {source}, model {result.model}, "
                    f"{result.latency_ms:.1f} ms)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
