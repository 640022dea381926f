"""Pydantic schemas of every HTTP body (they also make the OpenAPI document at /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Parameters = dict[str, Any]


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong, for humans (a codec error keeps the codec's own message).")
    code: str = Field("", description="The same error's gRPC status name, e.g. INVALID_ARGUMENT.")


# -- KServe v2 / Open Inference Protocol -----------------------------------------------------------------

class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool
    archive: str | None = Field(
        None, description="Only on a server with an archive: 'ok', 'starting' or 'degraded' (writes are failing; "
                          "classification goes on and the server stays ready). Absent without an archive.")
    archive_error: str | None = Field(None, description="While the archive is degraded: its last error.")


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a variable dimension.")


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InferInputTensor(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="Always BITSTREAM for vitcodec models.")
    shape: list[int] = Field(description="[B]: B bitstreams in one request ([B, 1] is accepted too).")
    datatype: str = Field(description="BYTES.")
    parameters: Parameters | None = Field(
        None, description="binary_data_size: byte length of this tensor in the binary section that follows the "
                          "JSON header (binary-data extension).")
    data: list[Any] | None = Field(
        None, description="JSON form: one base64 string per bitstream (bitstreams are binary, not UTF-8).")


class InferRequestedOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="PROBABILITIES, LABEL, or novelty (calibrated models only).")
    parameters: Parameters | None = Field(
        None, description="binary_data: send this output in the binary section; classification: k > 0 "
                          "returns PROBABILITIES as the top-k 'score:index:label' strings.")


class InferRequestBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: Parameters | None = Field(
        None, description="binary_data_output: true sends every output in the binary section.")
    inputs: list[InferInputTensor]
    outputs: list[InferRequestedOutput] | None = Field(None, description="Omitted: every output.")


class InferOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = Field(None, description="Row-major elements; absent when sent as binary data.")


class InferResponseBody(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[InferOutputTensor]


class ModelInputConfig(BaseModel):
    name: str
    data_type: str
    dims: list[int]


class ModelDynamicBatchingConfig(BaseModel):
    preferred_batch_size: list[int]
    max_queue_delay_microseconds: int


class ModelConfigResponse(BaseModel):
    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[ModelInputConfig]
    output: list[ModelInputConfig]
    dynamic_batching: ModelDynamicBatchingConfig


class RepositoryIndexRequest(BaseModel):
    ready: bool = False


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str
    state: str
    reason: str = ""


# -- native /v1 ----------------------------------------------------------------------------------------

class ClassScoreBody(BaseModel):
    index: int
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    model: str = Field(description="The model that decoded the stream (chosen by the model id in its header).")
    version: str
    model_id: str = Field(description="Hex model id from the stream's header.")
    label: str = Field(description="Top-1 label.")
    confidence: float = Field(description="Top-1 probability.")
    top_k: list[ClassScoreBody]
    bytes: int = Field(description="Stream size, header and checksum included.")
    header_bytes: int
    bpp: float = Field(description="Bits per pixel of the original image, header included.")
    image_size: tuple[int, int] = Field(description="Original (height, width).")
    timings_ms: dict[str, float] = Field(description="Server-side: decode, queue, inference, batch_size, total.")
    novelty: float | None = Field(
        None, description="How unlike the model's training data the image is: the squared Mahalanobis distance of "
                          "its pooled features to the nearest class mean, over a threshold chosen on validation "
                          "data (about 4 % of in-distribution images exceed it). Above 1.0: out of distribution. "
                          "null when the model is not calibrated.")
    out_of_distribution: bool | None = Field(
        None, description="novelty > 1.0: the image is unlike the training data, so treat the label with "
                          "caution. null when the model is not calibrated.")
    id: str | None = Field(
        None, description="The stream's id in the server's archive (GET /v1/images/{id}); null when the server "
                          "keeps no archive (--archive).")
    client: str | None = Field(
        None, description="Who the server took the caller for: the device name of its token (--credentials), "
                          "else the subject of its mTLS client certificate; null when neither is known.")


class ModelInfo(BaseModel):
    name: str
    version: str
    model_id: str
    state: str = Field(description="READY, LOADING or UNAVAILABLE.")
    reason: str = ""
    ready: bool
    default: bool
    quality: int | None
    labels: list[str]
    input_size: tuple[int, int]
    channels: int


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


# -- the archive (/v1/images) --------------------------------------------------------------------------

class ReclassificationBody(BaseModel):
    model: str
    version: str
    model_id: str
    created: str = Field(description="When `vitcodec-cloud reclassify` computed it (ISO 8601, UTC).")
    label: str
    confidence: float
    top_k: list[ClassScoreBody]
    novelty: float | None = None


class ImageInfo(BaseModel):
    id: str = Field(description="The first 128 bits of the stream's SHA-256, in hex.")
    created: str = Field(description="First classified (ISO 8601, UTC).")
    last_seen: str = Field(description="Last classified (ISO 8601, UTC): the same stream sent again.")
    seen: int = Field(description="Times this stream was classified.")
    model: str
    version: str
    model_id: str
    client: str | None = Field(None, description="The client's identity when the server knew one.")
    label: str = Field(description="Top-1 label of the answer the stream got.")
    confidence: float = Field(description="Top-1 probability.")
    top_k: list[ClassScoreBody]
    novelty: float | None = None
    out_of_distribution: bool | None = None
    bytes: int
    image_size: tuple[int, int]
    reclassifications: list[ReclassificationBody] = Field(
        default_factory=list, description="Other models' answers (`vitcodec-cloud reclassify`); only in "
                                          "GET /v1/images/{id}.")


class ImageListResponse(BaseModel):
    images: list[ImageInfo] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class DeletedResponse(BaseModel):
    deleted: str = Field(description="The id of the entry deleted.")
