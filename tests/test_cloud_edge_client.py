"""The edge client (HTTP and gRPC) and the `vitcodec-edge send` / `reconstruct` commands end to end against a
real server. (That the edge imports no torch is checked by tests/test_architecture.py, statically, and by
tests/test_edge_torch_free.py, in an install without torch.)"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from typer.testing import CliRunner
from vitcodec.edge.cli import app
from vitcodec.edge.client import ClientError, GrpcClient, HttpClient, RetryPolicy, connect


@pytest.fixture(scope="module", params=["http", "grpc"])
def client(request, cloud_server):
    url = cloud_server.http_url if request.param == "http" else cloud_server.grpc_url
    with connect(url, retry=RetryPolicy(attempts=2, backoff_s=0.01)) as c:
        yield c


def test_connect_picks_transport(cloud_server):
    assert isinstance(connect(cloud_server.http_url), HttpClient)
    assert isinstance(connect(cloud_server.grpc_url), GrpcClient)
    with pytest.raises(ValueError):
        connect("ftp://example:1")


def test_classify_and_many(client, edge_streams, other_streams, package):
    assert client.live() and client.ready()
    single = client.classify(edge_streams[0], top_k=3)
    assert single.model == "fmnist-q2" and len(single.top) == 3 and single.latency_ms > 0
    assert single.model_id == package.model_id.hex()  # the server's result type, hex id, over either transport
    assert {"decode", "inference", "total"} <= set(single.timings_ms)
    assert single.num_bytes == len(edge_streams[0]) and single.image_size == (28, 28)
    streams = list(edge_streams[:12]) + [edge_streams[0][:-1], other_streams[0]]
    results = dict(client.classify_many(streams, concurrency=4))
    assert sorted(results) == list(range(len(streams)))
    assert isinstance(results[12], ClientError) and results[12].status == 400
    assert results[13].model == "fmnist-q1"
    assert results[0].label == single.label
    assert {m["name"] for m in client.models()} >= {"fmnist-q1", "fmnist-q2"}


def test_reconstruct(client, edge_streams):
    result = client.reconstruct(edge_streams[3])
    assert result.image_size == (28, 28) and (result.model, result.version) == ("fmnist-q2", "1")
    assert Image.open(io.BytesIO(result.png)).size == (28, 28)


def test_errors_are_not_retried(client, edge_streams, other_streams):
    with pytest.raises(ClientError) as info:
        client.classify(other_streams[0], model="fmnist-q2")
    assert info.value.status == 409 and info.value.code == "FAILED_PRECONDITION" and not info.value.retryable


def test_unreachable_server_is_retried_then_reported():
    for url in ("http://127.0.0.1:9", "grpc://127.0.0.1:9"):
        with connect(url, timeout=2, retry=RetryPolicy(attempts=2, backoff_s=0.01)) as c:
            with pytest.raises(ClientError) as info:
                c.classify(b"\xb1")
            assert info.value.retryable and info.value.code == "UNAVAILABLE"


def test_auth_token(auth_server, edge_streams):
    token = auth_server.server.settings.token
    for url in (auth_server.http_url, auth_server.grpc_url):
        with connect(url) as c, pytest.raises(ClientError) as info:
            c.classify(edge_streams[0])
        assert info.value.status == 401
        with connect(url, token=token) as c:
            assert c.classify(edge_streams[0]).model == "fmnist-q2"


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, fmnist_images):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(4):
        path = folder / f"img{i}.png"
        Image.fromarray(fmnist_images[0][i, :, :, 0]).save(path)
        paths.append(path)
    return paths


def test_cli_send_json_and_csv(cloud_server, package, image_files):
    runner = CliRunner()
    for server in (cloud_server.http_url, cloud_server.grpc_url):
        result = runner.invoke(app, ["send", *map(str, image_files), "--server", server, "--model",
                                     str(package.path), "--json"])
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert [r["file"] for r in rows] == [str(p) for p in image_files]
        assert all(r["model"] == "fmnist-q2" and r["bytes"] > 0 and "label" in r for r in rows)
    result = runner.invoke(app, ["send", str(image_files[0].parent), "--server", cloud_server.http_url,
                                 "--model", str(package.path), "--csv"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line]
    assert lines[0].startswith("file,bytes,bpp,label,confidence,latency_ms")
    assert len(lines) == 1 + len(image_files)


def test_cli_send_table_and_failure_exit_code(cloud_server, package, image_files, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["send", str(image_files[0]), "--server", cloud_server.grpc_url,
                                 "--model", str(package.path)])
    assert result.exit_code == 0, result.output
    assert "img0.png" in result.stdout and "bpp" in result.stdout
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    result = runner.invoke(app, ["send", str(broken), "--server", cloud_server.http_url, "--model",
                                 str(package.path), "--json"])
    assert result.exit_code == 1
    assert "not a readable image" in result.stdout


def test_cli_reconstruct(cloud_server, package, image_files, tmp_path, edge_streams):
    runner = CliRunner()
    out = tmp_path / "out" / "rec.png"
    result = runner.invoke(app, ["reconstruct", str(image_files[1]), "--server", cloud_server.grpc_url,
                                 "-o", str(out), "--model", str(package.path)])
    assert result.exit_code == 0, result.output
    height, width = package.input_spec.size  # image files are fitted to the model's input on the edge
    assert Image.open(out).size == (width, height)
    stream_file = tmp_path / "one.vcb"
    stream_file.write_bytes(edge_streams[0])
    result = runner.invoke(app, ["reconstruct", str(stream_file), "--server", cloud_server.http_url, "-o",
                                 str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.output


def test_cli_send_encodes_in_batches_the_bytes_encode_writes(cloud_server, package, fmnist_images, tmp_path,
                                                             monkeypatch):
    """`send` encodes through encode's batching: one ONNX Runtime call for the batch, the same bytes as
    `encode` for the same files (one file that is not an image fails alone), and every file is answered over
    either transport."""
    from vitcodec.edge.cli import _load_streams
    from vitcodec.edge.encoder import EdgeEncoder

    folder = tmp_path / "images"
    folder.mkdir()
    images = []
    for i in range(11):
        images.append(folder / f"img{i:02d}.png")
        Image.fromarray(fmnist_images[0][i, :, :, 0]).save(images[-1])
    broken = folder / "img05b.png"  # sorted between the others: the batch around it still encodes
    broken.write_bytes(b"not an image")
    runner = CliRunner()
    out = tmp_path / "streams"
    result = runner.invoke(app, ["encode", *map(str, images), "-o", str(out), "--model", str(package.path)])
    assert result.exit_code == 0, result.output
    written = {p.stem: p.read_bytes() for p in out.glob("*.vcb")}
    assert len(written) == len(images)

    files = sorted([*images, broken])
    batches: list[int] = []  # images per encoder call, recorded around the real one
    real_encode = EdgeEncoder.encode_pixels
    monkeypatch.setattr(EdgeEncoder, "encode_pixels",
                        lambda self, pixels: batches.append(len(pixels)) or real_encode(self, pixels))
    streams, errors = _load_streams(files, str(package.path), None)
    monkeypatch.undo()
    assert batches == [len(images)]  # one call for all readable images (fewer than a batch)
    for path, stream, error in zip(files, streams, errors):
        if path == broken:
            assert stream == b"" and "not a readable image" in error
        else:
            assert error == "" and stream == written[path.stem], path  # byte-identical to encode's file

    for server in (cloud_server.http_url, cloud_server.grpc_url):
        result = runner.invoke(app, ["send", str(folder), str(out), "--server", server, "--model",
                                     str(package.path), "--json", "--concurrency", "3"])
        assert result.exit_code == 1, result.output  # the broken file
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert len(rows) == 2 * len(images) + 1
        by_file = {r["file"]: r for r in rows}
        assert "not a readable image" in by_file[str(broken)]["error"]
        for image in images:  # the image, encoded by send, and encode's .vcb of it, sent as is
            sent, stored = by_file[str(image)], by_file[str(out / f"{image.stem}.vcb")]
            assert "error" not in sent and "error" not in stored, (sent, stored)
            assert sent["bytes"] == stored["bytes"] == len(written[image.stem])
            assert sent["label"] == stored["label"]


# -- retries by time ----------------------------------------------------------------------------------------

def test_retry_policy_spends_a_time_budget():
    """Transient errors are retried while the budget lasts (capped backoff), a Retry-After longer than what is
    left ends it, a count can bound it too, and permanent errors are never retried."""
    import time

    transient = ClientError("busy", 503, "UNAVAILABLE", retryable=True)
    policy = RetryPolicy(total_s=10, backoff_s=0.1, max_backoff_s=0.4)
    now = time.monotonic()
    pauses = (policy.next_pause(n, now, transient) for n in range(1, 50))
    assert all(p is not None and 0 <= p <= 0.4 for p in pauses)
    assert policy.next_pause(1, now - 11, transient) is None  # budget spent
    assert policy.next_pause(1, now, ClientError("bad", 400, "INVALID_ARGUMENT")) is None
    pause = policy.next_pause(1, now, ClientError("slow down", 429, retryable=True, retry_after=3))
    assert pause is not None and pause >= 3
    assert policy.next_pause(1, now, ClientError("later", 429, retryable=True, retry_after=60)) is None
    assert RetryPolicy(attempts=2).next_pause(2, now, transient) is None
    assert RetryPolicy(total_s=0).next_pause(1, now, transient) is None

    calls = []

    def fails() -> None:
        calls.append(time.monotonic())
        raise ClientError("busy", 503, "UNAVAILABLE", retryable=True)

    started = time.monotonic()
    with pytest.raises(ClientError) as info:
        RetryPolicy(total_s=0.5, backoff_s=0.02, max_backoff_s=0.1).run(fails)
    assert 0.5 <= time.monotonic() - started < 1.5 and len(calls) >= 4
    assert f"gave up after {len(calls)} tries" in info.value.message


class _ScriptedServer:
    """A tiny HTTP server answering each request with the next (status, headers, body) of a script (the last
    one repeats), recording when each request came."""

    def __init__(self, script):
        import http.server
        import threading

        self.script, self.times = list(script), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                import time

                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                outer.times.append(time.monotonic())
                status, headers, body = outer.script[min(len(outer.times), len(outer.script)) - 1]
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_http_429_honours_retry_after_and_400_is_never_retried():
    ok = (200, {}, b'{"models": []}')
    with _ScriptedServer([(429, {"Retry-After": "1"}, b'{"error": "slow down", "code": "UNAVAILABLE"}'), ok]) as srv:
        with connect(srv.url, retry=RetryPolicy(total_s=10, backoff_s=0.01)) as client:
            assert client.models() == []
        assert len(srv.times) == 2 and srv.times[1] - srv.times[0] >= 0.95
    bad = (400, {}, b'{"error": "checksum mismatch", "code": "INVALID_ARGUMENT"}')
    for status in (400, 404, 409, 413):
        with _ScriptedServer([(status, *bad[1:]), ok]) as srv:
            with connect(srv.url, retry=RetryPolicy(total_s=10)) as client, pytest.raises(ClientError) as info:
                client.classify(b"\xb1")
            assert info.value.status == status and not info.value.retryable and len(srv.times) == 1
    busy = (503, {}, b'{"error": "queue full", "code": "UNAVAILABLE"}')
    with _ScriptedServer([busy]) as srv:
        with connect(srv.url, retry=RetryPolicy(total_s=0.5, backoff_s=0.02)) as client, \
                pytest.raises(ClientError) as info:
            client.classify(b"\xb1")
        assert info.value.status == 503 and len(srv.times) >= 3 and "gave up after" in info.value.message


def test_grpc_invalid_argument_is_never_retried(cloud_server, edge_streams, scrape_metrics):
    import httpx

    def invalid() -> float:
        text = httpx.get(f"{cloud_server.http_url}/metrics").text
        return scrape_metrics(text, "vitcodec_requests_total", protocol="grpc",
                              endpoint="/vitcodec.v1.VitCodec/Classify", code="INVALID_ARGUMENT")

    before = invalid()
    with connect(cloud_server.grpc_url, retry=RetryPolicy(total_s=10)) as client, \
            pytest.raises(ClientError) as info:
        client.classify(edge_streams[0][:-1])
    assert info.value.code == "INVALID_ARGUMENT" and not info.value.retryable
    assert invalid() - before == 1


class _StartLater:
    """Start a server on the given ports `delay` seconds after entering, in a thread; stop it on leaving."""

    def __init__(self, start_server, delay: float, **ports) -> None:
        import threading

        self.start_server, self.delay, self.ports, self.servers = start_server, delay, ports, []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import time

        time.sleep(self.delay)
        self.servers.append(self.start_server(models=["fmnist-q2"], wait_ready=False, **self.ports))

    def __enter__(self) -> _StartLater:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(60)
        for server in self.servers:
            server.stop()


def test_send_waits_for_a_server_that_starts_later(start_server, edge_streams, tmp_path):
    """`send --retry-for` outlasts a server that comes up ~2 s later (refused connections, then 503 while its
    model loads), and fails with a clear message when the budget is shorter."""
    import time

    from vitcodec.cloud.process import free_port

    stream_file = tmp_path / "one.vcb"
    stream_file.write_bytes(edge_streams[0])
    runner = CliRunner()
    http_port = free_port()
    started = time.monotonic()
    result = runner.invoke(app, ["send", str(stream_file), "--server", f"http://127.0.0.1:{http_port}", "--json",
                                 "--retry-for", "1"])
    assert result.exit_code == 1 and time.monotonic() - started < 5
    assert "cannot reach" in result.output and "gave up after" in result.output, result.output

    with _StartLater(start_server, 2.0, http_port=http_port, grpc_port=0):
        started = time.monotonic()
        result = runner.invoke(app, ["send", str(stream_file), "--server", f"http://127.0.0.1:{http_port}",
                                     "--json", "--retry-for", "60"])
        assert result.exit_code == 0, result.output
        assert time.monotonic() - started >= 1.5 and '"model": "fmnist-q2"' in result.output


def test_grpc_client_waits_for_a_server_that_starts_later(start_server, edge_streams):
    import time

    from vitcodec.cloud.process import free_port

    grpc_port = free_port()
    with connect(f"grpc://127.0.0.1:{grpc_port}", retry=RetryPolicy(total_s=0.5)) as client, \
            pytest.raises(ClientError) as info:
        client.classify(edge_streams[0])
    assert info.value.code == "UNAVAILABLE" and "gave up after" in info.value.message
    with _StartLater(start_server, 2.0, http_port=0, grpc_port=grpc_port):
        started = time.monotonic()
        with connect(f"grpc://127.0.0.1:{grpc_port}", retry=RetryPolicy(total_s=60)) as client:
            # one ClassifyStream, broken (refused) then answered in band with UNAVAILABLE while the model loads
            assert [r.model for _, r in client.classify_many(edge_streams[:3])] == ["fmnist-q2"] * 3
            assert client.classify(edge_streams[0]).model == "fmnist-q2"
        assert time.monotonic() - started >= 1.5
