"""The wire contract of `vitcodec.wire`: both transports tell the same story for every kind of failure, and the
retry rules of the client and the agent agree with each other."""

from __future__ import annotations

import random

import grpc
import pytest
from vitcodec import wire

KINDS = [wire.BAD_REQUEST, wire.UNAUTHENTICATED, wire.NOT_FOUND, wire.WRONG_MODEL, wire.TOO_LARGE, wire.UNAVAILABLE,
         wire.INTERNAL]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.grpc.name)
def test_each_kind_reads_the_same_on_both_transports(kind):
    assert wire.http_for_grpc(kind.grpc.name) == kind.http
    if kind is not wire.INTERNAL:  # 500 is the server's bug, never an answer of the HTTP machinery's own
        assert wire.GRPC_FOR_HTTP[kind.http] == kind.grpc
    # a client retries a kind on one transport exactly when it does on the other
    assert wire.is_retryable(kind.http) == wire.is_retryable(code=kind.grpc.name)


def test_retry_rules():
    assert wire.is_retryable(503) and wire.is_retryable(429) and not wire.is_retryable(400)
    assert wire.is_retryable(code="UNAVAILABLE") and not wire.is_retryable(code="INVALID_ARGUMENT")
    assert wire.http_for_grpc("DEADLINE_EXCEEDED") == 504 and wire.http_for_grpc("ABORTED") == 500
    for status in wire.PERMANENT_HTTP:  # refused for good: never retried, never blamed on the whole server
        assert not wire.is_retryable(status) and not wire.is_server_wide(status, "")
    assert not wire.is_permanent(401)  # a token can be fixed on the device: the agent keeps the image
    assert wire.is_server_wide(wire.NO_ANSWER, "UNKNOWN") and wire.is_server_wide(400, "UNAVAILABLE")
    assert wire.GRPC_FOR_HTTP[405] == grpc.StatusCode.UNIMPLEMENTED


def test_backoff_floor_sets_the_jitter():
    rng_state = random.getstate()
    full = [wire.Backoff(0.1, 0.4, floor=0.0).delay(n) for n in range(1, 200)]
    assert all(0 <= d <= 0.4 for d in full) and min(full) < 0.05  # full jitter reaches down to 0
    half = [wire.Backoff(0.1, 0.4).delay(5) for _ in range(200)]
    assert all(0.2 <= d <= 0.4 for d in half)
    random.setstate(rng_state)
    with pytest.raises(ValueError):
        wire.Backoff(0.1, 0.4, floor=1.5)
