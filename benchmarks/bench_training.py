"""Training throughput, side by side in one run: the input pipeline (per-image DataLoader against in-memory
uint8 batches) and the step (float32 against bfloat16 autocast), on the zoo's preset and its variants.

    python benchmarks/bench_training.py --threads 2 --steps 60

Prints images/s of the data pipeline alone, of a training step alone (forward, loss, backward, AdamW), and of
both together, for each variant. Steady state only: the first ``--warmup`` steps are not timed. Writes the
figures as JSON (benchmarks/results/training_<date>.json, or --json-out).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader
from vitcodec.models.batches import Augmentation, InMemoryBatches
from vitcodec.models.data import RandomCropFlip, TensorImageDataset, load_pixels
from vitcodec.models.losses import JointLoss, LossWeights
from vitcodec.models.registry import create_model, get_preset

from common import add_results_args, machine_info, machine_line, write_results


def old_pipeline(pixels: torch.Tensor, labels: torch.Tensor, spec, batch_size: int) -> Iterator:
    """The trainer's input before in-memory batches: float tensors, per-image crop/flip, DataLoader collate."""
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    x = (pixels.float() / 255.0 - mean) / std
    loader = DataLoader(TensorImageDataset(x, labels, RandomCropFlip()), batch_size=batch_size, shuffle=True,
                        drop_last=True)
    while True:
        yield from loader


def new_pipeline(pixels: torch.Tensor, labels: torch.Tensor, spec, batch_size: int, erase: float) -> Iterator:
    batches = InMemoryBatches(pixels, labels, spec, batch_size, Augmentation(erase_prob=erase))
    epoch = 0
    while True:
        batches.set_epoch(epoch)
        yield from batches
        epoch += 1


def rate(n_images: int, seconds: float) -> float:
    return n_images / max(seconds, 1e-9)


def time_pipeline(source: Iterator, steps: int) -> float:
    next(source)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(source)
    return time.perf_counter() - t0


def time_steps(config, batch: tuple[torch.Tensor, torch.Tensor], steps: int, warmup: int, bf16: bool,
               source: Iterator | None = None) -> float:
    """Seconds for ``steps`` training steps (on one fixed batch, or pulling from ``source``)."""
    torch.manual_seed(0)
    model = create_model(config)
    criterion = JointLoss(LossWeights(alpha=1.0, beta=0.0002, rate=0.0, label_smoothing=0.1), config.mean,
                          config.std)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        x, y = next(source) if source is not None else batch
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            out = model(x, compress=False, reconstruct=True)
        loss = criterion(out, x, y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="jcc-fmnist-28-s8")
    parser.add_argument("--variants", nargs="+", default=["linear/cls", "conv/seq"],
                        help="tokenizer/pool pairs to time")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    add_results_args(parser, "--json")
    args = parser.parse_args(argv)
    machine = machine_info()
    torch.set_num_threads(args.threads)

    base = get_preset(args.preset)
    pixels, labels, _ = load_pixels("fashion-mnist", "fit", base, limit=8192)
    spec = base.input_spec()
    b = args.batch_size
    results: dict[str, float] = {}
    results["data old (DataLoader, per image)"] = rate(b * args.steps, time_pipeline(
        old_pipeline(pixels, labels, spec, b), args.steps))
    results["data new (in-memory batches)"] = rate(b * args.steps, time_pipeline(
        new_pipeline(pixels, labels, spec, b, 0.0), args.steps))
    results["data new + random erasing"] = rate(b * args.steps, time_pipeline(
        new_pipeline(pixels, labels, spec, b, 0.25), args.steps))
    batch = next(new_pipeline(pixels, labels, spec, b, 0.0))
    for variant in args.variants:
        tokenizer, pool = variant.split("/")
        config = base.with_overrides(tokenizer=tokenizer, pool=pool)
        for bf16 in (False, True):
            name = f"{variant} {'bf16' if bf16 else 'fp32'}"
            results[f"step {name}"] = rate(b * args.steps, time_steps(config, batch, args.steps, args.warmup, bf16))
        results[f"old pipeline + step {variant} fp32"] = rate(b * args.steps, time_steps(
            config, batch, args.steps, args.warmup, False, old_pipeline(pixels, labels, spec, b)))
        results[f"new pipeline + step {variant} bf16"] = rate(b * args.steps, time_steps(
            config, batch, args.steps, args.warmup, True, new_pipeline(pixels, labels, spec, b, 0.25)))
    print(machine_line(machine))
    print(f"{'what':<48} {'images/s':>10}")
    for name, value in results.items():
        print(f"{name:<48} {value:>10.0f}")
    write_results("training", {"preset": args.preset, "images_per_s": results}, args, argv, machine=machine)


if __name__ == "__main__":
    main()
