"""The live server under this project's own load generator, in one of three modes (Triton's stock driver is
perf_analyzer.py; this one also speaks the native API, counts every request, and reads the server's CPU):

    sweep (default)  --n requests at each --clients concurrency, per transport, against the raw batched model
                     loop on the same machine: throughput, p50 / p99 and the server's share of the raw loop
    sustained        --clients workers sending back to back for --duration seconds: every request sent and
                     answered is counted, p50 .. max latency; the run fails (exit 1) if any request is lost
    paths            one request at a time on each of --paths, the server's CPU per request (from /proc) against
                     the model's own cost; --variant / --baseline-ref compare server configurations or commits

    python benchmarks/bench_server.py --model fmnist-q2 --n 512                    # sweep at 1, 8, 64 clients
    python benchmarks/bench_server.py --backend torch onnxruntime
    python benchmarks/bench_server.py --mode sustained --clients 64 --duration 60  # was bench_load.py
    python benchmarks/bench_server.py --mode paths --rounds 3 --n 300 --stream-n 2000   # was bench_transport.py
    python benchmarks/bench_server.py --mode paths --baseline-ref main --variant 'tree=' --rounds 5

The raw loop: for each batch of --batch streams, parse, one decode_payloads (h_s once per batch), one
classify_latents, in this process with no server. Clients run in this process (asyncio): a minimal keep-alive
HTTP/1.1 client (httpx costs several times more CPU per request) and grpc.aio stubs. Paths: REST v2 JSON
(base64 BYTES), REST v2 binary (binary-data extension both ways), REST native (``POST /v1/classify``), gRPC v2
(``ModelInfer``), gRPC native (``Classify``) and gRPC native stream (one ``ClassifyStream`` per client, one
request in flight); sweep and sustained use the native paths, or the v2 binary ones with --v2.

Paths mode also measures, unless ``--stream-window 0``, one ``ClassifyStream`` with that many requests in flight
(the edge's batch upload). Its variants (server_variants.py) run as servers started at once; every round
measures every path on every variant, the order alternating; medians over rounds. Linux only (/proc).

Every wait is bounded (--timeout per request). Prints markdown tables and writes the figures as JSON
(benchmarks/results/server_<mode>_<date>.json, or --json-out).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from server_variants import Variant, baseline_variant, parse_variant, process_cpu_s, start_server
from workloads import encoded_streams

from common import add_results_args, machine_info, machine_line, median_seconds, percentile, write_results

MODES = ("sweep", "sustained", "paths")
PATHS = ("rest-v2-json", "rest-v2-binary", "rest-native", "grpc-v2", "grpc-native", "grpc-native-stream")


class RequestFailed(RuntimeError):
    """The server answered, but not with success (an HTTP status other than 200, a gRPC error, a stream error)."""


# -- the raw loop -----------------------------------------------------------------------------------------------

def raw_loop(package, streams: list[bytes], batch: int, device: str, threads: int, repeats: int,
             backend: str = "torch") -> float:
    """Images per second of the plain batched loop (no server, same backend), median of `repeats` runs."""
    import torch
    from vitcodec.cloud.backends import make_loader
    from vitcodec.codec.bitstream import unpack_stream

    if threads:
        torch.set_num_threads(threads)
    model = make_loader(backend, device, threads)(package)

    def run() -> None:
        for i in range(0, len(streams), batch):
            parsed = [unpack_stream(s) for s in streams[i:i + batch]]
            model.classify_latents(model.decode_payloads([(z, y) for _, z, y in parsed], parsed[0][0].latent_shape))

    return len(streams) / median_seconds(run, repeats)


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


# -- clients ------------------------------------------------------------------------------------------------

class HttpConnection:
    """One keep-alive HTTP/1.1 connection (TLS when given a context): just enough protocol for POST with
    Content-Length replies, so the load generator costs little CPU next to the server."""

    def __init__(self, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.port, self.ssl_context = port, ssl_context
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1", self.port, ssl=self.ssl_context,
                server_hostname="127.0.0.1" if self.ssl_context else None)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
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
        self.reader = self.writer = None


class GrpcChannel:
    """A grpc.aio channel to 127.0.0.1:`port` and its stubs, opened on first use: a REST-only run starts no gRPC
    threads (forking a server process beside live gRPC threads can abort it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.channel: Any = None

    def open(self) -> None:
        import grpc
        from vitcodec.protos import grpc_service_pb2 as v2pb
        from vitcodec.protos import grpc_service_pb2_grpc as v2grpc
        from vitcodec.protos import vitcodec_pb2 as pb
        from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc

        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
            self.pb, self.v2pb = pb, v2pb
            self.native = pb_grpc.VitCodecStub(self.channel)
            self.kserve = v2grpc.GRPCInferenceServiceStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None


class Clients:
    """One client's connections: an HTTP connection of its own, a gRPC channel (shared when given), and its own
    ClassifyStream once used. `calls[path](stream)` sends one request and raises `RequestFailed` on an error."""

    def __init__(self, model: str, http_port: int, grpc_port: int, channel: GrpcChannel | None = None,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0) -> None:
        self.model, self.timeout = model, timeout
        self.http_port, self.ssl_context = http_port, ssl_context
        self.http = HttpConnection(http_port, ssl_context)
        self.owns_channel = channel is None
        self.grpc = channel if channel is not None else GrpcChannel(grpc_port)
        self.stream_call: Any = None
        self.calls: dict[str, Callable[[bytes], Awaitable[None]]] = {
            "rest-v2-json": self.rest_v2_json, "rest-v2-binary": self.rest_v2_binary,
            "rest-native": self.rest_native, "grpc-v2": self.grpc_v2, "grpc-native": self.grpc_native,
            "grpc-native-stream": self.grpc_native_stream}

    @classmethod
    def pool(cls, size: int, model: str, http_port: int, grpc_port: int, ssl_context: ssl.SSLContext | None = None,
             timeout: float = 30.0) -> list[Clients]:
        """`size` clients sharing one gRPC channel (the first owns it), each with its own HTTP connection."""
        first = cls(model, http_port, grpc_port, ssl_context=ssl_context, timeout=timeout)
        return [first, *(cls(model, http_port, grpc_port, first.grpc, ssl_context, timeout)
                         for _ in range(size - 1))]

    async def fresh_http(self) -> None:
        """A new keep-alive connection (the server closes one left idle for seconds between measurements)."""
        await self.http.close()
        self.http = HttpConnection(self.http_port, self.ssl_context)

    async def reset(self) -> None:
        """A new HTTP connection and stream, after a failed request."""
        await self.fresh_http()
        if self.stream_call is not None:
            self.stream_call.cancel()
            self.stream_call = None

    async def _post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
        status, reply = await self.http.post(path, body, headers)
        if status != 200:
            raise RequestFailed(f"HTTP {status} {reply[:200]!r}")
        return reply

    async def rest_v2_json(self, stream: bytes) -> None:
        body = json.dumps({"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [1],
                                       "data": [base64.b64encode(stream).decode()]}]}).encode()
        reply = json.loads(await self._post(f"/v2/models/{self.model}/infer", body))
        if not reply.get("outputs"):
            raise RequestFailed(f"no outputs in {reply!r:.200}")

    async def rest_v2_binary(self, stream: bytes) -> None:
        tensor = struct.pack("<I", len(stream)) + stream
        head = json.dumps({"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": len(tensor)}}],
                           "parameters": {"binary_data_output": True}}).encode()
        await self._post(f"/v2/models/{self.model}/infer", head + tensor,
                         {"Inference-Header-Content-Length": str(len(head))})

    async def rest_native(self, stream: bytes) -> None:
        await self._post("/v1/classify", stream)

    async def _grpc(self, call: Awaitable[Any]) -> Any:
        import grpc

        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise RequestFailed(f"{exc.code().name} {exc.details()}") from None

    async def grpc_v2(self, stream: bytes) -> None:
        self.grpc.open()
        request = self.grpc.v2pb.ModelInferRequest(model_name=self.model)
        request.inputs.add(name="BITSTREAM", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(struct.pack("<I", len(stream)) + stream)
        await self._grpc(self.grpc.kserve.ModelInfer(request, timeout=self.timeout))

    async def grpc_native(self, stream: bytes) -> None:
        self.grpc.open()
        request = self.grpc.pb.ClassifyRequest(stream=stream)
        await self._grpc(self.grpc.native.Classify(request, timeout=self.timeout))

    async def grpc_native_stream(self, stream: bytes) -> None:
        self.grpc.open()
        if self.stream_call is None:
            self.stream_call = self.grpc.native.ClassifyStream()
        await self._grpc(self.stream_call.write(self.grpc.pb.ClassifyRequest(stream=stream)))
        response = await self._grpc(self.stream_call.read())
        if response.HasField("error"):
            raise RequestFailed(f"ClassifyStream: {response.error.message}")

    async def close(self) -> None:
        import grpc

        if self.stream_call is not None:
            await self.stream_call.done_writing()
            while await self.stream_call.read() is not grpc.aio.EOF:
                pass
            self.stream_call = None
        await self.http.close()
        if self.owns_channel:
            await self.grpc.close()


# -- load ---------------------------------------------------------------------------------------------------

@dataclass
class Load:
    """What one load run saw: requests sent, answered and lost, latencies of the answered ones (ms), wall time."""
    sent: int = 0
    answered: int = 0
    lost: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    first_loss: str = ""

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {"sent": self.sent, "answered": self.answered, "lost": self.lost, "wall_s": self.wall_s,
                "requests_per_s": self.answered / self.wall_s if self.wall_s else float("nan"),
                "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
                "max_ms": max(lat) if lat else float("nan"), "first_loss": self.first_loss}


async def drive(clients: list[Clients], path: str, streams: Sequence[bytes], timeout: float,
                total: int | None = None, duration: float | None = None) -> Load:
    """Every client sends one request at a time on `path` until `total` requests have gone out, or for
    `duration` seconds; a request with no successful answer within `timeout` is lost (its connection reset)."""
    if (total is None) == (duration is None):
        raise ValueError("give exactly one of total and duration")
    load = Load()
    end = time.monotonic() + duration if duration is not None else float("inf")

    async def worker(client: Clients) -> None:
        call = client.calls[path]
        while time.monotonic() < end and (total is None or load.sent < total):
            i = load.sent
            load.sent += 1
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(call(streams[i % len(streams)]), timeout)
            except (RequestFailed, asyncio.TimeoutError, OSError, ValueError, IndexError,
                    asyncio.IncompleteReadError) as exc:
                load.lost += 1
                load.first_loss = load.first_loss or f"{type(exc).__name__}: {exc}"
                await client.reset()
                continue
            load.answered += 1
            load.latencies_ms.append((time.perf_counter() - t0) * 1e3)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    load.wall_s = time.perf_counter() - t0
    return load


async def load_run(model: str, http_port: int, grpc_port: int, path: str, streams: Sequence[bytes], clients: int,
                   timeout: float, total: int | None = None, duration: float | None = None, warmup: int = 0,
                   ssl_context: ssl.SSLContext | None = None) -> Load:
    """`clients` concurrent clients on `path` (after `warmup` unrecorded requests), then closed."""
    pool = Clients.pool(clients, model, http_port, grpc_port, ssl_context, timeout)
    try:
        if warmup:
            await drive(pool, path, streams, timeout, total=warmup)
        return await drive(pool, path, streams, timeout, total=total, duration=duration)
    finally:
        for client in reversed(pool):  # the channel's owner last
            await client.close()


def api_path(transport: str, v2: bool) -> str:
    """The path a sweep or sustained run drives on `transport` ("rest" or "grpc")."""
    return {("rest", False): "rest-native", ("rest", True): "rest-v2-binary",
            ("grpc", False): "grpc-native", ("grpc", True): "grpc-v2"}[(transport, v2)]


# -- modes --------------------------------------------------------------------------------------------------

def _serve_args(args: argparse.Namespace, backend: str) -> list[str]:
    return ["--device", args.device, "--backend", backend, "--max-batch-size", str(args.batch),
            "--max-queue-delay-ms", str(args.max_queue_delay_ms),
            *(["--threads", str(args.threads)] if args.threads else [])]


def run_sweep(package, args: argparse.Namespace, streams: list[bytes], machine: dict) -> tuple[dict[str, Any], int]:
    raw = {backend: raw_loop(package, streams, args.batch, args.device, args.threads, args.repeats, backend)
           for backend in args.backend}
    rows = []
    for backend in args.backend:
        server, http_port, grpc_port = start_server(package, _serve_args(args, backend))
        try:
            for transport in args.transports:
                for clients in args.clients:
                    load = asyncio.run(load_run(package.name, http_port, grpc_port, api_path(transport, args.v2),
                                                streams, clients, args.timeout, total=args.n,
                                                warmup=min(max(2 * clients, 16), 128)))
                    if load.lost:
                        raise RuntimeError(f"{load.lost} requests failed, e.g. {load.first_loss}")
                    rows.append({"backend": backend, "transport": transport, "clients": clients,
                                 **load.summary(), "vs_raw_loop": load.summary()["requests_per_s"] / raw[backend]})
        finally:
            server.stop(60.0)

    api = "KServe v2 infer" if args.v2 else "native classify"
    print(f"# server vs raw batched loop — {package.name}, {api}\n")
    print(f"{machine_line(machine)} · device {args.device} · n={args.n} per row · batch {args.batch} · "
          f"queue delay {args.max_queue_delay_ms} ms · streams {statistics.mean(map(len, streams)):.0f} B mean\n")
    for backend, rate in raw.items():
        print(f"raw batched loop, {backend} (decode + classify, one thread of control): **{rate:.0f} images/s**  ")
    print()
    print("| backend | transport | clients | requests/s | p50 ms | p99 ms | vs raw loop |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backend']} | {r['transport']} | {r['clients']} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['vs_raw_loop']:.2f}x |")
    return {"api": api, "raw_loop_images_per_s": raw, "rows": rows}, 0


def run_sustained(package, args: argparse.Namespace, streams: list[bytes],
                  machine: dict) -> tuple[dict[str, Any], int]:
    rows = []
    for backend in args.backend:
        server, http_port, grpc_port = start_server(package, _serve_args(args, backend))
        try:
            for transport in args.transports:
                for clients in args.clients:
                    load = asyncio.run(load_run(package.name, http_port, grpc_port, api_path(transport, args.v2),
                                                streams, clients, args.timeout, duration=args.duration))
                    rows.append({"backend": backend, "transport": transport, "clients": clients, **load.summary()})
        finally:
            server.stop(60.0)

    clients_text = ", ".join(map(str, args.clients))
    print(f"# sustained load — {package.name}, {clients_text} clients, {args.duration:.0f} s per transport\n")
    print(f"{machine_line(machine)} · device {args.device} · server batch {args.batch}, queue delay "
          f"{args.max_queue_delay_ms} ms · timeout {args.timeout:.0f} s\n")
    multi = len(args.backend) > 1
    print(("| backend " if multi else "") + "| transport | clients | seconds | sent | answered | lost | requests/s | "
          "p50 ms | p90 ms | p99 ms | max ms |")
    print(("|---" if multi else "") + "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print((f"| {r['backend']} " if multi else "") +
              f"| {r['transport']} | {r['clients']} | {r['wall_s']:.1f} | {r['sent']} | {r['answered']} | "
              f"{r['lost']} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['max_ms']:.1f} |")
    for r in rows:
        if r["first_loss"]:
            print(f"\n{r['transport']}: first lost request: {r['first_loss']}")
    lost = sum(r["lost"] for r in rows)
    print(f"\n{'no request lost' if not lost else f'{lost} requests LOST'}")
    return {"rows": rows, "lost": lost}, 1 if lost else 0


async def measure_path(clients: Clients, path: str, pid: int, streams: list[bytes], n: int) -> tuple[float, float]:
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

    clients.grpc.open()
    pb = clients.grpc.pb

    async def run(count: int) -> None:
        call = clients.grpc.native.ClassifyStream()
        sent = received = 0
        while received < count:
            while sent < count and sent - received < window:
                await call.write(pb.ClassifyRequest(stream=streams[sent % len(streams)], id=str(sent)))
                sent += 1
            response = await call.read()
            if response.HasField("error"):
                raise RequestFailed(f"ClassifyStream: {response.error.message}")
            received += 1
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass

    await run(min(2 * window, n))  # warm-up
    cpu0, t0 = process_cpu_s(pid), time.perf_counter()
    await run(n)
    wall, cpu = time.perf_counter() - t0, process_cpu_s(pid) - cpu0
    return n / wall, cpu / n * 1e3


async def _paths_rounds(package, args: argparse.Namespace, variants: list[Variant],
                        streams: list[bytes]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    serve_args = ["--device", args.device, "--backend", args.backend[0],
                  *(["--threads", str(args.threads)] if args.threads else [])]
    started: list[tuple[Variant, Any, int, int]] = []
    servers: list[tuple[Variant, Any, Clients]] = []
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for variant in variants:  # every server before any gRPC client: forking beside a live gRPC can abort
            started.append((variant, *await asyncio.to_thread(start_server, package, serve_args, variant,
                                                              "vitcodec-transport-")))
        for variant, server, http_port, grpc_port in started:
            servers.append((variant, server, Clients(package.name, http_port, grpc_port, timeout=args.timeout)))
        for round_ in range(args.rounds):
            forward = round_ % 2 == 0
            for path in (args.paths if forward else args.paths[::-1]):
                for variant, server, clients in (servers if forward else servers[::-1]):
                    print(f"round {round_ + 1}/{args.rounds} {variant.label}: {path} ...", file=sys.stderr, flush=True)
                    results.setdefault((variant.label, path), []).append(
                        await measure_path(clients, path, server.pid, streams, args.n))
            if args.stream_window:
                for variant, server, clients in (servers if forward else servers[::-1]):
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


def run_paths(package, args: argparse.Namespace, streams: list[bytes], machine: dict) -> tuple[dict[str, Any], int]:
    variants = [parse_variant(v) for v in args.variant]
    if args.baseline_ref:
        variants.insert(0, baseline_variant(args.baseline_ref))
    variants = variants or [Variant("server")]
    results = asyncio.run(_paths_rounds(package, args, variants, streams))
    reference = model_cpu_ms(package, streams, args.threads, args.n)

    print(f"# per-request cost of each transport path — {package.name}, one request at a time\n")
    print(f"{machine_line(machine)} · threads {args.threads or 'default'} · {len(streams)} real streams of "
          f"{statistics.mean(map(len, streams)):.0f} B mean · {args.n} requests per path and round · "
          f"{args.rounds} round(s), medians\n")
    print(f"model alone (parse + decode_payloads + classify_latents, batch 1, in this process): "
          f"**{reference:.2f} CPU ms per stream**\n")
    multi = len(variants) > 1
    if multi:
        for variant in variants:
            print(f"- **{variant.label}**: {variant.describe()}")
        print()
    first = variants[0].label
    print(f"{'| variant ' if multi else ''}| path | p50 latency ms | server CPU ms / request | over the model "
          f"{'| CPU vs ' + first + ' ' if multi else ''}|")
    print("|" + ("---|" if multi else "") + "---|---:|---:|---:|" + ("---:|" if multi else ""))
    rows = []
    for path in args.paths:
        base_cpu = statistics.median(c for _, c in results[(first, path)])
        for variant in variants:
            measured = results[(variant.label, path)]
            latency = statistics.median(lat for lat, _ in measured)
            cpu_ms = statistics.median(c for _, c in measured)
            rows.append({"variant": variant.label, "path": path, "p50_ms": latency, "server_cpu_ms": cpu_ms,
                         "over_model_ms": cpu_ms - reference, "cpu_vs_first": cpu_ms / base_cpu})
            cells = [path, f"{latency:.2f}", f"{cpu_ms:.2f}", f"{cpu_ms - reference:+.2f}"]
            if multi:
                cells = [variant.label, *cells, f"{cpu_ms / base_cpu:.2f}x"]
            print("| " + " | ".join(cells) + " |")
    windows = []
    if args.stream_window:
        print(f"\nOne native ClassifyStream, {args.stream_window} requests in flight, {args.stream_n} per round:\n")
        print(f"{'| variant ' if multi else ''}| images/s | server CPU ms / image |")
        print("|" + ("---|" if multi else "") + "---:|---:|")
        for variant in variants:
            measured = results[(variant.label, "window")]
            rate, cpu_ms = statistics.median(r for r, _ in measured), statistics.median(c for _, c in measured)
            windows.append({"variant": variant.label, "images_per_s": rate, "server_cpu_ms": cpu_ms})
            cells = [f"{rate:.0f}", f"{cpu_ms:.2f}"]
            print("| " + " | ".join([variant.label, *cells] if multi else cells) + " |")
    return {"model_cpu_ms_per_stream": reference,
            "variants": [{"label": v.label, "config": v.describe()} for v in variants],
            "rows": rows, "stream_window": windows}, 0


# -- the command line ---------------------------------------------------------------------------------------

MODE_DEFAULTS = {  # option: (sweep, sustained, paths)
    "n": (256, None, 300), "clients": ([1, 8, 64], [64], None), "streams": (None, 512, 16),
    "transports": (["rest", "grpc"], ["grpc", "rest"], None),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, default="sweep", help="what to measure (see above)")
    parser.add_argument("--model", default="fmnist-q2", help="model package name or path (default fmnist-q2)")
    parser.add_argument("--n", type=int, help="sweep: requests per measurement (256); paths: per path and round (300)")
    parser.add_argument("--clients", type=int, nargs="+", help="concurrent clients (sweep: 1 8 64; sustained: 64)")
    parser.add_argument("--transports", nargs="+", choices=["rest", "grpc"], help="sweep and sustained")
    parser.add_argument("--v2", action="store_true",
                        help="sweep and sustained: the KServe v2 infer endpoints instead of the native API")
    parser.add_argument("--duration", type=float, default=60.0, help="sustained: seconds of load per transport")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as lost")
    parser.add_argument("--streams", type=int, help="distinct real streams sent in turn (sweep: min(n, 512); "
                                                    "sustained: 512; paths: 16)")
    parser.add_argument("--batch", type=int, default=32, help="server max batch size and the raw loop's batch")
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--backend", nargs="+", default=["torch"], choices=["torch", "onnxruntime", "onnxruntime-int8"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads of the server and of the in-process reference (0: default)")
    parser.add_argument("--repeats", type=int, default=3, help="sweep: raw-loop runs (median)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS, help="paths: which to measure")
    parser.add_argument("--rounds", type=int, default=3, help="paths: rounds over every path and variant")
    parser.add_argument("--stream-window", type=int, default=64,
                        help="paths: also one ClassifyStream with this many requests in flight (0: skip)")
    parser.add_argument("--stream-n", type=int, default=2000, help="paths: requests of that stream per round")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=SPEC",
                        help="paths: a server configuration to compare (server_variants.py); repeat")
    parser.add_argument("--baseline-ref", metavar="REF", help="paths: add a variant running git commit REF's server")
    add_results_args(parser)
    args = parser.parse_args(argv)
    column = MODES.index(args.mode)
    for name, defaults in MODE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults[column])
    if args.mode != "paths" and (args.variant or args.baseline_ref):
        parser.error("--variant and --baseline-ref apply to --mode paths")
    if args.mode == "paths" and len(args.backend) > 1:
        parser.error("--mode paths measures one --backend at a time")
    if args.streams is None:
        args.streams = min(args.n, 512)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from vitcodec.packages import resolve_model

    machine = machine_info()  # before the load: its load average says how quiet the machine was
    package = resolve_model(args.model)
    streams = encoded_streams(package, args.streams)
    run = {"sweep": run_sweep, "sustained": run_sustained, "paths": run_paths}[args.mode]
    results, status = run(package, args, streams, machine)
    results |= {"model": package.name, "streams": len(streams),
                "stream_bytes_mean": statistics.mean(map(len, streams))}
    write_results(f"server_{args.mode}", results, args, argv, machine=machine)
    return status


if __name__ == "__main__":
    sys.exit(main())
