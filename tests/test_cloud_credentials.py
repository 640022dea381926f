"""One credential per device (``--credentials FILE``): two devices classify over REST native, KServe v2 over
HTTP and gRPC, and native gRPC, each named in its answers, the archive and the access logs; the shared token
keeps working beside them; revoking one device (its line removed, picked up by the file's mtime poll) refuses
it everywhere while the other goes on; a malformed file stops the start naming its line, a malformed reload
keeps the previous credentials; refusals are counted by reason; ``vitcodec-cloud credentials add|revoke|list``;
the edge reads ``VITCODEC_AUTH_TOKEN`` (and the deprecated ``VITCODEC_TOKEN``); a token's device name wins
over an mTLS certificate's identity."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import struct
import time
from pathlib import Path

import grpc
import httpx
import pytest
from typer.testing import CliRunner
from vitcodec.cloud.auth import Authenticator
from vitcodec.cloud.cli import app as cloud_app
from vitcodec.cloud.credentials import (
    CredentialsError,
    CredentialStore,
    add_device,
    read_credentials,
    revoke_device,
    split_token,
)
from vitcodec.cloud.errors import Unauthorized
from vitcodec.cloud.metrics import Metrics
from vitcodec.edge.client import ClientError, RetryPolicy, connect, env_token
from vitcodec.protos import grpc_service_pb2 as v2
from vitcodec.protos import grpc_service_pb2_grpc as v2_grpc
from vitcodec.protos import vitcodec_pb2 as pb
from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc

SHARED = "shared-s3cret"
NO_RETRY = RetryPolicy(total_s=0)
runner = CliRunner()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _grpc_auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _bytes_tensor(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _v2_json(streams: list[bytes]) -> dict:
    return {"inputs": [{"name": "BITSTREAM", "datatype": "BYTES", "shape": [len(streams)],
                        "data": [base64.b64encode(s).decode() for s in streams]}]}


def _v2_grpc(channel, streams: list[bytes], token: str):
    request = v2.ModelInferRequest(model_name="fmnist-q2")
    request.inputs.add(name="BITSTREAM", datatype="BYTES", shape=[len(streams)])
    request.raw_input_contents.append(_bytes_tensor(streams))
    return v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30, metadata=_grpc_auth(token))


def _replace(path: Path, text: str) -> None:
    """Write `path` at once (the server's poll must never read half a file)."""
    scratch = path.with_name(path.name + ".new")
    scratch.write_text(text)
    os.replace(scratch, path)


def _scrape(server, name: str, **labels: str) -> float:
    from conftest import scrape

    text = httpx.get(f"{server.http_url}/metrics", headers=_bearer(SHARED), timeout=30).text
    return scrape(text, name, **labels)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A credentials file with devices edge-a, edge-b and edge-c; their tokens by name."""
    path = tmp_path_factory.mktemp("credentials") / "devices.txt"
    tokens = {name: add_device(path, name)[0] for name in ("edge-a", "edge-b", "edge-c")}
    return path, tokens


@pytest.fixture(scope="module")
def fleet_server(start_server, fleet, tmp_path_factory):
    """fmnist-q2 behind the shared token and the credentials file (polled every 0.1 s), with an archive and
    access logs."""
    path, _ = fleet
    archive = tmp_path_factory.mktemp("archive") / "archive.db"
    return start_server(models=["fmnist-q2"], auth_token=SHARED, credentials=path, credentials_poll_s=0.1,
                        archive=archive, access_log=True, log_level="info")


# -- the file --------------------------------------------------------------------------------------------------

def test_the_file_holds_hashes_never_tokens(fleet):
    path, tokens = fleet
    text = path.read_text()
    for name, token in tokens.items():
        assert split_token(token) is not None and token.startswith(f"{name}.")
        assert token not in text and split_token(token)[1] not in text
    devices = read_credentials(path)
    assert list(devices) == ["edge-a", "edge-b", "edge-c"]
    assert all(d.hash_text.startswith("scrypt$ln=14,r=8,p=1$") for d in devices.values())
    assert os.stat(path).st_mode & 0o077 == 0  # created private


@pytest.mark.parametrize("line, expected", [
    ("edge-x 2026-01-31T12:00:00Z", "expected 3 fields"),
    ("edge-x.bad! 2026-01-31T12:00:00Z scrypt$ln=14,r=8,p=1$AAAAAAAAAAA$AAAA", "device name"),
    ("edge-x yesterday scrypt$ln=14,r=8,p=1$AAAAAAAAAAA$AAAA", "creation time"),
    ("edge-x 2026-01-31T12:00:00Z md5$abc", "not 'scrypt$"),
    ("edge-x 2026-01-31T12:00:00Z scrypt$ln=14,r=8,p=1$AAAAAAAAAAA$AAAA", "digest has 3 bytes"),
    ("edge-a 2026-01-31T12:00:00Z scrypt$ln=14,r=8,p=1$AAAAAAAAAAA$AAAA", "already on line 2"),
])
def test_a_malformed_file_is_refused_naming_the_line(fleet, tmp_path, line, expected):
    path, _ = fleet
    lines = path.read_text().splitlines()
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines[:3] + [line] + lines[3:]) + "\n")
    with pytest.raises(CredentialsError) as info:
        read_credentials(bad)
    assert str(info.value).startswith(f"credentials {bad} line 4: ") and expected in str(info.value)


def test_serve_refuses_to_start_with_a_malformed_or_missing_file(tmp_path):
    from vitcodec.cloud.server import CloudServer
    from vitcodec.cloud.settings import Settings

    bad = tmp_path / "devices.txt"
    add_device(bad, "edge-a")
    with bad.open("a") as out:
        out.write("edge-b only-two-fields\n")
    with pytest.raises(CredentialsError, match="line 3: expected 3 fields"):
        CloudServer(Settings(_env_file=None, credentials=bad))
    clean = {name: None for name in os.environ if name.startswith("VITCODEC_")}
    for path, expected in ((bad, f"error: credentials {bad} line 3: expected 3 fields"),
                           (tmp_path / "missing.txt", f"error: credentials {tmp_path / 'missing.txt'}: no such file")):
        result = runner.invoke(cloud_app, ["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
                                           "--credentials", str(path)], env=clean)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(expected), result.output
    result = runner.invoke(cloud_app, ["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0"],
                           env={**clean, "VITCODEC_CREDENTIALS": str(bad)})
    assert result.exit_code == 2 and "line 3" in result.output, result.output


# -- serving ---------------------------------------------------------------------------------------------------

def test_each_device_classifies_on_every_api_and_is_named(fleet_server, fleet, edge_streams):
    _, tokens = fleet
    with httpx.Client(base_url=fleet_server.http_url, timeout=30) as http, \
            grpc.insecure_channel(fleet_server.grpc_target) as channel:
        for offset, name in ((0, "edge-a"), (8, "edge-b")):
            token = tokens[name]
            streams = edge_streams[offset:offset + 8]
            # REST native: the fast path, then the FastAPI route (a query string)
            for i, path in enumerate(("/v1/classify", "/v1/classify?top_k=3")):
                body = http.post(path, content=streams[i], headers=_bearer(token)).json()
                assert body["client"] == name, body
                entry = http.get(f"/v1/images/{body['id']}", headers=_bearer(token)).json()
                assert entry["client"] == name, entry
            # KServe v2 over HTTP (fast path and FastAPI route) and over gRPC: parameters.client
            for i, path in ((2, "/v2/models/fmnist-q2/infer"), (3, "/v2/models/fmnist-q2/infer?x=1")):
                reply = http.post(path, json=_v2_json([streams[i]]), headers=_bearer(token))
                assert reply.status_code == 200 and reply.json()["parameters"] == {"client": name}, reply.text
            reply = _v2_grpc(channel, [streams[4]], token)
            assert reply.parameters["client"].string_param == name
            # native gRPC, unary and stream, through the edge client (which reads the name back)
            for url in (fleet_server.http_url, fleet_server.grpc_url):
                with connect(url, token=token, retry=NO_RETRY) as client:
                    assert client.classify(streams[5]).client == name
                    many = dict(client.classify_many(streams[6:8], concurrency=2))
                    assert [many[i].client for i in range(2)] == [name, name]
            reply = pb_grpc.VitCodecStub(channel).Classify(pb.ClassifyRequest(stream=streams[7]), timeout=30,
                                                           metadata=_grpc_auth(token))
            assert reply.client == name
            ids = [(http.post("/v1/classify", content=s, headers=_bearer(token)).json())["id"] for s in streams[4:8]]
            assert {http.get(f"/v1/images/{i}", headers=_bearer(token)).json()["client"] for i in ids} == {name}
        # the shared token keeps working; it names nobody
        body = http.post("/v1/classify", content=edge_streams[20], headers=_bearer(SHARED)).json()
        assert body["client"] is None and "parameters" not in http.post(
            "/v2/models/fmnist-q2/infer", json=_v2_json([edge_streams[20]]), headers=_bearer(SHARED)).json()
        assert http.get(f"/v1/images/{body['id']}", headers=_bearer(SHARED)).json()["client"] is None


def test_access_logs_name_the_device(fleet_server, fleet, edge_streams, caplog):
    _, tokens = fleet
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    caplog.set_level(logging.INFO, logger="vitcodec.cloud.grpc.access")
    for url in (fleet_server.http_url, fleet_server.grpc_url):
        with connect(url, token=tokens["edge-b"], retry=NO_RETRY) as client:
            client.classify(edge_streams[24])
    with connect(fleet_server.http_url, token=SHARED, retry=NO_RETRY) as client:
        client.models()
    # a FastAPI route (not the fast path)
    assert httpx.get(f"{fleet_server.http_url}/v2/models/fmnist-q2", headers=_bearer(tokens["edge-b"]),
                     timeout=30).status_code == 200
    deadline = time.monotonic() + 5  # the server logs from its own thread
    lines: list[tuple[str, str]] = []
    while time.monotonic() < deadline:
        lines = [(r.name, r.getMessage()) for r in caplog.records if r.name.endswith("access")]
        if {"uvicorn.access", "vitcodec.cloud.grpc.access"} <= {n for n, m in lines if "[edge-b]" in m} and \
                any("/v1/models" in m for _, m in lines) and any("/v2/models/fmnist-q2 " in m for _, m in lines):
            break
        time.sleep(0.05)
    http_line = next(m for n, m in lines if n == "uvicorn.access" and "POST /v1/classify" in m and "[edge-b]" in m)
    assert " 200" in http_line
    assert any("[edge-b]" in m and "/vitcodec.v1.VitCodec/Classify" in m for n, m in lines
               if n == "vitcodec.cloud.grpc.access")
    assert "[edge-b]" in next(m for n, m in lines if "GET /v2/models/fmnist-q2 " in m)
    models_line = next(m for n, m in lines if "GET /v1/models" in m)
    assert "[" not in models_line.split(" - ")[0], models_line  # the shared token names nobody


def test_auth_failures_are_counted_by_reason_never_by_device(fleet_server, fleet, edge_streams):
    _, tokens = fleet
    wrong = tokens["edge-a"][:-4] + ("AAAA" if not tokens["edge-a"].endswith("AAAA") else "BBBB")
    cases = {
        "missing": {},
        "malformed": {"Authorization": "Basic ZWRnZS1hOng="},
        "unknown": _bearer("edge-zz." + "A" * 43),
        "invalid": _bearer(wrong),
    }
    before = {reason: _scrape(fleet_server, "vitcodec_auth_failures_total", reason=reason) for reason in cases}
    with httpx.Client(base_url=fleet_server.http_url, timeout=30) as http:
        for reason, headers in cases.items():
            for path in ("/v1/classify", "/v1/classify?top_k=2"):  # the fast path and FastAPI
                reply = http.post(path, content=edge_streams[0], headers=headers)
                assert reply.status_code == 401 and reply.json()["code"] == "UNAUTHENTICATED", (reason, reply.text)
        # a wrong shared token (not a device token's form) is invalid, not malformed
        assert http.post("/v1/classify", content=edge_streams[0], headers=_bearer("nope")).status_code == 401
    with grpc.insecure_channel(fleet_server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.VitCodecStub(channel).Classify(pb.ClassifyRequest(stream=edge_streams[0]), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            _v2_grpc(channel, edge_streams[:1], wrong)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    after = {reason: _scrape(fleet_server, "vitcodec_auth_failures_total", reason=reason) for reason in cases}
    assert after["missing"] - before["missing"] == 3
    assert after["malformed"] - before["malformed"] == 2
    assert after["unknown"] - before["unknown"] == 2
    assert after["invalid"] - before["invalid"] == 4  # the wrong token (the 2nd time from memory) + "nope" + gRPC
    text = httpx.get(f"{fleet_server.http_url}/metrics", headers=_bearer(SHARED), timeout=30).text
    failures = [line for line in text.splitlines() if line.startswith("vitcodec_auth_failures_total{")]
    assert {line.split('"')[1] for line in failures} == {"missing", "malformed", "unknown", "revoked", "invalid"}
    assert not any("edge-" in line for line in failures)


def test_a_bad_reload_keeps_the_previous_credentials(fleet_server, fleet, edge_streams, caplog):
    path, tokens = fleet
    caplog.set_level(logging.ERROR, logger="vitcodec.cloud.server")
    original = path.read_text()
    try:
        _replace(path, original + "edge-new this-is-not-a-valid-line\n")
        assert not fleet_server.reload_credentials()
        message = next(r.getMessage() for r in caplog.records if "credentials reload failed" in r.getMessage())
        assert "still using the previous credentials (3 devices)" in message and "line 5" in message
        with connect(fleet_server.http_url, token=tokens["edge-a"], retry=NO_RETRY) as client:
            assert client.classify(edge_streams[0]).client == "edge-a"
        _replace(path, "")  # an empty file is valid: no devices
        deadline = time.monotonic() + 10
        while fleet_server.server.auth.store.names:  # the poll reloads it
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        _replace(path, original)
        assert fleet_server.reload_credentials()
    assert fleet_server.server.auth.store.names == ["edge-a", "edge-b", "edge-c"]
    with connect(fleet_server.grpc_url, token=tokens["edge-a"], retry=NO_RETRY) as client:
        assert client.classify(edge_streams[0]).client == "edge-a"


def test_revoking_one_device_refuses_it_and_keeps_the_others(fleet_server, fleet, edge_streams):
    path, tokens = fleet
    revoked, kept = tokens["edge-c"], tokens["edge-b"]
    with httpx.Client(base_url=fleet_server.http_url, timeout=30) as http:
        assert http.post("/v1/classify", content=edge_streams[1], headers=_bearer(revoked)).status_code == 200
        before = _scrape(fleet_server, "vitcodec_auth_failures_total", reason="revoked")
        result = runner.invoke(cloud_app, ["credentials", "revoke", "edge-c", "--file", str(path)])
        assert result.exit_code == 0, result.output
        deadline = time.monotonic() + 10  # no SIGHUP needed: the mtime poll picks it up
        while http.post("/v1/classify", content=edge_streams[1], headers=_bearer(revoked)).status_code == 200:
            assert time.monotonic() < deadline, "the revocation was not picked up"
            time.sleep(0.05)
        for path_ in ("/v1/classify", "/v1/classify?top_k=2"):
            assert http.post(path_, content=edge_streams[1], headers=_bearer(revoked)).status_code == 401
        reply = http.post("/v2/models/fmnist-q2/infer", json=_v2_json(edge_streams[1:2]), headers=_bearer(revoked))
        assert reply.status_code == 401 and reply.json()["code"] == "UNAUTHENTICATED"
        assert http.post("/v1/classify", content=edge_streams[1], headers=_bearer(kept)).json()["client"] == "edge-b"
    with grpc.insecure_channel(fleet_server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            _v2_grpc(channel, edge_streams[:1], revoked)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _v2_grpc(channel, edge_streams[:1], kept).parameters["client"].string_param == "edge-b"
    with connect(fleet_server.grpc_url, token=revoked, retry=NO_RETRY) as client:
        with pytest.raises(ClientError) as refused:
            client.classify(edge_streams[1])
        assert refused.value.code == "UNAUTHENTICATED"
    assert _scrape(fleet_server, "vitcodec_auth_failures_total", reason="revoked") - before >= 5
    assert fleet_server.server.auth.store.names == ["edge-a", "edge-b"]


def test_sighup_reloads_the_credentials(fleet_server, fleet, edge_streams):
    """The SIGHUP handler of ``serve`` (`CloudServer._on_sighup`) re-reads the file at once."""
    path, _ = fleet
    store = fleet_server.server.auth.store
    reloads = store.reloads

    async def hup() -> None:
        fleet_server.server._on_sighup()

    fleet_server.call(hup())
    assert store.reloads == reloads + 1


# -- the authenticator without a server ---------------------------------------------------------------------------

def test_authenticator_rules(tmp_path):
    path = tmp_path / "devices.txt"
    token, _ = add_device(path, "cam-1", ln=10)
    metrics = Metrics()

    async def check(auth: Authenticator, header: str | None) -> str | None:
        try:
            return await auth.authenticate(header)
        except Unauthorized as exc:
            return f"401 {exc}"

    devices_only = Authenticator(None, CredentialStore(path), metrics)
    both = Authenticator(SHARED, CredentialStore(path), metrics)
    shared_only = Authenticator(SHARED, None, metrics)
    assert asyncio.run(check(Authenticator(), None)) is None and not Authenticator().enabled
    assert asyncio.run(check(devices_only, f"Bearer {token}")) == "cam-1"
    assert asyncio.run(check(devices_only, f"bearer  {token} ")) == "cam-1"
    assert asyncio.run(check(devices_only, f"Bearer {SHARED}")).startswith("401 invalid bearer token")
    assert asyncio.run(check(both, f"Bearer {SHARED}")) is None
    assert asyncio.run(check(both, f"Bearer {token}")) == "cam-1"
    assert asyncio.run(check(shared_only, f"Bearer {token}")).startswith("401 invalid bearer token")
    assert asyncio.run(check(shared_only, None)).startswith("401 missing bearer token")
    assert asyncio.run(check(shared_only, "Token x")).startswith("401 malformed Authorization header")
    from conftest import scrape

    text = metrics.exposition().decode()
    # malformed: "Token x", and the shared token sent to devices_only (not NAME.SECRET); invalid: a device token
    # sent to shared_only
    assert scrape(text, "vitcodec_auth_failures_total", reason="malformed") == 2
    assert scrape(text, "vitcodec_auth_failures_total", reason="invalid") == 1
    assert scrape(text, "vitcodec_auth_failures_total", reason="missing") == 1


def test_a_reload_keeps_the_verified_tokens_of_unchanged_lines(tmp_path):
    path = tmp_path / "devices.txt"
    token_a, _ = add_device(path, "a", ln=10)
    token_b, _ = add_device(path, "b", ln=10)
    store = CredentialStore(path)
    assert asyncio.run(store.authenticate(token_a)) == "a"
    assert asyncio.run(store.authenticate(token_b)) == "b"
    revoke_device(path, "b")
    assert store.changed() and store.reload() == ([], ["b"]) and not store.changed()
    assert len(store._snapshot.verified) == 1  # a's verification survived, b's did not
    from vitcodec.cloud.credentials import DeviceRefused

    with pytest.raises(DeviceRefused) as info:
        asyncio.run(store.authenticate(token_b))
    assert info.value.reason == "revoked"
    token_b2, _ = add_device(path, "b", ln=10)
    store.reload()
    assert asyncio.run(store.authenticate(token_b2)) == "b"
    with pytest.raises(DeviceRefused) as info:  # the old token of a re-added device stays refused
        asyncio.run(store.authenticate(token_b))
    assert info.value.reason == "invalid"


def test_one_slow_check_per_token_and_a_request_that_goes_away_cancels_no_other(tmp_path, monkeypatch):
    from vitcodec.cloud.credentials import TokenHash

    path = tmp_path / "devices.txt"
    token, _ = add_device(path, "a", ln=10)
    store = CredentialStore(path)
    checks: list[str] = []
    original = TokenHash.matches

    def slow(self, candidate: str) -> bool:
        checks.append(candidate)
        time.sleep(0.05)
        return original(self, candidate)

    monkeypatch.setattr(TokenHash, "matches", slow)

    async def main() -> list[str]:
        first = asyncio.ensure_future(store.authenticate(token))
        others = [asyncio.ensure_future(store.authenticate(token)) for _ in range(4)]
        await asyncio.sleep(0.01)
        first.cancel()
        return await asyncio.gather(*others)

    assert asyncio.run(main()) == ["a"] * 4 and len(checks) == 1
    assert asyncio.run(store.authenticate(token)) == "a" and len(checks) == 1  # from memory now


# -- the command line --------------------------------------------------------------------------------------------

def test_credentials_add_list_revoke(tmp_path):
    path = tmp_path / "devices.txt"
    result = runner.invoke(cloud_app, ["credentials", "add", "cam-1", "--file", str(path)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert split_token(token) == ("cam-1", token.split(".")[1]) and "(created)" in result.stderr
    assert token not in path.read_text() and token.split(".")[1] not in path.read_text()
    assert asyncio.run(CredentialStore(path).authenticate(token)) == "cam-1"
    result = runner.invoke(cloud_app, ["credentials", "add", "cam-2"], env={"VITCODEC_CREDENTIALS": str(path)})
    assert result.exit_code == 0, result.output
    token2 = result.stdout.strip()
    result = runner.invoke(cloud_app, ["credentials", "add", "cam-1", "--file", str(path)])
    assert result.exit_code == 2 and "device 'cam-1' already exists (line 2)" in result.output
    result = runner.invoke(cloud_app, ["credentials", "list", "--file", str(path)])
    assert result.exit_code == 0
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["NAME", "CREATED"] and [r[0] for r in rows[1:]] == ["cam-1", "cam-2"]
    assert all(r[1].endswith("Z") for r in rows[1:]) and token not in result.output and token2 not in result.output
    assert "scrypt" not in result.output
    result = runner.invoke(cloud_app, ["credentials", "revoke", "cam-1", "--file", str(path)])
    assert result.exit_code == 0 and "revoked device cam-1" in result.output
    assert list(read_credentials(path)) == ["cam-2"]
    result = runner.invoke(cloud_app, ["credentials", "revoke", "cam-1", "--file", str(path)])
    assert result.exit_code == 2 and "no device named 'cam-1' (devices: cam-2)" in result.output
    for args, expected in (
        (["list", "--file", str(tmp_path / "nope.txt")], "no such file"),
        (["revoke", "x", "--file", str(tmp_path / "nope.txt")], "no such file"),
        (["add", "x", "--file", str(tmp_path / "no-folder" / "devices.txt")], "no such folder"),
        (["add", "bad name!", "--file", str(path)], "is not 1-64 of"),
        (["add", "x"], "Missing option '--file'"),
    ):
        result = runner.invoke(cloud_app, ["credentials", *args], env={"VITCODEC_CREDENTIALS": None})
        assert result.exit_code == 2 and expected in result.output, (args, result.output)
        assert "Traceback" not in result.output
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        add_device(locked / "devices.txt", "cam-1", ln=10)
        locked.chmod(0o500)
        try:
            result = runner.invoke(cloud_app, ["credentials", "add", "cam-9", "--file", str(locked / "devices.txt")])
            assert result.exit_code == 2 and "permission denied" in result.output and result.stdout == ""
        finally:
            locked.chmod(0o700)


# -- the edge side -----------------------------------------------------------------------------------------------

def test_edge_reads_vitcodec_auth_token_and_the_deprecated_name(fleet_server, fleet, edge_streams, tmp_path,
                                                                 monkeypatch):
    from vitcodec.edge.cli import app as edge_app

    _, tokens = fleet
    monkeypatch.delenv("VITCODEC_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("VITCODEC_TOKEN", raising=False)
    assert env_token() is None and env_token("given") == "given"
    monkeypatch.setenv("VITCODEC_TOKEN", "old")
    assert env_token() == "old"
    monkeypatch.setenv("VITCODEC_AUTH_TOKEN", "new")
    assert env_token() == "new" and env_token("given") == "given"
    stream = tmp_path / "one.vcb"
    stream.write_bytes(edge_streams[2])
    for url in (fleet_server.http_url, fleet_server.grpc_url):
        for env in ({"VITCODEC_AUTH_TOKEN": tokens["edge-a"], "VITCODEC_TOKEN": None},
                    {"VITCODEC_AUTH_TOKEN": None, "VITCODEC_TOKEN": tokens["edge-a"]}):
            result = runner.invoke(edge_app, ["send", str(stream), "--server", url, "--json", "--retry-for", "0"],
                                   env=env)
            assert result.exit_code == 0 and '"client": "edge-a"' in result.output, (url, env, result.output)
        result = runner.invoke(edge_app, ["send", str(stream), "--server", url, "--json", "--retry-for", "0"],
                               env={"VITCODEC_AUTH_TOKEN": None, "VITCODEC_TOKEN": None})
        assert result.exit_code == 1 and "missing bearer token" in result.output, result.output
    png = tmp_path / "out.png"
    result = runner.invoke(edge_app, ["reconstruct", str(stream), "--server", fleet_server.http_url, "-o", str(png),
                                      "--retry-for", "0"], env={"VITCODEC_AUTH_TOKEN": tokens["edge-b"]})
    assert result.exit_code == 0 and png.stat().st_size > 0, result.output


def test_watch_takes_the_token_from_vitcodec_auth_token(monkeypatch, tmp_path):
    """`watch` builds its agent with the token of VITCODEC_AUTH_TOKEN (the deprecated name as a fallback)."""
    import vitcodec.edge.agent.runner as runner_module
    from vitcodec.edge.cli import app as edge_app

    seen: list[str | None] = []

    def capture(config, reporter):
        seen.append(config.token)
        raise runner_module.AgentSetupError("stop here")

    monkeypatch.setattr(runner_module, "Agent", capture)
    args = ["watch", "--server", "grpc://127.0.0.1:1", "--outbox", str(tmp_path / "o"), "--results",
            str(tmp_path / "r.jsonl")]
    for env, expected in (({"VITCODEC_AUTH_TOKEN": "new", "VITCODEC_TOKEN": "old"}, "new"),
                          ({"VITCODEC_AUTH_TOKEN": None, "VITCODEC_TOKEN": "old"}, "old"),
                          ({"VITCODEC_AUTH_TOKEN": "new"}, "flag")):
        result = runner.invoke(edge_app, args + (["--token", "flag"] if expected == "flag" else []), env=env)
        assert result.exit_code == 2 and "stop here" in result.output, result.output
        assert seen[-1] == expected


# -- identity: the token's device name over the certificate's ------------------------------------------------------

def test_a_device_token_names_the_client_before_an_mtls_certificate(start_server, fleet, edge_streams,
                                                                     tmp_path_factory, caplog):
    trustme = pytest.importorskip("trustme")
    from vitcodec.edge.client import TlsOptions

    path, tokens = fleet
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server_cert = ca.issue_cert("127.0.0.1")
    server_cert.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    server_cert.private_key_pem.write_to_path(str(folder / "server.key"))
    client_cert = ca.issue_cert("cam.example", common_name="cert-cam")
    client_cert.cert_chain_pems[0].write_to_path(str(folder / "client.pem"))
    client_cert.private_key_pem.write_to_path(str(folder / "client.key"))
    server = start_server(models=["fmnist-q2"], auth_token=SHARED, credentials=path, tls_cert=folder / "server.pem",
                          tls_key=folder / "server.key", tls_client_ca=folder / "ca.pem", access_log=True,
                          log_level="info")
    tls = TlsOptions(ca_cert=folder / "ca.pem", client_cert=folder / "client.pem", client_key=folder / "client.key")
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    try:
        for url in (server.http_url, server.grpc_url):
            with connect(url, token=tokens["edge-a"], tls=tls, retry=NO_RETRY) as client:
                assert client.classify(edge_streams[3]).client == "edge-a", url
            with connect(url, token=SHARED, tls=tls, retry=NO_RETRY) as client:
                assert client.classify(edge_streams[3]).client == "cert-cam", url
        deadline = time.monotonic() + 5
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access" and "classify" in
                     r.getMessage()]
            if len(lines) >= 2:
                break
            time.sleep(0.05)
        assert any("[edge-a]" in line for line in lines) and any("[cert-cam]" in line for line in lines), lines
    finally:
        server.stop()
