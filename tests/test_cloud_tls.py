"""TLS and mutual TLS on both transports, end to end: certificates made here (a CA, a server certificate for
127.0.0.1/localhost, a client certificate from the CA, one from another CA), real servers on 127.0.0.1, the
edge client and ``vitcodec-edge`` against them; clear one-line errors for every TLS mistake; certificate
reload; startup errors of ``vitcodec-cloud serve`` for unusable files."""

from __future__ import annotations

import datetime
import logging
import os
import signal
import ssl
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner
from vitcodec.edge.client import ClientError, RetryPolicy, TlsFailure, TlsOptions, connect

if TYPE_CHECKING:
    from trustme import LeafCert

trustme = pytest.importorskip("trustme")

NO_RETRY = RetryPolicy(total_s=0)


def _write_pair(cert: LeafCert, folder: Path, name: str) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """PEM files: ``ca``; ``server``/``server_key`` (127.0.0.1, localhost; signed by ca); ``client``/
    ``client_key`` (CN edge-7, signed by ca); ``intruder``/``intruder_key`` (signed by another CA) and that
    CA, ``other_ca``. The server files are copies a test may overwrite (`reload`) and must put back."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    server, server_key = _write_pair(ca.issue_cert("127.0.0.1", "localhost"), folder, "server")
    client, client_key = _write_pair(ca.issue_cert("edge-7.example", common_name="edge-7"), folder, "client")
    intruder, intruder_key = _write_pair(other.issue_cert("intruder.example", common_name="intruder"), folder,
                                         "intruder")
    return SimpleNamespace(folder=folder, ca_obj=ca, ca=folder / "ca.pem", other_ca=folder / "other-ca.pem",
                           server=server, server_key=server_key, client=client, client_key=client_key,
                           intruder=intruder, intruder_key=intruder_key)


@pytest.fixture(scope="module")
def tls_server(start_server, pki):
    """TLS on both transports, no client certificates."""
    return start_server(models=["fmnist-q2"], tls_cert=pki.server, tls_key=pki.server_key)


@pytest.fixture(scope="module")
def mtls_server(start_server, pki):
    """Mutual TLS on both transports, access logs on (identity in them)."""
    return start_server(models=["fmnist-q2"], tls_cert=pki.server, tls_key=pki.server_key, tls_client_ca=pki.ca,
                        access_log=True, log_level="info")


def _urls(server) -> list[str]:
    return [server.http_url, server.grpc_url]


# -- serving ---------------------------------------------------------------------------------------------

def test_urls_say_tls(tls_server):
    assert tls_server.http_url.startswith("https://127.0.0.1:")
    assert tls_server.grpc_url.startswith("grpcs://127.0.0.1:")


def test_classify_over_tls_gives_the_plaintext_label(tls_server, cloud_server, pki, edge_streams):
    with connect(cloud_server.http_url) as plain:
        expected = [plain.classify(s).label for s in edge_streams[:4]]
    for url in _urls(tls_server):
        with connect(url, tls=TlsOptions(ca_cert=pki.ca), retry=NO_RETRY) as client:
            assert client.ready()
            assert [client.classify(s).label for s in edge_streams[:2]] == expected[:2], url
            many = dict(client.classify_many(edge_streams[:4], concurrency=2))
            assert [many[i].label for i in range(4)] == expected, url


def test_mtls_with_the_right_certificate_works_and_names_the_client(mtls_server, pki, edge_streams, caplog):
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    caplog.set_level(logging.INFO, logger="vitcodec.cloud.grpc.access")
    good = TlsOptions(ca_cert=pki.ca, client_cert=pki.client, client_key=pki.client_key)
    combined = pki.folder / "client-and-key.pem"  # the key may also sit in the certificate file
    combined.write_bytes(pki.client.read_bytes() + pki.client_key.read_bytes())
    for url in _urls(mtls_server):
        with connect(url, tls=good, retry=NO_RETRY) as client:
            assert client.classify(edge_streams[0]).model == "fmnist-q2"
        with connect(url, tls=TlsOptions(ca_cert=pki.ca, client_cert=combined), retry=NO_RETRY) as client:
            assert client.classify(edge_streams[0]).model == "fmnist-q2"
    deadline = time.monotonic() + 5  # the server logs from its own thread
    lines: dict[str, str] = {}
    while time.monotonic() < deadline:
        lines = {r.name: r.getMessage() for r in caplog.records if "classify" in r.getMessage().lower()}
        if {"uvicorn.access", "vitcodec.cloud.grpc.access"} <= set(lines):
            break
        time.sleep(0.05)
    assert "[edge-7]" in lines["uvicorn.access"] and "POST /v1/classify" in lines["uvicorn.access"]
    assert "[edge-7]" in lines["vitcodec.cloud.grpc.access"] and "/vitcodec.v1.VitCodec/Classify" in \
        lines["vitcodec.cloud.grpc.access"]


@pytest.mark.parametrize("transport", [0, 1], ids=["http", "grpc"])
def test_mtls_refuses_clients_without_a_good_certificate(mtls_server, pki, edge_streams, transport):
    url = _urls(mtls_server)[transport]
    started = time.monotonic()
    with connect(url, tls=TlsOptions(ca_cert=pki.ca), retry=RetryPolicy(total_s=5)) as client:
        with pytest.raises(TlsFailure) as info:
            client.classify(edge_streams[0])
    assert "requires a client certificate" in info.value.message and not info.value.retryable
    intruder = TlsOptions(ca_cert=pki.ca, client_cert=pki.intruder, client_key=pki.intruder_key)
    with connect(url, tls=intruder, retry=RetryPolicy(total_s=5)) as client:
        with pytest.raises(TlsFailure) as info:
            client.classify(edge_streams[0])
    assert "refused this client's certificate" in info.value.message
    assert time.monotonic() - started < 4  # TLS failures are not retried


@pytest.mark.parametrize("transport", [0, 1], ids=["http", "grpc"])
def test_plaintext_client_to_a_tls_port_is_told_to_use_tls(tls_server, edge_streams, transport):
    url = _urls(tls_server)[transport]
    plain = url.replace("https://", "http://").replace("grpcs://", "grpc://")
    with connect(plain, retry=RetryPolicy(total_s=5)) as client:
        with pytest.raises(TlsFailure) as info:
            client.classify(edge_streams[0])
    secure = url.split("://")[0]
    assert f"speaks TLS, this client does not; use {secure}://" in info.value.message


@pytest.mark.parametrize("transport", [0, 1], ids=["http", "grpc"])
def test_tls_client_to_a_plaintext_port(cloud_server, pki, edge_streams, transport):
    url = _urls(cloud_server)[transport].replace("http://", "https://").replace("grpc://", "grpcs://")
    with connect(url, tls=TlsOptions(ca_cert=pki.ca), retry=RetryPolicy(total_s=5)) as client:
        with pytest.raises(TlsFailure) as info:
            client.classify(edge_streams[0])
    assert "does not speak TLS" in info.value.message, info.value.message


@pytest.mark.parametrize("transport", [0, 1], ids=["http", "grpc"])
def test_unknown_ca_is_a_clear_error(tls_server, pki, edge_streams, transport):
    with connect(_urls(tls_server)[transport], tls=TlsOptions(ca_cert=pki.other_ca), retry=NO_RETRY) as client:
        with pytest.raises(TlsFailure) as info:
            client.classify(edge_streams[0])
    assert "is not trusted" in info.value.message and "--ca-cert" in info.value.message


def test_client_identity_reaches_the_handlers():
    """The identity of each TLS connection is put where a FastAPI handler reads it (request.state)."""
    import asyncio

    from vitcodec.cloud.tls import ClientIdentityMiddleware, PeerIdentities, identity_from_peercert

    assert identity_from_peercert({"subject": ((("organizationName", "o"),), (("commonName", "edge-7"),))}) \
        == "edge-7"
    assert identity_from_peercert({"subject": ((("organizationName", "o"),),),
                                   "subjectAltName": (("IP Address", "10.0.0.1"), ("DNS", "edge-8.example"))}) \
        == "edge-8.example"
    assert identity_from_peercert({}) is None
    peers = PeerIdentities()
    peers.add(("127.0.0.1", 5000), "edge-7")
    seen = {}

    async def app(scope, receive, send):
        seen["identity"] = scope["state"]["client_identity"]

    middleware = ClientIdentityMiddleware(app, peers)
    asyncio.run(middleware({"type": "http", "client": ("127.0.0.1", 5000), "state": {}}, None, None))
    assert seen["identity"] == "edge-7"
    peers.discard(("127.0.0.1", 5000))
    asyncio.run(middleware({"type": "http", "client": ("127.0.0.1", 5000), "state": {}}, None, None))
    assert seen["identity"] is None


# -- reload ----------------------------------------------------------------------------------------------

def test_reload_serves_the_new_certificate_to_new_connections(tls_server, pki, edge_streams):
    """A new key pair from a new CA, for "localhost" only: after the reload new connections on both transports
    get it (trusted only with the new CA, and not valid for 127.0.0.1); a broken file keeps the old one."""
    original = pki.server.read_bytes(), pki.server_key.read_bytes()
    new_ca = trustme.CA()
    new_ca_path = pki.folder / "new-ca.pem"
    new_ca.cert_pem.write_to_path(str(new_ca_path))
    fresh = new_ca.issue_cert("localhost")
    try:
        fresh.cert_chain_pems[0].write_to_path(str(pki.server))
        fresh.private_key_pem.write_to_path(str(pki.server_key))
        assert tls_server.reload_tls()
        served = ssl.get_server_certificate(("127.0.0.1", tls_server.server.http_port))
        assert served.strip() == fresh.cert_chain_pems[0].bytes().decode().strip()
        for url in _urls(tls_server):
            with connect(url, tls=TlsOptions(ca_cert=pki.ca), retry=NO_RETRY) as client:
                with pytest.raises(TlsFailure, match="is not trusted"):
                    client.classify(edge_streams[0])
            with connect(url, tls=TlsOptions(ca_cert=new_ca_path), retry=NO_RETRY) as client:
                with pytest.raises(TlsFailure, match="not valid for that name"):
                    client.classify(edge_streams[0])
            with connect(url.replace("127.0.0.1", "localhost"), tls=TlsOptions(ca_cert=new_ca_path),
                         retry=NO_RETRY) as client:
                assert client.classify(edge_streams[0]).model == "fmnist-q2"
        pki.server_key.write_bytes(b"not a key")  # a broken reload keeps what is served
        assert not tls_server.reload_tls()
        served = ssl.get_server_certificate(("127.0.0.1", tls_server.server.http_port))
        assert served.strip() == fresh.cert_chain_pems[0].bytes().decode().strip()
    finally:
        pki.server.write_bytes(original[0])
        pki.server_key.write_bytes(original[1])
        assert tls_server.reload_tls()
    with connect(tls_server.grpc_url, tls=TlsOptions(ca_cert=pki.ca), retry=NO_RETRY) as client:
        assert client.classify(edge_streams[0]).model == "fmnist-q2"


@pytest.mark.timeout(240)
def test_sighup_reloads_the_certificate_of_a_serve_process(model_repo, pki, tmp_path):
    """`vitcodec-cloud serve` as a process: SIGHUP re-reads the files; new connections get the new certificate."""
    from vitcodec.cloud.process import ServerProcess, free_port

    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(pki.server.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    http_port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITCODEC_")}
    server = ServerProcess(["vitcodec-cloud", "serve", "--model-repo", str(model_repo), "--model", "fmnist-q2",
                            "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                            "--tls-cert", str(cert), "--tls-key", str(key), "--threads", "1"],
                           tmp_path / "serve.log", f"https://127.0.0.1:{http_port}", env=env,
                           ssl_context=ssl.create_default_context(cafile=str(pki.ca)))
    server.start()
    try:
        server.wait_ready(180, "fmnist-q2")
        fresh = pki.ca_obj.issue_cert("127.0.0.1")
        fresh.cert_chain_pems[0].write_to_path(str(cert))
        fresh.private_key_pem.write_to_path(str(key))
        os.kill(server.pid, signal.SIGHUP)
        expected = fresh.cert_chain_pems[0].bytes().decode().strip()
        deadline = time.monotonic() + 20
        while ssl.get_server_certificate(("127.0.0.1", http_port)).strip() != expected:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.1)
        assert "TLS certificate reloaded" in server.log_path.read_text()
    finally:
        assert server.stop(30) == 0, server.log_tail()


# -- command lines ---------------------------------------------------------------------------------------

def _serve(args: list[str], env: dict[str, str] | None = None):
    """`vitcodec-cloud serve ARGS` for arguments that must not start (they would serve until stopped)."""
    from vitcodec.cloud.cli import app

    clean = {name: None for name in os.environ if name.startswith("VITCODEC_")}
    return CliRunner().invoke(app, ["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
                                    *args], env={**clean, **(env or {})})


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_serve_refuses_unusable_tls_files_in_one_line(pki, tmp_path):
    cases = {
        "no such file": ["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(pki.server_key)],
        "does not match the TLS certificate": ["--tls-cert", str(pki.server), "--tls-key", str(pki.client_key)],
        "not a PEM certificate": ["--tls-cert", str(pki.server_key), "--tls-key", str(pki.server_key)],
        "not a PEM private key": ["--tls-cert", str(pki.server), "--tls-key", str(pki.server)],
    }
    if os.geteuid() != 0:  # root reads any file
        unreadable = tmp_path / "unreadable.key"
        unreadable.write_bytes(pki.server_key.read_bytes())
        unreadable.chmod(0)
        cases["permission denied"] = ["--tls-cert", str(pki.server), "--tls-key", str(unreadable)]
    for expected, args in cases.items():
        result = _serve(args)
        lines = _error_lines(result.output)
        assert result.exit_code == 2 and len(lines) == 1, (expected, result.output)
        assert lines[0].startswith("error: TLS ") and expected in lines[0], lines
        assert "Traceback" not in result.output
    result = _serve(["--tls-cert", str(pki.server), "--tls-key", str(pki.server_key), "--tls-client-ca",
                     str(tmp_path / "missing-ca.pem")])
    assert result.exit_code == 2 and "TLS client CA" in result.output and "no such file" in result.output


def test_serve_reads_the_tls_settings_from_the_environment(pki, tmp_path, monkeypatch):
    from vitcodec.cloud.settings import Settings

    monkeypatch.setenv("VITCODEC_TLS_CERT", str(pki.server))
    monkeypatch.setenv("VITCODEC_TLS_KEY", str(pki.server_key))
    monkeypatch.setenv("VITCODEC_TLS_CLIENT_CA", str(pki.ca))
    settings = Settings(_env_file=None)
    assert (settings.tls_cert, settings.tls_key, settings.tls_client_ca) == (pki.server, pki.server_key, pki.ca)
    for name in ("VITCODEC_TLS_CERT", "VITCODEC_TLS_KEY", "VITCODEC_TLS_CLIENT_CA"):
        monkeypatch.delenv(name)
    result = _serve([], env={"VITCODEC_TLS_CERT": str(tmp_path / "nope.pem"),
                             "VITCODEC_TLS_KEY": str(pki.server_key)})
    assert result.exit_code == 2 and "TLS certificate" in result.output and "no such file" in result.output
    result = _serve(["--tls-cert", str(pki.server)])  # a certificate without its key
    assert result.exit_code == 2 and "tls_cert and tls_key go together" in result.output


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory, edge_streams) -> Path:
    path = tmp_path_factory.mktemp("streams") / "one.vcb"
    path.write_bytes(edge_streams[0])
    return path


def _edge(args: list[str], env: dict[str, str] | None = None):
    from vitcodec.edge.cli import app

    base = {"VITCODEC_CA_CERT": None, "VITCODEC_CLIENT_CERT": None, "VITCODEC_CLIENT_KEY": None}
    return CliRunner().invoke(app, args, env={**base, **(env or {})})


def test_edge_send_over_mtls_with_certificates_from_the_environment(mtls_server, pki, stream_file):
    env = {"VITCODEC_CA_CERT": str(pki.ca), "VITCODEC_CLIENT_CERT": str(pki.client),
           "VITCODEC_CLIENT_KEY": str(pki.client_key)}
    for url in _urls(mtls_server):
        result = _edge(["send", str(stream_file), "--server", url, "--json"], env=env)
        assert result.exit_code == 0, result.output
        assert '"model": "fmnist-q2"' in result.output
    result = _edge(["send", str(stream_file), "--server", mtls_server.grpc_url, "--json", "--ca-cert", str(pki.ca),
                    "--client-cert", str(pki.client), "--client-key", str(pki.client_key)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("case", ["unknown-ca", "no-client-cert", "plaintext"])
def test_edge_cli_tls_failures_are_one_error_line(mtls_server, pki, stream_file, tmp_path, case):
    url = mtls_server.http_url if case != "no-client-cert" else mtls_server.grpc_url
    args = ["send", str(stream_file), "--retry-for", "5"]
    if case == "unknown-ca":
        args += ["--server", url, "--ca-cert", str(pki.other_ca)]
    elif case == "no-client-cert":
        args += ["--server", url, "--ca-cert", str(pki.ca)]
    else:
        args += ["--server", url.replace("https://", "http://")]
    result = _edge(args)
    lines = _error_lines(result.output)
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: TLS"), result.output
    assert "Traceback" not in result.output
    png = tmp_path / "out.png"
    result = _edge(["reconstruct", str(stream_file), "-o", str(png), *args[2:]])
    lines = _error_lines(result.output)
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: TLS"), result.output


def test_edge_cli_refuses_unusable_client_files(tls_server, pki, stream_file, tmp_path):
    result = _edge(["send", str(stream_file), "--server", tls_server.http_url, "--ca-cert",
                    str(tmp_path / "missing-ca.pem")])
    assert result.exit_code == 2 and _error_lines(result.output) == [
        f"error: CA certificate {tmp_path / 'missing-ca.pem'}: no such file"]
    result = _edge(["send", str(stream_file), "--server", tls_server.grpc_url, "--ca-cert", str(pki.ca),
                    "--client-cert", str(pki.client), "--client-key", str(pki.intruder_key)])
    assert result.exit_code == 2 and "does not match the client certificate" in result.output
    result = _edge(["send", str(stream_file), "--server", tls_server.http_url.replace("https", "http"),
                    "--ca-cert", str(pki.ca)])
    assert result.exit_code == 2 and "need an https:// or grpcs://" in result.output


def test_watch_takes_the_tls_options(tls_server, pki, tmp_path):
    """The agent builds its client with the TLS options (a bad CA file stops it at start, exit 2)."""
    result = _edge(["watch", "--server", tls_server.grpc_url, "--outbox", str(tmp_path / "outbox"), "--results",
                    str(tmp_path / "results.jsonl"), "--ca-cert", str(tmp_path / "missing.pem")])
    assert result.exit_code == 2 and "CA certificate" in result.output and "no such file" in result.output


# -- expired certificates ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def expired(pki):
    """Certificates from pki's CA whose validity ended yesterday: ``server``/``server_key`` (127.0.0.1,
    localhost), ``client``/``client_key`` (CN edge-old)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    window = dict(not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1))
    server, server_key = _write_pair(pki.ca_obj.issue_cert("127.0.0.1", "localhost", **window), pki.folder,
                                     "expired-server")
    client, client_key = _write_pair(pki.ca_obj.issue_cert("edge-old.example", common_name="edge-old", **window),
                                     pki.folder, "expired-client")
    return SimpleNamespace(server=server, server_key=server_key, client=client, client_key=client_key)


@pytest.fixture(scope="module")
def expired_server(start_server, expired):
    """TLS on both transports with an expired certificate (a server starts with one: renewing is its job)."""
    return start_server(models=["fmnist-q2"], tls_cert=expired.server, tls_key=expired.server_key)


@pytest.mark.parametrize("transport", [0, 1], ids=["http", "grpc"])
def test_an_expired_server_certificate_is_a_clear_error(expired_server, pki, edge_streams, stream_file,
                                                        transport):
    """Trusted CA, right name, but expired: the error says so (not "pass the CA"), once, without retries."""
    url = _urls(expired_server)[transport]
    started = time.monotonic()
    with connect(url, tls=TlsOptions(ca_cert=pki.ca), retry=RetryPolicy(total_s=5)) as client:
        with pytest.raises(TlsFailure) as info:
            client.classify(edge_streams[0])
    message = info.value.message
    assert "has expired" in message and "certificate has expired" in message, message
    assert "--ca-cert" not in message and not info.value.retryable and info.value.status == 0
    assert time.monotonic() - started < 4
    result = _edge(["send", str(stream_file), "--server", url, "--ca-cert", str(pki.ca), "--retry-for", "5"])
    lines = _error_lines(result.output)
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: TLS: the certificate of 127.0.0.1:") and "has expired" in lines[0], lines
    assert "Traceback" not in result.output


@pytest.mark.parametrize("transport", [0, 1], ids=["http", "grpc"])
def test_mtls_refuses_an_expired_client_certificate(mtls_server, pki, expired, edge_streams, stream_file,
                                                    transport):
    """A client certificate from the right CA that has expired: refused in the handshake (no HTTP or gRPC
    status ever comes back, so no 5xx); the client's error names the expiry; the server serves on."""
    url = _urls(mtls_server)[transport]
    old = TlsOptions(ca_cert=pki.ca, client_cert=expired.client, client_key=expired.client_key)
    with connect(url, tls=old, retry=RetryPolicy(total_s=5)) as client:
        with pytest.raises(TlsFailure) as info:
            client.classify(edge_streams[0])
    message = info.value.message
    assert "refused this client's certificate" in message and "expired" in message, message
    assert str(expired.client) in message and info.value.status == 0 and not info.value.retryable
    result = _edge(["send", str(stream_file), "--server", url, "--ca-cert", str(pki.ca), "--client-cert",
                    str(expired.client), "--client-key", str(expired.client_key), "--retry-for", "5"])
    lines = _error_lines(result.output)
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: TLS") and "expired" in lines[0], lines
    good = TlsOptions(ca_cert=pki.ca, client_cert=pki.client, client_key=pki.client_key)
    with connect(url, tls=good, retry=NO_RETRY) as client:  # the server is still up, for good certificates
        assert client.classify(edge_streams[0]).model == "fmnist-q2"


def test_tls_messages_for_certificate_dates(tmp_path):
    """The message wording, from OpenSSL's own words: a server certificate expired or not yet valid, a client
    certificate refused with an "expired" alert; a valid client certificate file has no date problem."""
    from vitcodec.edge.client import _client_cert_dates_problem, _tls_message

    where = "example.org:443"
    assert _tls_message("CERTIFICATE_VERIFY_FAILED", where, "http", "certificate has expired") == (
        "TLS: the certificate of example.org:443 has expired (certificate has expired); the server needs a "
        "renewed certificate (or this device's clock is wrong)")
    assert "is not yet valid (certificate is not yet valid); check this device's clock" in _tls_message(
        "CERTIFICATE_VERIFY_FAILED", where, "http", "certificate is not yet valid")
    assert _tls_message("SSLV3_ALERT_CERTIFICATE_EXPIRED", where, "http") == (
        "TLS: example.org:443 refused the client certificate: it has expired (SSLV3_ALERT_CERTIFICATE_EXPIRED); "
        "renew it")
    assert "not trusted" in _tls_message("CERTIFICATE_VERIFY_FAILED", where, "http",
                                         "unable to get local issuer certificate")
    valid = trustme.CA().issue_cert("edge.example")
    valid.cert_chain_pems[0].write_to_path(str(tmp_path / "valid.pem"))
    assert _client_cert_dates_problem(tmp_path / "valid.pem") is None
    assert _client_cert_dates_problem(tmp_path / "missing.pem") is None
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)
    early = trustme.CA().issue_cert("edge.example", not_before=future, not_after=future + datetime.timedelta(days=9))
    early.cert_chain_pems[0].write_to_path(str(tmp_path / "early.pem"))
    problem = _client_cert_dates_problem(tmp_path / "early.pem")
    assert problem is not None and "is not valid before" in problem


def test_client_errors_are_client_errors():
    """`TlsFailure` is a `ClientError` (callers that catch ClientError keep working), never retryable."""
    failure = TlsFailure("TLS: x")
    assert isinstance(failure, ClientError) and not failure.retryable and failure.status == 0
