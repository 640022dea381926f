"""Exact integer h_s against the float32 h_s in ONNX Runtime, the edge encode it sits in, and batched entropy
decoding at the zoo's size (issue 11, item 1). Every figure comes from one run, timed rounds interleaved.

1. Exactness cost at 224x224 (``jcc-deit-s-224`` with weights made realistic, as in bench_edge.py), batch 1:
   per image, the same ẑ through
   - integer h_s, default engine (int8 digit planes, ONNX Runtime MatMulInteger, 1 thread; ``codec/exact_gemm.py``),
   - integer h_s, float64 reference engine (numpy BLAS),
   - the float32 h_s in ONNX Runtime (Conv/ConvTranspose/Relu graph of the trained float layers, the same
     ``--threads``), on ẑ in float32;
   per image the median of 2 rounds of 5 back-to-back runs per stage (int8 and float32 in turn; the float64
   reference afterwards, on its own), then the median and p90 over images, and the ratios integer / float32.
   The two integer outputs are checked bit-identical.
2. Edge encode at 224 (``EdgeEncoder.encode_pixels``, one image at a time): median and p90 ms per stage.
3. Entropy decoding of zoo streams (``fmnist-q2``: real Fashion-MNIST test images through the edge encoder) in
   batches of ``--batch``: ``LatentCodec.decode_batch`` per stream with each engine, and where the time goes
   (z range decoding, h_s, y range decoding + ŷ assembly) for the default engine.

Usage::

    .venv/bin/python benchmarks/bench_hs.py --images 24 --threads 2 --zoo-streams 512 --batch 32
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_edge import machine, paper_model, pct, time_stages
from workloads import fashion_mnist_test, photo_crops


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


def interleaved(stages: dict, rounds: int, block: int = 1, warmup: int = 2) -> dict[str, list[float]]:
    """Each round runs every stage `block` times in a row, stages in turn; ms per run for each stage.

    Blocks matter for ONNX Runtime and OpenBLAS: their thread pools keep spinning for a while after a call
    and slow down whatever runs next on these 2 cores, so only the first run of a block pays for the
    previous stage's spinning, and the median drops it.
    """
    for _ in range(warmup):
        for fn in stages.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in stages}
    for _ in range(rounds):
        for name, fn in stages.items():
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def exactness_cost(model, package, pixels: np.ndarray, threads: int) -> dict:
    from vitcodec.codec.exact_gemm import Float64Gemm, Int8LimbGemm
    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.edge.preprocess import normalise
    from vitcodec.models.export import hyper_synthesis_layers

    encoder = EdgeEncoder(package, threads=threads)
    codec = encoder.codec
    fast = codec.hyper.with_engine(Int8LimbGemm())  # the default engine (1 thread per GEMM)
    reference = codec.hyper.with_engine(Float64Gemm())
    session = float32_hs_session(hyper_synthesis_layers(model), codec.N, threads)
    medians = codec.tables.z_medians.astype(np.float64).reshape(-1, 1, 1)
    _, z = encoder.session.run(["y", "z"], {"image": normalise(pixels, encoder.spec)})
    latent = tuple(s // 16 for s in pixels.shape[1:3])
    times: dict[str, list[float]] = {"integer h_s (int8 engine)": [], "integer h_s (float64 reference)": [],
                                     "float32 h_s (ONNX Runtime)": []}
    for zi in z:
        symbols = np.rint(zi.astype(np.float64) - medians).astype(np.int32)[None]
        fixed = fast.fixed_input(symbols, codec.tables.z_medians)
        z_hat = (fixed / float(1 << codec.hyper.act_bits)).astype(np.float32)
        a, b = fast.forward(fixed, latent), reference.forward(fixed, latent)
        if not (np.array_equal(a.means_fixed, b.means_fixed) and np.array_equal(a.scale_indexes, b.scale_indexes)):
            raise SystemExit("int8 and float64 engines disagree: exactness is broken")
        per = interleaved({
            "integer h_s (int8 engine)": lambda: fast.forward(fixed, latent),
            "float32 h_s (ONNX Runtime)": lambda: session.run(None, {"z_hat": z_hat}),
        }, rounds=2, block=5)
        for k, v in per.items():
            times[k].append(float(np.median(v)))
    # the reference last and on its own: OpenBLAS's threads keep spinning after a call and slowed the float32
    # session that followed them by up to 4x in interleaved runs
    for zi in z:
        symbols = np.rint(zi.astype(np.float64) - medians).astype(np.int32)[None]
        fixed = fast.fixed_input(symbols, codec.tables.z_medians)
        per = interleaved({"integer h_s (float64 reference)": lambda: reference.forward(fixed, latent)}, rounds=1,
                          block=5)
        times["integer h_s (float64 reference)"].append(float(np.median(per["integer h_s (float64 reference)"])))
    return {k: {"median": round(pct(v, 50), 3), "p90": round(pct(v, 90), 3)} for k, v in times.items()}


def zoo_decoding(streams_n: int, batch: int, threads: int) -> dict:
    from vitcodec.codec.bitstream import unpack_stream
    from vitcodec.codec.exact_gemm import Float64Gemm, Int8LimbGemm
    from vitcodec.codec.latent_codec import LatentCodec
    from vitcodec.packages import resolve_model
    from vitcodec.edge.encoder import EdgeEncoder

    package = resolve_model("fmnist-q2")
    images = fashion_mnist_test(streams_n)
    if images is None:
        raise SystemExit("zoo decoding needs the Fashion-MNIST test split (dataset-fashion-mnist)")
    encoder = EdgeEncoder(package)
    streams = [r.stream for r in encoder.encode_pixels(images)]
    parts = [unpack_stream(s) for s in streams]
    shape = parts[0][0].latent_shape
    batches = [[(z, y) for _, z, y in parts[i : i + batch]] for i in range(0, len(parts), batch)]
    fast = LatentCodec(encoder.codec.tables, encoder.codec.hyper.with_engine(Int8LimbGemm()))
    reference = LatentCodec(encoder.codec.tables, encoder.codec.hyper.with_engine(Float64Gemm()))
    for b in batches:
        if not np.array_equal(fast.decode_batch(b, shape), reference.decode_batch(b, shape)):
            raise SystemExit("int8 and float64 engines decode differently: exactness is broken")
    breakdown = {"z range decoding": 0.0, "h_s": 0.0, "y range decoding + ŷ": 0.0}

    def split_timed() -> None:
        for b in batches:
            t0 = time.perf_counter()
            z_sym = fast.decode_z(b, shape)
            t1 = time.perf_counter()
            params = fast.hyper.forward(fast.hyper.fixed_input(z_sym, fast.tables.z_medians), shape)
            t2 = time.perf_counter()
            fast.decode_y(b, params, shape)
            t3 = time.perf_counter()
            for key, t in zip(breakdown, (t1 - t0, t2 - t1, t3 - t2)):
                breakdown[key] += t * 1e3

    times = interleaved({
        "decode_batch, int8 engine": lambda: [fast.decode_batch(b, shape) for b in batches],
        "decode_batch, float64 reference": lambda: [reference.decode_batch(b, shape) for b in batches],
        "one stream at a time, int8 engine": lambda: [fast.decode(z, y, shape) for b in batches for z, y in b],
    }, rounds=5)
    rounds = 5
    for _ in range(rounds):
        split_timed()
    per_stream = {k: round(float(np.median(v)) / len(streams), 4) for k, v in times.items()}
    per_stream_parts = {k: round(v / rounds / len(streams), 4) for k, v in breakdown.items()}
    return {"streams": len(streams), "batch": batch,
            "stream_bytes_mean": round(float(np.mean([len(s) for s in streams])), 1),
            "ms_per_stream": per_stream, "breakdown_ms_per_stream": per_stream_parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24, help="224x224 images")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--zoo-streams", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import warnings

    warnings.simplefilter("ignore")
    figures: dict = {"machine": machine(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "threads": args.threads, "images": args.images}
    pixels = photo_crops(max(1, -(-args.images // 8)), seed=1)[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        model, package = paper_model(Path(tmp))
        figures["hs_224_ms"] = exactness_cost(model, package, pixels, args.threads)
        stages = time_stages(package, pixels, args.threads)
        figures["edge_224_ms"] = {k: {"median": round(pct(v, 50), 2), "p90": round(pct(v, 90), 2)}
                                  for k, v in stages.items()}
    figures["zoo"] = zoo_decoding(args.zoo_streams, args.batch, args.threads)
    print_markdown(figures)
    if args.json:
        print(json.dumps(figures, indent=2))


def print_markdown(f: dict) -> None:
    print(f"Machine: {f['machine']}; {f['date']}; ONNX Runtime threads {f['threads']}.\n")
    hs = f["hs_224_ms"]
    base = hs["float32 h_s (ONNX Runtime)"]["median"]
    print(f"h_s at 224x224 (jcc-deit-s-224, batch 1, {f['images']} images; "
          "outputs of both integer engines identical)\n")
    print("| h_s | median ms | p90 ms | / float32 ORT |")
    print("|---|---:|---:|---:|")
    for k, v in hs.items():
        print(f"| {k} | {v['median']:.2f} | {v['p90']:.2f} | {v['median'] / base:.2f}x |")
    print("\nEdge encode at 224x224 (EdgeEncoder.encode_pixels, one image at a time)\n")
    print("| stage | median ms | p90 ms |")
    print("|---|---:|---:|")
    for k, v in f["edge_224_ms"].items():
        print(f"| {k} | {v['median']:.2f} | {v['p90']:.2f} |")
    z = f["zoo"]
    print(f"\nEntropy decoding, zoo fmnist-q2: {z['streams']} real streams ({z['stream_bytes_mean']} B mean), "
          f"batches of {z['batch']}\n")
    print("| path | ms per stream |")
    print("|---|---:|")
    for k, v in z["ms_per_stream"].items():
        print(f"| {k} | {v:.3f} |")
    for k, v in z["breakdown_ms_per_stream"].items():
        print(f"| int8 engine, of which {k} | {v:.3f} |")


if __name__ == "__main__":
    main()
