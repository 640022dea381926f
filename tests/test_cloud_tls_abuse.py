"""The TLS ports under abuse: ~300 raw TCP connections to the HTTPS and gRPC-over-TLS ports of a real server
(certificates made here with trustme), sending random bytes, truncated ClientHellos, a ClientHello and then
nothing, plaintext HTTP/1.1, the plaintext HTTP/2 preface, or nothing. The server must stay up, answer no 5xx
(on the wire or in its /metrics), and still classify over both TLS ports afterwards; the whole run is bounded
in time. `benchmarks/bench_tls.py` does the same with 10,000 connections (the abuse helpers are its own)."""

from __future__ import annotations

import ssl
import time
import urllib.request

import pytest
from bench_tls import KINDS, abuse, client_hello, metrics_5xx, status_5xx
from vitcodec.edge.client import RetryPolicy, TlsOptions, connect

pytest.importorskip("trustme")

CONNECTIONS = 300
BUDGET_S = 60.0  # 300 connections take a few seconds; a server that stalls them would blow this


@pytest.fixture(scope="module")
def pki(server_pki):
    return server_pki


@pytest.fixture(scope="module")
def tls_server(start_server, pki):
    return start_server(models=["fmnist-q2"], tls_cert=pki / "server.pem", tls_key=pki / "server.key")


def _metrics(server, context: ssl.SSLContext) -> str:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10, context=context) as response:
        return response.read().decode()


def test_helpers_make_what_they_say():
    hello = client_hello()
    assert hello[0] == 0x16 and hello[5] == 0x01  # a TLS handshake record holding a ClientHello
    assert status_5xx(b"HTTP/1.1 503 Service Unavailable\r\n") and not status_5xx(b"HTTP/1.1 400 Bad Request\r\n")
    assert not status_5xx(b"\x15\x03\x03\x00\x02\x02\x28")  # a TLS alert


def test_tls_ports_survive_garbage_and_still_classify(tls_server, pki, edge_streams):
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    http_port = int(tls_server.http_url.rsplit(":", 1)[1])
    grpc_port = int(tls_server.grpc_url.rsplit(":", 1)[1])
    before = metrics_5xx(_metrics(tls_server, context))
    started = time.monotonic()
    report = abuse([http_port, grpc_port], CONNECTIONS, workers=16, read_s=0.5, seed=7)
    assert time.monotonic() - started < BUDGET_S, report
    assert report["refused"] == 0, report  # the server kept accepting connections throughout
    assert set(report["by_kind"]) == set(KINDS) and sum(report["by_kind"].values()) == CONNECTIONS
    assert report["replies_5xx"] == 0, report
    assert metrics_5xx(_metrics(tls_server, context)) == before
    for url in (tls_server.http_url, tls_server.grpc_url):
        with connect(url, tls=TlsOptions(ca_cert=pki / "ca.pem"), retry=RetryPolicy(total_s=0)) as client:
            assert client.ready(), url
            assert client.classify(edge_streams[0]).model == "fmnist-q2", url
