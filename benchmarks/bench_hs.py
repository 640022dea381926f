"""The exact h_s formats side by side with the float32 h_s in ONNX Runtime (issue 20, item 1), the edge encode
it sits in, and batched entropy decoding at the zoo's size. Every ratio comes from one run, timed rounds
interleaved; the figures go to benchmarks/results/bench_hs_<date>.json as well.

1. h_s at 224x224 (``jcc-deit-s-224`` with weights made realistic, as in bench_edge.py), batch 1 and batch 32:
   the same ẑ through
   - the 8-bit h_s (format 2, `codec/int8_hyper_synthesis.py`: one u8 x s8 GEMM a layer), ONNX Runtime
     ``MatMulInteger`` engine (the default) and, at batch 1, the numpy int32 matmul engine,
   - the format-1 h_s (wide fixed point, int8 digit planes; older packages), default engine and float64
     reference,
   - the float32 h_s in ONNX Runtime (Conv/ConvTranspose/Relu graph of the float layers, ``--threads``);
   the 8-bit h_s is calibrated on the z of other photo crops. Ratios are / float32, median over rounds.
   Also the rate cost of the 8-bit h_s against format 1 on these photos (coded bytes, same CDF tables).
2. The same at the zoo's 28x28 (its preset ``jcc-fmnist-28-s8`` with weights made realistic on Fashion-MNIST test
   images, batches of 1 and ``--batch``: the zoo itself now ships only the 8-bit h_s, so the formats are compared
   on a network that has both), calibrated and measured on other test images.
3. Edge encode at 224 (``EdgeEncoder.encode_pixels``, one image at a time): median and p90 ms per stage.
4. Entropy decoding of zoo streams in batches of ``--batch``: ``LatentCodec.decode_batch`` per stream with the
   zoo's h_s on its default engine and its format's reference engine, and where the time goes (z range
   decoding, h_s, y range decoding + ŷ) on the default engine. Payloads come from checksummed streams, as in
   the server (``checksum_verified``: no leftover re-encode); one row keeps the leftover check, side by side.

Usage::

    .venv/bin/python benchmarks/bench_hs.py --images 24 --threads 2 --zoo-streams 512 --batch 32
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_edge import machine, paper_model, pct, time_stages
from workloads import fashion_mnist_test, photo_crops

from common import interleaved


def float32_hs_session(layers: list[dict], in_channels: int, threads: int):
    """The float h_s as an ONNX Runtime float32 graph (what a float system would run on the edge)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, cur = [], [], "z_hat"
    for i, spec in enumerate(layers):
        out = f"a{i}"
        if spec["kind"] == "relu":
            nodes.append(helper.make_node("Relu", [cur], [out]))
        else:
            w = np.asarray(spec["weight"], np.float32)
            inits += [numpy_helper.from_array(w, f"w{i}"),
                      numpy_helper.from_array(np.asarray(spec["bias"], np.float32), f"b{i}")]
            k, s, p = w.shape[2], int(spec.get("stride", 1)), int(spec.get("padding", 0))
            attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
            if spec["kind"] == "deconv":
                attrs["output_padding"] = [int(spec.get("output_padding", 0))] * 2
            nodes.append(helper.make_node("Conv" if spec["kind"] == "conv" else "ConvTranspose",
                                          [cur, f"w{i}", f"b{i}"], [out], **attrs))
        cur = out
    z_hat = helper.make_tensor_value_info("z_hat", TensorProto.FLOAT, [None, in_channels, None, None])
    graph = helper.make_graph(nodes, "float_hs", [z_hat], [helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def hs_side_by_side(old, new, layers: list[dict], tables, z: np.ndarray, out_hw: tuple[int, int], threads: int,
                    batches: tuple[int, ...], rounds: int, numpy_batches: tuple[int, ...]) -> dict:
    """ms per pass of every h_s on the same ẑ (batch b: the first b of z, tiled when z has fewer), checked
    bit-identical across engines; ratios / the float32 h_s in ONNX Runtime."""
    from vitcodec.codec.exact_gemm import Float64Gemm
    from vitcodec.codec.int8_gemm import NumpyInt8Gemm

    session = float32_hs_session(layers, tables.z_channels, threads)
    medians = tables.z_medians.astype(np.float64).reshape(1, -1, 1, 1)
    old_reference, new_numpy = old.with_engine(Float64Gemm()), new.with_engine(NumpyInt8Gemm())
    figures = {}
    for b in batches:
        zb = np.resize(z, (b, *z.shape[1:]))
        symbols = np.rint(zb.astype(np.float64) - medians).astype(np.int32)
        fixed, q = old.fixed_input(symbols, tables.z_medians), new.fixed_input(symbols, tables.z_medians)
        z_hat = (symbols + medians).astype(np.float32)
        a, r = old.forward(fixed, out_hw), old_reference.forward(fixed, out_hw)
        if not (np.array_equal(a.means_fixed, r.means_fixed) and np.array_equal(a.scale_indexes, r.scale_indexes)):
            raise SystemExit("format-1 engines disagree: exactness is broken")
        stages = {
            "8-bit h_s (format 2), ONNX Runtime MatMulInteger": lambda q=q: new.forward(q, out_hw),
            "format-1 h_s, int8 digit planes": lambda fixed=fixed: old.forward(fixed, out_hw),
            "float32 h_s (ONNX Runtime)": lambda z_hat=z_hat: session.run(None, {"z_hat": z_hat}),
        }
        times = interleaved(stages, rounds=rounds, block=3)
        if b in numpy_batches:
            n = new_numpy.forward(q, out_hw)
            f = new.forward(q, out_hw)
            if not (np.array_equal(n.means_fixed, f.means_fixed) and np.array_equal(n.scale_indexes, f.scale_indexes)):
                raise SystemExit("8-bit h_s engines disagree: exactness is broken")
            times["8-bit h_s, numpy int32 matmul"] = interleaved({"n": lambda q=q: new_numpy.forward(q, out_hw)}, 1,
                                                                 warmup=0)["n"]
        reference = {"r": lambda fixed=fixed: old_reference.forward(fixed, out_hw)}
        times["format-1 h_s, float64 reference"] = interleaved(reference, max(1, rounds // 2), block=3)["r"]
        ms = {k: round(float(np.median(v)), 3) for k, v in times.items()}
        base = ms["float32 h_s (ONNX Runtime)"]
        figures[f"batch {b}"] = {"ms": ms, "ratio_to_float32": {k: round(v / base, 3) for k, v in ms.items()}}
    return figures


def rate_cost(old, new, tables, y: np.ndarray, z: np.ndarray) -> dict:
    """Coded bytes (z + y payloads) of the same latents with the format-1 and the 8-bit h_s."""
    from vitcodec.codec.latent_codec import LatentCodec

    totals = {}
    for name, hyper in (("format 1", old), ("8-bit", new)):
        codec = LatentCodec(tables, hyper)
        totals[name] = sum(len(e.z_payload) + len(e.y_payload) for e in (codec.encode(a, b) for a, b in zip(y, z)))
    return {"images": len(y), "bytes": totals,
            "cost_percent": round(100 * (totals["8-bit"] - totals["format 1"]) / totals["format 1"], 3)}


def preset_figures(preset: str, pixels: np.ndarray, calibration_pixels: np.ndarray, realistic_pixels: np.ndarray,
                   threads: int, rounds: int, batches: tuple[int, ...], numpy_batches: tuple[int, ...]) -> dict:
    """Both exact h_s formats and the float32 one of ``preset`` with weights made realistic on
    ``realistic_pixels``: the 8-bit h_s calibrated on the z of ``calibration_pixels`` as `vitcodec export`
    calibrates it; timed and rate-priced on the latents of ``pixels``."""
    import torch
    from vitcodec.edge.preprocess import normalise
    from vitcodec.models.export import codec_tables
    from vitcodec.models.hs_export import exact_hyper_synthesis, hyper_synthesis_layers
    from vitcodec.models.jcc import EdgeAnalysis
    from vitcodec.models.registry import create_model
    from workloads import make_realistic

    torch.manual_seed(0)
    model = create_model(preset)
    make_realistic(model, realistic_pixels, seed=0)
    model.eval()
    tables = codec_tables(model)
    old = exact_hyper_synthesis(model, tables, "fixed")
    new = exact_hyper_synthesis(model, tables, "int8", calibration_pixels)
    with torch.no_grad():
        y, z = EdgeAnalysis(model)(torch.from_numpy(normalise(pixels, model.config.input_spec())))
    y, z = y.numpy(), z.numpy()
    return {"hs": hs_side_by_side(old, new, hyper_synthesis_layers(model), tables, z, y.shape[2:], threads,
                                  batches, rounds, numpy_batches),
            "rate": rate_cost(old, new, tables, y, z)}


def zoo_decoding(streams_n: int, batch: int) -> dict:
    """Batched decoding of real zoo streams with the zoo's h_s on its default GEMM engine and on the slow
    reference engine of its format (checked identical), and where the time goes."""
    from vitcodec.codec.bitstream import unpack_stream
    from vitcodec.codec.exact_gemm import Float64Gemm, Int8LimbGemm
    from vitcodec.codec.int8_gemm import NumpyInt8Gemm, default_int8_engine
    from vitcodec.codec.int8_hyper_synthesis import Int8HyperSynthesis
    from vitcodec.codec.latent_codec import LatentCodec
    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.packages import resolve_model

    package = resolve_model("fmnist-q2")
    images = fashion_mnist_test(streams_n)
    if images is None:
        raise SystemExit("zoo decoding needs the Fashion-MNIST test split (dataset-fashion-mnist)")
    encoder = EdgeEncoder(package)
    streams = [r.stream for r in encoder.encode_pixels(images)]
    parts = [unpack_stream(s) for s in streams]
    shape = parts[0][0].latent_shape
    batches = [[(z, y) for _, z, y in parts[i : i + batch]] for i in range(0, len(parts), batch)]
    hyper = encoder.codec.hyper
    if isinstance(hyper, Int8HyperSynthesis):  # format 2
        fast_hyper, reference_hyper = hyper.with_engine(default_int8_engine()), hyper.with_engine(NumpyInt8Gemm())
    else:  # format 1
        fast_hyper, reference_hyper = hyper.with_engine(Int8LimbGemm()), hyper.with_engine(Float64Gemm())
    fast = LatentCodec(encoder.codec.tables, fast_hyper)
    reference = LatentCodec(encoder.codec.tables, reference_hyper)
    for b in batches:
        if not np.array_equal(fast.decode_batch(b, shape), reference.decode_batch(b, shape)):
            raise SystemExit("the default and the reference engine decode differently: exactness is broken")
    breakdown = {"z range decoding": 0.0, "h_s": 0.0, "y range decoding + ŷ": 0.0}

    def split_timed() -> None:
        for b in batches:
            t0 = time.perf_counter()
            z_sym = fast.decode_z(b, shape, checksum_verified=True)
            t1 = time.perf_counter()
            params = fast.hyper.forward(fast.hyper.fixed_input(z_sym, fast.tables.z_medians), shape)
            t2 = time.perf_counter()
            fast.decode_y(b, params, shape, checksum_verified=True)
            t3 = time.perf_counter()
            for key, t in zip(breakdown, (t1 - t0, t2 - t1, t3 - t2)):
                breakdown[key] += t * 1e3

    # the server's path: payloads of checksummed streams, so no leftover re-encode (LatentCodec.decode_batch)
    stages = {
        "decode_batch, default engine": lambda: [fast.decode_batch(b, shape, checksum_verified=True)
                                                 for b in batches],
        "decode_batch, default engine, with the leftover check": lambda: [fast.decode_batch(b, shape)
                                                                          for b in batches],
        "decode_batch, reference engine": lambda: [reference.decode_batch(b, shape, checksum_verified=True)
                                                   for b in batches],
        "one stream at a time, default engine": lambda: [fast.decode(z, y, shape, checksum_verified=True)
                                                         for b in batches for z, y in b],
    }
    rounds = 5
    times = interleaved(stages, rounds=rounds)
    for _ in range(rounds):
        split_timed()
    per_stream = {k: round(float(np.median(v)) / len(streams), 4) for k, v in times.items()}
    per_stream_parts = {k: round(v / rounds / len(streams), 4) for k, v in breakdown.items()}
    return {"streams": len(streams), "batch": batch, "hs_format": 2 if isinstance(hyper, Int8HyperSynthesis) else 1,
            "stream_bytes_mean": round(float(np.mean([len(s) for s in streams])), 1),
            "ms_per_stream": per_stream, "breakdown_ms_per_stream": per_stream_parts}


def main() -> None:
    from common import add_results_args, machine_line, write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24, help="224x224 photos (tiled to 32 for batch 32)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads of the float32 h_s")
    parser.add_argument("--zoo-streams", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per h_s (3 runs each)")
    parser.add_argument("--skip-edge", action="store_true", help="leave out the edge-encode stages")
    parser.add_argument("--only-zoo-decoding", action="store_true",
                        help="only part 4, the zoo's batched entropy decoding (a minute instead of ten)")
    add_results_args(parser)
    args = parser.parse_args()
    import warnings

    warnings.simplefilter("ignore")
    figures: dict = {"machine": machine(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "threads": args.threads, "images": args.images}
    if not args.only_zoo_decoding:
        pixels = photo_crops(max(1, -(-args.images // 8)), seed=1)[: args.images]
        calibration = photo_crops(2, seed=2)
        figures["paper_224"] = preset_figures("jcc-deit-s-224", pixels, calibration, photo_crops(1, seed=99),
                                              args.threads, args.rounds, (1, 32), (1,))
        if not args.skip_edge:
            with tempfile.TemporaryDirectory() as tmp:
                _, package = paper_model(Path(tmp))
                stages = time_stages(package, pixels, args.threads)
                figures["edge_224_ms"] = {k: {"median": round(pct(v, 50), 2), "p90": round(pct(v, 90), 2)}
                                          for k, v in stages.items()}
        fmnist = fashion_mnist_test(3 * args.zoo_streams)
        if fmnist is None:
            raise SystemExit("the zoo-size figures need the Fashion-MNIST test split (dataset-fashion-mnist)")
        n = args.zoo_streams
        figures["zoo_28"] = preset_figures("jcc-fmnist-28-s8", fmnist[:n], fmnist[n:2 * n], fmnist[2 * n:],
                                           args.threads, args.rounds, tuple(sorted({1, args.batch})),
                                           (1, args.batch))
    figures["zoo"] = zoo_decoding(args.zoo_streams, args.batch)
    print(machine_line())
    print_markdown(figures)
    write_results("bench_hs", figures, args)


def print_markdown(f: dict) -> None:
    print(f"Machine: {f['machine']}; {f['date']}; float32 h_s with {f['threads']} ONNX Runtime threads, exact "
          "h_s engines with 1.\n")
    for key, title in (("paper_224", "jcc-deit-s-224 at 224x224, realistic weights"),
                       ("zoo_28", "the zoo's preset jcc-fmnist-28-s8 at 28x28, realistic weights")):
        if key not in f:
            continue
        part = f[key]
        for batch, row in part["hs"].items():
            print(f"h_s, {title}, {batch} (outputs of the engines of each format identical)\n")
            print("| h_s | ms per pass | / float32 ORT |")
            print("|---|---:|---:|")
            for name, ms in row["ms"].items():
                print(f"| {name} | {ms:.3f} | {row['ratio_to_float32'][name]:.2f}x |")
            print()
        r = part["rate"]
        print(f"Rate cost of the 8-bit h_s, {title}: {r['bytes']['8-bit']} vs {r['bytes']['format 1']} bytes on "
              f"{r['images']} images: **{r['cost_percent']:+.3f} %**\n")
    if "edge_224_ms" in f:
        print("Edge encode at 224x224 (EdgeEncoder.encode_pixels, one image at a time)\n")
        print("| stage | median ms | p90 ms |")
        print("|---|---:|---:|")
        for k, v in f["edge_224_ms"].items():
            print(f"| {k} | {v['median']:.2f} | {v['p90']:.2f} |")
    z = f["zoo"]
    print(f"\nEntropy decoding, zoo fmnist-q2 (h_s format {z['hs_format']}): {z['streams']} real streams "
          f"({z['stream_bytes_mean']} B mean), batches of {z['batch']}\n")
    print("| path | ms per stream |")
    print("|---|---:|")
    for k, v in z["ms_per_stream"].items():
        print(f"| {k} | {v:.3f} |")
    for k, v in z["breakdown_ms_per_stream"].items():
        print(f"| default engine, of which {k} | {v:.3f} |")


if __name__ == "__main__":
    main()
