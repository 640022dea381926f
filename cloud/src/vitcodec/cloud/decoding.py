"""Batched entropy decoding for the server, with the failures of one stream kept to that stream.

The streams a batch queue hands over were parsed and checked at routing (magic, version, CRC, model id,
geometry), so only a range-coded payload can still be wrong. They are decoded together, one h_s pass for the
batch (`LatentCodec.decode_batch`, through the model's `decode_payloads`). The batched call stops at the
first bad payload without saying which one, so when it raises, the batch is decoded again one stream at a
time: the good streams get their ŷ and each bad one gets its own `CorruptPayloadError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from vitcodec.codec.errors import CodecError, CorruptPayloadError

from .served_model import Payload, ServedModel

log = logging.getLogger("vitcodec.cloud.decoding")

# What the range decoder and h_s raise on bytes that parse but do not decode (besides CodecError).
PAYLOAD_ERRORS = (CodecError, ValueError, IndexError, OverflowError, TypeError, RuntimeError)


@dataclass
class DecodedBatch:
    """ŷ of the streams that decoded (rows of `y_hat`, in order) and the error of each that did not."""

    y_hat: np.ndarray  # (number decoded, M, h, w) float32
    rows: list[int | None]  # per stream: its row in y_hat, or None when it failed
    errors: dict[int, Exception]  # stream index -> its error


def as_payload_error(exc: BaseException) -> Exception:
    """A codec error as it is; anything else the decoder raised becomes a `CorruptPayloadError` (the header
    was valid, so the payload is at fault, and the client gets a 4xx, not a 500)."""
    if isinstance(exc, CodecError):
        return exc
    return CorruptPayloadError(f"the range-coded payload cannot be decoded ({type(exc).__name__}: {exc})")


def decode_isolated(model: ServedModel, payloads: list[Payload], latent_shape: tuple[int, int]) -> DecodedBatch:
    """Decode `payloads` (one latent shape) with one h_s pass; on a payload error, one at a time."""
    try:
        y_hat = model.decode_payloads(payloads, latent_shape)
        return DecodedBatch(y_hat, list(range(len(payloads))), {})
    except PAYLOAD_ERRORS as exc:
        if len(payloads) == 1:  # nothing to isolate
            return DecodedBatch(np.empty((0,)), [None], {0: as_payload_error(exc)})
    good: list[np.ndarray] = []
    rows: list[int | None] = []
    errors: dict[int, Exception] = {}
    for i, payload in enumerate(payloads):
        try:
            good.append(model.decode_payloads([payload], latent_shape)[0])
            rows.append(len(good) - 1)
        except PAYLOAD_ERRORS as exc:
            rows.append(None)
            errors[i] = as_payload_error(exc)
    log.info("a batch of %d streams held %d bad payload(s); the other streams were decoded one by one",
             len(payloads), len(errors))
    y_hat = np.stack(good) if good else np.empty((0,))
    return DecodedBatch(y_hat, rows, errors)
