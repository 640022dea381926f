"""The stock Triton clients (tritonclient.http and tritonclient.grpc) against the server's v2 endpoints."""

from __future__ import annotations

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

CLIENTS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module", params=sorted(CLIENTS))
def triton(request, cloud_server):
    module = CLIENTS[request.param]
    url = cloud_server.http_url.removeprefix("http://") if request.param == "http" else cloud_server.grpc_target
    client = module.InferenceServerClient(url)
    yield module, client
    client.close()


def _inputs(module, streams):
    tensor = module.InferInput("BITSTREAM", [len(streams)], "BYTES")
    tensor.set_data_from_numpy(np.array(streams, dtype=np.object_))
    return [tensor]


def test_server_and_model_state(triton):
    module, client = triton
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fmnist-q2")
    meta = client.get_server_metadata()
    name = meta["name"] if isinstance(meta, dict) else meta.name
    assert name == "vitcodec"


def test_model_metadata_and_config(triton):
    module, client = triton
    if module is httpclient:
        meta = client.get_model_metadata("fmnist-q2")
        inputs = [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]]
        outputs = [o["name"] for o in meta["outputs"]]
        config = client.get_model_config("fmnist-q2")
    else:
        meta = client.get_model_metadata("fmnist-q2", as_json=True)
        inputs = [(i["name"], i["datatype"], [int(d) for d in i["shape"]]) for i in meta["inputs"]]
        outputs = [o["name"] for o in meta["outputs"]]
        config = client.get_model_config("fmnist-q2", as_json=True)["config"]
    assert inputs == [("BITSTREAM", "BYTES", [-1])]
    assert outputs == ["PROBABILITIES", "LABEL", "novelty"]  # the zoo is calibrated
    assert config["name"] == "fmnist-q2"


def test_infer_bytes_input(triton, edge_streams):
    module, client = triton
    result = client.infer("fmnist-q2", _inputs(module, edge_streams[:5]))
    probs = result.as_numpy("PROBABILITIES")
    labels = result.as_numpy("LABEL")
    assert probs.shape == (5, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert labels.shape == (5,)
    assert all(label.decode() if isinstance(label, bytes) else label for label in labels)
    top = client.infer("fmnist-q2", _inputs(module, edge_streams[:2]),
                       outputs=[module.InferRequestedOutput("PROBABILITIES", class_count=2)])
    assert top.as_numpy("PROBABILITIES").shape == (2, 2)


def test_errors_surface_as_inference_server_exceptions(triton, edge_streams, other_streams):
    module, client = triton
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", _inputs(module, edge_streams[:1]))
    with pytest.raises(InferenceServerException, match="checksum mismatch"):
        client.infer("fmnist-q2", _inputs(module, [edge_streams[0][:-1]]))
    with pytest.raises(InferenceServerException, match="encoded for model id"):
        client.infer("fmnist-q2", _inputs(module, other_streams[:1]))


# -- TLS ---------------------------------------------------------------------------------------------------
# The stock clients over TLS (and mutual TLS): tritonclient.http with ``ssl=True`` and either ``ssl_options``
# (geventhttpclient's `wrap_socket` arguments) or an ``ssl_context_factory``; tritonclient.grpc with
# ``ssl=True`` and the PEM file paths. Same answers as over plaintext.

MODEL = "fmnist-q2"
# geventhttpclient's own deprecated ssl calls (not this project's)
GEVENT_SSL_WARNINGS = pytest.mark.filterwarnings(
    r"ignore:ssl\.(PROTOCOL_TLS|match_hostname\(\)) is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (CN edge-7), as PEM files."""
    trustme = pytest.importorskip("trustme")
    from types import SimpleNamespace

    folder = tmp_path_factory.mktemp("triton-pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    paths = {}
    for name, cert in (("server", ca.issue_cert("127.0.0.1", "localhost")),
                       ("client", ca.issue_cert("edge-7.example", common_name="edge-7"))):
        cert.cert_chain_pems[0].write_to_path(str(folder / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(folder / f"{name}.key"))
        paths[name], paths[f"{name}_key"] = folder / f"{name}.pem", folder / f"{name}.key"
    return SimpleNamespace(ca=folder / "ca.pem", **paths)


@pytest.fixture(scope="module")
def triton_tls_server(start_server, tls_files):
    return start_server(models=[MODEL], tls_cert=tls_files.server, tls_key=tls_files.server_key)


@pytest.fixture(scope="module")
def triton_mtls_server(start_server, tls_files):
    return start_server(models=[MODEL], tls_cert=tls_files.server, tls_key=tls_files.server_key,
                        tls_client_ca=tls_files.ca)


@pytest.fixture(scope="module")
def plaintext_answer(cloud_server, edge_streams):
    """LABEL and PROBABILITIES of three bitstreams, from tritonclient.http over plaintext."""
    client = httpclient.InferenceServerClient(cloud_server.http_url.removeprefix("http://"))
    try:
        result = client.infer(MODEL, _inputs(httpclient, edge_streams[:3]))
        return list(result.as_numpy("LABEL")), result.as_numpy("PROBABILITIES")
    finally:
        client.close()


def _http_tls_client(server, files, how: str, client_cert: bool = False):
    """tritonclient.http over TLS: `how` is "ssl_options" (a CA file for geventhttpclient's wrap_socket) or
    "ssl_context_factory" (a gevent SSLContext that checks the server, and shows the client certificate)."""
    import gevent.ssl

    address = server.http_url.removeprefix("https://")
    if how == "ssl_options":
        options = {"ca_certs": str(files.ca)}
        if client_cert:
            options.update(certfile=str(files.client), keyfile=str(files.client_key))
        return httpclient.InferenceServerClient(address, ssl=True, ssl_options=options)

    def factory():
        context = gevent.ssl.create_default_context(cafile=str(files.ca))
        if client_cert:
            context.load_cert_chain(str(files.client), str(files.client_key))
        return context

    return httpclient.InferenceServerClient(address, ssl=True, ssl_context_factory=factory)


def _grpc_tls_client(server, files, client_cert: bool = False):
    keys = dict(private_key=str(files.client_key), certificate_chain=str(files.client)) if client_cert else {}
    return grpcclient.InferenceServerClient(server.grpc_target, ssl=True, root_certificates=str(files.ca), **keys)


def _check_tls_client(module, client, streams, expected) -> None:
    """Ready, the model's metadata and one infer of real bitstreams: the plaintext answer."""
    try:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        if module is httpclient:
            meta = client.get_model_metadata(MODEL)
            inputs = [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]]
        else:
            meta = client.get_model_metadata(MODEL, as_json=True)
            inputs = [(i["name"], i["datatype"], [int(d) for d in i["shape"]]) for i in meta["inputs"]]
        assert meta["name"] == MODEL and inputs == [("BITSTREAM", "BYTES", [-1])]
        result = client.infer(MODEL, _inputs(module, streams[:3]))
        labels, probs = expected
        assert list(result.as_numpy("LABEL")) == labels
        assert np.allclose(result.as_numpy("PROBABILITIES"), probs, atol=1e-5)
    finally:
        client.close()


@pytest.mark.parametrize("how", ["ssl_options", "ssl_context_factory"])
@GEVENT_SSL_WARNINGS
def test_http_client_over_tls(triton_tls_server, tls_files, edge_streams, plaintext_answer, how):
    client = _http_tls_client(triton_tls_server, tls_files, how)
    _check_tls_client(httpclient, client, edge_streams, plaintext_answer)


def test_grpc_client_over_tls(triton_tls_server, tls_files, edge_streams, plaintext_answer):
    _check_tls_client(grpcclient, _grpc_tls_client(triton_tls_server, tls_files), edge_streams, plaintext_answer)


@pytest.mark.parametrize("how", ["ssl_options", "ssl_context_factory"])
@GEVENT_SSL_WARNINGS
def test_http_client_over_mutual_tls(triton_mtls_server, tls_files, edge_streams, plaintext_answer, how):
    client = _http_tls_client(triton_mtls_server, tls_files, how, client_cert=True)
    _check_tls_client(httpclient, client, edge_streams, plaintext_answer)


def test_grpc_client_over_mutual_tls(triton_mtls_server, tls_files, edge_streams, plaintext_answer):
    client = _grpc_tls_client(triton_mtls_server, tls_files, client_cert=True)
    _check_tls_client(grpcclient, client, edge_streams, plaintext_answer)


def test_grpc_client_without_its_certificate_is_refused_by_mutual_tls(triton_mtls_server, tls_files,
                                                                      edge_streams):
    """No client certificate: no answer (an InferenceServerException, never a result); the server serves on."""
    client = _grpc_tls_client(triton_mtls_server, tls_files)
    try:
        with pytest.raises(InferenceServerException):
            client.infer(MODEL, _inputs(grpcclient, edge_streams[:1]), client_timeout=10)
    finally:
        client.close()
    good = _grpc_tls_client(triton_mtls_server, tls_files, client_cert=True)
    try:
        assert good.is_server_ready()
    finally:
        good.close()
