"""The TLS ports under abuse, and what TLS costs: one run, two `vitcodec-cloud serve` subprocesses (one with TLS
on both ports, certificates made here with trustme; one plaintext).

1. Abuse: 10,000 raw TCP connections to the HTTPS and gRPC-over-TLS ports (half each), every one sending
   something a TLS server must survive: random bytes, a truncated ClientHello, a whole ClientHello and then
   nothing, plaintext HTTP/1.1, the plaintext HTTP/2 preface, or nothing at all. Reports the server crashes
   (the process exited or stopped answering), the 5xx answers (on the wire and in the server's /metrics) and the
   time taken; then one real classify over each TLS port must still work.
2. Throughput: `--clients` concurrent clients of bench_server.py's load generator (one keep-alive HTTP/1.1
   connection each) POST /v1/classify for `--seconds` seconds over HTTPS, then over plaintext HTTP; prints
   both rates and their ratio. (Until 2026-12-04 this part used httpx clients in threads.)

    python benchmarks/bench_tls.py                                  # 10,000 connections, 8 clients x 5 s
    python benchmarks/bench_tls.py --connections 200 --seconds 1    # a quick check that it works

Exit status 1 when the server crashed, answered 5xx, or a real classify failed after the abuse. Writes the
figures as JSON (benchmarks/results/tls_<date>.json, or --json-out).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import socket
import ssl
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_server import load_run
from server_variants import start_server
from workloads import encoded_streams

from common import add_results_args, machine_info, machine_line, write_results

KINDS = ("garbage", "truncated_hello", "hello_then_silence", "plaintext_http", "plaintext_h2", "connect_close")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def client_hello(server_name: str = "localhost") -> bytes:
    """The bytes of a real TLS ClientHello (what `ssl` sends first), made in memory."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def _payload(kind: str, rng: random.Random, hello: bytes) -> bytes:
    if kind == "garbage":
        return rng.randbytes(rng.randint(1, 4096))
    if kind == "truncated_hello":
        return hello[:rng.randint(1, len(hello) - 1)]
    if kind == "hello_then_silence":
        return hello
    if kind == "plaintext_http":
        return (b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: 4\r\n\r\nVCB\x00")
    if kind == "plaintext_h2":
        return H2_PREFACE + rng.randbytes(rng.randint(0, 64))
    return b""  # connect_close


def _one(port: int, kind: str, seed: int, hello: bytes, read_s: float) -> tuple[str, bytes]:
    """Connect, send the payload, read what comes back for at most `read_s` s; ("refused"|"ok"|..., reply)."""
    rng = random.Random(seed)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return "refused", b""
    reply = b""
    try:
        payload = _payload(kind, rng, hello)
        if payload:
            sock.sendall(payload)
        if kind != "connect_close":
            sock.settimeout(read_s)
            while len(reply) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except TimeoutError:
        pass
    except OSError:  # reset by the server: fine
        pass
    finally:
        sock.close()
    return "ok", reply


def status_5xx(reply: bytes) -> bool:
    """Does a reply carry an HTTP 5xx status line (HTTP/1.x)?"""
    return re.match(rb"HTTP/1\.[01] 5\d\d", reply) is not None


def abuse(ports: list[int], connections: int, workers: int = 16, read_s: float = 0.5,
          seed: int = 0) -> dict[str, Any]:
    """`connections` abusive connections spread over `ports` (round robin) and the kinds in `KINDS`; returns
    counts by kind, refused connections, 5xx replies, and the seconds taken."""
    hello = client_hello()
    jobs = [(ports[i % len(ports)], KINDS[(i // len(ports)) % len(KINDS)], seed * 1_000_003 + i)
            for i in range(connections)]
    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda job: (job[1], *_one(job[0], job[1], job[2], hello, read_s)), jobs))
    elapsed = time.monotonic() - started
    kinds = Counter(kind for kind, _, _ in outcomes)
    return {"connections": connections, "seconds": elapsed, "by_kind": dict(kinds),
            "refused": sum(1 for _, state, _ in outcomes if state == "refused"),
            "replies_5xx": sum(1 for _, _, reply in outcomes if status_5xx(reply))}


def metrics_5xx(metrics_text: str) -> int:
    """Requests the server answered with a 5xx status, from its Prometheus text (vitcodec_requests_total)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("vitcodec_requests_total{") and re.search(r'code="5\d\d"', line):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


# -- servers ------------------------------------------------------------------------------------------------

def _pki(folder: Path) -> dict[str, Path]:
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "server.key"))
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}


def _get(url: str, context: ssl.SSLContext | None) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return response.read().decode()


def throughput(package, http_port: int, grpc_port: int, streams: list[bytes], clients: int, seconds: float,
               context: ssl.SSLContext | None) -> dict[str, float]:
    """`clients` keep-alive connections POSTing /v1/classify back to back for `seconds` s (TLS with `context`)."""
    load = asyncio.run(load_run(package.name, http_port, grpc_port, "rest-native", streams, clients, 30.0,
                                duration=seconds, warmup=clients, ssl_context=context))
    return {"ok": load.answered, "failed": load.lost, "seconds": load.wall_s,
            "per_s": load.answered / load.wall_s if load.wall_s else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fmnist-q2")
    parser.add_argument("--connections", type=int, default=10_000, help="abusive connections in all")
    parser.add_argument("--workers", type=int, default=16, help="abusive connections open at a time")
    parser.add_argument("--clients", type=int, default=8, help="concurrent classify clients")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of classify load per scheme")
    parser.add_argument("--streams", type=int, default=256, help="distinct streams sent in turn")
    add_results_args(parser)
    args = parser.parse_args(argv)

    from vitcodec.edge.client import TlsOptions, connect
    from vitcodec.packages import resolve_model

    machine = machine_info()
    package = resolve_model(args.model)
    streams = encoded_streams(package, args.streams)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vitcodec-bench-tls-") as tmp:
        folder = Path(tmp)
        pki = _pki(folder)
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        tls_server, https_port, grpcs_port = start_server(package, (), None, "vitcodec-bench-tls-", tls=pki)
        https_url = tls_server.http_url
        plain_server = None
        try:
            before = metrics_5xx(_get(https_url + "/metrics", context))
            report = abuse([https_port, grpcs_port], args.connections, args.workers)
            alive = tls_server.proc.poll() is None
            try:
                after = metrics_5xx(_get(https_url + "/metrics", context))
                answering = True
            except OSError:
                after, answering = before, False
            crashes = int(not alive) + int(alive and not answering)
            print(f"abuse: {report['connections']} connections to the HTTPS and gRPC-TLS ports in "
                  f"{report['seconds']:.1f} s ({report['connections'] / report['seconds']:.0f}/s); "
                  f"by kind {report['by_kind']}")
            print(f"abuse: crashes {crashes}, 5xx replies {report['replies_5xx']}, 5xx in /metrics {after - before}, "
                  f"refused connections {report['refused']}")
            if crashes or report["replies_5xx"] or after - before:
                failures.append("the TLS server crashed or answered 5xx under abuse")
            for url in (https_url, f"grpcs://127.0.0.1:{grpcs_port}"):
                try:
                    with connect(url, tls=TlsOptions(ca_cert=pki["ca"])) as client:
                        label = client.classify(streams[0]).label
                    print(f"after abuse: classify over {url.split(':')[0]} -> {label}")
                except Exception as exc:  # noqa: BLE001 - reported, and the run fails
                    failures.append(f"classify over {url} failed after the abuse: {exc}")

            https = throughput(package, https_port, grpcs_port, streams, args.clients, args.seconds, context)
            tls_server.stop(30.0)
            plain_server, http_port, grpc_port = start_server(package, (), None, "vitcodec-bench-plain-")
            http = throughput(package, http_port, grpc_port, streams, args.clients, args.seconds, None)
        finally:
            tls_server.stop(30.0)
            if plain_server is not None:
                plain_server.stop(30.0)
    print(f"\n{machine_line(machine)}\n")
    print(f"throughput, {args.clients} keep-alive clients x {args.seconds:g} s, POST /v1/classify:")
    print("| scheme | answered | failed | per second |")
    print("|---|---:|---:|---:|")
    for name, row in (("https", https), ("http", http)):
        print(f"| {name} | {row['ok']} | {row['failed']} | {row['per_s']:.1f} |")
    ratio = https["per_s"] / http["per_s"] if http["per_s"] else float("nan")
    print(f"https / http throughput ratio: {ratio:.3f}")
    if https["failed"] or http["failed"]:
        failures.append("classify requests failed under load")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    write_results("tls", {"model": package.name, "abuse": report, "crashes": crashes,
                          "metrics_5xx": after - before, "throughput": {"https": https, "http": http},
                          "https_over_http": ratio, "failures": failures}, args, argv, machine=machine)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
