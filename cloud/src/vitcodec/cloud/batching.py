"""The batching engine: requests from every transport meet in one queue per model and kind.

    request ─► parse + validate header, CRC, model id, geometry (event loop, once) ─► BatchQueue(model, kind)
                                                                                        │ dynamic batching:
                                                                                        │ max batch size,
                                                                                        │ max queue delay
                                                                                        ▼
                         one job in the kind's compute thread: entropy-decode the batch (one h_s pass),
                         then one batched forward (ViT, or aggregation + g_s)

- A queue holds the payloads of parsed streams, not decoded latents: decoding a batch runs the integer h_s
  once for all its streams (`LatentCodec.decode_batch`), several times cheaper per stream than one at a
  time. Decoding and the forward run as one executor job, so a request costs one thread hop, and under load
  the next batch fills while this one runs. (A separate decode stage feeding the forward would contend for the
  same cores; it was not measured side by side: see docs/benchmarks.md.)
- A bad payload fails only its own stream: the batch is then decoded one stream at a time
  (`cloud/decoding.py`), the others still get their answers.
- Classification and reconstruction have separate queues and separate compute threads, so a burst of
  reconstructions never holds up classification.
- A batch only ever holds streams with the same geometry (one h_s, one stack, one forward); it starts as soon
  as the compute thread is free and either the batch is full or its first stream has waited
  ``max_queue_delay``. While a job runs, newcomers pile up and form the next batch: under load batches
  grow by themselves; alone, a request waits at most ``max_queue_delay``.
- Per-stream timings: ``queue`` is this stream's wait, ``decode`` and ``inference`` are the times of the
  whole batch it was in, ``batch_size`` how many streams shared them.
- A classification is a `Scores`: the stream's probabilities and, from a calibrated model, its novelty
  (``analyse_latents``: one forward gives both for the whole batch).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .decoding import decode_isolated
from .errors import Overloaded, ShuttingDown
from .metrics import Metrics
from .served_model import Payload, ServedModel
from .settings import Settings

log = logging.getLogger("vitcodec.cloud.batching")

CLASSIFY = "classify"
RECONSTRUCT = "reconstruct"


class Scores(NamedTuple):
    """One stream's classification: its probabilities and, from a calibrated model, its novelty (how unlike
    the training data it is; above 1.0 is out of distribution). None when the model is not calibrated."""

    probs: np.ndarray  # (classes,) float32
    novelty: float | None


def analyse(model: ServedModel, y_hat: np.ndarray) -> list[Scores]:
    """One batched forward (``model.analyse_latents``), split into one `Scores` per stream."""
    probs, novelty = model.analyse_latents(y_hat)
    if novelty is None:
        return [Scores(row, None) for row in probs]
    return [Scores(row, float(n)) for row, n in zip(probs, novelty)]


@dataclass(frozen=True)
class BatchOutcome:
    """One stream's share of a batch."""

    value: Any  # Scores (classify) or uint8 image (H, W, C) (reconstruct)
    queue_ms: float
    decode_ms: float  # entropy decoding of the whole batch
    compute_ms: float  # the batched forward
    batch_size: int


# What streams must share to share a batch: (latent_shape,) to classify, (latent_shape, image_size) to
# reconstruct; every item an (h, w) or (H, W) pair.
BatchKey = tuple[tuple[int, int], ...]


@dataclass
class _Item:
    payload: Payload
    key: BatchKey  # (latent_shape, ...): streams with equal keys share a batch
    future: asyncio.Future
    enqueued: float


@dataclass
class _JobResult:
    values: list[Any]  # per stream: its output, or the exception that fails it
    decode_ms: float
    compute_ms: float
    failures: int


Forward = Callable[[np.ndarray, BatchKey], Any]  # stacked ŷ (B, M, h, w), key -> B per-stream outputs


class BatchQueue:
    """One asyncio-fed queue and its worker task, for one (model, kind)."""

    def __init__(self, label: str, kind: str, model: ServedModel, forward: Forward, executor: ThreadPoolExecutor, *,
                 max_batch_size: int, max_queue_delay_s: float, max_queue_size: int, metrics: Metrics) -> None:
        self.label, self.kind = label, kind
        self._model = model
        self._forward = forward
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self._metrics = metrics
        self._items: collections.deque[_Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batch-{self.label}-{self.kind}")

    @property
    def depth(self) -> int:
        return len(self._items)

    async def submit(self, payload: Payload, key: BatchKey) -> BatchOutcome:
        """Queue one parsed stream's (z, y) payloads; `key[0]` is its latent shape. Raises the stream's own
        decoding error, or the forward's error."""
        if self._closing:
            raise ShuttingDown("server is shutting down")
        if len(self._items) >= self.max_queue_size:
            raise Overloaded(f"model {self.label!r} has {len(self._items)} {self.kind} requests queued; retry later")
        item = _Item(payload, key, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._items.append(item)
        self._metrics.queue_depth.labels(self.label, self.kind).set(len(self._items))
        self._wakeup.set()
        return await item.future

    async def close(self) -> None:
        """Finish every queued item, then stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _collect(self) -> list[_Item] | None:
        while not self._items:
            if self._closing:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        # the first item is here: wait for company until the batch is full or the delay has passed
        deadline = self._items[0].enqueued + self.max_queue_delay_s
        while len(self._items) < self.max_batch_size and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        first_key = self._items[0].key
        batch: list[_Item] = []
        skipped: list[_Item] = []
        while self._items and len(batch) < self.max_batch_size:
            item = self._items.popleft()
            if item.future.done():  # cancelled: the client went away
                continue
            (batch if item.key == first_key else skipped).append(item)
        self._items.extendleft(reversed(skipped))  # other geometries keep their place for the next batch
        self._metrics.queue_depth.labels(self.label, self.kind).set(len(self._items))
        return batch

    def _job(self, payloads: list[Payload], key: BatchKey) -> _JobResult:
        """In the compute thread: decode the batch (one h_s pass), then one forward over what decoded."""
        t0 = time.perf_counter()
        decoded = decode_isolated(self._model, payloads, key[0])
        t1 = time.perf_counter()
        outputs = self._forward(decoded.y_hat, key) if len(decoded.y_hat) else []
        t2 = time.perf_counter()
        values = [decoded.errors[i] if row is None else outputs[row] for i, row in enumerate(decoded.rows)]
        return _JobResult(values, (t1 - t0) * 1e3, (t2 - t1) * 1e3, len(decoded.errors))

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        m = self._metrics
        while True:
            batch = await self._collect()
            if batch is None:
                return
            if not batch:
                continue
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(self._executor, self._job, [item.payload for item in batch],
                                                    batch[0].key)
            except Exception as exc:  # a failing forward fails its requests, never the worker
                log.exception("%s batch of %d for %s failed", self.kind, len(batch), self.label)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            size = len(batch)
            m.batch_size.labels(self.label, self.kind).observe(size)
            m.compute_time.labels(self.label, self.kind).observe(result.compute_ms / 1e3)
            decode_hist = m.decode_time.labels(self.label)
            queue_hist = m.queue_time.labels(self.label, self.kind)
            if result.failures:
                m.streams.labels(self.label, "decode", "invalid").inc(result.failures)
            for item, value in zip(batch, result.values):
                queue_s = started - item.enqueued
                queue_hist.observe(queue_s)
                decode_hist.observe(result.decode_ms / 1e3 / size)  # each stream's share of the batch
                if item.future.done():
                    continue
                if isinstance(value, Exception):
                    item.future.set_exception(value)
                else:
                    item.future.set_result(BatchOutcome(value, queue_s * 1e3, result.decode_ms, result.compute_ms,
                                                        size))


class ModelBatcher:
    """The two queues of one loaded model."""

    def __init__(self, label: str, model: ServedModel, engine: BatchingEngine) -> None:
        s = engine.settings

        def queue(kind: str, forward: Forward, executor: ThreadPoolExecutor) -> BatchQueue:
            return BatchQueue(label, kind, model, forward, executor, max_batch_size=s.max_batch_size,
                              max_queue_delay_s=s.max_queue_delay_ms / 1e3, max_queue_size=s.max_queue_size,
                              metrics=engine.metrics)

        self.classify = queue(CLASSIFY, lambda y, key: analyse(model, y), engine.classify_executor)
        self.reconstruct = queue(RECONSTRUCT, lambda y, key: model.reconstruct_latents(y, key[1]),
                                 engine.reconstruct_executor)
        self.classify.start()
        self.reconstruct.start()

    async def close(self) -> None:
        await asyncio.gather(self.classify.close(), self.reconstruct.close())


class BatchingEngine:
    """Executors and per-model batchers of one server; created and closed inside the server's event loop."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        workers = settings.png_workers
        self.png_executor = ThreadPoolExecutor(workers, thread_name_prefix="vitcodec-png") if workers else None
        self.classify_executor = ThreadPoolExecutor(1, thread_name_prefix="vitcodec-classify")
        self.reconstruct_executor = ThreadPoolExecutor(1, thread_name_prefix="vitcodec-reconstruct")
        self._batchers: dict[tuple[str, str], ModelBatcher] = {}
        self._closing = False

    def batcher(self, name: str, version: str, model: ServedModel) -> ModelBatcher:
        if self._closing:
            raise ShuttingDown("server is shutting down")
        key = (name, version)
        batcher = self._batchers.get(key)
        if batcher is None:
            label = name if version == "1" else f"{name}/{version}"
            batcher = self._batchers[key] = ModelBatcher(label, model, self)
        return batcher

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run CPU work after a batch (PNG encoding) in the helper pool, or inline when it has no threads."""
        if self.png_executor is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.png_executor, fn, *args)

    async def close(self) -> None:
        """Drain every queue (in-flight requests finish), then stop the threads."""
        self._closing = True
        await asyncio.gather(*(b.close() for b in self._batchers.values()))
        for executor in (self.png_executor, self.classify_executor, self.reconstruct_executor):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=False)
