"""``vitcodec-edge watch``: the typer command in front of `runner.Agent`, and ``vitcodec-edge requeue``, which
puts refused streams back into the outbox (both registered in ``edge/cli.py``).

Exit status of ``watch``: 0 after a clean stop (SIGINT/SIGTERM), 2 when it cannot start (bad arguments,
missing folder, unknown model, unusable outbox or results file), 130 on a second signal.
"""

from __future__ import annotations

from pathlib import Path

import typer
from vitcodec.edge.agent.intake import SourcePolicy


def watch(
    folders: list[Path] | None = typer.Argument(None, help="Folders to watch (recursively) for images and .vcb "
                                                   "files; none: only drain the outbox."),
    server: str = typer.Option(..., "--server", "-s", help="Cloud server: http://HOST:PORT, https://HOST:PORT, "
                               "grpc://HOST:PORT or grpcs://HOST:PORT (TLS)."),
    outbox: Path = typer.Option(..., "--outbox", help="Spool folder (pending/, rejected/); created if missing."),
    results: Path = typer.Option(..., "--results", help="JSON-lines file the answers are appended to."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model to encode with (default fmnist-q2)."),
    source: SourcePolicy = typer.Option(SourcePolicy.keep, "--source", help="What to do with a source file once "
                                        "its stream is in the outbox: keep, move (to --done-dir) or delete."),
    done_dir: Path | None = typer.Option(None, "--done-dir", help="Where --source move puts sources "
                                            "(default OUTBOX/done)."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1, max=256, help="Uploads in flight."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per encoder call."),
    threads: int | None = typer.Option(None, "--threads", "-t", min=1, help="ONNX Runtime intra-op threads."),
    max_pending: int = typer.Option(10_000, "--max-pending", min=0, help="Outbox entry limit (0: none); intake "
                                    "pauses at the limit."),
    max_outbox_mb: float = typer.Option(256.0, "--max-outbox-mb", min=0, help="Outbox size limit in MiB (0: none)."),
    timeout: float = typer.Option(10.0, "--timeout", min=0.1, help="Seconds per upload before it is retried."),
    max_backoff: float = typer.Option(30.0, "--max-backoff", min=0.01, help="Longest pause between retries (s)."),
    poll: float = typer.Option(0.5, "--poll", min=0.01, help="Seconds between folder scans."),
    settle: float = typer.Option(1.0, "--settle", min=0.0, help="A file must be unchanged for two scans and "
                                 "this many seconds old before it is read (files still being written)."),
    unreadable_after: float = typer.Option(10.0, "--unreadable-after", min=0.0, help="A file that does not "
                                           "decode is reported as unreadable only once it has been unchanged "
                                           "this long (a writer that paused mid-file finishes it meanwhile)."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Classes recorded per image."),
    token: str | None = typer.Option(None, "--token", help="Bearer token: the device's own or the shared one "
                                        "(or set VITCODEC_AUTH_TOKEN; VITCODEC_TOKEN, deprecated, is still read)."),
    ca_cert: Path | None = typer.Option(None, "--ca-cert", envvar="VITCODEC_CA_CERT", show_envvar=False,
                                           help="PEM CA certificate that signed the server's certificate (https://, "
                                                "grpcs://; or set VITCODEC_CA_CERT)."),
    client_cert: Path | None = typer.Option(None, "--client-cert", envvar="VITCODEC_CLIENT_CERT",
                                               show_envvar=False, help="PEM certificate of this device, for "
                                               "servers that require one (or set VITCODEC_CLIENT_CERT)."),
    client_key: Path | None = typer.Option(None, "--client-key", envvar="VITCODEC_CLIENT_KEY", show_envvar=False,
                                              help="PEM private key of --client-cert (or set VITCODEC_CLIENT_KEY)."),
    as_json: bool = typer.Option(False, "--json", help="Structured logs: one JSON object per line on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also log every image sent."),
    status_interval: float = typer.Option(10.0, "--status-interval", min=0.0, help="Seconds between status "
                                          "lines when stderr is not a terminal (0: never)."),
) -> None:
    """Store-and-forward agent: encode new images from FOLDERS into an on-disk outbox and upload them,
    surviving server outages, network trouble and restarts; each answer is appended once to --results.

    Runs until SIGINT/SIGTERM (finishes uploads in flight; the rest stays in the outbox for the next start).
    """
    from vitcodec.console import error_line
    from vitcodec.edge.agent.runner import Agent, AgentConfig, AgentSetupError, install_signal_handlers
    from vitcodec.edge.agent.status import Reporter
    from vitcodec.edge.client import TlsOptions, env_token
    from vitcodec.wire import Backoff

    config = AgentConfig(
        watch=list(folders or []), server=server, outbox=outbox, results=results, model=model,
        token=env_token(token), timeout_s=timeout, concurrency=concurrency,
        batch_size=batch_size, poll_s=poll, settle_s=settle, source_policy=source, done_dir=done_dir,
        max_pending=max_pending, max_outbox_bytes=int(max_outbox_mb * 2**20),
        backoff=Backoff(min(0.5, max_backoff), max_backoff), top_k=top_k, threads=threads,
        tls=TlsOptions(ca_cert, client_cert, client_key), unreadable_after_s=unreadable_after)
    reporter = Reporter(as_json=as_json, status_interval_s=status_interval, verbose=verbose)
    try:
        agent = Agent(config, reporter)
    except AgentSetupError as exc:
        if as_json:
            reporter.event("setup_error", str(exc), "error")
        else:
            error_line(str(exc))
        raise typer.Exit(2) from None
    install_signal_handlers(agent)
    raise typer.Exit(agent.run())


def requeue(
    outbox: Path = typer.Option(..., "--outbox", help="The agent's outbox folder (the one given to watch)."),
    ids: list[str] | None = typer.Argument(None, help="Ids of refused streams (the names in OUTBOX/rejected/, "
                                              "the `id` of their results line); none: every one."),
    list_only: bool = typer.Option(False, "--list", help="Only list the refused streams (id, status, file)."),
) -> None:
    """Send streams the server refused for good (OUTBOX/rejected/) again, once the server was fixed (the model
    deployed, a limit raised): they go back to OUTBOX/pending/ under a new id, and a running `watch` picks them
    up within seconds (or at its next start). Their earlier `"rejected": true` lines stay in the results; the
    new answer names the old id in `requeued_from`."""
    import json

    from rich.markup import escape
    from vitcodec.console import abort, stderr_console
    from vitcodec.edge.agent.outbox import Outbox

    if not (outbox / "pending").is_dir():
        abort(f"{outbox}: not an outbox (no pending/ folder)")
    try:
        box = Outbox(outbox)
        known = box.rejected()
    except OSError as exc:
        abort(f"{outbox}: cannot use the outbox ({exc.strerror or exc})")
    err = stderr_console()
    if list_only:
        for rid in known:
            try:
                note = json.loads((box.rejected_dir / f"{rid}.json").read_text())
            except (OSError, ValueError):
                note = {}
            print(f"{rid}\t{note.get('status', '')}\t{note.get('code', '')}\t"
                  f"{note.get('file') or note.get('source', {}).get('path', '')}\t{note.get('error', '')}")
        return
    unknown = [i for i in ids or [] if i not in known]
    if unknown:
        abort(f"not in {box.rejected_dir}: {', '.join(unknown)}")
    chosen = list(ids) if ids else known
    try:
        entries = box.requeue(chosen)
    except (OSError, ValueError, KeyError) as exc:
        abort(f"{box.rejected_dir}: cannot requeue ({exc})")
    err.print(escape(f"requeued {len(entries)} refused stream(s) from {box.rejected_dir} to {box.pending_dir}; a "
                     "running `vitcodec-edge watch` sends them within seconds, otherwise its next start does"),
              soft_wrap=True)
