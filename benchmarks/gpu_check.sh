#!/usr/bin/env bash
# The GPU check of issue 11, one prepared script (< 10 min) for a machine lent an NVIDIA device:
#   the server with --device cuda, decode_failures = 0 through it on real streams, and its throughput
#   against the raw batched decode + classify loop on the same device, printed as a summary.
#
#   benchmarks/gpu_check.sh WHEEL_DIR [--device cuda|cpu] [--n 2000] [--python python3]
#
# WHEEL_DIR holds the cp312 wheels the bare machine lacks (compressai, constriction and whatever else of the
# server's dependencies is missing); they are installed with --no-index into a venv under /tmp that sees the
# system's torch, timm and onnxruntime. WHEEL_DIR "-" installs nothing and uses --python as it is (the CPU
# fallback run on a development machine: `benchmarks/gpu_check.sh - --device cpu --n 200 --python .venv/bin/python`).
# Streams: the first --n Fashion-MNIST test images when the dataset is there, else the bundled samples/.
# The figures also go to benchmarks/results/gpu_check_<date>.json (common.write_results).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=${1:?usage: benchmarks/gpu_check.sh WHEEL_DIR [--device cuda|cpu] [--n 2000] [--python python3]}
shift
DEVICE=cuda
N=2000
PY=python3
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --n) N=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

if [ "$WHEELS" != "-" ]; then
  VENV=/tmp/vitcodec-gpu-venv
  "$PY" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation -e .
  PY="$VENV/bin/python"
fi
"$PY" -c "import torch; print('torch', torch.__version__, '· cuda available:', torch.cuda.is_available())"

export GRPC_VERBOSITY=ERROR
exec timeout 540 "$PY" - "$DEVICE" "$N" <<'PYTHON'
"""Server on DEVICE vs the raw loop on DEVICE; decode_failures counted through the server."""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, "benchmarks")  # the shared helpers: server start, results file
from common import machine_info, write_results
from server_variants import start_server
from vitcodec.codec.bitstream import unpack_stream
from vitcodec.edge.client import ClientError, connect
from vitcodec.edge.encoder import EdgeEncoder
from vitcodec.packages import resolve_model

device, n = sys.argv[1], int(sys.argv[2])
machine = machine_info()
package = resolve_model("fmnist-q2")
encoder = EdgeEncoder(package)
try:
    from vitcodec.models.data import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    streams = [r.stream for r in encoder.encode_pixels(images[:n, :, :, None])]
    labels = labels[:n]
    source = f"{len(streams)} Fashion-MNIST test images"
except Exception as exc:  # no dataset on this machine
    samples = sorted(Path("samples").glob("fmnist-*.png"))
    streams = [encoder.encode_image(p).stream for p in samples]
    labels = None
    source = f"{len(streams)} bundled samples ({type(exc).__name__}: no dataset)"
print(f"streams: {source}, {np.mean([len(s) for s in streams]):.0f} B mean", flush=True)

# raw loop on the device: parse, one decode_payloads per batch of 32, classify_latents
from vitcodec.cloud.backends import make_loader

model = make_loader("torch", device)(package)
def raw_pass():
    out = []
    for i in range(0, len(streams), 32):
        parsed = [unpack_stream(s) for s in streams[i:i + 32]]
        out.append(model.classify_latents(model.decode_payloads([(z, y) for _, z, y in parsed],
                                                                parsed[0][0].latent_shape)))
    return np.concatenate(out)
raw_probs = raw_pass()
times = []
for _ in range(3):
    t0 = time.perf_counter(); raw_pass(); times.append(time.perf_counter() - t0)
raw_rate = len(streams) / float(np.median(times))
del model

server, http_port, grpc_port = start_server(package, ["--device", device], None, "vitcodec-gpu-", timeout=240.0)
try:
    with connect(f"grpc://127.0.0.1:{grpc_port}") as client:
        list(client.classify_many(streams[:64], concurrency=64, top_k=10))  # warm-up
        t0 = time.perf_counter()
        results = dict(client.classify_many(streams, concurrency=64, top_k=10))
        server_rate = len(streams) / (time.perf_counter() - t0)
finally:
    server.stop(60.0)

failures = [i for i, r in results.items() if isinstance(r, ClientError)]
agree = sum(1 for i, r in results.items() if not isinstance(r, ClientError)
            and r.top[0].index == int(np.argmax(raw_probs[i])))
print(f"\n# GPU check — fmnist-q2, device {device}")
print(f"decode_failures through the server: {len(failures)} of {len(streams)}"
      + (f" (first: {results[failures[0]]})" if failures else ""))
print(f"server top-1 equals the raw loop's: {agree} of {len(streams)}")
accuracy = None
if labels is not None:
    correct = sum(1 for i, r in results.items() if not isinstance(r, ClientError) and r.top[0].index == int(labels[i]))
    accuracy = correct / len(streams)
    print(f"accuracy through the server: {accuracy:.4f}")
print(f"raw batched loop on {device}: {raw_rate:.0f} images/s")
print(f"server, native gRPC stream (64 in flight): {server_rate:.0f} images/s = {server_rate / raw_rate:.2f}x the raw loop")
ok = not failures and agree == len(streams)
print("RESULT:", "PASS" if ok else "FAIL")
write_results("gpu_check", {"device": device, "streams": source, "decode_failures": len(failures),
                            "top1_equal_to_raw_loop": agree, "accuracy": accuracy,
                            "raw_loop_images_per_s": raw_rate, "server_images_per_s": server_rate,
                            "server_over_raw_loop": server_rate / raw_rate, "passed": ok},
              {"device": device, "n": n}, [device, str(n)], machine=machine)
sys.exit(0 if ok else 1)
PYTHON
