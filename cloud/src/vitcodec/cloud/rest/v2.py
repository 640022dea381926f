"""KServe v2 / Open Inference Protocol over HTTP, with the binary-data extension.

Binary data: when the header ``Inference-Header-Content-Length: N`` is present, the body's first N bytes are
the JSON request and the rest holds, in input order, the data of every input whose parameters name a
``binary_data_size``. Responses use the same layout for outputs sent as binary (``binary_data`` on the output,
or ``binary_data_output`` on the request). BYTES elements are a 4-byte little-endian length + the bytes.
In pure JSON a bitstream is a base64 string (bitstreams are binary, and JSON strings are text).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError

from ..dataplane import DataPlane
from ..errors import InvalidRequest
from ..tensors import (
    DATATYPES,
    NUMERIC_DTYPES,
    deserialize_bytes,
    numeric_from_bytes,
    output_to_bytes,
)
from ..types import InferInput, InferRequest, InferResponse, RequestedOutput
from .deps import client_identity, get_plane, get_settings, read_body, require_auth
from .schemas import (
    ErrorBody,
    InferRequestBody,
    InferResponseBody,
    LiveResponse,
    ModelConfigResponse,
    ModelMetadataResponse,
    ReadyResponse,
    RepositoryIndexEntry,
    RepositoryIndexRequest,
    ServerMetadataResponse,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 503)
}

health_router = APIRouter(prefix="/v2/health", tags=["v2 health"])  # open: probes carry no token
router = APIRouter(prefix="/v2", tags=["v2"], dependencies=[Depends(require_auth)], responses=_ERRORS)


def _status_json(ok: bool, key: str) -> Response:
    return Response(json.dumps({key: ok}), status_code=200 if ok else 503, media_type="application/json")


@health_router.get("/live", response_model=LiveResponse, summary="Server liveness")
async def live(plane: DataPlane = Depends(get_plane)) -> Response:
    return _status_json(plane.live(), "live")


@health_router.get("/ready", response_model=ReadyResponse, summary="Server readiness (503 until every model is loaded)",
                   responses={503: {"model": ReadyResponse}})
async def ready(plane: DataPlane = Depends(get_plane)) -> Response:
    ok = plane.ready()
    archive = plane.archive_status()
    if archive is None:
        return _status_json(ok, "ready")
    # a degraded archive does not make the server unready: classification goes on, the state is shown
    body: dict[str, Any] = {"ready": ok, "archive": archive.state}
    if archive.error:
        body["archive_error"] = archive.error
    return Response(json.dumps(body), status_code=200 if ok else 503, media_type="application/json")


@router.get("", response_model=ServerMetadataResponse, summary="Server metadata")
async def server_metadata(plane: DataPlane = Depends(get_plane)) -> dict[str, Any]:
    return plane.server_metadata()


@router.get("/models/{name}", response_model=ModelMetadataResponse, summary="Model metadata (latest version)")
@router.get("/models/{name}/versions/{version}", response_model=ModelMetadataResponse, summary="Model metadata")
async def model_metadata(name: str, version: str | None = None,
                         plane: DataPlane = Depends(get_plane)) -> dict[str, Any]:
    return plane.model_metadata(name, version)


@router.get("/models/{name}/ready", response_model=ReadyResponse, summary="Model readiness",
            responses={503: {"model": ReadyResponse}})
@router.get("/models/{name}/versions/{version}/ready", response_model=ReadyResponse, summary="Model readiness",
            responses={503: {"model": ReadyResponse}})
async def model_ready(name: str, version: str | None = None, plane: DataPlane = Depends(get_plane)) -> Response:
    return _status_json(plane.model_ready(name, version), "ready")


@router.get("/models/{name}/config", response_model=ModelConfigResponse, summary="Model configuration")
@router.get("/models/{name}/versions/{version}/config", response_model=ModelConfigResponse,
            summary="Model configuration")
async def model_config(name: str, version: str | None = None, plane: DataPlane = Depends(get_plane)) -> dict:
    return plane.model_config(name, version)


@router.post("/repository/index", response_model=list[RepositoryIndexEntry], summary="Models in the repository")
async def repository_index(body: RepositoryIndexRequest | None = None,
                           plane: DataPlane = Depends(get_plane)) -> list[dict[str, str]]:
    return plane.repository_index(ready_only=bool(body and body.ready))


_INFER_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequestBody"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"Binary-data extension: JSON header of {HEADER_LENGTH} bytes, then tensor data."},
        },
    }
}


@router.post("/models/{name}/infer", response_model=InferResponseBody, summary="Classify bitstreams",
             openapi_extra=_INFER_DOC)
@router.post("/models/{name}/versions/{version}/infer", response_model=InferResponseBody,
             summary="Classify bitstreams", openapi_extra=_INFER_DOC)
async def infer(name: str, request: Request, version: str | None = None,
                plane: DataPlane = Depends(get_plane)) -> Response:
    body = await read_body(request, get_settings(request).max_body_bytes)
    infer_request, binary_default = parse_infer_request(body, request.headers.get(HEADER_LENGTH), name, version)
    result = await plane.infer(infer_request, client=client_identity(request))
    return render_infer_response(result, infer_request, binary_default)


# -- conversion -----------------------------------------------------------------------------------------

def parse_infer_request(body: bytes, header_length: str | None, name: str,
                        version: str | None) -> tuple[InferRequest, bool]:
    """Body (+ binary-data header) -> InferRequest, and whether outputs default to binary."""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise InvalidRequest(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= json_size <= len(body):
            raise InvalidRequest(f"{HEADER_LENGTH} is {json_size} but the body has {len(body)} bytes")
        head, binary = body[:json_size], memoryview(body)[json_size:]
    else:
        head, binary = body, memoryview(b"")
    try:
        parsed = InferRequestBody.model_validate_json(head)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidRequest(f"invalid inference request: {where}: {first.get('msg')}") from None

    inputs: list[InferInput] = []
    offset = 0
    for tensor in parsed.inputs:
        datatype = tensor.datatype.upper()
        if datatype not in DATATYPES:
            raise InvalidRequest(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}")
        params = dict(tensor.parameters or {})
        size = params.pop("binary_data_size", None)
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise InvalidRequest(f"input {tensor.name!r}: binary_data_size {size!r} does not fit the "
                                     f"{len(binary) - offset} binary bytes left")
            raw = binary[offset:offset + size]
            offset += size
            data: Any = deserialize_bytes(raw, tensor.name) if datatype == "BYTES" else \
                numeric_from_bytes(bytes(raw), datatype, tensor.name)
        elif tensor.data is not None:
            data = _json_data(tensor.name, datatype, tensor.data)
        else:
            raise InvalidRequest(f"input {tensor.name!r} has neither data nor binary_data_size")
        inputs.append(InferInput(tensor.name, datatype, list(tensor.shape), data, params))
    if offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input")

    outputs = None
    if parsed.outputs is not None:
        outputs = [RequestedOutput(o.name, dict(o.parameters or {})) for o in parsed.outputs]
    params = dict(parsed.parameters or {})
    binary_default = bool(params.pop("binary_data_output", False))
    request = InferRequest(name, version or "", inputs, outputs, parsed.id or "", params)
    return request, binary_default


def _flatten(values: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(values)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _json_data(name: str, datatype: str, data: list[Any]) -> Any:
    flat = _flatten(data)
    if datatype == "BYTES":
        out = []
        for i, value in enumerate(flat):
            if not isinstance(value, str):
                raise InvalidRequest(f"input {name!r} element {i}: a BYTES element in JSON must be a base64 string")
            try:
                out.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                raise InvalidRequest(f"input {name!r} element {i} is not valid base64") from None
        return out
    try:
        return np.asarray(flat, dtype=NUMERIC_DTYPES[datatype])
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"input {name!r}: {exc}") from None


def render_infer_response(result: InferResponse, request: InferRequest, binary_default: bool) -> Response:
    wanted = {o.name: o for o in request.outputs} if request.outputs is not None else {}
    outputs_json: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in result.outputs:
        requested = wanted.get(out.name)
        binary = binary_default
        if requested is not None and "binary_data" in requested.parameters:
            binary = bool(requested.parameters["binary_data"])
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        params = dict(out.parameters)
        if binary:
            blob = output_to_bytes(out.data, out.datatype)
            params["binary_data_size"] = len(blob)
            blobs.append(blob)
        elif out.datatype == "BYTES":
            entry["data"] = [b.decode("utf-8", "replace") for b in out.data]
        else:
            entry["data"] = np.asarray(out.data).ravel().tolist()
        if params:
            entry["parameters"] = params
        outputs_json.append(entry)
    body: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version,
                            "outputs": outputs_json}
    if result.id:
        body["id"] = result.id
    if result.parameters:
        body["parameters"] = result.parameters
    head = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(head))})
