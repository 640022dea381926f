"""``inference.GRPCInferenceService`` (KServe v2 over gRPC): converts protobuf messages to the data plane's
types and back. Outputs always travel in ``raw_output_contents``, as Triton sends them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from vitcodec.protos import grpc_service_pb2 as pb
from vitcodec.protos import grpc_service_pb2_grpc as pb_grpc

from ..dataplane import DataPlane
from ..errors import InvalidRequest, describe
from ..tensors import DATATYPES, deserialize_bytes, numeric_from_bytes, output_to_bytes
from ..types import InferInput, InferRequest, InferResponse, RequestedOutput
from .common import concurrent_stream, unary
from .interceptors import call_identity

_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def params_to_dict(params: Any) -> dict[str, Any]:
    if not params:  # the usual case; iterating even an empty protobuf map costs more than the rest of the call
        return {}
    out = {}
    for key, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, kind) if kind else None
    return out


def dict_to_params(values: dict[str, Any], target: Any) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        else:
            target[key].string_param = str(value)


def request_from_proto(msg: pb.ModelInferRequest) -> InferRequest:
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidRequest(f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs")
    inputs = []
    for i, tensor in enumerate(msg.inputs):
        datatype = tensor.datatype.upper()
        if datatype not in DATATYPES:
            raise InvalidRequest(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}")
        if raw:
            data: Any = deserialize_bytes(raw[i], tensor.name) if datatype == "BYTES" else \
                numeric_from_bytes(raw[i], datatype, tensor.name)
        elif datatype == "BYTES":
            data = list(tensor.contents.bytes_contents)
        elif datatype in _CONTENTS_FIELD:
            data = np.asarray(getattr(tensor.contents, _CONTENTS_FIELD[datatype]))
        else:
            raise InvalidRequest(f"input {tensor.name!r}: {datatype} must be sent in raw_input_contents")
        inputs.append(InferInput(tensor.name, datatype, list(tensor.shape), data, params_to_dict(tensor.parameters)))
    outputs = [RequestedOutput(o.name, params_to_dict(o.parameters)) for o in msg.outputs] if msg.outputs else None
    return InferRequest(msg.model_name, msg.model_version, inputs, outputs, msg.id, params_to_dict(msg.parameters))


def response_to_proto(result: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version, id=result.id)
    dict_to_params(result.parameters, msg.parameters)
    for out in result.outputs:
        tensor = msg.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        dict_to_params(out.parameters, tensor.parameters)
        msg.raw_output_contents.append(output_to_bytes(out.data, out.datatype))
    return msg


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, stream_concurrency: int = 64) -> None:
        self.plane = plane
        self.stream_concurrency = stream_concurrency

    @unary
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.plane.live())

    @unary
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    @unary
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version or None))

    @unary
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    @unary
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        meta = self.plane.model_metadata(request.name, request.version or None)
        msg = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for key in ("inputs", "outputs"):
            for tensor in meta[key]:
                getattr(msg, key).add(**tensor)
        return msg

    @unary
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        config = self.plane.model_config(request.name, request.version or None)
        msg = pb.ModelConfig(name=config["name"], platform=config["platform"], backend=config["backend"],
                             max_batch_size=config["max_batch_size"])
        for spec in config["input"]:
            msg.input.add(name=spec["name"], data_type=pb.DataType.Value(spec["data_type"]), dims=spec["dims"])
        for spec in config["output"]:
            msg.output.add(name=spec["name"], data_type=pb.DataType.Value(spec["data_type"]), dims=spec["dims"])
        batching = config["dynamic_batching"]
        msg.dynamic_batching.preferred_batch_size.extend(batching["preferred_batch_size"])
        msg.dynamic_batching.max_queue_delay_microseconds = batching["max_queue_delay_microseconds"]
        return pb.ModelConfigResponse(config=msg)

    @unary
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        msg = pb.RepositoryIndexResponse()
        for entry in self.plane.repository_index(ready_only=request.ready):
            msg.models.add(**entry)
        return msg

    @unary
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return response_to_proto(await self.plane.infer(request_from_proto(request), client=call_identity(context)))

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],
                               context: Any) -> AsyncIterator[pb.ModelStreamInferResponse]:
        client = call_identity(context)

        async def handle(index: int, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            try:
                result = await self.plane.infer(request_from_proto(request), client=client)
                return pb.ModelStreamInferResponse(infer_response=response_to_proto(result))
            except Exception as exc:  # errors travel in the stream, which stays open
                failed = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                               id=request.id)
                return pb.ModelStreamInferResponse(error_message=describe(exc).message, infer_response=failed)

        async for response in concurrent_stream(request_iterator, handle, self.stream_concurrency):
            yield response


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
