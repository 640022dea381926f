"""``vitcodec-cloud reclassify``: run a (newer) model over the archive and keep its answers beside the first ones.

The streams are read from the archive in pages, grouped by latent shape and decoded in batches through the
server's own path (`decoding.decode_isolated`: ``CloudModel.decode_payloads``, one h_s pass per batch, a bad
payload failing alone), then classified in one forward per batch (``analyse_latents``). Each answer is stored
in the archive's second table, keyed by (image id, model); the first answer stays as it was.

A stream carries the model id of the codec that made it, and only that codec can decode it: streams of another
model id than the new model's are skipped and reported (how many, per model id), never guessed at.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vitcodec.codec.bitstream import unpack_stream
from vitcodec.codec.errors import CodecError
from vitcodec.outputs import top_k as top_k_indexes
from vitcodec.results import ClassScore

from .archive import ARCHIVE_TOP_K, ArchiveStore, Reclassification, StoredStream
from .decoding import decode_isolated
from .repository import ModelEntry, ModelRepository
from .served_model import ServedModel


@dataclass
class ReclassifyReport:
    """What a re-classification did."""

    model: str
    version: str
    model_id: str
    total: int = 0  # entries looked at
    reclassified: int = 0
    changed: int = 0  # top-1 label differs from the first answer's
    confusion: collections.Counter = field(default_factory=collections.Counter)  # (old label, new label) -> n
    foreign: dict[str, int] = field(default_factory=dict)  # model id hex -> streams skipped
    foreign_names: dict[str, set[str]] = field(default_factory=dict)  # model id hex -> "name vN" that made them
    undecodable: dict[str, str] = field(default_factory=dict)  # image id -> why its payload did not decode

    @property
    def skipped(self) -> int:
        return sum(self.foreign.values()) + len(self.undecodable)


def reclassify_archive(archive: ArchiveStore, entry: ModelEntry, since_us: int | None = None,
                       batch_size: int = 256, advance: Callable[[int], Any] | None = None) -> ReclassifyReport:
    """Classify every archived stream (first classified at or after `since_us`) with the loaded model of
    `entry`, store the answers, and report. `advance(n)` is called as entries are done (a progress bar)."""
    model = ModelRepository.require_ready(entry).model
    assert model is not None  # ready means loaded
    labels = entry.labels
    report = ReclassifyReport(entry.name, entry.version, entry.model_id.hex())
    for page in archive.iter_streams(since_us, page=max(batch_size, 64)):
        report.total += len(page)
        by_shape: dict[tuple[int, int], list[tuple[StoredStream, tuple[bytes, bytes]]]] = collections.defaultdict(list)
        for stored in page:
            try:
                header, z_payload, y_payload = unpack_stream(stored.stream)
            except CodecError as exc:
                report.undecodable[stored.id] = str(exc)
                continue
            if header.model_id != entry.model_id:
                key = header.model_id.hex()
                report.foreign[key] = report.foreign.get(key, 0) + 1
                report.foreign_names.setdefault(key, set()).add(f"{stored.model} v{stored.version}")
                continue
            by_shape[header.latent_shape].append((stored, (z_payload, y_payload)))
        done = len(page) - sum(len(group) for group in by_shape.values())
        if advance is not None and done:
            advance(done)
        for shape, group in by_shape.items():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                rows = _classify_chunk(model, labels, entry, shape, chunk, report)
                if rows:
                    archive.add_reclassifications(rows)
                if advance is not None:
                    advance(len(chunk))
    return report


def _classify_chunk(model: ServedModel, labels: list[str], entry: ModelEntry, shape: tuple[int, int],
                    chunk: list[tuple[StoredStream, tuple[bytes, bytes]]],
                    report: ReclassifyReport) -> list[Reclassification]:
    decoded = decode_isolated(model, [payload for _, payload in chunk], shape)
    for i, error in decoded.errors.items():
        report.undecodable[chunk[i][0].id] = str(error)
    if not len(decoded.y_hat):
        return []
    probs, novelty = model.analyse_latents(decoded.y_hat)
    rows = []
    for i, row in enumerate(decoded.rows):
        if row is None:
            continue
        stored = chunk[i][0]
        top = [ClassScore(int(c), labels[int(c)], float(probs[row][c]))
               for c in top_k_indexes(probs[row], ARCHIVE_TOP_K)]
        rows.append(Reclassification(stored.id, entry.name, entry.version, entry.model_id.hex(), top,
                                     None if novelty is None else float(novelty[row])))
        report.reclassified += 1
        report.confusion[(stored.label, top[0].label)] += 1
        if top[0].label != stored.label:
            report.changed += 1
    return rows
