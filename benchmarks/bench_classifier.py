"""The server's classifier pass (ViT on ŷ), four ways side by side in one run: accuracy and speed.

    torch fp32        CloudModel.analyse_latents, the default backend
    torch bf16        the same under CPU autocast to bfloat16 (pays only where the CPU has native bf16)
    ORT fp32          classifier.onnx in ONNX Runtime (`--backend onnxruntime`)
    ORT int8          classifier.onnx with its MatMul/Gemm weights in int8, activations quantised per batch
                      at run time (`--backend onnxruntime-int8`, vitcodec/cloud/int8_classifier.py)

Accuracy is measured on real bitstreams of the Fashion-MNIST test split (the edge encoder's, decoded once as
the server decodes them): top-1 of each variant and its top-1 agreement with torch fp32 (issue 20's bar:
<= 0.1 point of accuracy, >= 99.9 % agreement). Speed: ms per image at batch 1 and at --batch, every variant
run in turn in each round (`common.interleaved`), so a shared machine's drift lands on all alike.

    python benchmarks/bench_classifier.py --model fmnist-q2 --n 10000 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import numpy as np

from common import add_results_args, interleaved, machine_line, write_results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fmnist-q2", help="compressed model package name or path")
    parser.add_argument("--n", type=int, default=10_000, help="test images for the accuracy columns")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the timed batched pass")
    parser.add_argument("--timed", type=int, default=512, help="images per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and ONNX Runtime")
    add_results_args(parser)
    return parser.parse_args(argv)


def latents_of_test_split(package, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(ŷ, labels) of the first n test images: edge encoder -> bitstream -> the server's decoder."""
    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.edge.preprocess import to_batch
    from vitcodec.models.data import DataError, load_fashion_mnist
    from vitcodec.models.inference import CloudModel

    try:
        images, labels = load_fashion_mnist("test")
    except DataError as exc:
        raise SystemExit(f"Fashion-MNIST test split: {exc}") from None
    images, labels = images[:n], labels[:n]
    edge, cloud = EdgeEncoder(package), CloudModel(package)
    y_hat = []
    for start in range(0, len(images), 500):
        for result in edge.encode_pixels(to_batch(images[start:start + 500], package.input_spec)):
            y_hat.append(cloud.decode(result.stream).y_hat)
    return np.stack(y_hat).astype(np.float32), np.asarray(labels)


def classifier_variants(package, threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """name -> (ŷ batch -> probabilities): the server's own backends (`vitcodec.cloud.backends`), and torch
    under bf16 autocast."""
    import torch
    from vitcodec.cloud.backends import make_loader

    torch.set_num_threads(threads)
    served = {name: make_loader(backend, "cpu", threads)(package)
              for name, backend in (("torch fp32", "torch"), ("ORT fp32", "onnxruntime"),
                                    ("ORT int8", "onnxruntime-int8"))}

    def torch_bf16(y: np.ndarray) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return served["torch fp32"].classify_latents(y)

    return {"torch fp32": served["torch fp32"].classify_latents, "torch bf16": torch_bf16,
            "ORT fp32": served["ORT fp32"].classify_latents, "ORT int8": served["ORT int8"].classify_latents}


def main(argv: list[str] | None = None) -> None:
    import torch
    from vitcodec.packages import resolve_model

    args = parse_args(argv)
    package = resolve_model(args.model)
    y_hat, labels = latents_of_test_split(package, args.n)
    with torch.inference_mode():
        variants = classifier_variants(package, args.threads)
        top1 = {name: np.concatenate([fn(y_hat[i:i + 500]) for i in range(0, len(y_hat), 500)]).argmax(1)
                for name, fn in variants.items()}
        timed = y_hat[: args.timed]

        def batched(fn: Callable[[np.ndarray], np.ndarray], size: int) -> Callable[[], object]:
            return lambda: [fn(timed[i:i + size]) for i in range(0, len(timed), size)]

        stages = {f"{name} @ {size}": batched(fn, size) for name, fn in variants.items() for size in (1, args.batch)}
        seconds = {k: statistics.median(v) / 1e3 for k, v in interleaved(stages, args.repeats).items()}
    reference = top1["torch fp32"]
    rows = {}
    print(f"{machine_line()}\n{package.name}: {len(labels)} test images, threads {args.threads}\n")
    print(f"| variant | top-1 | agreement with torch fp32 | ms/image @ 1 | ms/image @ {args.batch} |")
    print("|---|---|---|---|---|")
    for name in variants:
        row = {"top1": float(np.mean(top1[name] == labels)), "agreement": float(np.mean(top1[name] == reference)),
               "ms_b1": 1e3 * seconds[f"{name} @ 1"] / len(timed),
               f"ms_b{args.batch}": 1e3 * seconds[f"{name} @ {args.batch}"] / len(timed)}
        rows[name] = row
        print(f"| {name} | {100 * row['top1']:.2f} % | {100 * row['agreement']:.2f} % | {row['ms_b1']:.3f} | "
              f"{row[f'ms_b{args.batch}']:.3f} |")
    base = rows["torch fp32"][f"ms_b{args.batch}"]
    print("\nspeed-up at batch", args.batch, "against torch fp32:",
          ", ".join(f"{name} {base / row[f'ms_b{args.batch}']:.2f}x" for name, row in rows.items()))
    write_results("classifier", {"model": package.name, "n": len(labels), "variants": rows}, args)


if __name__ == "__main__":
    main()
