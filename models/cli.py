"""``vitcodec``: the torch-side command line (models, train, eval, export, decode)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="vitcodec",
    help="Joint image compression and classification with transformers: train, evaluate, export, decode.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Joint image compression and classification with transformers."""


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., help="Output folder: last.pt (resumable), final.pt, log.jsonl, settings.json."),
    stage: str = typer.Option("pretrain", help="pretrain = step one (no compression); joint = step two (rate-distortion-accuracy)."),
    preset: str = typer.Option("jcc-fmnist-28", help="Network preset (see `vitcodec models`); ignored with --init."),
    data: str = typer.Option("fashion-mnist", help="fashion-mnist | imagefolder:PATH | synthetic"),
    init: Optional[Path] = typer.Option(None, help="Checkpoint to start from (step two starts from step one's final.pt)."),
    quality: Optional[int] = typer.Option(None, help="1|2|3: the paper's alpha/beta (0.1/0.001, 0.3/0.003, 0.6/0.006)."),
    alpha: Optional[float] = typer.Option(None, help="Cross-entropy weight (overrides --quality)."),
    beta: Optional[float] = typer.Option(None, help="MSE weight on 0..255 pixels (overrides --quality)."),
    recon_weight: float = typer.Option(0.0002, help="Step one's weight on the reconstruction MSE."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of the cross-entropy."),
    epochs: float = typer.Option(1.0, help="Epochs over the training split (fractions allowed)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimiser steps (overrides --epochs)."),
    batch_size: int = typer.Option(128, help="Batch size per process."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW, warmup then cosine)."),
    warmup_steps: int = typer.Option(200, help="Linear warmup steps."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N training images."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    amp: bool = typer.Option(True, help="bfloat16 autocast on CUDA."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile on CUDA."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    seed: int = typer.Option(0),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train one step of the two-step recipe. Works unchanged under torchrun (DDP)."""
    from vitcodec.models.train import TrainSettings, train

    settings = TrainSettings(out=out, stage=stage, preset=preset, data=data, init=init, quality=quality,
                             alpha=alpha, beta=beta, recon_weight=recon_weight, label_smoothing=label_smoothing,
                             epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
                             warmup_steps=warmup_steps, limit=limit, device=device, amp=amp, compile=compile,
                             threads=threads, seed=seed, progress=progress)
    try:
        metrics = train(settings)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))
    if metrics:
        console.print_json(json.dumps(metrics))


def main() -> None:
    from vitcodec.models.data import DataError

    try:
        app()
    except DataError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
