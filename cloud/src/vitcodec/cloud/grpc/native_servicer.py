"""``vitcodec.v1.VitCodec``: the native gRPC service (unary classify / reconstruct, and a bidirectional stream for
batch upload from the edge). The model is found from the model id in each stream's header. With an archive,
the archive's operations too (ListImages, GetImage, GetReconstruction, DeleteImage)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from vitcodec.protos import vitcodec_pb2 as pb
from vitcodec.protos import vitcodec_pb2_grpc as pb_grpc
from vitcodec.results import ClassifyResult, ClassScore, ReconstructResult

from ..archive import DEFAULT_LIMIT, ArchiveEntry, iso_time
from ..dataplane import DEFAULT_TOP_K, DataPlane
from ..errors import describe
from .common import concurrent_stream, unary
from .interceptors import call_identity


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
    if result.archive_id:
        msg.archive_id = result.archive_id
    if result.client:
        msg.client = result.client
    return msg


def _add_scores(target: Any, top: list[ClassScore]) -> None:
    for score in top:
        target.add(index=score.index, label=score.label, probability=score.probability)


def image_to_proto(entry: ArchiveEntry, msg: pb.ImageInfo | None = None) -> pb.ImageInfo:
    msg = msg if msg is not None else pb.ImageInfo()
    msg.id, msg.created, msg.last_seen, msg.seen = entry.id, iso_time(entry.created_us), \
        iso_time(entry.last_seen_us), entry.seen
    msg.model, msg.version, msg.model_id, msg.client = entry.model, entry.version, entry.model_id, entry.client or ""
    _add_scores(msg.top, entry.top)
    if entry.novelty is not None:
        msg.novelty = entry.novelty
    msg.num_bytes, msg.height, msg.width = entry.num_bytes, entry.image_size[0], entry.image_size[1]
    for again in entry.reclassifications:
        r = msg.reclassifications.add(model=again.model, version=again.version, model_id=again.model_id,
                                      created=iso_time(again.created_us))
        _add_scores(r.top, again.top)
        if again.novelty is not None:
            r.novelty = again.novelty
    return msg


def reconstruction_to_proto(result: ReconstructResult, request_id: str = "") -> pb.ReconstructResponse:
    msg = pb.ReconstructResponse(id=request_id, model=result.model, version=result.version, png=result.png,
                                 height=result.image_size[0], width=result.image_size[1], num_bytes=result.num_bytes)
    msg.timings_ms.update(result.timings_ms)
    return msg


class VitCodecServicer(pb_grpc.VitCodecServicer):
    def __init__(self, plane: DataPlane, stream_concurrency: int = 64) -> None:
        self.plane = plane
        self.stream_concurrency = stream_concurrency

    async def _classify(self, request: pb.ClassifyRequest, client: str | None) -> ClassifyResult:
        return await self.plane.classify(request.stream, model=request.model or None,
                                         top_k=request.top_k or DEFAULT_TOP_K, client=client)

    @unary
    async def Classify(self, request: pb.ClassifyRequest, context: Any) -> pb.ClassifyResponse:
        return classify_to_proto(await self._classify(request, call_identity(context)), request.id)

    async def ClassifyStream(self, request_iterator: AsyncIterator[pb.ClassifyRequest],
                             context: Any) -> AsyncIterator[pb.ClassifyResponse]:
        client = call_identity(context)

        async def handle(index: int, request: pb.ClassifyRequest) -> pb.ClassifyResponse:
            try:
                return classify_to_proto(await self._classify(request, client), request.id, index)
            except Exception as exc:  # one bad stream fails its own response, not the whole upload
                info = describe(exc)
                return pb.ClassifyResponse(id=request.id, index=index, error=pb.Error(
                    code=info.code_name, http_status=info.http_status, message=info.message))

        async for response in concurrent_stream(request_iterator, handle, self.stream_concurrency):
            yield response

    @unary
    async def Reconstruct(self, request: pb.ReconstructRequest, context: Any) -> pb.ReconstructResponse:
        result = await self.plane.reconstruct(request.stream, model=request.model or None)
        return reconstruction_to_proto(result, request.id)

    @unary
    async def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        msg = pb.ListModelsResponse()
        for m in self.plane.list_models():
            msg.models.add(name=m.name, version=m.version, model_id=m.model_id, ready=m.state == "READY",
                           quality=-1 if m.quality is None else int(m.quality), labels=m.labels,
                           height=m.input_size[0], width=m.input_size[1], channels=m.channels, state=m.state,
                           reason=m.reason)
        return msg

    # -- the archive -----------------------------------------------------------------------------------
    @unary
    async def ListImages(self, request: pb.ListImagesRequest, context: Any) -> pb.ListImagesResponse:
        page = await self.plane.list_images(
            label=request.label or None,
            max_confidence=request.max_confidence if request.HasField("max_confidence") else None,
            since=request.since or None, limit=request.limit or DEFAULT_LIMIT, cursor=request.cursor or None)
        msg = pb.ListImagesResponse(next_cursor=page.next_cursor or "")
        for entry in page.images:
            image_to_proto(entry, msg.images.add())
        return msg

    @unary
    async def GetImage(self, request: pb.GetImageRequest, context: Any) -> pb.ImageInfo:
        return image_to_proto(await self.plane.get_image(request.id))

    @unary
    async def GetReconstruction(self, request: pb.GetReconstructionRequest, context: Any) -> pb.ReconstructResponse:
        result, _ = await self.plane.reconstruct_image(request.id)
        return reconstruction_to_proto(result, request.id)

    @unary
    async def DeleteImage(self, request: pb.DeleteImageRequest, context: Any) -> pb.DeleteImageResponse:
        await self.plane.delete_image(request.id)
        return pb.DeleteImageResponse(id=request.id)


def add_to_server(servicer: VitCodecServicer, server: grpc.aio.Server) -> None:
    pb_grpc.add_VitCodecServicer_to_server(servicer, server)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VitCodec"].full_name
