"""Two-step training (Bai et al.): ``pretrain`` without compression, then ``joint`` with the
rate–distortion–accuracy loss. Runs alone or under torchrun (DDP), on CPU or GPU.

Either step may distil from a pixel CNN (`vitcodec.models.pixel_cnn`, ``--teacher``): the teacher sees the
very batch the student sees (after augmentation), with the JCC's normalisation undone, since it normalises
its own input.
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.nn.parallel import DistributedDataParallel
from vitcodec.models.batches import Augmentation, InMemoryBatches
from vitcodec.models.checkpoint import load_checkpoint, save_checkpoint
from vitcodec.models.config import JCCConfig
from vitcodec.models.data import load_pixels
from vitcodec.models.distributed import DistInfo, all_reduce_mean, cleanup, init_distributed
from vitcodec.models.jcc import JointCompressionClassifier
from vitcodec.models.losses import DISTILL_MODES, JointLoss, LossWeights, quality_weights
from vitcodec.models.registry import create_model, get_preset

if TYPE_CHECKING:
    from vitcodec.packages import ModelPackage

STAGES = ("pretrain", "joint")
_CODEC_MODULES = ("g_a.", "hyperprior.")  # step two's new modules, at --codec-lr


@dataclass
class TrainSettings:
    out: Path
    stage: str = "pretrain"
    preset: str = "jcc-fmnist-28-s8"  # the zoo's preset
    data: str = "fashion-mnist"
    init: Path | None = None  # step-one checkpoint that step two starts from
    quality: int | None = None
    alpha: float | None = None
    beta: float | None = None
    recon_weight: float = 0.0002  # step one's beta on the reconstruction head
    label_smoothing: float = 0.0
    epochs: float = 1.0
    max_steps: int | None = None
    stop_at_step: int | None = None  # end early but keep the schedule of --epochs/--max-steps (time-boxed runs)
    batch_size: int = 128
    lr: float = 1e-3
    codec_lr: float | None = None  # g_a + hyperprior (step two's new modules learn faster); None = lr
    aux_lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    grad_clip: float = 1.0
    limit: int | None = None
    device: str = "auto"
    amp: bool = True  # bfloat16 autocast on CUDA
    cpu_bf16: bool = False  # bfloat16 autocast on a CPU with native bfloat16 (slower for the zoo's size: docs)
    compile: bool = True  # only takes effect on CUDA
    holdout: bool = True  # train on the "fit" split and measure "val" after each epoch; False: all of "train"
    erase_prob: float = 0.0  # random erasing's probability per image
    overrides: dict[str, Any] = field(default_factory=dict)  # preset fields for step one (None = keep)
    seed: int = 0
    threads: int | None = None
    log_every: int = 20
    progress: bool = True
    teacher: Path | None = None  # a pixel CNN checkpoint to distil from; None = no distillation
    distill: str = "soft"  # soft | hard (only with a teacher)
    distill_alpha: float = 0.5  # the teacher's share of the accuracy term
    distill_tau: float = 1.0  # soft distillation's temperature

    def loss_weights(self) -> LossWeights:
        kd = ({"distill": self.distill, "distill_alpha": self.distill_alpha, "distill_tau": self.distill_tau}
              if self.teacher is not None else {})
        if self.stage == "pretrain":
            return LossWeights(alpha=1.0, beta=self.recon_weight, rate=0.0, label_smoothing=self.label_smoothing,
                               **kd)
        alpha, beta = quality_weights(self.quality) if self.quality else (1.0, 0.0)
        return LossWeights(alpha=self.alpha if self.alpha is not None else alpha,
                           beta=self.beta if self.beta is not None else beta, rate=1.0,
                           label_smoothing=self.label_smoothing, **kd)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def _check(settings: TrainSettings) -> None:
    if settings.stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {settings.stage!r}")
    if settings.stage == "joint":
        if settings.quality is None and (settings.alpha is None or settings.beta is None):
            raise ValueError("stage joint needs --quality 1|2|3, or both --alpha and --beta")
    if not 0.0 <= settings.erase_prob <= 1.0:
        raise ValueError(f"--erase-prob must lie in [0, 1], got {settings.erase_prob}")
    if settings.max_steps is None and settings.epochs <= 0:
        raise ValueError("give a positive --epochs or --max-steps")
    if settings.teacher is not None:
        if settings.distill not in DISTILL_MODES:
            raise ValueError(f"--distill must be one of {', '.join(DISTILL_MODES)}, got {settings.distill!r}")
        if not 0.0 <= settings.distill_alpha <= 1.0:
            raise ValueError(f"--distill-alpha must lie in [0, 1], got {settings.distill_alpha}")
        if settings.distill_tau <= 0:
            raise ValueError(f"--distill-tau must be positive, got {settings.distill_tau}")


def load_teacher(path: Path, config: JCCConfig, device: torch.device) -> torch.nn.Module:
    """The frozen pixel CNN, checked against the student's input (same size, channels and classes)."""
    from vitcodec.models.pixel_cnn import load_pixel_cnn

    teacher = load_pixel_cnn(path, device)
    t = teacher.config
    if (tuple(t.img_size), t.in_chans, t.num_classes) != (tuple(config.img_size), config.in_chans, config.num_classes):
        raise ValueError(f"teacher {path} takes {t.in_chans}x{t.img_size[0]}x{t.img_size[1]} images into "
                         f"{t.num_classes} classes; the student {config.in_chans}x{config.img_size[0]}x"
                         f"{config.img_size[1]} into {config.num_classes}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def build_model(settings: TrainSettings,
                device: torch.device) -> tuple[JointCompressionClassifier, dict[str, Any] | None]:
    """Step one builds from the preset; step two starts from step one (--init: its checkpoint, or its
    uncompressed package when the checkpoint is gone)."""
    if settings.init is None:
        return create_model(get_preset(settings.preset), **settings.overrides).to(device), None
    package = step_one_package(settings.init)
    if package is not None:
        from vitcodec.models.checkpoint import load_package_network

        return load_package_network(package).train().to(device), None
    ckpt = load_checkpoint(settings.init)
    model = create_model(JCCConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"], strict=False)
    return model.to(device), ckpt


def step_one_package(init: Path) -> ModelPackage | None:
    """The uncompressed (step-one) model package ``init`` names, by folder or zoo name; None for a checkpoint
    file. Its weights are float16 copies of step one's (g_a, ViT, aggregation, g_s); the hyperprior, which step
    one does not train, starts fresh as it does from a checkpoint."""
    from vitcodec.packages import MANIFEST, ModelNotFoundError, ModelPackage, resolve_model

    init = Path(init)
    if init.is_file():
        return None
    try:
        package = ModelPackage.open(init) if (init / MANIFEST).is_file() else resolve_model(str(init))
    except ModelNotFoundError as exc:
        raise FileNotFoundError(f"--init {init}: neither a checkpoint nor a model package ({exc})") from None
    if package.compresses:
        raise ValueError(f"--init {init}: {package.name} is a compressed (step-two) package; step two starts "
                         "from the uncompressed step-one package or checkpoint")
    return package


def lr_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int,
                total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup to each group's peak rate, then cosine decay to zero at ``total_steps`` (torch's own
    schedulers; their state travels in the checkpoint so a resumed run continues the same curve)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps <= 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0,
                      total_iters=max(1, warmup_steps - 1))
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


@dataclass
class _Stage:
    """One training stage's moving parts, built by `_prepare` and advanced by `_run_epoch`."""

    settings: TrainSettings
    model: JointCompressionClassifier
    forward: torch.nn.Module  # the model, wrapped for DDP / torch.compile where they apply
    loader: InMemoryBatches
    val: InMemoryBatches | None  # the held-out split, measured after each epoch (main process only)
    optimizer: torch.optim.Optimizer
    aux_optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: JointLoss
    device: torch.device
    dist: DistInfo
    total_steps: int  # the schedule's length
    last_step: int  # where this run stops (--stop-at-step may end it early)
    teacher: torch.nn.Module | None = None  # the frozen pixel CNN, when distilling
    step: int = 0
    epoch: int = 0
    seen: int = 0
    t0: float = field(default_factory=time.time)

    @property
    def compress(self) -> bool:
        return self.settings.stage == "joint"

    @property
    def out(self) -> Path:
        return Path(self.settings.out)


def train(settings: TrainSettings) -> dict[str, Any]:
    """Run one stage; returns the final logged metrics. Checkpoints to ``out/last.pt`` (resumable)."""
    _check(settings)
    device = resolve_device(settings.device)
    dist_info = init_distributed(device)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed + dist_info.rank)
    try:
        return _train(settings, device, dist_info)
    finally:
        cleanup(dist_info)


def _train(settings: TrainSettings, device: torch.device, dist_info: DistInfo) -> dict[str, Any]:
    stage = _prepare(settings, device, dist_info)
    if dist_info.is_main:
        (stage.out / "settings.json").write_text(json.dumps(_jsonable(asdict(settings)), indent=2))
    progress = _progress(settings.progress and dist_info.is_main)
    task = progress.add_task(f"{settings.stage} {stage.model.config.name}", total=stage.total_steps,
                             completed=stage.step)
    metrics: dict[str, Any] = {}
    stage.forward.train()
    with progress:
        while stage.step < stage.last_step:
            shown = _run_epoch(stage, lambda text: progress.update(task, completed=stage.step, description=text))
            metrics = shown or metrics
            stage.epoch += 1
            if dist_info.is_main:
                if stage.val is not None:
                    metrics = {**metrics, **_log(stage, stage.optimizer.param_groups[-1]["lr"], validate(stage),
                                                 "val.jsonl")}
                _save(stage)
    if dist_info.is_main:
        _save(stage)
        save_checkpoint(stage.out / "final.pt", stage.model, stage.model.config, stage=settings.stage,
                        step=stage.step, settings=_jsonable(asdict(settings)), wall_s=time.time() - stage.t0)
        metrics["wall_s"] = time.time() - stage.t0
    return metrics


def _prepare(settings: TrainSettings, device: torch.device, dist_info: DistInfo) -> _Stage:
    """Model, data, optimisers and schedule; resumed from ``out/last.pt`` when it exists."""
    Path(settings.out).mkdir(parents=True, exist_ok=True)
    model, _ = build_model(settings, device)
    loader, val = _batches(settings, model.config, dist_info)
    total_steps = settings.max_steps or max(1, int(round(settings.epochs * max(1, len(loader)))))
    optimizer, aux_optimizer = _optimizers(model, settings)
    stage = _Stage(settings, model, model, loader, val, optimizer, aux_optimizer,
                   lr_schedule(optimizer, settings.warmup_steps, total_steps),
                   JointLoss(settings.loss_weights(), model.config.mean, model.config.std).to(device),
                   device, dist_info, total_steps, min(total_steps, settings.stop_at_step or total_steps))
    if settings.teacher is not None:
        stage.teacher = load_teacher(settings.teacher, model.config, device)
    _resume(stage)
    stage.forward = _wrap(model, settings, device, dist_info)
    return stage


def _batches(settings: TrainSettings, config: JCCConfig,
             dist_info: DistInfo) -> tuple[InMemoryBatches, InMemoryBatches | None]:
    """Training batches (this rank's share, augmented) and, with ``holdout``, the validation split."""
    spec = config.input_spec()
    split = "fit" if settings.holdout else "train"
    pixels, labels, _ = load_pixels(settings.data, split, config, limit=settings.limit, seed=settings.seed)
    train_batches = InMemoryBatches(pixels, labels, spec, settings.batch_size,
                                    Augmentation(crop_pad=2, flip=True, erase_prob=settings.erase_prob),
                                    seed=settings.seed, rank=dist_info.rank, world_size=dist_info.world_size)
    if not (settings.holdout and dist_info.is_main):
        return train_batches, None
    val_pixels, val_labels, _ = load_pixels(settings.data, "val", config, seed=settings.seed)
    return train_batches, InMemoryBatches(val_pixels, val_labels, spec, 500, None, drop_last=False)


def _optimizers(model: JointCompressionClassifier,
                settings: TrainSettings) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """AdamW for the networks (g_a and the hyperprior at ``codec_lr``), Adam for the entropy bottleneck's
    quantiles (compressai's auxiliary loss)."""
    named = [(n, p) for n, p in model.named_parameters() if not n.endswith("quantiles")]
    codec = [p for n, p in named if n.startswith(_CODEC_MODULES)]
    other = [p for n, p in named if not n.startswith(_CODEC_MODULES)]
    optimizer = torch.optim.AdamW([{"params": codec, "lr": settings.codec_lr or settings.lr},
                                   {"params": other, "lr": settings.lr}], weight_decay=settings.weight_decay)
    quantiles = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    return optimizer, torch.optim.Adam(quantiles, lr=settings.aux_lr)


def _resume(stage: _Stage) -> None:
    path = stage.out / "last.pt"
    if not path.exists():
        return
    ckpt = load_checkpoint(path, map_location=stage.device)
    stage.model.load_state_dict(ckpt["model"])
    stage.optimizer.load_state_dict(ckpt["optimizer"])
    stage.aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
    stage.step, stage.epoch = ckpt["step"], ckpt["epoch"]
    if "scheduler" in ckpt and ckpt.get("total_steps") == stage.total_steps:
        stage.scheduler.load_state_dict(ckpt["scheduler"])
    else:  # an older checkpoint, or a run lengthened on resume: the current schedule, replayed to this step
        stage.scheduler = _replayed_schedule(stage)


def _replayed_schedule(stage: _Stage) -> torch.optim.lr_scheduler.LRScheduler:
    settings = stage.settings
    for group, peak in zip(stage.optimizer.param_groups, (settings.codec_lr or settings.lr, settings.lr)):
        group["lr"] = group["initial_lr"] = peak
    scheduler = lr_schedule(stage.optimizer, settings.warmup_steps, stage.total_steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()": intended
        for _ in range(stage.step):
            scheduler.step()
    return scheduler


def _wrap(model: JointCompressionClassifier, settings: TrainSettings, device: torch.device,
          dist_info: DistInfo) -> torch.nn.Module:
    """DDP across processes, torch.compile on CUDA."""
    net: torch.nn.Module = model
    if dist_info.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=settings.stage != "joint")
    if settings.compile and device.type == "cuda":
        net = cast(torch.nn.Module, torch.compile(net))  # compiling a module gives a module (OptimizedModule)
    return net


def _run_epoch(stage: _Stage, show: Callable[[str], None]) -> dict[str, Any]:
    """One pass over the loader (or up to ``last_step``); returns the last metrics logged."""
    stage.loader.set_epoch(stage.epoch)
    running: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    n_batches = 0
    for x, target in stage.loader:
        if stage.step >= stage.last_step:
            break
        lr = stage.optimizer.param_groups[-1]["lr"]  # the rate of --lr's group at this step
        terms = _train_step(stage, x.to(stage.device, non_blocking=True), target.to(stage.device, non_blocking=True))
        for k, v in terms.items():
            running[k] = running.get(k, 0.0) + float(all_reduce_mean(v, stage.dist))
        n_batches += 1
        show(f"{stage.settings.stage} ep{stage.epoch} loss {running['loss'] / n_batches:.3f} "
             f"acc {running['acc'] / n_batches:.3f}")
        if stage.dist.is_main and (stage.step % stage.settings.log_every == 0 or stage.step == stage.last_step):
            metrics = _log(stage, lr, {k: v / n_batches for k, v in running.items()})
    return metrics


def _train_step(stage: _Stage, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward, loss, backward, clip, optimiser and schedule steps; returns the detached loss terms."""
    with _autocast(stage):
        output = stage.forward(x, compress=stage.compress, reconstruct=True)
    terms = stage.criterion(output, x, target, _teacher_logits(stage, x))
    loss = terms["loss"]
    if stage.compress:
        loss = loss + stage.model.aux_loss()  # gradients reach only the quantiles (own optimiser)
    stage.optimizer.zero_grad(set_to_none=True)
    stage.aux_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if stage.settings.grad_clip:
        params = [p for group in stage.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, stage.settings.grad_clip)
    stage.optimizer.step()
    if stage.compress:
        stage.aux_optimizer.step()
    stage.scheduler.step()
    stage.step += 1
    stage.seen += x.shape[0] * stage.dist.world_size
    with torch.no_grad():
        terms["acc"] = (output["logits"].argmax(1) == target).float().mean()
    return {k: v.detach() for k, v in terms.items()}


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and
    slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _autocast(stage: _Stage):
    """bfloat16 autocast on CUDA (``amp``); on the CPU only when asked (``cpu_bf16``) and the CPU multiplies
    bfloat16 natively: for the zoo's small matrices the casts cost more than AMX saves (0.84x the images/s
    of float32, benchmarks/bench_training.py in docs/benchmarks.md), larger presets may differ."""
    if stage.device.type == "cuda" and stage.settings.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if stage.device.type == "cpu" and stage.settings.cpu_bf16 and native_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def validate(stage: _Stage) -> dict[str, float]:
    """Top-1, cross-entropy and (step two) the estimated bpp on the held-out split, in eval mode."""
    if stage.val is None:
        return {}
    model = stage.model
    model.eval()
    hits, ce, bpp, n = 0.0, 0.0, 0.0, 0
    for x, target in stage.val:
        x = x.to(stage.device)
        target = target.to(stage.device)
        with _autocast(stage):
            out = model(x, compress=stage.compress, reconstruct=False)
        terms = stage.criterion(out, x, target)
        hits += float((out["logits"].argmax(1) == target).sum())
        ce += float(terms["ce"]) * len(target)
        bpp += float(terms.get("bpp", torch.zeros(()))) * len(target)
        n += len(target)
    model.train()
    result = {"val_acc": hits / n, "val_ce": ce / n}
    if stage.compress:
        result["val_bpp"] = bpp / n
    return result


@torch.no_grad()
def _teacher_logits(stage: _Stage, x: torch.Tensor) -> torch.Tensor | None:
    """The teacher's logits on the student's batch: normalised tensors back to [0, 1] pixels first."""
    if stage.teacher is None:
        return None
    return stage.teacher(x * stage.criterion.std + stage.criterion.mean).float()


def _log(stage: _Stage, lr: float, means: dict[str, float], file: str = "log.jsonl") -> dict[str, Any]:
    """Append one line to ``out/log.jsonl`` (training) or ``out/val.jsonl`` (validation) and return it."""
    metrics = {"step": stage.step, "epoch": stage.epoch, "lr": lr, **means,
               "images_per_s": stage.seen / max(1e-9, time.time() - stage.t0)}
    if stage.compress:
        metrics["aux"] = float(stage.model.aux_loss().detach())
    with (stage.out / file).open("a") as fh:
        fh.write(json.dumps(metrics) + "\n")
    return metrics


def _save(stage: _Stage) -> None:
    """``out/last.pt``: everything a resumed run needs (weights with their CDF tables, optimisers, schedule)."""
    if stage.compress:
        stage.model.update(force=True)  # CDF tables travel with the weights
    save_checkpoint(stage.out / "last.pt", stage.model, stage.model.config,
                    optimizer=stage.optimizer.state_dict(), aux_optimizer=stage.aux_optimizer.state_dict(),
                    scheduler=stage.scheduler.state_dict(), total_steps=stage.total_steps, step=stage.step,
                    epoch=stage.epoch,
                    stage=stage.settings.stage, settings=_jsonable(asdict(stage.settings)))


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
