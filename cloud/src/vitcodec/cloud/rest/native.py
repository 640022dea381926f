"""vitcodec's native HTTP API: POST a raw bitstream, get classes or a PNG back. The model is found from the
model id in the stream's header, so an edge device need not know the server's model names."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from vitcodec.results import ClassifyResult, ReconstructResult

from ..dataplane import DataPlane
from ..metrics import CONTENT_TYPE_LATEST
from .deps import client_identity, get_plane, get_settings, read_body, require_auth
from .schemas import ClassifyResponse, ErrorBody, ModelInfo, ModelsResponse

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 503)
}
_STREAM_BODY = {
    "requestBody": {
        "required": True,
        "description": "One vitcodec bitstream, header included, as made by `vitcodec-edge encode`.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}

router = APIRouter(prefix="/v1", tags=["native"], dependencies=[Depends(require_auth)], responses=_ERRORS)
ops_router = APIRouter(tags=["operations"], dependencies=[Depends(require_auth)])

_MODEL_QUERY = Query(None, description="Refuse the stream unless it was encoded for this model (default: route by "
                                       "the model id in the stream's header).")


def reconstruction_headers(result: ReconstructResult) -> dict[str, str]:
    return {"X-Vitcodec-Model": result.model, "X-Vitcodec-Model-Version": result.version,
            "X-Vitcodec-Image-Size": f"{result.image_size[0]}x{result.image_size[1]}",
            "Server-Timing": ", ".join(f"{k};dur={v:.3f}" for k, v in result.timings_ms.items() if k != "batch_size")}


def classify_body(result: ClassifyResult) -> dict[str, Any]:
    top = [{"index": c.index, "label": c.label, "probability": c.probability} for c in result.top]
    return {
        "model": result.model, "version": result.version, "model_id": result.model_id,
        "label": top[0]["label"], "confidence": top[0]["probability"], "top_k": top,
        "bytes": result.num_bytes, "header_bytes": result.header_bytes, "bpp": result.bpp,
        "image_size": list(result.image_size), "timings_ms": result.timings_ms,
        "novelty": result.novelty, "out_of_distribution": result.out_of_distribution, "id": result.archive_id,
        "client": result.client,
    }


@router.post("/classify", response_model=ClassifyResponse, summary="Classify one bitstream (no pixel decoding)",
             openapi_extra=_STREAM_BODY)
async def classify(request: Request, model: str | None = _MODEL_QUERY,
                   top_k: int = Query(5, ge=1, le=1000, description="How many classes to return."),
                   plane: DataPlane = Depends(get_plane)) -> dict[str, Any]:
    stream = await read_body(request, get_settings(request).max_body_bytes)
    return classify_body(await plane.classify(stream, model=model, top_k=top_k, client=client_identity(request)))


@router.post("/reconstruct", summary="Decode one bitstream to an image (PNG, original size)",
             openapi_extra=_STREAM_BODY,
             responses={200: {"content": {"image/png": {}}, "description": "The reconstructed image."}})
async def reconstruct(request: Request, model: str | None = _MODEL_QUERY,
                      plane: DataPlane = Depends(get_plane)) -> Response:
    stream = await read_body(request, get_settings(request).max_body_bytes)
    result = await plane.reconstruct(stream, model=model)
    return Response(result.png, media_type="image/png", headers=reconstruction_headers(result))


@router.get("/models", response_model=ModelsResponse, summary="Served models, versions, ids and readiness")
async def models(plane: DataPlane = Depends(get_plane)) -> dict[str, Any]:
    return {"models": [ModelInfo(name=m.name, version=m.version, model_id=m.model_id, state=m.state, reason=m.reason,
                                 ready=m.state == "READY", default=m.default, quality=m.quality, labels=m.labels,
                                 input_size=m.input_size, channels=m.channels).model_dump()
                       for m in plane.list_models()]}


@ops_router.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(plane: DataPlane = Depends(get_plane)) -> Response:
    return Response(plane.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
