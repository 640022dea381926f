"""The status contract between the server and its clients: one home for what each kind of failure is called on
both transports, and for which failures a client tries again.

- Each kind of error has one HTTP status and one gRPC code (`WireStatus`); the server maps its exceptions to
  these kinds (`vitcodec.cloud.errors`), the clients read them back (`vitcodec.edge.client`), so a client knows
  the HTTP status of a gRPC failure and the other way round.
- Retries: a client retries only transient failures (`is_retryable`: 429/502/503/504, gRPC UNAVAILABLE), and
  honours Retry-After on 429 and 503. The store-and-forward agent retries for ever, but sets aside what the
  server refused for good (`is_permanent`: the bytes, the model or the size are wrong and stay wrong) and
  pauses all its uploads on trouble of the whole server (`is_server_wide`).
- `Backoff`: the one capped exponential backoff with jitter that the client and the agent both wait by.

Torch-free and importable by every layer (docs/architecture.md, "Who may import whom").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

import grpc

__all__ = [
    "WireStatus",
    "BAD_REQUEST",
    "UNAUTHENTICATED",
    "NOT_FOUND",
    "WRONG_MODEL",
    "TOO_LARGE",
    "UNAVAILABLE",
    "INTERNAL",
    "GRPC_FOR_HTTP",
    "HTTP_FOR_GRPC",
    "NO_ANSWER",
    "RETRY_AFTER_HTTP",
    "http_for_grpc",
    "is_retryable",
    "is_permanent",
    "is_server_wide",
    "Backoff",
]


class WireStatus(NamedTuple):
    """One kind of failure as both transports say it."""

    http: int
    grpc: grpc.StatusCode


BAD_REQUEST = WireStatus(400, grpc.StatusCode.INVALID_ARGUMENT)  # a malformed request or an unusable stream
UNAUTHENTICATED = WireStatus(401, grpc.StatusCode.UNAUTHENTICATED)  # a token is needed and missing or wrong
NOT_FOUND = WireStatus(404, grpc.StatusCode.NOT_FOUND)  # no such model, route or archived image
WRONG_MODEL = WireStatus(409, grpc.StatusCode.FAILED_PRECONDITION)  # a good stream, sent to the wrong model
TOO_LARGE = WireStatus(413, grpc.StatusCode.RESOURCE_EXHAUSTED)  # over the size limit
UNAVAILABLE = WireStatus(503, grpc.StatusCode.UNAVAILABLE)  # loading, overloaded, draining: try again later
INTERNAL = WireStatus(500, grpc.StatusCode.INTERNAL)  # a bug in the server

_KINDS = (BAD_REQUEST, UNAUTHENTICATED, NOT_FOUND, WRONG_MODEL, TOO_LARGE, UNAVAILABLE)

# HTTP status -> gRPC code, for every 4xx/503 the server sends: its own kinds, and what the HTTP machinery
# answers by itself (405 wrong method, 415 media type, 422 request validation)
GRPC_FOR_HTTP: dict[int, grpc.StatusCode] = {
    **{kind.http: kind.grpc for kind in _KINDS},
    405: grpc.StatusCode.UNIMPLEMENTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
}

# gRPC code name -> HTTP status, so a client's error carries both whichever transport it used
HTTP_FOR_GRPC: dict[str, int] = {
    **{kind.grpc.name: kind.http for kind in (*_KINDS, INTERNAL)},
    "DEADLINE_EXCEEDED": 504,
}

NO_ANSWER = 0  # the HTTP status of a failure without an answer: refused or reset connection, timeout

RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
RETRYABLE_GRPC = frozenset({UNAVAILABLE.grpc.name})
RETRY_AFTER_HTTP = frozenset({429, 503})  # statuses whose Retry-After header a client honours

# refused for good: the same request would be refused again (401 is not: the device's token can be fixed)
PERMANENT_HTTP = frozenset({BAD_REQUEST.http, NOT_FOUND.http, WRONG_MODEL.http, TOO_LARGE.http, 415, 422})
# trouble of the whole server rather than of one request
SERVER_WIDE_HTTP = RETRYABLE_HTTP | {NO_ANSWER}
SERVER_WIDE_GRPC = RETRYABLE_GRPC | {"DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN"}


def http_for_grpc(code: str) -> int:
    """The HTTP status of a gRPC failure (by code name); 500 for a code the server never sends."""
    return HTTP_FOR_GRPC.get(code, INTERNAL.http)


def is_retryable(status: int = NO_ANSWER, code: str | None = None) -> bool:
    """Does a client try again after this failure? By the HTTP status of an HTTP answer, else by the gRPC
    code name (pass the one the transport gave)."""
    return code in RETRYABLE_GRPC if code is not None else status in RETRYABLE_HTTP


def is_permanent(status: int) -> bool:
    """Did the server refuse the request for good (by its HTTP status, which both clients set)?"""
    return status in PERMANENT_HTTP


def is_server_wide(status: int, code: str) -> bool:
    """Is the whole server in trouble (unreachable, overloaded, restarting), not just this one request?"""
    return status in SERVER_WIDE_HTTP or code in SERVER_WIDE_GRPC


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: the n-th failure in a row waits up to ``base_s * 2**(n-1)``,
    never more than `cap_s`, scaled by a random factor in [`floor`, 1] so that devices do not retry in step.
    ``floor=0`` is full jitter (the client's time-bounded retries); the agent keeps at least half the wait."""

    base_s: float = 0.5
    cap_s: float = 30.0
    floor: float = 0.5

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0 or not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"backoff needs base_s >= 0, cap_s >= 0 and 0 <= floor <= 1, got {self}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row (the first failure: ``failures=1``)."""
        return min(self.cap_s, self.base_s * 2 ** max(0, failures - 1)) * random.uniform(self.floor, 1.0)
