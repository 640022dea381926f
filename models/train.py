"""Two-step training (Bai et al.): ``pretrain`` without compression, then ``joint`` with the
rate–distortion–accuracy loss. Runs alone or under torchrun (DDP), on CPU or GPU.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from vitcodec.models.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from vitcodec.models.config import JCCConfig
from vitcodec.models.data import build_dataset
from vitcodec.models.distributed import DistInfo, all_reduce_mean, cleanup, init_distributed
from vitcodec.models.jcc import JointCompressionClassifier
from vitcodec.models.losses import JointLoss, LossWeights, quality_weights
from vitcodec.models.registry import create_model, get_preset

STAGES = ("pretrain", "joint")


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
    amp: bool = True  # only takes effect on CUDA
    compile: bool = True  # only takes effect on CUDA
    seed: int = 0
    threads: int | None = None
    log_every: int = 20
    progress: bool = True

    def loss_weights(self) -> LossWeights:
        if self.stage == "pretrain":
            return LossWeights(alpha=1.0, beta=self.recon_weight, rate=0.0, label_smoothing=self.label_smoothing)
        alpha, beta = quality_weights(self.quality) if self.quality else (1.0, 0.0)
        return LossWeights(alpha=self.alpha if self.alpha is not None else alpha,
                           beta=self.beta if self.beta is not None else beta, rate=1.0,
                           label_smoothing=self.label_smoothing)


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
    if settings.max_steps is None and settings.epochs <= 0:
        raise ValueError("give a positive --epochs or --max-steps")


def build_model(settings: TrainSettings, device: torch.device) -> tuple[JointCompressionClassifier, dict[str, Any] | None]:
    """Step one builds from the preset; step two starts from the step-one checkpoint (--init)."""
    init_state = None
    if settings.init is not None:
        ckpt = load_checkpoint(settings.init)
        config = JCCConfig.from_dict(ckpt["config"])
        model = create_model(config)
        load_model_state(model, ckpt["model"], strict=False)
        init_state = ckpt
    else:
        model = create_model(get_preset(settings.preset))
    return model.to(device), init_state


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


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
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    model, _ = build_model(settings, device)
    config = model.config
    compress = settings.stage == "joint"
    dataset = build_dataset(settings.data, "train", config, augment=True, limit=settings.limit, seed=settings.seed)
    sampler = DistributedSampler(dataset, dist_info.world_size, dist_info.rank, shuffle=True,
                                 seed=settings.seed) if dist_info.enabled else None
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=sampler is None, sampler=sampler,
                        drop_last=len(dataset) >= settings.batch_size * dist_info.world_size,
                        pin_memory=device.type == "cuda")
    steps_per_epoch = max(1, len(loader))
    total_steps = settings.max_steps or max(1, int(round(settings.epochs * steps_per_epoch)))
    last_step = min(total_steps, settings.stop_at_step or total_steps)

    named = [(n, p) for n, p in model.named_parameters() if not n.endswith("quantiles")]
    codec_params = [p for n, p in named if n.startswith(("g_a.", "hyperprior."))]
    other_params = [p for n, p in named if not n.startswith(("g_a.", "hyperprior."))]
    main_params = codec_params + other_params
    aux_params = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    codec_lr = settings.codec_lr or settings.lr
    optimizer = torch.optim.AdamW([{"params": codec_params, "base_lr": codec_lr},
                                   {"params": other_params, "base_lr": settings.lr}],
                                  lr=settings.lr, weight_decay=settings.weight_decay)
    aux_optimizer = torch.optim.Adam(aux_params, lr=settings.aux_lr)
    criterion = JointLoss(settings.loss_weights(), config.mean, config.std).to(device)

    step, start_epoch = 0, 0
    resume_path = out / "last.pt"
    if resume_path.exists():
        ckpt = load_checkpoint(resume_path, map_location=device)
        load_model_state(model, ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
        step, start_epoch = ckpt["step"], ckpt["epoch"]

    net: torch.nn.Module = model
    if dist_info.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=not compress)
    forward = net
    if settings.compile and device.type == "cuda":
        forward = torch.compile(net)
    use_amp = settings.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext

    log_path = out / "log.jsonl"
    if dist_info.is_main:
        (out / "settings.json").write_text(json.dumps(_jsonable(asdict(settings)), indent=2))
    progress = _progress(settings.progress and dist_info.is_main)
    task = progress.add_task(f"{settings.stage} {config.name}", total=total_steps, completed=step)
    metrics: dict[str, Any] = {}
    t0, seen = time.time(), 0
    net.train()
    with progress:
        epoch = start_epoch
        while step < last_step:
            if sampler is not None:
                sampler.set_epoch(epoch)
            running: dict[str, float] = {}
            n_batches = 0
            for x, target in loader:
                if step >= last_step:
                    break
                x, target = x.to(device, non_blocking=True), target.to(device, non_blocking=True)
                lr = _lr_at(step, total_steps, settings.lr, settings.warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["base_lr"] / settings.lr
                with autocast():
                    output = forward(x, compress=compress, reconstruct=True)
                terms = criterion(output, x, target)
                loss = terms["loss"]
                if compress:
                    loss = loss + model.aux_loss()  # gradients reach only the quantiles (own optimiser)
                optimizer.zero_grad(set_to_none=True)
                aux_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if settings.grad_clip:
                    torch.nn.utils.clip_grad_norm_(main_params, settings.grad_clip)
                optimizer.step()
                if compress:
                    aux_optimizer.step()
                step += 1
                seen += x.shape[0] * dist_info.world_size
                with torch.no_grad():
                    terms["acc"] = (output["logits"].argmax(1) == target).float().mean()
                for k, v in terms.items():
                    running[k] = running.get(k, 0.0) + float(all_reduce_mean(v.detach(), dist_info))
                n_batches += 1
                progress.update(task, completed=step,
                                description=f"{settings.stage} ep{epoch} loss {running['loss'] / n_batches:.3f} "
                                            f"acc {running['acc'] / n_batches:.3f}")
                if dist_info.is_main and (step % settings.log_every == 0 or step == last_step):
                    metrics = {"step": step, "epoch": epoch, "lr": lr,
                               **{k: v / n_batches for k, v in running.items()},
                               "images_per_s": seen / max(1e-9, time.time() - t0)}
                    if compress:
                        metrics["aux"] = float(model.aux_loss().detach())
                    with log_path.open("a") as fh:
                        fh.write(json.dumps(metrics) + "\n")
            epoch += 1
            if dist_info.is_main:
                _save(out / "last.pt", model, optimizer, aux_optimizer, step, epoch, settings, compress)
    if dist_info.is_main:
        _save(out / "last.pt", model, optimizer, aux_optimizer, step, epoch, settings, compress)
        final = out / "final.pt"
        save_checkpoint(final, model, config, stage=settings.stage, step=step,
                        settings=_jsonable(asdict(settings)), wall_s=time.time() - t0)
        metrics["wall_s"] = time.time() - t0
    return metrics


def _save(path: Path, model: JointCompressionClassifier, optimizer: torch.optim.Optimizer,
          aux_optimizer: torch.optim.Optimizer, step: int, epoch: int, settings: TrainSettings,
          compress: bool) -> None:
    if compress:
        model.update(force=True)  # CDF tables travel with the weights
    save_checkpoint(path, model, model.config, optimizer=optimizer.state_dict(),
                    aux_optimizer=aux_optimizer.state_dict(), step=step, epoch=epoch,
                    stage=settings.stage, settings=_jsonable(asdict(settings)))


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
