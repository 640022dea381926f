"""Edge encoder benchmark (issue 3): time per 224x224 image with the paper preset, header bytes, the rate cost
of the integer h_s against the float h_s, and (optionally) the size of a torch-free edge install.

Model. ``jcc-deit-s-224`` (g_a 3->128->128->128->192, h_a/h_s with N=128) with random weights made
"realistic" by ``workloads.make_realistic`` (y and z with a spread of a few units, h_s scales over
most of the 64-level table, see that module), exported with ``export_package``: the same package format,
ONNX graph and integer h_s as a trained model, so timings are representative; rates are those of this
synthetic model, not of a trained one. ``--checkpoint`` adds the rate comparison for a trained checkpoint
(step two, e.g. a Fashion-MNIST run) on Fashion-MNIST test images.

Images. scikit-image's bundled colour photos cut to 224x224 (``workloads.photo_crops``), encoded one at a
time as a device would (batch of one).

Stages, per image (median and p90 over the images, after a warm-up):
- ``encoder``: normalising the pixels and ONNX Runtime running g_a + h_a (``--threads`` intra-op threads);
- ``integer h_s``: ``IntegerHyperSynthesis.forward`` on the image's z symbols (timed on its own, same input);
- ``range coding``: the rest of ``LatentCodec.encode`` (rounding, z and y range coding) plus framing
  (``pack_stream``): measured as codec time minus the h_s time;
- ``total``: wall time of ``EdgeEncoder.encode_pixels`` on the image, everything included.

Rate cost of the integer h_s. For every image, y and z come from the ONNX encoder (as on the edge), then:
- integer path: the real stream (``LatentCodec.encode``): y symbols round(y - mean_int), CDF rows from
  integer comparisons;
- float path: what compressai would code on one machine: the torch float32 h_s on the same ẑ, scale indexes
  by compressai's ``build_indexes`` rule (number of table entries below max(scale, 0.11)), y symbols
  round(y - mean_float), coded with the same CDF tables and range coder.
Both are reported as actual coded y bytes, and as ideal bits  sum -log2 P(symbol)  under the Gaussian
(continuous scale, no table quantisation): integer scales/means dequantised (``forward_float``) vs float ones.
The cost is (integer - float) / float. It is the price of exactness: the float path cannot be decoded reliably
on another runtime or device (docs/architecture.md, "Data flow"), the integer one always can.

Usage::

    .venv/bin/python benchmarks/bench_edge.py --images 50 --threads 2 [--venv-size] [--checkpoint final.pt]

Prints markdown tables and writes the figures as JSON (benchmarks/results/edge_<date>.json, or --json-out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import tempfile
import time
from pathlib import Path
from typing import cast

import numpy as np
from workloads import (
    build_edge_venv,
    directory_bytes,
    fashion_mnist_test,
    make_realistic,
    photo_crops,
    scale_levels,
)

from common import REPO as ROOT
from common import add_results_args, cpu_model, machine_info, summary_ms, usable_cpus, write_results
from common import percentile as pct  # noqa: F401 - bench_hs.py imports it from here


def machine() -> str:
    """The machine as the printed tables name it: CPU model and the CPUs this process may use."""
    return f"{cpu_model()}, {usable_cpus()} cores"


# --- models -------------------------------------------------------------------------------------------


def paper_model(workdir: Path, seed: int = 0):
    import torch
    from vitcodec.models.export import export_package
    from vitcodec.models.registry import create_model

    torch.manual_seed(seed)
    model = create_model("jcc-deit-s-224")
    make_realistic(model, photo_crops(1, seed=99), seed=seed)
    return model, export_package(model, workdir, name="jcc-deit-s-224-bench", quality=2)


def checkpoint_model(path: Path, workdir: Path):
    from vitcodec.models.checkpoint import load_checkpoint
    from vitcodec.models.config import JCCConfig
    from vitcodec.models.export import export_package
    from vitcodec.models.registry import create_model

    ckpt = load_checkpoint(path)
    model = create_model(JCCConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), export_package(model, workdir, name="checkpoint-bench", quality=None)


# --- timing -------------------------------------------------------------------------------------------


def time_stages(package, pixels: np.ndarray, threads: int | None, warmup: int = 3) -> dict[str, list[float]]:
    from vitcodec.edge.encoder import EdgeEncoder

    encoder = EdgeEncoder(package, threads=threads)
    codec = encoder.codec
    medians = codec.tables.z_medians.astype(np.float64).reshape(-1, 1, 1)
    for i in range(min(warmup, len(pixels))):
        encoder.encode_pixels(pixels[i : i + 1])
    stages: dict[str, list[float]] = {"encoder": [], "integer h_s": [], "range coding": [], "total": []}
    for i in range(len(pixels)):
        t0 = time.perf_counter()
        result = encoder.encode_pixels(pixels[i : i + 1])[0]
        total = (time.perf_counter() - t0) * 1e3
        # h_s alone on the same z (the encoder's float output, rounded as LatentCodec.encode does)
        _, z = encoder.session.run(["y", "z"], {"image": _normalised(encoder, pixels[i : i + 1])})
        z = cast(np.ndarray, z)  # ONNX Runtime returns dense arrays for dense outputs
        symbols = np.rint(z[0].astype(np.float64) - medians).astype(np.int32)[None]
        t1 = time.perf_counter()
        codec.hyper.forward(codec.hyper.fixed_input(symbols, codec.tables.z_medians), result.y_hat.shape[1:])
        hs = (time.perf_counter() - t1) * 1e3
        stages["encoder"].append(result.timings_ms["encoder"])
        stages["integer h_s"].append(hs)
        stages["range coding"].append(max(result.timings_ms["codec"] - hs, 0.0))
        stages["total"].append(total)
    return stages


def _normalised(encoder, pixels: np.ndarray) -> np.ndarray:
    from vitcodec.edge.preprocess import normalise

    return normalise(pixels, encoder.spec)


# --- rate cost ----------------------------------------------------------------------------------------


def _ideal_bits(symbols: np.ndarray, scales: np.ndarray, bound: float) -> float:
    """-log2 of compressai's Gaussian likelihood of integer residuals, summed (likelihoods floored at 1e-9)."""
    from scipy.special import ndtr

    scales = np.maximum(scales, bound)
    v = np.abs(symbols.astype(np.float64))
    p = ndtr((0.5 - v) / scales) - ndtr((-0.5 - v) / scales)
    return float(-np.log2(np.maximum(p, 1e-9)).sum())


def rate_cost(model, package, pixels: np.ndarray) -> dict[str, float]:
    import torch
    from vitcodec.codec.entropy_coder import EntropyTable
    from vitcodec.edge.encoder import EdgeEncoder

    encoder = EdgeEncoder(package)
    codec = encoder.codec
    tables = codec.tables
    y_table = EntropyTable(tables.y_cdf, tables.y_cdf_length, tables.y_offset)
    thresholds = tables.scale_table[:-1]
    bound = codec.hyper.scale_bound
    medians = tables.z_medians.astype(np.float64).reshape(-1, 1, 1)
    totals = {"int_bytes": 0, "float_bytes": 0, "int_bits": 0.0, "float_bits": 0.0, "stream_bytes": 0,
              "index_mismatch": 0, "elements": 0}
    h_s = model.hyperprior.h_s.float().eval()
    for start in range(0, len(pixels), 16):
        y, z = encoder.session.run(["y", "z"], {"image": _normalised(encoder, pixels[start : start + 16])})
        for yi, zi in zip(y, z):
            encoded = codec.encode(yi, zi)
            totals["int_bytes"] += len(encoded.y_payload)
            totals["stream_bytes"] += len(encoded.y_payload) + len(encoded.z_payload)
            symbols = np.rint(zi.astype(np.float64) - medians).astype(np.int32)
            fixed = codec.hyper.fixed_input(symbols[None], tables.z_medians)
            params = codec.hyper.forward(fixed, yi.shape[1:])
            int_scales, int_means = codec.hyper.forward_float(fixed, yi.shape[1:])
            y_int = np.rint(yi.astype(np.float64) - params.means[0]).astype(np.int32)
            totals["int_bits"] += _ideal_bits(y_int, int_scales[0], bound)

            z_hat = torch.from_numpy((symbols + medians).astype(np.float32))[None]
            with torch.no_grad():
                out = h_s(z_hat)[0, :, : yi.shape[1], : yi.shape[2]].double().numpy()
            scales, means = out[: codec.M], out[codec.M :]
            indexes = np.searchsorted(thresholds, np.maximum(scales, bound), side="left").astype(np.int32)
            y_float = np.rint(yi.astype(np.float64) - means).astype(np.int32)
            totals["float_bytes"] += len(y_table.encode(y_float, indexes))
            totals["float_bits"] += _ideal_bits(y_float, scales, bound)
            totals["index_mismatch"] += int(np.count_nonzero(indexes != params.scale_indexes[0]))
            totals["elements"] += indexes.size
    return totals


# --- report -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50, help="224x224 images to time (and to price)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--checkpoint", type=Path, help="also price the integer h_s of this trained checkpoint")
    parser.add_argument("--fmnist-images", type=int, default=1000, help="test images for --checkpoint")
    parser.add_argument("--venv-size", action="store_true", help="build a torch-free edge venv and measure it")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    add_results_args(parser)
    args = parser.parse_args(argv)

    import warnings

    warnings.simplefilter("ignore")
    from vitcodec.codec.bitstream import read_stream_info
    from vitcodec.edge.encoder import EdgeEncoder

    info = machine_info()
    figures: dict[str, object] = {"machine": machine(), "date": dt.date.today().isoformat(),
                                  "threads": args.threads, "images": args.images}
    per_photo = max(1, math.ceil(args.images / 8))
    pixels = photo_crops(per_photo, seed=1)[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        model, package = paper_model(work)
        figures["export_s"] = round(time.perf_counter() - t0, 1)
        levels = scale_levels(package, pixels)
        figures["scale_levels_used"] = int(np.count_nonzero(levels))

        stages = time_stages(package, pixels, args.threads)
        figures["stages_ms"] = {k: summary_ms(v) for k, v in stages.items()}
        streams = [r.stream for r in EdgeEncoder(package).encode_pixels(pixels)]
        infos = [read_stream_info(s) for s in streams]
        figures["header_bytes"] = sorted({i.header_bytes for i in infos})
        figures["stream_bytes_median"] = float(np.median([i.total_bytes for i in infos]))
        figures["rate_paper"] = rate_cost(model, package, pixels)

        if args.checkpoint:
            ck_model, ck_package = checkpoint_model(args.checkpoint, work / "ck")
            images = fashion_mnist_test(args.fmnist_images)
            if images is None:
                raise SystemExit("--checkpoint needs the Fashion-MNIST test split (dataset-fashion-mnist)")
            figures["rate_checkpoint"] = {"checkpoint": str(args.checkpoint), "images": len(images),
                                          **rate_cost(ck_model, ck_package, images)}
        if args.venv_size:
            venv = build_edge_venv(work / "edge", ROOT)
            site = next((venv / "lib").glob("python*/site-packages"))
            tools = sum(directory_bytes(p) for p in site.iterdir() if p.name.split("-")[0] in ("pip", "setuptools"))
            figures["edge_venv_mib"] = round(directory_bytes(venv) / 2**20, 1)
            figures["edge_venv_without_pip_mib"] = round((directory_bytes(venv) - tools) / 2**20, 1)
            wheels = (work / "edge" / "wheels").glob("*.whl")
            figures["edge_wheel_kib"] = round(sum(w.stat().st_size for w in wheels) / 1024, 1)

    print_markdown(figures)
    if args.json:
        print(json.dumps(figures, indent=2))
    write_results("edge", figures, args, argv, machine=info)


def _cost(r: dict, a: str, b: str) -> str:
    return f"{100.0 * (r[a] - r[b]) / r[b]:+.3f} %" if r[b] else "n/a"


def print_markdown(f: dict) -> None:
    print(f"Machine: {f['machine']}; date {f['date']}; ONNX Runtime threads {f['threads']}; "
          f"{f['images']} images 224x224 (scikit-image photos), one at a time.\n")
    print("| stage (jcc-deit-s-224, per image) | median ms | p90 ms |")
    print("|---|---:|---:|")
    for stage, v in f["stages_ms"].items():
        print(f"| {stage} | {v['median']:.2f} | {v['p90']:.2f} |")
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| header bytes per stream (224x224), checksum included | {', '.join(map(str, f['header_bytes']))} |")
    print(f"| stream bytes, median (synthetic model) | {f['stream_bytes_median']:.0f} |")
    print(f"| scale-table levels in use (of 64) | {f['scale_levels_used']} |")
    for key, label in (("rate_paper", "jcc-deit-s-224 (synthetic)"), ("rate_checkpoint", "checkpoint")):
        r = f.get(key)
        if not r:
            continue
        print(f"| {label}: integer vs float h_s, coded y bytes | {r['int_bytes']} vs {r['float_bytes']} "
              f"({_cost(r, 'int_bytes', 'float_bytes')}) |")
        print(f"| {label}: integer vs float h_s, ideal y bits | {r['int_bits']:.0f} vs {r['float_bits']:.0f} "
              f"({_cost(r, 'int_bits', 'float_bits')}) |")
        print(f"| {label}: scale indexes that differ from the float h_s | {r['index_mismatch']} of "
              f"{r['elements']} ({100.0 * r['index_mismatch'] / max(r['elements'], 1):.4f} %) |")
    if "edge_venv_mib" in f:
        print(f"| torch-free edge venv (base install) | {f['edge_venv_mib']} MiB "
              f"({f['edge_venv_without_pip_mib']} MiB without pip/setuptools); wheel {f['edge_wheel_kib']} KiB |")


if __name__ == "__main__":
    main()
