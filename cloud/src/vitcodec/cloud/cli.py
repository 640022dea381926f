"""``vitcodec-cloud``: run the inference server.

    vitcodec-cloud serve [--model-repo DIR] [--http-port 8000] [--grpc-port 8001] [--device cpu|cuda] ...
    vitcodec-cloud reclassify --archive FILE --model NAME [--since ISO8601]   # the archive through another model
    vitcodec-cloud credentials add|revoke|list [NAME] --file FILE            # one bearer token per device
    vitcodec-cloud decode FILE [--reconstruct OUT.png]                       # one stream, here, no server

Every option of ``serve`` is a field of `vitcodec.cloud.settings.Settings`, which holds its default and its
description (``--help`` shows both); each also reads a ``VITCODEC_*`` environment variable, and a flag given on
the command line wins.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from vitcodec.cloud.decode_cli import decode
from vitcodec.cloud.settings import Settings

app = typer.Typer(name="vitcodec-cloud", help="vitcodec cloud inference server (KServe v2 + native API, HTTP "
                  "and gRPC).", no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """vitcodec cloud inference server."""


# `decode` (one bitstream file classified here, no server) lives in cloud/decode_cli.py.
app.command("decode")(decode)


def _setting(field: str, *flags: str, **options: Any) -> Any:
    """The ``serve`` option of one `Settings` field. Its default is None ("not given": the field then comes from
    ``VITCODEC_*`` or its own default), and ``--help`` shows the field's default and, unless `options` say
    otherwise, its description: each default is written once, in settings.py."""
    info = Settings.model_fields[field]
    default = info.get_default(call_default_factory=True)
    if isinstance(default, bool):
        shown: bool | str = f"{'' if default else 'no-'}{field.replace('_', '-')}"
    elif default is None or default == []:
        shown = False
    else:
        shown = str(default)
    options.setdefault("help", info.description)
    return typer.Option(None, *flags, show_default=shown, **options)


# The options of `serve` whose values are lists or paths, made once here rather than in the signature (typer copies
# an option before using it, so a module-level one is never changed).
_MODEL_REPO_OPTION = _setting("model_repo", "--model-repo", help="Model repository (<repo>/<name>/<version>/); "
                              "repeat for several. Default: the bundled zoo.")
_MODELS_OPTION = _setting("models", "--model", help="Serve only this model name; repeatable.")
_CREDENTIALS_OPTION = _setting("credentials", "--credentials")
_TLS_CERT_OPTION = _setting("tls_cert", "--tls-cert")
_TLS_KEY_OPTION = _setting("tls_key", "--tls-key")
_TLS_CLIENT_CA_OPTION = _setting("tls_client_ca", "--tls-client-ca")


@app.command()
def serve(
    model_repo: list[Path] | None = _MODEL_REPO_OPTION,
    models: list[str] | None = _MODELS_OPTION,
    host: str | None = _setting("host", "--host"),
    http_port: int | None = _setting("http_port", "--http-port"),
    grpc_port: int | None = _setting("grpc_port", "--grpc-port"),
    device: str | None = _setting("device", "--device"),
    backend: str | None = _setting("backend", "--backend"),
    torch_threads: int | None = _setting("torch_threads", "--threads"),
    max_batch_size: int | None = _setting("max_batch_size", "--max-batch-size"),
    max_queue_delay_ms: float | None = _setting("max_queue_delay_ms", "--max-queue-delay-ms"),
    max_body_bytes: int | None = _setting("max_body_bytes", "--max-body-bytes"),
    png_workers: int | None = _setting("png_workers", "--png-workers"),
    auth_token: str | None = _setting("auth_token", "--auth-token", envvar="VITCODEC_AUTH_TOKEN",
                                         show_envvar=False),
    credentials: Path | None = _CREDENTIALS_OPTION,
    tls_cert: Path | None = _TLS_CERT_OPTION,
    tls_key: Path | None = _TLS_KEY_OPTION,
    tls_client_ca: Path | None = _TLS_CLIENT_CA_OPTION,
    event_loop: str | None = _setting("event_loop", "--event-loop"),
    http_parser: str | None = _setting("http_parser", "--http-parser"),
    log_level: str | None = _setting("log_level", "--log-level"),
    access_log: bool | None = _setting("access_log", "--access-log/--no-access-log"),
    archive: str | None = _setting("archive", "--archive"),
    archive_max_age_days: float | None = _setting("archive_max_age_days", "--archive-max-age-days"),
    archive_max_mb: float | None = _setting("archive_max_mb", "--archive-max-mb"),
) -> None:
    """Serve every model of the repository over HTTP and gRPC until SIGTERM/SIGINT (then drain gracefully)."""
    # the parameters are named as the Settings fields: the flags given (the rest stay None)
    given = {name: value for name, value in locals().items() if value is not None and value != []}
    from pydantic import ValidationError
    from vitcodec.cloud.credentials import CredentialsError
    from vitcodec.cloud.server import CloudServer, run_event_loop
    from vitcodec.cloud.tls import TlsConfigError

    try:
        settings = Settings(**given)  # a flag given wins; the rest come from VITCODEC_* or the defaults
    except ValidationError as exc:
        typer.echo(f"error: invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = CloudServer(settings)
    except (TlsConfigError, CredentialsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not server.repository.entries():
        roots = ", ".join(str(r) for r in server.repository.roots)
        typer.echo(f"error: no compressing model packages found in {roots}", err=True)
        raise typer.Exit(2)
    try:
        run_event_loop(server.serve(), settings.event_loop)
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def reclassify(
    archive: str = typer.Option(..., "--archive", help="The server's archive (its --archive: a SQLite file or a "
                                "postgresql:// URL)."),
    model: str = typer.Option(..., "--model", help="Model name to classify with (its latest version)."),
    model_repo: list[Path] | None = typer.Option(None, "--model-repo", help="Model repository; repeatable. "
                                                    "Default: VITCODEC_MODEL_REPO, else the bundled zoo."),
    since: str | None = typer.Option(None, "--since", help="Only entries first classified at or after this ISO "
                                        "8601 time (UTC when it names no zone)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Streams decoded and classified together."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    threads: int = typer.Option(1, "--threads", min=1, help="Intra-op threads of torch (and ONNX Runtime)."),
    backend: str = typer.Option("onnxruntime", "--backend", help="Runtime of the classifier forward: onnxruntime "
                                "(default: about 4x torch's speed at this batch size on CPU), torch (the server's "
                                "default runtime, for answers equal to its own to the last bit), or "
                                "onnxruntime-int8."),
) -> None:
    """Classify the archived streams again with MODEL and keep its answers beside the first ones; prints how
    many changed (a confusion table: old label rows, new label columns). Streams made by another model's codec
    cannot be decoded by MODEL: they are counted per model id and skipped."""
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
    from vitcodec.cloud.archive import is_database_url, open_archive, parse_time
    from vitcodec.cloud.backends import make_loader
    from vitcodec.cloud.errors import ArchiveUnavailable, InvalidRequest
    from vitcodec.cloud.reclassify import reclassify_archive
    from vitcodec.cloud.repository import ModelRepository
    from vitcodec.console import abort, stderr_console, table_console
    from vitcodec.packages import ModelNotFoundError

    if not is_database_url(archive) and not Path(archive).is_file():
        abort(f"{archive}: no such archive")
    try:
        since_us = parse_time(since) if since else None
    except InvalidRequest as exc:
        abort(str(exc))
    roots = model_repo or [Path(p) for p in os.environ.get("VITCODEC_MODEL_REPO", "").split(os.pathsep) if p] or None
    try:
        loader = make_loader(backend, device, threads)
    except ValueError as exc:
        abort(str(exc))
    repository = ModelRepository(roots, [model], loader=loader, device=device)
    try:
        entry = repository.get(model)
    except ModelNotFoundError as exc:
        abort(str(exc))
    import torch

    torch.set_num_threads(threads)
    repository.load(entry)
    if not entry.ready:
        abort(f"cannot load {model}: {entry.reason}", 1)
    try:
        store = open_archive(archive)
    except (ImportError, ValueError) as exc:
        abort(str(exc))
    err = stderr_console()
    try:
        total = store.count(since_us)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=err, transient=True)
        with progress:
            task = progress.add_task(f"reclassifying with {entry.name} v{entry.version}", total=total)
            report = reclassify_archive(store, entry, since_us, batch_size,
                                        advance=lambda n: progress.advance(task, n))
    except ArchiveUnavailable as exc:
        abort(str(exc), 1)
    finally:
        store.close()  # a database's idle connections
    old_labels = sorted({old for old, _ in report.confusion}, key=_label_order(entry.labels))
    new_labels = sorted({new for _, new in report.confusion}, key=_label_order(entry.labels))
    if report.confusion:
        table = Table(title=f"old label (rows) -> {entry.name} v{entry.version} (columns)")
        table.add_column("old \\ new")
        for label in new_labels:
            table.add_column(label, justify="right")
        for old in old_labels:
            table.add_row(old, *[_cell(report.confusion.get((old, new), 0), old == new) for new in new_labels])
        table_console().print(table)
    typer.echo(f"reclassified {report.reclassified} of {report.total} archived images with {entry.name} "
               f"v{entry.version}: {report.changed} changed label")
    for model_id, count in sorted(report.foreign.items()):
        made_by = ", ".join(sorted(report.foreign_names.get(model_id, ()))) or "unknown model"
        typer.echo(f"skipped {count} streams of another model id {model_id} ({made_by}): {entry.name} "
                   f"(model id {report.model_id}) cannot decode them")
    if report.undecodable:
        typer.echo(f"skipped {len(report.undecodable)} streams whose payload did not decode")


credentials_app = typer.Typer(name="credentials", no_args_is_help=True, add_completion=False,
                              help="Device credentials: one bearer token per device (serve --credentials FILE). "
                                   "The file keeps only salted hashes; a running server re-reads it by itself.")
app.add_typer(credentials_app, name="credentials")


def _credentials_file() -> Any:
    return typer.Option(..., "--file", "-f", envvar="VITCODEC_CREDENTIALS", show_envvar=False,
                        help="The credentials file of serve --credentials (or set VITCODEC_CREDENTIALS).")


_CREDENTIALS_FILE_OPTION = _credentials_file()  # shared by the credentials commands (typer copies it per use)


@credentials_app.command("add")
def credentials_add(
    name: str = typer.Argument(..., help="Device name (1-64 of A-Z a-z 0-9 . _ -): its client identity."),
    file: Path = _CREDENTIALS_FILE_OPTION,
) -> None:
    """Add device NAME and print its new token, once, on stdout (the file keeps only a salted hash of it);
    creates FILE when it does not exist. Give the token to the device as VITCODEC_AUTH_TOKEN."""
    from vitcodec.cloud.credentials import CredentialsError, add_device
    from vitcodec.console import abort

    try:
        token, created = add_device(file, name)
    except CredentialsError as exc:
        abort(str(exc))
    typer.echo(token)
    typer.echo(f"added device {name} to {file}{' (created)' if created else ''}; its token is printed above, "
               "this once: it is stored nowhere", err=True)


@credentials_app.command("revoke")
def credentials_revoke(
    name: str = typer.Argument(..., help="The device to remove."),
    file: Path = _CREDENTIALS_FILE_OPTION,
) -> None:
    """Remove device NAME: a running server refuses its token after its next reload (the file's change is
    noticed within seconds; SIGHUP at once); the other devices keep working."""
    from vitcodec.cloud.credentials import CredentialsError, revoke_device
    from vitcodec.console import abort

    try:
        revoke_device(file, name)
    except CredentialsError as exc:
        abort(str(exc))
    typer.echo(f"revoked device {name} in {file}", err=True)


@credentials_app.command("list")
def credentials_list(file: Path = _CREDENTIALS_FILE_OPTION) -> None:
    """The devices of FILE with their creation times (tokens are never stored, so never shown)."""
    from vitcodec.cloud.credentials import CredentialsError, read_credentials
    from vitcodec.console import abort

    try:
        devices = read_credentials(file)
    except CredentialsError as exc:
        abort(str(exc))
    if not devices:
        typer.echo(f"no devices in {file}", err=True)
        return
    width = max(len("NAME"), *(len(n) for n in devices))
    typer.echo(f"{'NAME':<{width}}  CREATED")
    for device in sorted(devices.values(), key=lambda d: d.line):
        typer.echo(f"{device.name:<{width}}  {device.created}")


def _label_order(labels: list[str]) -> Any:
    order = {label: i for i, label in enumerate(labels)}
    return lambda label: (order.get(label, len(order)), label)


def _cell(count: int, diagonal: bool) -> str:
    if not count:
        return "[dim]0[/dim]"
    return str(count) if diagonal else f"[yellow]{count}[/yellow]"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
