"""Classify-from-bitstream vs the conventional pipeline, side by side in one run.

    ours:          bitstream ─► entropy decode (codec, integer h_s) ─► ViT on ŷ tokens ─► class
    conventional:  bitstream ─► entropy decode (same) ─► pixel decoder g_s ─► DeiT with its own patch stem ─► class

Same sizes: the DeiT sees the model's input size with patches of the encoder's stride, so it has exactly as
many tokens as the latent ViT, and the same width, depth and heads; g_s mirrors the encoder (M -> pixels).
The conventional networks have random weights (throughput only). Bitstreams are real (the edge encoder's).

    python benchmarks/bench_pipeline.py --model fmnist-q2 --n 512 --batch 64
    python benchmarks/bench_pipeline.py --preset jcc-deit-s-224 --n 64 --batch 16   # exports a random package

Entropy decoding is timed two ways: one stream at a time (`CloudModel.decode`, as the server does) and with
one integer h_s pass per batch (`LatentCodec.decode_batch`). Each timed round runs every stage once, in turn,
so drift of a shared machine lands on all stages alike.

Prints a markdown table (images/s and ms per image for each stage) and the throughput ratios, and writes them
as JSON (benchmarks/results/pipeline_<date>.json, or --json-out).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from workloads import encoded_streams

from common import add_results_args, interleaved, machine_info, machine_line, write_results


def _package(args):
    from vitcodec.packages import resolve_model

    if not args.preset:
        return resolve_model(args.model)
    import torch
    from vitcodec.models.export import export_package
    from vitcodec.models.registry import create_model

    torch.manual_seed(0)
    out = Path(tempfile.mkdtemp(prefix="vitcodec-bench-"))
    return export_package(create_model(args.preset), out, name=f"{args.preset}-random", quality=2)


def _time(stages: dict, repeats: int) -> dict[str, float]:
    """Median seconds per stage over `repeats` interleaved rounds (`common.interleaved`), after one warm-up."""
    return {name: statistics.median(ms) / 1e3 for name, ms in interleaved(stages, repeats).items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fmnist-q2", help="model package name or path (default fmnist-q2)")
    parser.add_argument("--preset", default=None, help="instead of --model: export this preset with random weights")
    parser.add_argument("--n", type=int, default=256, help="images (bitstreams) per run")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the forward passes")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds; each runs every stage once, in turn (the median is reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    add_results_args(parser)
    return parser.parse_args(argv)


def conventional_networks(config, device):
    """The conventional pipeline's g_s and DeiT at our sizes, random weights; and the padded input size."""
    import timm
    from vitcodec.models.decoder import SynthesisTransform

    c = config
    padded = tuple(-(-s // c.stride) * c.stride for s in c.img_size)
    g_s = SynthesisTransform(c.M, c.encoder_channels, c.in_chans, c.kernel_size).to(device).eval()
    deit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=padded, patch_size=c.stride,
                             in_chans=c.in_chans, embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads,
                             mlp_ratio=c.mlp_ratio, num_classes=c.num_classes).to(device).eval()
    return g_s, deit, padded


class Pipelines:
    """Every timed stage of both pipelines over the same bitstreams, batched the same way."""

    def __init__(self, model, streams: list[bytes], batch: int, device: str) -> None:
        import torch

        self.torch = torch
        self.model, self.streams = model, streams
        self.device = torch.device(device)
        self.g_s, self.deit, self.padded = conventional_networks(model.config, self.device)
        self.batches = [list(range(i, min(i + batch, len(streams)))) for i in range(0, len(streams), batch)]
        self.decoded = [model.decode(s).y_hat for s in streams]
        self.pixels = self.pixel_decode()

    def stages(self) -> dict[str, Callable[[], object]]:
        return {"entropy decode": self.entropy_decode,
                "entropy decode, h_s once per batch": self.entropy_decode_batched,
                "ViT on latents": self.ours_forward, "pixel decoder g_s": self.pixel_decode,
                "DeiT on pixels": self.deit_forward, "ours end to end": self.ours_end_to_end,
                "conventional end to end": self.conventional_end_to_end,
                "ours end to end, h_s once per batch": self.ours_end_to_end_batched,
                "conventional end to end, h_s once per batch": self.conventional_end_to_end_batched}

    # -- helpers
    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def _decode_batch(self, idx: list[int]) -> np.ndarray:
        """ŷ for a batch of streams with one integer h_s pass (`LatentCodec.decode_batch`)."""
        from vitcodec.codec.bitstream import unpack_stream

        parts = [unpack_stream(self.streams[i], expected_model_id=self.model.model_id) for i in idx]
        return self.model.codec.decode_batch([(z, y) for _, z, y in parts], parts[0][0].latent_shape)

    def _decode_one_by_one(self, idx: list[int]) -> np.ndarray:
        return np.stack([self.model.decode(self.streams[i]).y_hat for i in idx])

    def _conventional_head(self, y_hat: np.ndarray) -> None:
        x = self.g_s(self.torch.from_numpy(y_hat).to(self.device))[..., : self.padded[0], : self.padded[1]]
        self.torch.softmax(self.deit(x).float(), dim=1).cpu()

    # -- stages
    def entropy_decode(self) -> None:
        for s in self.streams:
            self.model.decode(s)

    def entropy_decode_batched(self) -> None:
        for idx in self.batches:
            self._decode_batch(idx)

    def ours_forward(self) -> None:
        with self.torch.inference_mode():
            for idx in self.batches:
                self.model.classify_latents(np.stack([self.decoded[i] for i in idx]))
            self._sync()

    def pixel_decode(self) -> list:
        out = []
        with self.torch.inference_mode():
            for idx in self.batches:
                y = self.torch.from_numpy(np.stack([self.decoded[i] for i in idx])).to(self.device)
                out.append(self.g_s(y)[..., : self.padded[0], : self.padded[1]])
            self._sync()
        return out

    def deit_forward(self) -> None:
        with self.torch.inference_mode():
            for x in self.pixels:
                self.torch.softmax(self.deit(x).float(), dim=1).cpu()
            self._sync()

    def ours_end_to_end(self) -> None:
        with self.torch.inference_mode():
            for idx in self.batches:
                self.model.classify_latents(self._decode_one_by_one(idx))
            self._sync()

    def ours_end_to_end_batched(self) -> None:
        with self.torch.inference_mode():
            for idx in self.batches:
                self.model.classify_latents(self._decode_batch(idx))
            self._sync()

    def conventional_end_to_end(self) -> None:
        with self.torch.inference_mode():
            for idx in self.batches:
                self._conventional_head(self._decode_one_by_one(idx))
            self._sync()

    def conventional_end_to_end_batched(self) -> None:
        with self.torch.inference_mode():
            for idx in self.batches:
                self._conventional_head(self._decode_batch(idx))
            self._sync()


def print_report(t: dict[str, float], args: argparse.Namespace, package, pipelines: Pipelines,
                 machine: dict[str, Any]) -> dict[str, Any]:
    """The markdown tables: each stage, then the ratios of the two pipelines; returns the figures."""
    import torch

    c, n = pipelines.model.config, args.n
    ms = {k: v / n * 1e3 for k, v in t.items()}
    ips = {k: n / v for k, v in t.items()}
    model_only_ours = ms["ViT on latents"]
    model_only_conv = ms["pixel decoder g_s"] + ms["DeiT on pixels"]
    print(f"# classify from bitstream vs conventional pipeline — {package.name} ({c.name})\n")
    print(f"{machine_line(machine)}"
          f" · device {args.device} · torch {torch.__version__} threads {torch.get_num_threads()}"
          f" · n={n}, batch={args.batch} · streams {statistics.mean(len(s) for s in pipelines.streams):.0f} B mean"
          f" · tokens: ours {c.num_tokens}, DeiT {pipelines.deit.patch_embed.num_patches}\n")
    print("| stage | ms / image | images / s |")
    print("|---|---:|---:|")
    for name in t:
        print(f"| {name} | {ms[name]:.3f} | {ips[name]:.0f} |")
    print()
    print("| comparison | ours | conventional | ratio (ours faster by) |")
    print("|---|---:|---:|---:|")
    print(f"| end to end, images/s | {ips['ours end to end']:.0f} | {ips['conventional end to end']:.0f} | "
          f"{ips['ours end to end'] / ips['conventional end to end']:.2f}x |")
    print(f"| networks only (after entropy decoding), ms/image | {model_only_ours:.3f} | {model_only_conv:.3f} | "
          f"{model_only_conv / model_only_ours:.2f}x |")
    ours_b, conv_b = ips["ours end to end, h_s once per batch"], ips["conventional end to end, h_s once per batch"]
    print(f"| end to end with h_s once per batch, images/s | {ours_b:.0f} | {conv_b:.0f} | {ours_b / conv_b:.2f}x |")
    share = ms["entropy decode"] / ms["ours end to end"]
    share_batched = ms["entropy decode, h_s once per batch"] / ms["ours end to end, h_s once per batch"]
    print(f"\nentropy decoding is {share:.0%} of our end-to-end time per image "
          f"({share_batched:.0%} with h_s once per batch).")
    return {"model": package.name, "preset": c.name, "n": n, "batch": args.batch,
            "torch_threads": torch.get_num_threads(), "tokens": {"ours": c.num_tokens,
                                                                 "deit": pipelines.deit.patch_embed.num_patches},
            "stream_bytes_mean": statistics.mean(len(s) for s in pipelines.streams),
            "ms_per_image": ms, "images_per_s": ips,
            "ratios": {"end_to_end": ips["ours end to end"] / ips["conventional end to end"],
                       "networks_only": model_only_conv / model_only_ours,
                       "end_to_end_hs_once_per_batch": ours_b / conv_b},
            "entropy_decoding_share": {"one_at_a_time": share, "hs_once_per_batch": share_batched}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from vitcodec.models.inference import CloudModel

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    package = _package(args)
    model = CloudModel(package, args.device)
    streams = encoded_streams(package, args.n)
    pipelines = Pipelines(model, streams, args.batch, args.device)
    figures = print_report(_time(pipelines.stages(), args.repeats), args, package, pipelines, machine)
    write_results("pipeline", figures, args, argv, machine=machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
