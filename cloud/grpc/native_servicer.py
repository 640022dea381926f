"""``vitcodec.v1.VitCodec``: the native gRPC service (unary classify / reconstruct, and a bidirectional stream for
batch upload from the edge). The model is found from the model id in each stream's header."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from vitcodec.protos import vitcodec_pb2 as pb
from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc
from vitcodec.results import ClassifyResult

from ..dataplane import DEFAULT_TOP_K, DataPlane
from ..errors import describe
from .common import concurrent_stream, unary


def classify_to_proto(result: ClassifyResult, request_id: str = "", index: int = 0) -> pb.ClassifyResponse:
    msg = pb.ClassifyResponse(
        id=request_id, index=index, model=result.model, version=result.version, model_id=result.model_id,
        num_bytes=result.num_bytes, header_bytes=result.header_bytes, bpp=result.bpp,
        height=result.image_size[0], width=result.image_size[1])
    for score in result.top:
        msg.top.add(index=score.index, label=score.label, probability=score.probability)
    msg.timings_ms.update(result.timings_ms)
    if result.novelty is not None:  # calibrated models only; unset (HasField false) otherwise
        msg.novelty = result.novelty
    return msg


class VitCodecServicer(pb_grpc.VitCodecServicer):
    def __init__(self, plane: DataPlane, stream_concurrency: int = 64) -> None:
        self.plane = plane
        self.stream_concurrency = stream_concurrency

    async def _classify(self, request: pb.ClassifyRequest) -> ClassifyResult:
        return await self.plane.classify(request.stream, model=request.model or None,
                                         top_k=request.top_k or DEFAULT_TOP_K)

    @unary
    async def Classify(self, request: pb.ClassifyRequest, context: Any) -> pb.ClassifyResponse:
        return classify_to_proto(await self._classify(request), request.id)

    async def ClassifyStream(self, request_iterator: AsyncIterator[pb.ClassifyRequest],
                             context: Any) -> AsyncIterator[pb.ClassifyResponse]:
        async def handle(index: int, request: pb.ClassifyRequest) -> pb.ClassifyResponse:
            try:
                return classify_to_proto(await self._classify(request), request.id, index)
            except Exception as exc:  # one bad stream fails its own response, not the whole upload
                info = describe(exc)
                return pb.ClassifyResponse(id=request.id, index=index, error=pb.Error(
                    code=info.code_name, http_status=info.http_status, message=info.message))

        async for response in concurrent_stream(request_iterator, handle, self.stream_concurrency):
            yield response

    @unary
    async def Reconstruct(self, request: pb.ReconstructRequest, context: Any) -> pb.ReconstructResponse:
        result = await self.plane.reconstruct(request.stream, model=request.model or None)
        msg = pb.ReconstructResponse(id=request.id, model=result.model, version=result.version, png=result.png,
                                     height=result.image_size[0], width=result.image_size[1],
                                     num_bytes=result.num_bytes)
        msg.timings_ms.update(result.timings_ms)
        return msg

    @unary
    async def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        msg = pb.ListModelsResponse()
        for m in self.plane.list_models():
            msg.models.add(name=m.name, version=m.version, model_id=m.model_id, ready=m.state == "READY",
                           quality=-1 if m.quality is None else int(m.quality), labels=m.labels,
                           height=m.input_size[0], width=m.input_size[1], channels=m.channels, state=m.state,
                           reason=m.reason)
        return msg


def add_to_server(servicer: VitCodecServicer, server: grpc.aio.Server) -> None:
    pb_grpc.add_VitCodecServicer_to_server(servicer, server)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VitCodec"].full_name
