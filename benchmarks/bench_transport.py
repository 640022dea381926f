"""What each transport path costs per request: one client, one request at a time, real streams, against the
live server in its own process.

    python benchmarks/bench_transport.py                                  # every path, one server
    python benchmarks/bench_transport.py --baseline-ref main --variant 'tree=' --rounds 5   # A/B of code

Paths: REST v2 JSON (base64 BYTES in, JSON out), REST v2 binary (binary-data extension both ways), REST native
(``POST /v1/classify``), gRPC v2 (unary ``ModelInfer``), gRPC native (unary ``Classify``) and gRPC native
stream (one ``ClassifyStream`` kept open, one request in flight). Also, unless ``--stream-window 0``: the
throughput of one ``ClassifyStream`` with ``--stream-window`` requests in flight (the edge's batch upload).

For each path: the median latency seen by the client, and the **server's CPU time per request** (user + system
of every server thread, from /proc/<pid>/stat, over the measured requests). CPU time is what a transport costs
on a machine shared with other work, and it is far less disturbed by that work than wall time. The reference
is the model's own cost: the same streams decoded and classified one at a time in this process (parse,
decode_payloads, classify_latents: batch 1, as at concurrency 1), in CPU ms per stream; the rest of the
server's CPU is the transport, routing and batching.

Variants (``--variant``, ``--baseline-ref``: server_variants.py) run as servers started at once; every round
measures every path on every variant, the order alternating; medians over rounds. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

from bench_server import HttpConnection
from perf_analyzer import real_streams
from server_variants import Variant, baseline_variant, parse_variant, cpu_model, process_cpu_s, start_variant_server
from vitcodec.cloud.process import ServerProcess

PATHS = ("rest-v2-json", "rest-v2-binary", "rest-native", "grpc-v2", "grpc-native", "grpc-native-stream")
TIMEOUT_S = 30.0


def start_server(package, args, variant: Variant) -> tuple[ServerProcess, int, int]:
    threads = ["--threads", str(args.threads)] if args.threads else []
    return start_variant_server(package, variant, threads, "vitcodec-transport-")


class Clients:
    """One client per path, connected once; `call(path, stream)` sends one request and checks the answer."""

    def __init__(self, model: str, http_port: int, grpc_port: int) -> None:
        import grpc

        from vitcodec.protos import grpc_service_pb2 as v2pb
        from vitcodec.protos import grpc_service_pb2_grpc as v2grpc
        from vitcodec.protos import vitcodec_pb2 as pb
        from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc

        self.model, self.v2pb, self.pb, self.http_port = model, v2pb, pb, http_port
        self.http = HttpConnection(http_port)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.native = pb_grpc.VitCodecStub(self.channel)
        self.kserve = v2grpc.GRPCInferenceServiceStub(self.channel)
        self.stream_call: object | None = None
        self.calls: dict[str, Callable[[bytes], Awaitable[None]]] = {
            "rest-v2-json": self.rest_v2_json, "rest-v2-binary": self.rest_v2_binary,
            "rest-native": self.rest_native, "grpc-v2": self.grpc_v2, "grpc-native": self.grpc_native,
            "grpc-native-stream": self.grpc_native_stream}

    async def fresh_http(self) -> None:
        """A new keep-alive connection (the server closes one left idle for seconds between measurements)."""
        await self.http.close()
        self.http = HttpConnection(self.http_port)

    async def _post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
        status, reply = await self.http.post(path, body, headers)
        if status != 200:
            raise RuntimeError(f"POST {path}: {status} {reply[:200]!r}")
        return reply

    async def rest_v2_json(self, stream: bytes) -> None:
        body = json.dumps({"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [1],
                                       "data": [base64.b64encode(stream).decode()]}]}).encode()
        reply = json.loads(await self._post(f"/v2/models/{self.model}/infer", body))
        assert reply["outputs"], reply

    async def rest_v2_binary(self, stream: bytes) -> None:
        tensor = struct.pack("<I", len(stream)) + stream
        head = json.dumps({"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": len(tensor)}}],
                           "parameters": {"binary_data_output": True}}).encode()
        await self._post(f"/v2/models/{self.model}/infer", head + tensor,
                         {"Inference-Header-Content-Length": str(len(head))})

    async def rest_native(self, stream: bytes) -> None:
        await self._post("/v1/classify", stream)

    async def grpc_v2(self, stream: bytes) -> None:
        request = self.v2pb.ModelInferRequest(model_name=self.model)
        request.inputs.add(name="BITSTREAM", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(struct.pack("<I", len(stream)) + stream)
        await self.kserve.ModelInfer(request, timeout=TIMEOUT_S)

    async def grpc_native(self, stream: bytes) -> None:
        await self.native.Classify(self.pb.ClassifyRequest(stream=stream), timeout=TIMEOUT_S)

    async def grpc_native_stream(self, stream: bytes) -> None:
        if self.stream_call is None:
            self.stream_call = self.native.ClassifyStream()
        call = self.stream_call
        await call.write(self.pb.ClassifyRequest(stream=stream))  # type: ignore[attr-defined]
        response = await call.read()  # type: ignore[attr-defined]
        if response.HasField("error"):
            raise RuntimeError(f"ClassifyStream: {response.error.message}")

    async def close(self) -> None:
        import grpc

        if self.stream_call is not None:
            await self.stream_call.done_writing()  # type: ignore[attr-defined]
            while await self.stream_call.read() is not grpc.aio.EOF:  # type: ignore[attr-defined]
                pass
        await self.http.close()
        await self.channel.close()


async def measure(clients: Clients, path: str, pid: int, streams: list[bytes], n: int) -> tuple[float, float]:
    """(median latency ms, server CPU ms per request) over `n` sequential requests, after a warm-up."""
    call = clients.calls[path]
    await clients.fresh_http()
    for i in range(min(20, n)):
        await call(streams[i % len(streams)])
    latencies = []
    cpu0 = process_cpu_s(pid)
    for i in range(n):
        t0 = time.perf_counter()
        await call(streams[i % len(streams)])
        latencies.append(time.perf_counter() - t0)
    cpu = process_cpu_s(pid) - cpu0
    return statistics.median(latencies) * 1e3, cpu / n * 1e3


async def measure_stream_window(clients: Clients, pid: int, streams: list[bytes], n: int,
                               window: int) -> tuple[float, float]:
    """(images/s, server CPU ms per image) of one ClassifyStream carrying `n` requests, `window` in flight."""
    import grpc

    pb = clients.pb

    async def run(count: int) -> None:
        call = clients.native.ClassifyStream()
        sent = received = 0
        while received < count:
            while sent < count and sent - received < window:
                await call.write(pb.ClassifyRequest(stream=streams[sent % len(streams)], id=str(sent)))
                sent += 1
            response = await call.read()
            if response.HasField("error"):
                raise RuntimeError(f"ClassifyStream: {response.error.message}")
            received += 1
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass

    await run(min(2 * window, n))  # warm-up
    cpu0, t0 = process_cpu_s(pid), time.perf_counter()
    await run(n)
    wall, cpu = time.perf_counter() - t0, process_cpu_s(pid) - cpu0
    return n / wall, cpu / n * 1e3


def model_cpu_ms(package, streams: list[bytes], threads: int, n: int) -> float:
    """CPU ms per stream of the model alone, one stream at a time (the server's work at concurrency 1), with the
    intra-op threads the server uses (``threads``, or the server's default when 0)."""
    import torch

    from vitcodec.cloud.backends import make_loader
    from vitcodec.cloud.settings import Settings
    from vitcodec.codec.bitstream import unpack_stream

    threads = Settings(torch_threads=threads or 0).intra_op_threads
    torch.set_num_threads(threads)
    model = make_loader("torch", "cpu", threads)(package)

    def one(stream: bytes) -> None:
        header, z, y = unpack_stream(stream)
        model.classify_latents(model.decode_payloads([(z, y)], header.latent_shape))

    for s in streams[:20]:
        one(s)
    t0 = time.process_time()
    for i in range(n):
        one(streams[i % len(streams)])
    return (time.process_time() - t0) / n * 1e3


async def run_all(package, args, variants: list[Variant], streams: list[bytes]) -> dict:
    servers: list = []
    started: list = []
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for variant in variants:  # every server before any gRPC client: forking beside a live gRPC can abort
            started.append((variant, *await asyncio.to_thread(start_server, package, args, variant)))
        for variant, server, http_port, grpc_port in started:
            servers.append((variant, server, Clients(package.name, http_port, grpc_port)))
        for round_ in range(args.rounds):
            paths = args.paths if round_ % 2 == 0 else args.paths[::-1]
            for path in paths:
                order = servers if round_ % 2 == 0 else servers[::-1]
                for variant, server, clients in order:
                    print(f"round {round_ + 1}/{args.rounds} {variant.label}: {path} ...", file=sys.stderr, flush=True)
                    results.setdefault((variant.label, path), []).append(
                        await measure(clients, path, server.pid, streams, args.n))
            if args.stream_window:
                for variant, server, clients in (servers if round_ % 2 == 0 else servers[::-1]):
                    print(f"round {round_ + 1}/{args.rounds} {variant.label}: ClassifyStream, {args.stream_window} "
                          f"in flight ...", file=sys.stderr, flush=True)
                    results.setdefault((variant.label, "window"), []).append(await measure_stream_window(
                        clients, server.pid, streams, args.stream_n, args.stream_window))
    finally:
        for _, _, clients in servers:
            await clients.close()
        for _, server, _, _ in started:
            await asyncio.to_thread(server.stop, 60.0)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fmnist-q2", help="model package name or path (default fmnist-q2)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--n", type=int, default=300, help="requests per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=16, help="distinct real streams cycled through")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads of the server and the model reference (0: library default)")
    parser.add_argument("--stream-window", type=int, default=64,
                        help="also: throughput of one ClassifyStream with this many requests in flight (0: skip)")
    parser.add_argument("--stream-n", type=int, default=2000, help="requests of that stream per round")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=SPEC",
                        help="a server configuration to compare (server_variants.py); repeat")
    parser.add_argument("--baseline-ref", metavar="REF", help="add a variant running git commit REF's server code")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    if args.baseline_ref:
        variants.insert(0, baseline_variant(args.baseline_ref))
    variants = variants or [Variant("server")]

    from vitcodec.packages import resolve_model

    package = resolve_model(args.model)
    streams = real_streams(package, args.streams)
    results = asyncio.run(run_all(package, args, variants, streams))
    reference = model_cpu_ms(package, streams, args.threads, args.n)

    cpu = cpu_model()
    print(f"# per-request cost of each transport path — {package.name}, one request at a time\n")
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {cpu} · {os.cpu_count()} CPUs · threads "
          f"{args.threads or 'default'} · {len(streams)} real streams of {statistics.mean(map(len, streams)):.0f} B "
          f"mean · {args.n} requests per path and round · {args.rounds} round(s), medians\n")
    print(f"model alone (parse + decode_payloads + classify_latents, batch 1, in this process): "
          f"**{reference:.2f} CPU ms per stream**\n")
    if len(variants) > 1:
        for variant in variants:
            print(f"- **{variant.label}**: {variant.describe()}")
        print()
    first = variants[0].label
    multi = len(variants) > 1
    print(f"{'| variant ' if multi else ''}| path | p50 latency ms | server CPU ms / request | over the model "
          f"{'| CPU vs ' + first + ' ' if multi else ''}|")
    print("|" + ("---|" if multi else "") + "---|---:|---:|---:|" + ("---:|" if multi else ""))
    for path in args.paths:
        base_cpu = statistics.median(c for _, c in results[(first, path)])
        for variant in variants:
            rows = results[(variant.label, path)]
            latency = statistics.median(lat for lat, _ in rows)
            cpu_ms = statistics.median(c for _, c in rows)
            cells = [path, f"{latency:.2f}", f"{cpu_ms:.2f}", f"{cpu_ms - reference:+.2f}"]
            if multi:
                cells = [variant.label, *cells, f"{cpu_ms / base_cpu:.2f}x"]
            print("| " + " | ".join(cells) + " |")
    if args.stream_window:
        print(f"\nOne native ClassifyStream, {args.stream_window} requests in flight, {args.stream_n} per round:\n")
        print(f"{'| variant ' if multi else ''}| images/s | server CPU ms / image |")
        print("|" + ("---|" if multi else "") + "---:|---:|")
        for variant in variants:
            rows = results[(variant.label, "window")]
            cells = [f"{statistics.median(r for r, _ in rows):.0f}", f"{statistics.median(c for _, c in rows):.2f}"]
            print("| " + " | ".join([variant.label, *cells] if multi else cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
