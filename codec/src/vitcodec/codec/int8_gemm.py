"""One u8 x s8 GEMM with int32 accumulation: the engines of the 8-bit h_s (`codec/int8_hyper_synthesis.py`).

Contract: ``product(a, prepared)`` returns ``a @ w`` exactly, as int32, for ``a`` uint8 (m, K) with entries in
``0..act_max`` and ``w`` int8 (K, N) with ``|w| <= weight_max``. The caller proves before any GEMM runs that

    K * act_max * weight_max < 2**31          (no int32 accumulator overflows, in any summation order)
    2 * act_max * weight_max < 2**15          (kernels that add adjacent u8 x s8 products into saturating int16
                                               first, ``vpmaddubsw`` on AVX2 / AVX-512BW without VNNI, never
                                               saturate: ONNX Runtime's "reduce_range" problem)

(`Int8HyperSynthesis` checks both per layer when it is built), so every exact integer GEMM returns the same
int32 matrix whatever its blocking, thread split, SIMD width or CPU. No zero points reach the GEMM: the caller
folds them into the bias (``sum (x - zp) w = sum x w - zp sum w``), so the kernels see plain unsigned times
signed products.

Engines:
- ``OrtInt8Gemm`` (the default): ONNX Runtime's ``MatMulInteger`` with the weights as a constant of a session
  of their own (packed once), one intra-op thread, no spinning; AMX or AVX-512 VNNI where the CPU has them.
- ``NumpyInt8Gemm``: numpy's int32 ``matmul`` (exact, single-threaded and not vectorised by BLAS): the
  reference, and the fallback where ONNX Runtime lacks the kernel.

Measured on the 2-core Sapphire Rapids dev VM (2026-12-04, median of 20 calls, ms; shared machine): the
224x224 paper h_s's last GEMM 196x2592x384: ORT 0.20, numpy int32 235; the zoo's batch-32 GEMMs 32x576x512,
128x1152x768, 512x1728x256: ORT 0.02 / 0.12 / 0.24, numpy int32 7.9 / 133 / 353; batch 1 (1x576x512):
ORT 0.016, numpy 0.27. ONNX Runtime is faster at every size we run, so it is the default everywhere;
``benchmarks/bench_hs.py`` repeats the comparison on whole h_s passes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

from .exact_gemm import matmul_integer_model

if TYPE_CHECKING:  # onnxruntime is imported lazily, by OrtInt8Gemm only
    import onnxruntime

__all__ = ["INT16_PAIR_LIMIT", "INT32_LIMIT", "Int8Gemm", "NumpyInt8Gemm", "OrtInt8Gemm", "default_int8_engine"]

INT32_LIMIT = 1 << 31
INT16_PAIR_LIMIT = (1 << 15) - 1  # a pair of u8 x s8 products must stay at or below this (saturating int16)


class Int8Gemm(Protocol):
    """An exact u8 x s8 -> int32 GEMM; see the module docstring for the contract."""

    name: str

    def prepare(self, weights: np.ndarray) -> object:
        """int8 (K, N) weights -> the engine's form, built once per layer."""
        ...

    def product(self, a: np.ndarray, prepared: object) -> np.ndarray:
        """uint8 (m, K) -> exact int32 (m, N)."""
        ...


def _int8_weights(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights)
    if w.ndim != 2 or w.dtype != np.int8:
        raise ValueError(f"weights must be a 2-D int8 array, got {w.dtype} {w.shape}")
    return np.ascontiguousarray(w)


def _uint8_rows(a: np.ndarray, k: int) -> np.ndarray:
    if a.ndim != 2 or a.dtype != np.uint8 or a.shape[1] != k:
        raise ValueError(f"activations must be uint8 (m, {k}), got {a.dtype} {a.shape}")
    return a


class NumpyInt8Gemm:
    """numpy int32 matmul: exact under the contract (no int32 sum overflows), slow; the reference."""

    name = "int8-numpy"

    def prepare(self, weights: np.ndarray) -> np.ndarray:
        return _int8_weights(weights).astype(np.int32)

    def product(self, a: np.ndarray, prepared: object) -> np.ndarray:
        assert isinstance(prepared, np.ndarray)
        return _uint8_rows(a, prepared.shape[0]).astype(np.int32) @ prepared


@dataclass(frozen=True)
class _OrtWeights:
    k: int
    n: int
    session: onnxruntime.InferenceSession  # holds the weights as a constant initializer


class OrtInt8Gemm:
    """ONNX Runtime ``MatMulInteger`` (u8 x s8 -> int32), one session per weight matrix."""

    name = "int8-onnxruntime"

    def __init__(self, threads: int | None = 1) -> None:
        """`threads`: intra-op threads per GEMM; one by default (measured fastest for the millisecond GEMMs of
        h_s on 2 cores, see `exact_gemm.Int8LimbGemm`); callers decoding in several threads use the cores."""
        import onnxruntime as ort
        from vitcodec.ort_session import session_options

        self._ort, self._options, self.threads = ort, session_options, threads
        # fail here, not at the first GEMM, where ONNX Runtime lacks the kernel: the default falls back
        probe = self.prepare(np.ones((1, 1), np.int8))
        if self.product(np.full((1, 1), 255, np.uint8), probe)[0, 0] != 255:
            raise RuntimeError("MatMulInteger gave a wrong product")

    def prepare(self, weights: np.ndarray) -> _OrtWeights:
        w = _int8_weights(weights)
        session = self._ort.InferenceSession(matmul_integer_model(w), self._options(self.threads),
                                             providers=["CPUExecutionProvider"])
        return _OrtWeights(w.shape[0], w.shape[1], session)

    def product(self, a: np.ndarray, prepared: object) -> np.ndarray:
        assert isinstance(prepared, _OrtWeights)
        a = _uint8_rows(a, prepared.k)
        if a.shape[0] == 0:
            return np.zeros((0, prepared.n), np.int32)
        return cast(np.ndarray, prepared.session.run(None, {"a": a})[0])  # a dense tensor output: an ndarray


_DEFAULT: Int8Gemm | None = None
_LOCK = threading.Lock()


def default_int8_engine() -> Int8Gemm:
    """ONNX Runtime where it has MatMulInteger, else numpy (same results, slower)."""
    global _DEFAULT
    with _LOCK:
        if _DEFAULT is None:
            try:
                _DEFAULT = OrtInt8Gemm()
            except Exception:  # no onnxruntime or no kernel: the reference always works
                _DEFAULT = NumpyInt8Gemm()
        return _DEFAULT
