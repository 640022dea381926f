"""Server throughput and latency (p50 / p99) at 1, 8 and 64 concurrent clients, over REST and gRPC, against the
raw batched model loop on the same machine.

    raw loop:  for each batch of --batch streams: parse, one decode_payloads (h_s once per batch), one classify_latents
    server:    `vitcodec-cloud serve` in its own process; clients in this process (asyncio): a minimal
               keep-alive HTTP/1.1 client POSTing to /v1/classify, and grpc.aio calling VitCodec.Classify
               (add --v2 for the KServe v2 infer endpoints of both transports)

    python benchmarks/bench_server.py --model fmnist-q2 --n 512
    python benchmarks/bench_server.py --backend torch onnxruntime

Every load loop is bounded: --n requests per measurement (after a short warm-up), a timeout on each request.
Prints a markdown table; the last column is the server's throughput over the raw loop's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import struct
import sys
import time
from datetime import datetime, timezone

import numpy as np

from server_variants import Variant, start_variant_server
from vitcodec.cloud.process import ServerProcess

REQUEST_TIMEOUT_S = 60.0


# -- inputs and the raw loop -----------------------------------------------------------------------------

def _images(package, n: int) -> np.ndarray:
    spec = package.input_spec
    if tuple(spec.size) == (28, 28) and spec.channels == 1:
        try:
            from vitcodec.models.data import load_fashion_mnist

            images, _ = load_fashion_mnist("test")
            return images[np.arange(n) % len(images), :, :, None]
        except Exception:
            pass
    rng = np.random.default_rng(0)
    h, w = spec.size
    base = rng.integers(0, 256, (n, h // 8 + 1, w // 8 + 1, spec.channels)).astype(np.uint8)
    return np.repeat(np.repeat(base, 8, 1), 8, 2)[:, :h, :w]


def raw_loop(package, streams: list[bytes], batch: int, device: str, threads: int, repeats: int,
             backend: str = "torch") -> float:
    """Images per second of the plain batched loop (no server, same backend), median of `repeats` runs."""
    import torch

    from vitcodec.cloud.backends import make_loader

    if threads:
        torch.set_num_threads(threads)
    model = make_loader(backend, device, threads)(package)

    from vitcodec.codec.bitstream import unpack_stream

    def run() -> None:
        for i in range(0, len(streams), batch):
            parsed = [unpack_stream(s) for s in streams[i:i + batch]]
            model.classify_latents(model.decode_payloads([(z, y) for _, z, y in parsed], parsed[0][0].latent_shape))

    run()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return len(streams) / statistics.median(times)


# -- the server process --------------------------------------------------------------------------------------

def start_server(package, args, backend: str) -> tuple[ServerProcess, dict[str, int]]:
    """`vitcodec-cloud serve` for `package` on free ports (VITCODEC_* settings of this shell left out), ready;
    returns it with its port per transport."""
    serve_args = ["--device", args.device, "--backend", backend, "--max-batch-size", str(args.batch),
                  "--max-queue-delay-ms", str(args.max_queue_delay_ms),
                  *(["--threads", str(args.threads)] if args.threads else [])]
    server, http_port, grpc_port = start_variant_server(package, Variant("server"), serve_args, "vitcodec-bench-")
    return server, {"rest": http_port, "grpc": grpc_port}


# -- clients ------------------------------------------------------------------------------------------------

class HttpConnection:
    """One keep-alive HTTP/1.1 connection: just enough protocol for POST + Content-Length replies, so the
    load generator costs little CPU next to the server (httpx's per-request cost is several times higher)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _v2_http_body(stream: bytes) -> tuple[bytes, dict[str, str]]:
    tensor = struct.pack("<I", len(stream)) + stream
    head = json.dumps({"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": len(tensor)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + tensor, {"Inference-Header-Content-Length": str(len(head))}


async def run_load(transport: str, port: int, streams: list[bytes], clients: int, n: int, v2: bool,
                   model: str) -> tuple[float, list[float]]:
    """n requests from `clients` concurrent workers; returns (wall seconds, per-request latencies in ms)."""
    latencies: list[float] = []
    counter = {"next": 0}
    failures: list[str] = []

    if transport == "rest":
        conns = [HttpConnection(port) for _ in range(clients)]

        async def call(worker: int, stream: bytes) -> None:
            if v2:
                body, headers = _v2_http_body(stream)
                status, reply = await conns[worker].post(f"/v2/models/{model}/infer", body, headers)
            else:
                status, reply = await conns[worker].post("/v1/classify", stream)
            if status != 200:
                failures.append(f"{status} {reply[:200]!r}")

        async def close() -> None:
            for c in conns:
                await c.close()
    else:
        import grpc

        from vitcodec.protos import grpc_service_pb2 as v2pb
        from vitcodec.protos import grpc_service_pb2_grpc as v2grpc
        from vitcodec.protos import vitcodec_pb2 as pb
        from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc

        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        native, kserve = pb_grpc.VitCodecStub(channel), v2grpc.GRPCInferenceServiceStub(channel)

        async def call(worker: int, stream: bytes) -> None:
            try:
                if v2:
                    request = v2pb.ModelInferRequest(model_name=model)
                    request.inputs.add(name="BITSTREAM", datatype="BYTES", shape=[1])
                    request.raw_input_contents.append(struct.pack("<I", len(stream)) + stream)
                    await kserve.ModelInfer(request, timeout=REQUEST_TIMEOUT_S)
                else:
                    await native.Classify(pb.ClassifyRequest(stream=stream), timeout=REQUEST_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{exc.code().name} {exc.details()}")

        async def close() -> None:
            await channel.close()

    async def worker(index: int, total: int, record: bool) -> None:
        while True:
            i = counter["next"]
            if i >= total:
                return
            counter["next"] += 1
            t0 = time.perf_counter()
            await asyncio.wait_for(call(index, streams[i % len(streams)]), REQUEST_TIMEOUT_S)
            if record:
                latencies.append((time.perf_counter() - t0) * 1e3)

    try:
        warmup = min(max(2 * clients, 16), 128)
        await asyncio.gather(*(worker(w, warmup, False) for w in range(clients)))
        counter["next"] = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w, n, True) for w in range(clients)))
        wall = time.perf_counter() - t0
    finally:
        await close()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return wall, latencies


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fmnist-q2", help="model package name or path (default fmnist-q2)")
    parser.add_argument("--n", type=int, default=256, help="requests per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64], help="concurrent clients")
    parser.add_argument("--transports", nargs="+", default=["rest", "grpc"], choices=["rest", "grpc"])
    parser.add_argument("--v2", action="store_true", help="use the KServe v2 infer endpoints instead of the native API")
    parser.add_argument("--batch", type=int, default=32, help="server max batch size and the raw loop's batch")
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--backend", nargs="+", default=["torch"], choices=["torch", "onnxruntime"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads, raw loop and server (0: default)")
    parser.add_argument("--repeats", type=int, default=3, help="raw-loop runs (median)")
    args = parser.parse_args(argv)

    from vitcodec.packages import resolve_model
    from vitcodec.edge.encoder import EdgeEncoder

    package = resolve_model(args.model)
    streams = [r.stream for r in EdgeEncoder(package).encode_pixels(_images(package, min(args.n, 512)))]
    raw = {backend: raw_loop(package, streams, args.batch, args.device, args.threads, args.repeats, backend)
           for backend in args.backend}

    rows = []
    for backend in args.backend:
        server, ports = start_server(package, args, backend)
        try:
            for transport in args.transports:
                port = ports[transport]
                for clients in args.clients:
                    wall, lat = asyncio.run(run_load(transport, port, streams, clients, args.n, args.v2,
                                                     package.name))
                    rows.append((backend, transport, clients, args.n / wall, _pct(lat, 50),
                                 _pct(lat, 99)))
        finally:
            server.stop(60.0)

    api = "KServe v2 infer" if args.v2 else "native classify"
    print(f"# server vs raw batched loop — {package.name}, {api}\n")
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {platform.node()} · {os.cpu_count()} CPUs · "
          f"device {args.device} · n={args.n} per row · batch {args.batch} · "
          f"queue delay {args.max_queue_delay_ms} ms · "
          f"streams {statistics.mean(len(s) for s in streams):.0f} B mean\n")
    for backend, rate in raw.items():
        print(f"raw batched loop, {backend} (decode + classify, one thread of control): **{rate:.0f} images/s**  ")
    print()
    print("| backend | transport | clients | requests/s | p50 ms | p99 ms | vs raw loop |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for backend, transport, clients, rps, p50, p99 in rows:
        print(f"| {backend} | {transport} | {clients} | {rps:.0f} | {p50:.1f} | {p99:.1f} | "
              f"{rps / raw[backend]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
