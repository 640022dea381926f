"""``vitcodec``: the torch-side command line (models, train, teacher, eval, export, calibrate, upgrade-hs).
Classifying a bitstream file is the server install's ``vitcodec-cloud decode`` (cloud/decode_cli.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table
from vitcodec.console import abort, error_line

if TYPE_CHECKING:
    from vitcodec.packages import ModelPackage

app = typer.Typer(
    name="vitcodec",
    help="Joint image compression and classification with transformers: train, evaluate, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Joint image compression and classification with transformers."""


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., help="Output folder: last.pt (resumable), final.pt, log.jsonl, settings.json."),
    stage: str = typer.Option("pretrain", help="pretrain = step one (no compression); joint = step two "
                              "(rate-distortion-accuracy)."),
    preset: str = typer.Option("jcc-fmnist-28-s8", help="Network preset (see `vitcodec models`); ignored with --init."),
    data: str = typer.Option("fashion-mnist", help="fashion-mnist | imagefolder:PATH | synthetic"),
    init: Path | None = typer.Option(None, help="Checkpoint to start from (step two starts from step one's final.pt; "
                                     "or from the uncompressed package, a folder or zoo name, when it is gone)."),
    quality: int | None = typer.Option(None, help="1|2|3: the paper's alpha/beta (0.1/0.001, 0.3/0.003, 0.6/0.006)."),
    alpha: float | None = typer.Option(None, help="Cross-entropy weight (overrides --quality)."),
    beta: float | None = typer.Option(None, help="MSE weight on 0..255 pixels (overrides --quality)."),
    recon_weight: float = typer.Option(0.0002, help="Step one's weight on the reconstruction MSE."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of the cross-entropy."),
    epochs: float = typer.Option(1.0, help="Epochs over the training split (fractions allowed)."),
    max_steps: int | None = typer.Option(None, help="Stop after this many optimiser steps (overrides --epochs)."),
    stop_at_step: int | None = typer.Option(None, help="End early at this step, keeping the learning-rate schedule of "
                                            "the full run."),
    batch_size: int = typer.Option(128, help="Batch size per process."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW, warmup then cosine)."),
    codec_lr: float | None = typer.Option(None, help="Peak learning rate of g_a and the hyperprior (default: --lr)."),
    warmup_steps: int = typer.Option(200, help="Linear warmup steps."),
    limit: int | None = typer.Option(None, help="Use only the first N training images."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    amp: bool = typer.Option(True, help="bfloat16 autocast on CUDA."),
    cpu_bf16: bool = typer.Option(False, "--cpu-bf16", help="bfloat16 autocast on a CPU with native bfloat16 "
                                  "(AVX512-BF16/AMX); measured slower than float32 for the Fashion-MNIST presets "
                                  "(docs/benchmarks.md)."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="torch.compile on CUDA."),
    threads: int | None = typer.Option(None, help="CPU threads for torch."),
    seed: int = typer.Option(0),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    teacher: Path | None = typer.Option(None, help="Pixel CNN checkpoint to distil from "
                                        "(benchmarks/bench_rate_accuracy.py --cache writes one); default: no "
                                        "distillation."),
    distill: str = typer.Option("soft", help="soft (KL at temperature --distill-tau) | hard (CE against the teacher's "
                                "argmax, as DeiT); only with --teacher."),
    distill_alpha: float = typer.Option(0.5, help="The teacher's share of the accuracy term: (1-A)*CE(labels) + "
                                        "A*distillation."),
    distill_tau: float = typer.Option(1.0, help="Temperature of soft distillation."),
    holdout: bool = typer.Option(True, "--holdout/--no-holdout", help="Train on the training split less a held-out "
                                 "validation split (5k images for Fashion-MNIST), measured after each epoch into "
                                 "log.jsonl; --no-holdout trains on all of it."),
    erase_prob: float = typer.Option(0.0, help="Random erasing: probability per image of zeroing a random rectangle "
                                     "(2-33 %% of the image)."),
    tokenizer: str | None = typer.Option(None, help="Step one: override the preset's tokenizer, linear | conv."),
    pool: str | None = typer.Option(None, help="Step one: override the preset's pooling, cls | seq."),
) -> None:
    """Train one step of the two-step recipe. Works unchanged under torchrun (DDP)."""
    from vitcodec.models.train import TrainSettings, train

    settings = TrainSettings(out=out, stage=stage, preset=preset, data=data, init=init, quality=quality,
                             alpha=alpha, beta=beta, recon_weight=recon_weight, label_smoothing=label_smoothing,
                             epochs=epochs, max_steps=max_steps, stop_at_step=stop_at_step, batch_size=batch_size,
                             lr=lr, codec_lr=codec_lr,
                             warmup_steps=warmup_steps, limit=limit, device=device, amp=amp, compile=compile,
                             threads=threads, seed=seed, progress=progress, teacher=teacher, distill=distill,
                             distill_alpha=distill_alpha, distill_tau=distill_tau, holdout=holdout,
                             erase_prob=erase_prob, cpu_bf16=cpu_bf16, overrides={"tokenizer": tokenizer, "pool": pool})
    try:
        metrics = train(settings)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        abort(str(exc))
    if metrics:
        console.print_json(json.dumps(metrics))


@app.command("teacher")
def teacher_cmd(
    out: Path = typer.Option(..., help="Checkpoint to write: the file `train --teacher` takes."),
    epochs: float = typer.Option(10.0, help="Epochs over the training images."),
    split: str = typer.Option("train", help="train: all 60k training images, measured on the test split (the "
                              "rate-accuracy benchmark's raw CNN). fit: the 55k fit split, measured on the 5k "
                              "validation split, for choosing a teacher without looking at the test split."),
    stages: str = typer.Option("32/64,64/128", help="Conv widths: stages split by '/', each stage's 3x3 convs by "
                               "','; every stage ends in a 2x2 max-pool. Wider (64,64/128,128/256) is stronger "
                               "and about 6x slower."),
    hidden: int = typer.Option(256, help="Width of the MLP head's hidden layer."),
    lr: float = typer.Option(2e-3, help="Peak AdamW learning rate (warmup, then cosine to zero)."),
    batch_size: int = typer.Option(128),
    label_smoothing: float = typer.Option(0.0, min=0.0, max=0.5),
    erase_prob: float = typer.Option(0.0, min=0.0, max=1.0, help="Random erasing probability per image."),
    limit: int | None = typer.Option(None, help="Use only the first N training images (quick runs)."),
    seed: int = typer.Option(0),
    threads: int | None = typer.Option(None, help="CPU threads for torch."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train the pixel CNN that step one and step two distil from (the rate-accuracy benchmark's raw CNN).

    With the defaults, the same seed, data path and schedule as benchmarks/bench_rate_accuracy.py, so `--out
    runs/rate-accuracy/pixel_cnn_raw_n60000_e10_s0.pt` is the file the benchmark would train and cache.
    """
    import time
    from dataclasses import asdict

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from vitcodec.models.data import load_fashion_mnist, validation_indices
    from vitcodec.models.errors import DataError
    from vitcodec.models.pixel_cnn import (
        FitSettings,
        PixelCNN,
        PixelCNNConfig,
        accuracy,
        fit,
        parse_stages,
        save_pixel_cnn,
    )

    if split not in ("train", "fit"):
        abort(f"--split must be train or fit, got {split!r}")
    try:
        config = PixelCNNConfig(stages=parse_stages(stages), hidden=hidden)
    except ValueError as exc:
        abort(str(exc))
    if threads:
        torch.set_num_threads(threads)
    try:
        images, labels = load_fashion_mnist("train")
        if split == "fit":
            fit_idx, val_idx = validation_indices(len(images))
            (images, labels), (eval_images, eval_labels) = ((images[fit_idx], labels[fit_idx]),
                                                            (images[val_idx], labels[val_idx]))
        else:
            eval_images, eval_labels = load_fashion_mnist("test")
    except (DataError, FileNotFoundError) as exc:
        abort(str(exc))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    settings = FitSettings(epochs=epochs, batch_size=batch_size, lr=lr, label_smoothing=label_smoothing,
                           erase_prob=erase_prob, seed=seed)
    torch.manual_seed(0)
    model = PixelCNN(config)
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not progress) as bar:
        task = bar.add_task("pixel CNN on raw images", total=None)
        fit(model, images, labels, settings, on_step=lambda s, n: bar.update(task, completed=s, total=n))
    wall_s = time.perf_counter() - start
    top1 = accuracy(model, eval_images, eval_labels)
    measured_on = "test" if split == "train" else "val"
    save_pixel_cnn(out, model, settings=asdict(settings) | {"n": len(images), "split": split}, wall_s=wall_s,
                   **{f"{measured_on}_top1": top1})
    console.print(f"wrote {out}: top-1 {100 * top1:.2f} % on the {len(eval_images)} {measured_on} images "
                  f"({wall_s / 60:.1f} min)")


@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List network presets and the model zoo with measured test figures."""
    from vitcodec.models import create_model, get_preset, list_models
    from vitcodec.packages import iter_packages, repository_roots

    presets = []
    for name in list_models():
        c = get_preset(name)
        params = sum(p.numel() for p in create_model(name).parameters())
        presets.append({"name": name, "params_m": round(params / 1e6, 2), "input": [c.in_chans, *c.img_size],
                        "tokens": c.num_tokens, "M": c.M, "N": c.N, "embed_dim": c.embed_dim, "depth": c.depth})
    zoo = []
    for root in repository_roots():
        for pkg in iter_packages(root):
            zoo.append({"name": pkg.name, "version": pkg.version, "preset": pkg.manifest.get("preset"),
                        "quality": pkg.quality, "compress": pkg.compresses, "model_id": pkg.model_id.hex(),
                        "input": [pkg.input_spec.channels, *pkg.input_spec.size], "path": str(pkg.path),
                        "metrics": pkg.manifest.get("metrics", {})})
    if as_json:
        console.print_json(json.dumps({"presets": presets, "zoo": zoo}))
        return
    table = Table(title="presets")
    for col in ("name", "params (M)", "input", "tokens", "M", "N", "D", "depth"):
        table.add_column(col)
    for p in presets:
        table.add_row(p["name"], str(p["params_m"]), "x".join(map(str, p["input"])), str(p["tokens"]), str(p["M"]),
                      str(p["N"]), str(p["embed_dim"]), str(p["depth"]))
    console.print(table)
    table = Table(title="model zoo (Fashion-MNIST test split, measured on real bitstreams)")
    for col in ("name", "version", "preset", "quality", "model id", "top-1", "bytes/image", "bpp", "PSNR"):
        table.add_column(col)
    for z in zoo:
        m = z["metrics"]
        table.add_row(z["name"], str(z["version"]), str(z["preset"]), str(z["quality"] or "-"), z["model_id"] or "-",
                      _fmt(m.get("top1"), pct=True), _fmt(m.get("bytes_per_image"), 1), _fmt(m.get("bpp"), 3),
                      _fmt(m.get("psnr"), 2))
    console.print(table)


def _fmt(value: float | None, digits: int = 2, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * float(value):.2f} %" if pct else f"{float(value):.{digits}f}"


@app.command("eval")
def eval_cmd(
    model: str = typer.Option(..., help="Zoo name or package path."),
    data: str = typer.Option("fashion-mnist", help="fashion-mnist | imagefolder:PATH | synthetic"),
    split: str = typer.Option("test", help="Dataset split: test (the shipped figures), val (held out of train, for "
                              "choices), fit, train."),
    limit: int | None = typer.Option(None, help="Evaluate the first N images only."),
    batch_size: int = typer.Option(256, help="Images per batch."),
    device: str = typer.Option("cpu", help="Torch device for the cloud side."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    record: bool = typer.Option(False, help="Store the figures in the package manifest (model card source)."),
) -> None:
    """Accuracy, rate and PSNR measured on real bitstreams (edge ONNX encoder -> cloud decoder)."""
    from rich.progress import Progress
    from vitcodec.models.evaluate import evaluate
    from vitcodec.packages import ModelNotFoundError, resolve_model

    if record and split != "test":
        abort(f"--record stores test-split figures (the model card's), not {split!r}")
    try:
        package = resolve_model(model)
    except ModelNotFoundError as exc:
        abort(str(exc))
    with Progress(console=err, disable=as_json or not err.is_terminal, transient=True) as progress:
        task = progress.add_task(f"eval {package.name}", total=limit)
        report = evaluate(model, data, split, limit, batch_size, device,
                          on_batch=lambda n: progress.advance(task, n))
    result = report.to_dict()
    if record:
        metrics = {k: result[k] for k in ("data", "n", "top1", "top5", "bpp", "bytes_per_image", "header_bytes",
                                          "psnr", "decode_failures", "ece", "novelty_flagged")}
        package.rewrite({**package.manifest, "metrics": metrics})
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"{report.model} on {report.data}/{split} (n={report.n})")
    for key in ("top1", "top5", "bpp", "bytes_per_image", "header_bytes", "psnr", "decode_failures", "ece",
                "novelty_flagged", "seconds"):
        table.add_row(key, str(result[key]) if not isinstance(result[key], float) else f"{result[key]:.4f}")
    console.print(table)


@app.command("export")
def export_cmd(
    model: Path = typer.Option(..., help="Training checkpoint (final.pt / last.pt)."),
    out: Path = typer.Option(..., help="Model repository root: writes OUT/<name>/<version>/."),
    name: str = typer.Option(..., help="Model name in the repository."),
    version: int = typer.Option(1, help="Model version."),
    quality: int | None = typer.Option(None, help="Quality recorded in streams (default: the training --quality)."),
    fp32_weights: bool = typer.Option(False, help="Store the cloud weights and the edge encoder in float32 (default: "
                                      "float16 storage, float32 compute; half the size)."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate", help="Compressed packages: fit the temperature "
                                   "and the novelty score on the training data's fit/val splits (see `vitcodec "
                                   "calibrate`)."),
    data: str | None = typer.Option(
        None, help="Dataset to calibrate on (default: the one the checkpoint was trained on)."),
    hs_format: str = typer.Option("int8", help="Exact h_s: int8 (format 2: 8-bit integer inference, quantised on the z "
                                  "of the training data's fit split) or fixed (format 1, the older wide fixed point)."),
    hs_calibration_images: int = typer.Option(2000, help="Fit-split images whose z calibrate the int8 h_s."),
) -> None:
    """Write a model package: manifest, edge encoder.onnx, codec tables with integer h_s, cloud weights."""
    from vitcodec.models.checkpoint import load_checkpoint
    from vitcodec.models.config import JCCConfig
    from vitcodec.models.export import export_package
    from vitcodec.models.registry import create_model

    try:
        ckpt = load_checkpoint(model)
    except FileNotFoundError as exc:
        abort(str(exc))
    net = create_model(JCCConfig.from_dict(ckpt["config"]))
    net.load_state_dict(ckpt["model"])
    settings = ckpt.get("settings", {})
    compress = ckpt.get("stage", settings.get("stage")) == "joint"
    q = quality if quality is not None else settings.get("quality")
    training = {k: settings.get(k) for k in ("stage", "data", "epochs", "quality", "alpha", "beta", "lr",
                                             "batch_size")} | {"wall_s": ckpt.get("wall_s")}
    if settings.get("init"):  # what the run started from: a step-one checkpoint or package
        training["init"] = str(settings["init"])
    if settings.get("teacher"):  # the card says which models were distilled, and how
        training |= {"teacher": Path(settings["teacher"]).name, "distill": settings.get("distill"),
                     "distill_alpha": settings.get("distill_alpha"), "distill_tau": settings.get("distill_tau")}
    extra = {"training": training}
    if hs_format not in ("int8", "fixed"):
        abort(f"unknown --hs-format {hs_format!r}: use int8 or fixed")
    images = None
    if compress and hs_format == "int8":
        from vitcodec.models.data import load_arrays
        from vitcodec.models.errors import DataError

        try:
            images = load_arrays(data or settings.get("data") or "fashion-mnist", "fit", net.config,
                                 limit=hs_calibration_images)[0]
        except DataError as exc:
            abort(f"calibrating the int8 h_s: {exc}")
    package = export_package(net, out, name=name, version=version, quality=q, compress=compress,
                             half_weights=not fp32_weights, extra=extra, hs_format=hs_format,
                             calibration_images=images)
    console.print(f"wrote {package.path} (model id {package.model_id.hex() or '-'})")
    if compress and calibrate:
        _calibrate(package, data or settings.get("data") or "fashion-mnist")


@app.command("calibrate")
def calibrate_cmd(
    model: str = typer.Option(..., help="Zoo name or package path of a compressed model."),
    data: str = typer.Option(
        "fashion-mnist", help="The dataset it was trained on: its fit/val splits are used, never test."),
) -> None:
    """Fit calibrated probabilities (one temperature) and the novelty score (distance to the training data,
    1.0 = the threshold) of a package on real bitstreams, and store them in it. The model id is unchanged."""
    from vitcodec.packages import ModelNotFoundError, resolve_model

    try:
        package = resolve_model(model)
    except ModelNotFoundError as exc:
        abort(str(exc))
    _calibrate(package, data)


@app.command("upgrade-hs")
def upgrade_hs_cmd(
    model: str = typer.Option(..., help="Zoo name or package path of a compressed model with h_s format 1."),
    out: Path = typer.Option(..., help="Model repository root: writes OUT/<name>/<version>/ (never in place)."),
    data: str = typer.Option(
        "fashion-mnist", help="The dataset it was trained on: the fit split calibrates the h_s and the "
        "calibration is refitted on fit/val, never test."),
    hs_calibration_images: int = typer.Option(2000, min=1, help="Fit-split images whose z calibrate the int8 h_s."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="Refit the temperature and novelty score on the new bitstreams."),
    overwrite: bool = typer.Option(False, help="Replace OUT/<name>/<version>/ if it exists."),
) -> None:
    """Rewrite a package's exact h_s as the 8-bit h_s (format 2) from its own files, for a package whose training
    checkpoint is gone. The model id changes; run `vitcodec eval --record` on the result for its test figures."""
    from vitcodec.models.config import JCCConfig
    from vitcodec.models.data import load_arrays
    from vitcodec.models.hs_upgrade import upgrade_hyper_synthesis
    from vitcodec.packages import ModelNotFoundError, resolve_model

    try:
        package = resolve_model(model)
        config = JCCConfig.from_dict(package.manifest["config"])
        images = load_arrays(data, "fit", config, limit=hs_calibration_images)[0]
        target = Path(out).resolve() / package.name / str(package.version)
        if target == package.path.resolve():
            abort(f"--out {out} would rewrite {package.path} in place: choose another repository root")
        upgraded = upgrade_hyper_synthesis(package, out, images, overwrite=overwrite)
    except (ModelNotFoundError, ValueError) as exc:
        abort(str(exc))
    except FileExistsError as exc:
        abort(f"{exc}: pass --overwrite to replace it")
    console.print(f"wrote {upgraded.path} (model id {package.model_id.hex()} -> {upgraded.model_id.hex()})")
    if calibrate:
        _calibrate(upgraded, data)


def _calibrate(package: ModelPackage, data: str) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from vitcodec.models.calibrate import calibrate_package
    from vitcodec.models.errors import DataError

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err) as bar:
        task = bar.add_task(f"calibrating {package.name} on {data}", total=None)
        try:
            fit = calibrate_package(package, data, on_batch=lambda n: bar.advance(task, n))
        except (DataError, ValueError) as exc:
            abort(str(exc))
    console.print(f"calibrated {package.path}: temperature {fit.temperature:.3f}, validation ECE "
                  f"{100 * fit.ece_before:.2f} % -> {100 * fit.ece_after:.2f} %, novelty flags "
                  f"{100 * fit.val_flagged:.1f} % of validation images")


def main() -> None:
    from vitcodec.models.errors import DataError, TrainingExtraMissing

    try:
        app()
    except DataError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)
    except TrainingExtraMissing as exc:  # train, export, models: a server install has no compressai
        error_line(str(exc))
        sys.exit(2)


if __name__ == "__main__":
    main()
