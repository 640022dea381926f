"""Evaluation through the real system: the edge path (ONNX Runtime + codec) makes every bitstream, the
cloud path (codec + torch) decodes and classifies it. Rates count every byte of every stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from vitcodec.codec.bitstream import read_stream_info
from vitcodec.edge.preprocess import normalise, to_batch
from vitcodec.models.checkpoint import load_package_network
from vitcodec.models.config import JCCConfig
from vitcodec.models.data import load_arrays
from vitcodec.models.inference import to_uint8_images
from vitcodec.models.novelty import expected_calibration_error
from vitcodec.outputs import bits_per_pixel, psnr, top_k_hits
from vitcodec.packages import ModelPackage, resolve_model


@dataclass
class EvalReport:
    model: str
    data: str
    n: int
    top1: float
    top5: float
    bpp: float | None
    bytes_per_image: float | None
    header_bytes: float | None
    psnr: float | None
    decode_failures: int
    seconds: float
    ece: float | None = None  # expected calibration error of the served probabilities (15 bins)
    novelty_flagged: float | None = None  # share of images the novelty score calls out of distribution

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(model: str, data: str = "fashion-mnist", split: str = "test", limit: int | None = None,
             batch_size: int = 256, device: str = "cpu",
             on_batch: Callable[[int], None] | None = None) -> EvalReport:
    package = resolve_model(model)
    config = JCCConfig.from_dict(package.manifest["config"])
    images, labels, _ = load_arrays(data, split, config, limit=limit)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if package.compresses:
        return _evaluate_bitstreams(package, images, labels, data, batch_size, device, on_batch)
    return _evaluate_reference(package, config, images, labels, data, batch_size, device, on_batch)


def _evaluate_bitstreams(package: ModelPackage, images: np.ndarray, labels: np.ndarray, data: str,
                         batch_size: int, device: str, on_batch: Callable[[int], None] | None) -> EvalReport:
    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.models.inference import CloudModel

    t0 = time.perf_counter()
    edge, cloud = EdgeEncoder(package), CloudModel(package, device)
    hits1, hits5, psnrs, sizes, headers, all_probs, novelties = [], [], [], [], [], [], []
    failures = 0
    for start in range(0, len(images), batch_size):
        pixels = to_batch(images[start:start + batch_size], package.input_spec)
        encoded = edge.encode_pixels(pixels)
        decoded, probs, novelty = cloud.analyse_streams([result.stream for result in encoded])
        all_probs.append(probs)
        if novelty is not None:
            novelties.append(novelty)
        for result, d in zip(encoded, decoded):
            failures += int(not np.array_equal(d.y_hat, result.y_hat))
            info = read_stream_info(result.stream)
            sizes.append(info.total_bytes)
            headers.append(info.header_bytes)
        target = labels[start:start + batch_size]
        hits1.append(top_k_hits(probs, target, 1))
        hits5.append(top_k_hits(probs, target, 5))
        recon = cloud.reconstruct_latents(np.stack([d.y_hat for d in decoded]), (pixels.shape[1], pixels.shape[2]))
        psnrs.append(psnr(pixels, recon))
        if on_batch:
            on_batch(len(target))
    mean_bytes = float(np.mean(sizes))
    return EvalReport(package.name, data, len(labels), float(np.concatenate(hits1).mean()),
                      float(np.concatenate(hits5).mean()), bits_per_pixel(mean_bytes, package.input_spec.size),
                      mean_bytes,
                      float(np.mean(headers)), float(np.concatenate(psnrs).mean()), failures,
                      time.perf_counter() - t0,
                      expected_calibration_error(np.concatenate(all_probs), labels),
                      float(np.mean(np.concatenate(novelties) > 1.0)) if novelties else None)


@torch.inference_mode()
def _evaluate_reference(package: ModelPackage, config: JCCConfig, images: np.ndarray, labels: np.ndarray,
                        data: str, batch_size: int, device: str,
                        on_batch: Callable[[int], None] | None) -> EvalReport:
    """The step-one model: float latents, no entropy coding (the accuracy reference)."""
    t0 = time.perf_counter()
    net = load_package_network(package, device)
    hits1, hits5, psnrs, all_probs = [], [], [], []
    for start in range(0, len(images), batch_size):
        pixels = to_batch(images[start:start + batch_size], package.input_spec)
        x = torch.from_numpy(normalise(pixels, package.input_spec)).to(device)
        out = net(x, compress=False, reconstruct=True)
        probs = torch.softmax(out["logits"].float(), 1).cpu().numpy()
        all_probs.append(probs)
        target = labels[start:start + batch_size]
        hits1.append(top_k_hits(probs, target, 1))
        hits5.append(top_k_hits(probs, target, 5))
        recon = to_uint8_images(out["x_hat"][..., : pixels.shape[1], : pixels.shape[2]], config)
        psnrs.append(psnr(pixels, recon))
        if on_batch:
            on_batch(len(target))
    return EvalReport(package.name, data, len(labels), float(np.concatenate(hits1).mean()),
                      float(np.concatenate(hits5).mean()), None, None, None,
                      float(np.concatenate(psnrs).mean()), 0, time.perf_counter() - t0,
                      expected_calibration_error(np.concatenate(all_probs), labels))
