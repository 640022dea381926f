"""The transport-free data plane: live, ready, metadata, infer (v2), classify and reconstruct (native).

REST routers and gRPC servicers convert their wire formats to the types in `types.py`, call one method here,
and convert the answer back; errors are raised as domain exceptions and mapped by `errors.describe`.

A stream's path: parsed and checked once, on the event loop (magic, version, checksum, model id, geometry:
cheap, and it refuses hostile sizes before any allocation); its payloads then join the model's batch queue,
whose worker entropy-decodes the whole batch (one h_s pass) and runs one forward (`batching.py`). Native
calls route by the model id in the header; v2 calls name the model and the id must match.

A calibrated model (manifest ``config.calibrated``) also scores each stream's novelty, how unlike the training
data it is (above 1.0: out of distribution): native answers carry it (`ClassifyResult.novelty`), and v2 has
a third output, ``novelty`` (FP32 [B]), which uncalibrated models do not have.

With an archive (``--archive``, `archive.py`), every classified stream is queued for the archive after its
answer is computed (the write commits later, off the request path) and the answer carries the stream's
archive id: `ClassifyResult.archive_id` natively, an extra v2 output ``archive_id`` (BYTES [B]) returned by
default, like ``novelty``. The archive's own operations (list, get, reconstruct, delete) are here too.

The transports pass the caller's identity (``client``: the device name of its token, else its mTLS identity);
it goes into the archive and back in the answer: `ClassifyResult.client`, and the v2 response parameter
``client`` when it is known.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from vitcodec.codec.bitstream import StreamHeader, unpack_stream
from vitcodec.codec.errors import ModelMismatchError
from vitcodec.models.latent_grid import check_latent_grid, latent_grid
from vitcodec.outputs import encode_png
from vitcodec.outputs import top_k as top_k_indexes
from vitcodec.packages import DEFAULT_MODEL
from vitcodec.results import ClassifyResult, ClassScore, ReconstructResult
from vitcodec.version import __version__

from .archive import (
    ARCHIVE_TOP_K,
    ArchiveEntry,
    ArchiveRecord,
    ArchiveStatus,
    ArchiveStore,
    ImagePage,
    ImageQuery,
    ReconstructionCache,
    stream_id,
)
from .batching import CLASSIFY, RECONSTRUCT, BatchingEngine, Scores
from .errors import ArchiveDisabled, ImageNotFound, InvalidRequest, ShuttingDown
from .metrics import Metrics
from .repository import ModelEntry, ModelRepository
from .types import (
    ARCHIVE_ID_NAME,
    INPUT_NAME,
    LABEL_NAME,
    NOVELTY_NAME,
    PROBS_NAME,
    InferOutput,
    InferRequest,
    InferResponse,
    ModelSummary,
)

log = logging.getLogger("vitcodec.cloud.dataplane")

SERVER_NAME = "vitcodec"
PLATFORM = "vitcodec_torch"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository"]
DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class RoutedStream:
    """A stream parsed and checked once (at routing): its model, header and payloads, for the batch queue."""

    entry: ModelEntry
    header: StreamHeader
    z_payload: bytes
    y_payload: bytes
    total_bytes: int

    @property
    def header_bytes(self) -> int:
        """Every byte that is not payload (header fields and checksum)."""
        return self.total_bytes - len(self.z_payload) - len(self.y_payload)


class DataPlane:
    def __init__(self, repository: ModelRepository, engine: BatchingEngine, metrics: Metrics,
                 max_streams_per_request: int = 1024, default_model: str = DEFAULT_MODEL,
                 max_tokens_factor: float = 4.0, archive: ArchiveStore | None = None) -> None:
        self.repository = repository
        self.archive = archive
        self.reconstructions = ReconstructionCache()
        self.engine = engine
        self.metrics = metrics
        self.max_streams_per_request = max_streams_per_request
        self.max_tokens_factor = max_tokens_factor
        self.default_model = default_model
        self.draining = False

    # -- health and metadata -------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.repository.ready and not self.draining

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.repository.get(name, version).ready and not self.draining

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def output_names(self, entry: ModelEntry) -> list[str]:
        """The v2 outputs of a model: probabilities and label, novelty when it is calibrated, and archive_id
        when the server keeps an archive."""
        names = [PROBS_NAME, LABEL_NAME, NOVELTY_NAME] if entry.calibrated else [PROBS_NAME, LABEL_NAME]
        return names + [ARCHIVE_ID_NAME] if self.archive is not None else names

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        entry = self.repository.get(name, version)
        classes = len(entry.labels)
        outputs = [{"name": PROBS_NAME, "datatype": "FP32", "shape": [-1, classes]},
                   {"name": LABEL_NAME, "datatype": "BYTES", "shape": [-1]}]
        if entry.calibrated:
            outputs.append({"name": NOVELTY_NAME, "datatype": "FP32", "shape": [-1]})
        if self.archive is not None:
            outputs.append({"name": ARCHIVE_ID_NAME, "datatype": "BYTES", "shape": [-1]})
        return {
            "name": entry.name,
            "versions": self.repository.versions(entry.name),
            "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs,
        }

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Triton-style configuration (the fields that describe a vitcodec model)."""
        entry = self.repository.get(name, version)
        settings = self.engine.settings
        outputs = [{"name": PROBS_NAME, "data_type": "TYPE_FP32", "dims": [-1, len(entry.labels)]},
                   {"name": LABEL_NAME, "data_type": "TYPE_STRING", "dims": [-1]}]
        if entry.calibrated:
            outputs.append({"name": NOVELTY_NAME, "data_type": "TYPE_FP32", "dims": [-1]})
        if self.archive is not None:
            outputs.append({"name": ARCHIVE_ID_NAME, "data_type": "TYPE_STRING", "dims": [-1]})
        return {
            "name": entry.name,
            "platform": PLATFORM,
            "backend": "vitcodec",
            "max_batch_size": 0,  # the batch is the first dimension of BITSTREAM, not an implicit one
            "input": [{"name": INPUT_NAME, "data_type": "TYPE_STRING", "dims": [-1]}],
            "output": outputs,
            "dynamic_batching": {"preferred_batch_size": [settings.max_batch_size],
                                 "max_queue_delay_microseconds": int(settings.max_queue_delay_ms * 1000)},
        }

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return [{"name": e.name, "version": e.version, "state": e.state.value, "reason": e.reason}
                for e in self.repository.entries() if e.ready or not ready_only]

    def list_models(self) -> list[ModelSummary]:
        out = []
        for e in self.repository.entries():
            spec = e.package.input_spec
            out.append(ModelSummary(e.name, e.version, e.model_id.hex(), e.state.value, e.reason, e.package.quality,
                                    e.labels, spec.size, spec.channels, e.name == self.default_model))
        return out

    # -- stream handling -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.draining:
            raise ShuttingDown("server is shutting down; send the request to another replica")

    @staticmethod
    def _as_bytes(stream: Any) -> bytes:
        if isinstance(stream, (bytes, bytearray, memoryview)):
            return bytes(stream)
        raise InvalidRequest(f"a bitstream must be bytes, got {type(stream).__name__}")

    def _route(self, stream: bytes, model: str | None, version: str | None) -> RoutedStream:
        """Parse and validate the container and find the model: by name (the id must match) or by the header's
        id. The only parse of this stream: its payloads go on to the batch queue as they are."""
        header, z_payload, y_payload = unpack_stream(stream)  # magic, version, checksum, fields: CodecError
        if model:
            entry = self.repository.get(model, version)
            if header.model_id != entry.model_id:
                raise ModelMismatchError(entry.model_id, header.model_id, model_name=entry.name)
        else:
            entry = self.repository.by_model_id(header.model_id)
        self.repository.require_ready(entry)
        self._check_geometry(entry, header)
        self.metrics.stream_bytes.labels(entry.name).observe(len(stream))
        return RoutedStream(entry, header, z_payload, y_payload, len(stream))

    def _check_geometry(self, entry: ModelEntry, header: StreamHeader) -> None:
        """The latent grid must follow from the image size (`check_latent_grid`), and stay within
        `max_tokens_factor` times the model's training grid (refused before decoding allocates anything)."""
        spec = entry.package.input_spec
        h, w = header.image_size
        lh, lw = header.latent_shape
        check_latent_grid((h, w), (lh, lw), spec.stride, entry.name)
        trained = math.prod(latent_grid(spec.size, spec.stride))
        limit = int(trained * self.max_tokens_factor)
        if lh * lw > limit:
            raise InvalidRequest(
                f"stream holds a {h}x{w} image ({lh * lw} latent tokens); model {entry.name!r} was trained at "
                f"{spec.size[0]}x{spec.size[1]} and this server accepts at most {limit} tokens; resize on the edge")

    async def _submit(self, routed: RoutedStream, kind: str) -> Any:
        """Queue the stream's payloads in its model's batch queue of `kind`; the outcome of its batch."""
        entry = routed.entry
        assert entry.model is not None  # routing found it ready (`require_ready`)
        batcher = self.engine.batcher(entry.name, entry.version, entry.model)
        latent_shape = routed.header.latent_shape  # (h, w): StreamHeader keeps both sizes as int 2-tuples
        if kind == CLASSIFY:
            return await batcher.classify.submit((routed.z_payload, routed.y_payload), (latent_shape,))
        return await batcher.reconstruct.submit((routed.z_payload, routed.y_payload),
                                                (latent_shape, routed.header.image_size))

    # -- native operations ---------------------------------------------------------------------------
    async def classify(self, stream: bytes, model: str | None = None, version: str | None = None,
                       top_k: int = DEFAULT_TOP_K, client: str | None = None) -> ClassifyResult:
        """Top-k classes of one stream. `client`: the caller's identity when the transport knows one (kept
        in the archive, and returned in the answer)."""
        t0 = time.perf_counter()
        self._check_open()
        if top_k < 1:
            raise InvalidRequest(f"top_k must be at least 1, got {top_k}")
        data = self._as_bytes(stream)
        routed = self._route(data, model, version)
        entry = routed.entry
        outcome = await self._submit(routed, CLASSIFY)
        scores: Scores = outcome.value
        probs = scores.probs
        top = [ClassScore(int(i), entry.labels[int(i)], float(probs[i])) for i in top_k_indexes(probs, top_k)]
        self.metrics.streams.labels(entry.name, "classify", "ok").inc()
        archive_id = self._keep(data, routed, scores, client)
        timings = {"decode": outcome.decode_ms, "queue": outcome.queue_ms, "inference": outcome.compute_ms,
                   "batch_size": float(outcome.batch_size), "total": (time.perf_counter() - t0) * 1e3}
        return ClassifyResult(entry.name, entry.version, entry.model_id.hex(), top, routed.total_bytes,
                              routed.header_bytes, routed.header.image_size, timings,
                              novelty=scores.novelty, archive_id=archive_id, client=client)

    def _keep(self, stream: bytes, routed: RoutedStream, scores: Scores, client: str | None) -> str | None:
        """Queue a classified stream for the archive (the write commits later, off the request path); its
        archive id, or None without an archive. Never fails the classification."""
        if self.archive is None:
            return None
        image_id = stream_id(stream)
        try:
            entry = routed.entry
            top = [ClassScore(int(i), entry.labels[int(i)], float(scores.probs[i]))
                   for i in top_k_indexes(scores.probs, ARCHIVE_TOP_K)]
            self.archive.add(ArchiveRecord(image_id, stream, entry.name, entry.version, entry.model_id.hex(), top,
                                           routed.header.image_size, scores.novelty, client))
        except Exception:  # noqa: BLE001 - the archive never fails a classification
            log.exception("archiving stream %s failed", image_id)
            self.metrics.archive_failures.labels("write").inc()
        return image_id

    async def reconstruct(self, stream: bytes, model: str | None = None,
                          version: str | None = None) -> ReconstructResult:
        t0 = time.perf_counter()
        self._check_open()
        routed = self._route(self._as_bytes(stream), model, version)
        entry = routed.entry
        size = routed.header.image_size
        outcome = await self._submit(routed, RECONSTRUCT)
        t1 = time.perf_counter()
        png = await self.engine.offload(encode_png, outcome.value)
        self.metrics.streams.labels(entry.name, "reconstruct", "ok").inc()
        timings = {"decode": outcome.decode_ms, "queue": outcome.queue_ms, "inference": outcome.compute_ms,
                   "png": (time.perf_counter() - t1) * 1e3, "batch_size": float(outcome.batch_size),
                   "total": (time.perf_counter() - t0) * 1e3}
        return ReconstructResult(entry.name, entry.version, png, size, entry.model_id.hex(), routed.total_bytes,
                                 timings)

    # -- v2 inference --------------------------------------------------------------------------------
    def _bitstreams(self, request: InferRequest) -> list[bytes]:
        if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
            names = ", ".join(repr(i.name) for i in request.inputs) or "none"
            raise InvalidRequest(f"expected exactly one input named {INPUT_NAME!r} (got {names})")
        tensor = request.inputs[0]
        if tensor.datatype != "BYTES":
            raise InvalidRequest(f"input {INPUT_NAME!r} must have datatype BYTES, got {tensor.datatype}")
        shape = list(tensor.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
            raise InvalidRequest(f"input {INPUT_NAME!r} must have shape [B] (or [B, 1]) with B >= 1, got {shape}")
        data = tensor.data
        if not isinstance(data, list) or len(data) != shape[0]:
            count = len(data) if isinstance(data, list) else "non-BYTES"
            raise InvalidRequest(f"input {INPUT_NAME!r} has shape {shape} but holds {count} elements")
        if len(data) > self.max_streams_per_request:
            raise InvalidRequest(f"at most {self.max_streams_per_request} bitstreams per request, got {len(data)}")
        return data

    async def infer(self, request: InferRequest, client: str | None = None) -> InferResponse:
        self._check_open()
        entry = self.repository.get(request.model_name, request.model_version or None)
        self.repository.require_ready(entry)
        streams = self._bitstreams(request)
        wanted = request.outputs if request.outputs is not None else None
        if wanted is not None:
            names = self.output_names(entry)
            for out in wanted:
                if out.name not in names:
                    has = ", ".join(repr(n) for n in names[:-1]) + f" and {names[-1]!r}"
                    if out.name == NOVELTY_NAME:
                        why = f"model {entry.name!r} is not calibrated, so it has no output {out.name!r}"
                    elif out.name == ARCHIVE_ID_NAME:
                        why = (f"the archive is not enabled on this server (start it with --archive PATH), so "
                               f"model {entry.name!r} has no output {out.name!r}")
                    else:
                        why = f"unknown output {out.name!r}; model {entry.name!r}"
                    raise InvalidRequest(f"{why}; its outputs are {has}")
                if out.class_count < 0 or (out.class_count and out.name != PROBS_NAME):
                    raise InvalidRequest(f"output {out.name!r}: 'classification' must be a positive integer and "
                                         f"applies to {PROBS_NAME!r} only")

        async def one(index: int, stream: bytes) -> tuple[Scores, RoutedStream]:
            try:  # each stream joins the batch queue on its own, so it can share a batch with any other
                routed = self._route(self._as_bytes(stream), entry.name, entry.version)
                outcome = await self._submit(routed, CLASSIFY)
            except Exception as exc:
                if len(streams) > 1:
                    exc.args = (f"{INPUT_NAME}[{index}]: {exc}",)
                raise
            return outcome.value, routed

        if len(streams) == 1:  # the usual request: no task per stream
            results = [await one(0, streams[0])]
        else:
            results = await asyncio.gather(*(one(i, s) for i, s in enumerate(streams)), return_exceptions=True)
        classified: list[tuple[Scores, RoutedStream]] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            classified.append(result)
        scores = [r[0] for r in classified]
        probs = np.stack([r.probs for r in scores]).astype(np.float32, copy=False)
        novelty = None
        if entry.calibrated:
            if any(r.novelty is None for r in scores):
                raise RuntimeError(f"model {entry.name!r} is calibrated but its backend gave no novelty")
            novelty = np.array([r.novelty for r in scores], dtype=np.float32)
        self.metrics.streams.labels(entry.name, "classify", "ok").inc(len(streams))
        archive_ids = None
        if self.archive is not None:  # only once every stream of the request was classified
            archive_ids = [self._keep(bytes(stream), routed, score, client)
                           for stream, (score, routed) in zip(streams, classified)]
        return InferResponse(entry.name, entry.version, self._outputs(entry, probs, novelty, wanted, archive_ids),
                             id=request.id, parameters={"client": client} if client else {})

    @staticmethod
    def _outputs(entry: ModelEntry, probs: np.ndarray, novelty: np.ndarray | None,
                 wanted: list | None, archive_ids: list[str | None] | None = None) -> list[InferOutput]:
        """The requested outputs (`wanted`, checked by `infer`), or every output of the model when None."""
        batch, classes = probs.shape
        labels = entry.labels
        outputs = []
        defaults = [PROBS_NAME, LABEL_NAME] + ([NOVELTY_NAME] if novelty is not None else []) + \
            ([ARCHIVE_ID_NAME] if archive_ids is not None else [])
        for position, out in enumerate(wanted if wanted is not None else [None] * len(defaults)):
            name = out.name if out is not None else defaults[position]
            params = dict(out.parameters) if out is not None else {}
            params.pop("classification", None)
            params.pop("binary_data", None)
            k = out.class_count if out is not None else 0
            if name == PROBS_NAME and k > 0:
                order = top_k_indexes(probs, k)
                k = order.shape[1]
                data = [f"{probs[b, i]:.6f}:{int(i)}:{labels[int(i)]}".encode() for b in range(batch) for i in order[b]]
                outputs.append(InferOutput(name, "BYTES", [batch, k], data, params))
            elif name == PROBS_NAME:
                outputs.append(InferOutput(name, "FP32", [batch, classes], probs, params))
            elif name == NOVELTY_NAME:
                if novelty is None:  # `infer` offers this output only for calibrated models, which give it
                    raise RuntimeError(f"model {entry.name!r} has no novelty to return")
                outputs.append(InferOutput(name, "FP32", [batch], novelty, params))
            elif name == ARCHIVE_ID_NAME:
                outputs.append(InferOutput(name, "BYTES", [batch], [(i or "").encode() for i in archive_ids or []],
                                           params))
            else:
                top1 = np.argmax(probs, axis=1)
                outputs.append(InferOutput(name, "BYTES", [batch], [labels[int(i)].encode() for i in top1], params))
        return outputs

    # -- the archive ---------------------------------------------------------------------------------------
    def _require_archive(self) -> ArchiveStore:
        if self.archive is None:
            raise ArchiveDisabled("the archive is not enabled on this server: start it with --archive PATH (or "
                                  "VITCODEC_ARCHIVE) to keep the classified streams")
        return self.archive

    async def _archive_call(self, fn: Any, *args: Any) -> Any:
        """A blocking archive operation in a worker thread, after the writes queued before it (so an id an
        answer carried can be read at once)."""
        archive = self._require_archive()
        await asyncio.to_thread(archive.sync)
        return await asyncio.to_thread(fn, *args)

    def archive_status(self) -> ArchiveStatus | None:
        """None without an archive; else ok, starting or degraded (with the last error)."""
        return None if self.archive is None else self.archive.status()

    async def list_images(self, label: str | None = None, max_confidence: float | None = None,
                          since: str | None = None, limit: int = 50, cursor: str | None = None) -> ImagePage:
        """One page of archived images, newest first; InvalidRequest for a malformed filter or cursor."""
        archive = self._require_archive()
        query = ImageQuery.parse(label, max_confidence, since, limit, cursor)
        return await self._archive_call(archive.list, query)

    async def get_image(self, image_id: str) -> ArchiveEntry:
        entry = await self._archive_call(self._require_archive().get, image_id)
        if entry is None:
            raise ImageNotFound(f"no archived image has id {image_id!r}")
        return entry

    async def reconstruct_image(self, image_id: str) -> tuple[ReconstructResult, bool]:
        """The reconstruction of an archived stream, through the same path as `reconstruct` (its model must be
        served), cached in memory; and whether it came from the cache."""
        archive = self._require_archive()
        stream = await self._archive_call(archive.stream, image_id)  # still there? (retention may have run)
        if stream is None:
            self.reconstructions.discard(image_id)
            raise ImageNotFound(f"no archived image has id {image_id!r}")
        cached = self.reconstructions.get(image_id)
        if cached is not None:
            return cached, True
        result = await self.reconstruct(stream)
        self.reconstructions.put(image_id, result)
        return result, False

    async def delete_image(self, image_id: str) -> None:
        archive = self._require_archive()
        self.reconstructions.discard(image_id)
        deleted = await asyncio.to_thread(archive.delete, image_id)
        self.reconstructions.discard(image_id)  # again: a reconstruction may have finished meanwhile
        if not deleted:
            raise ImageNotFound(f"no archived image has id {image_id!r}")
