"""Sustained load: 64 concurrent clients for 60 s against `vitcodec-cloud serve`, over gRPC and REST, counting
every request sent and every answer received. A request is lost when it gets no 200 answer (an error status,
a dropped connection or no reply within the timeout); the run fails (exit 1) if any is lost.

    python benchmarks/bench_load.py                          # 64 clients, 60 s per transport, fmnist-q2
    python benchmarks/bench_load.py --clients 64 --duration 60 --transports grpc

Why a time-bounded run next to bench_server.py's fixed-count rows: an edge fleet sends without pause, so what
matters is whether a server under constant pressure answers everything, and its tail latency (p99) while doing
so. Clients are this process's asyncio tasks (the same lean HTTP/1.1 client and grpc.aio stubs as
bench_server.py), each with one request in flight at a time; every wait is bounded (--timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np

from bench_server import HttpConnection, _images, start_server


async def sustained(transport: str, port: int, streams: list[bytes], clients: int, duration: float,
                    timeout: float) -> dict[str, float]:
    """`clients` workers sending back to back for `duration` seconds; returns counts and latency percentiles."""
    latencies: list[float] = []
    counts = {"sent": 0, "answered": 0, "lost": 0}
    first_loss: list[str] = []

    if transport == "rest":
        conns = [HttpConnection(port) for _ in range(clients)]

        async def call(worker: int, stream: bytes) -> bool:
            status, reply = await conns[worker].post("/v1/classify", stream)
            if status != 200:
                first_loss.append(f"HTTP {status} {reply[:200]!r}")
            return status == 200

        async def reset(worker: int) -> None:
            await conns[worker].close()
            conns[worker] = HttpConnection(port)

        async def close() -> None:
            for c in conns:
                await c.close()
    else:
        import grpc

        from vitcodec.protos import vitcodec_pb2 as pb
        from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc

        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.VitCodecStub(channel)

        async def call(worker: int, stream: bytes) -> bool:
            try:
                await stub.Classify(pb.ClassifyRequest(stream=stream), timeout=timeout)
                return True
            except grpc.aio.AioRpcError as exc:
                first_loss.append(f"{exc.code().name} {exc.details()}")
                return False

        async def reset(worker: int) -> None:
            return None

        async def close() -> None:
            await channel.close()

    end = time.monotonic() + duration

    async def worker(index: int) -> None:
        i = index
        while time.monotonic() < end:
            counts["sent"] += 1
            t0 = time.perf_counter()
            try:
                ok = await asyncio.wait_for(call(index, streams[i % len(streams)]), timeout)
            except (asyncio.TimeoutError, OSError, ValueError, IndexError) as exc:
                first_loss.append(f"{type(exc).__name__}: {exc}")
                ok = False
                await reset(index)
            if ok:
                counts["answered"] += 1
                latencies.append((time.perf_counter() - t0) * 1e3)
            else:
                counts["lost"] += 1
            i += clients

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker(w) for w in range(clients)))
    finally:
        await close()
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    return {**counts, "wall_s": wall, "rps": counts["answered"] / wall, "p50": float(np.percentile(lat, 50)),
            "p90": float(np.percentile(lat, 90)), "p99": float(np.percentile(lat, 99)), "max": float(lat.max()),
            "first_loss": first_loss[0] if first_loss else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fmnist-q2")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per transport")
    parser.add_argument("--transports", nargs="+", default=["grpc", "rest"], choices=["grpc", "rest"])
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as lost")
    parser.add_argument("--streams", type=int, default=512, help="distinct Fashion-MNIST streams sent in turn")
    parser.add_argument("--batch", type=int, default=32, help="server max batch size")
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.packages import resolve_model

    package = resolve_model(args.model)
    streams = [r.stream for r in EdgeEncoder(package).encode_pixels(_images(package, args.streams))]
    server, ports = start_server(package, args, "torch")
    rows = []
    try:
        for transport in args.transports:
            rows.append((transport, asyncio.run(sustained(transport, ports[transport], streams, args.clients,
                                                          args.duration, args.timeout))))
    finally:
        server.stop(60.0)

    print(f"# sustained load — {package.name}, {args.clients} clients, {args.duration:.0f} s per transport\n")
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {platform.node()} · {os.cpu_count()} CPUs · "
          f"device {args.device} · server batch {args.batch}, queue delay {args.max_queue_delay_ms} ms · "
          f"timeout {args.timeout:.0f} s\n")
    print("| transport | clients | seconds | sent | answered | lost | requests/s | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lost = 0
    for transport, r in rows:
        lost += int(r["lost"])
        print(f"| {transport} | {args.clients} | {r['wall_s']:.1f} | {r['sent']} | {r['answered']} | {r['lost']} | "
              f"{r['rps']:.0f} | {r['p50']:.1f} | {r['p90']:.1f} | {r['p99']:.1f} | {r['max']:.1f} |")
    for transport, r in rows:
        if r["first_loss"]:
            print(f"\n{transport}: first lost request: {r['first_loss']}")
    print(f"\n{'no request lost' if not lost else f'{lost} requests LOST'}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
