"""Exact integer matrix products for the fixed-point h_s: two engines, one answer.

Every GEMM of the integer h_s multiplies integer activations (im2col rows) by integer weights and must return
the exact integer result, because edge and cloud must derive the same CDF rows from it on any machine. The
callers prove, before any GEMM runs, that for every output

    sum_k |x_k| * |w_k|  <  2**53                                               (the accumulator bound)

(`IntegerHyperSynthesis` from the weights and the activation clamp; each engine re-checks it per call from
the actual operands). Both engines below rely only on that bound, so they return the same integers, and
results do not depend on the engine, batch size, thread count or CPU.

``Float64Gemm`` (the reference; numpy's BLAS). Integers below 2**53 are exact in IEEE float64, and so is every
product and every partial sum of them, whatever the summation order, blocking, FMA use or thread split of
the BLAS. Any float64 GEMM engine that really computes in float64 gives the same answer. What would break
it: reduced-precision modes (TF32 or bf16 "fast math" on GPUs, ``torch.backends.cuda.matmul.allow_tf32``),
and convolution algorithms that are not sums of products of the inputs (FFT, Winograd), which round
intermediate transforms.

``Int8LimbGemm`` (the default: ONNX Runtime's ``MatMulInteger``, u8 x s8 -> int32, which uses AMX or
AVX-512 VNNI where the CPU has them; see docs/benchmarks.md for the measured choice). Operands are cut into
digits:

- activations: x = x+ - x-, and each of x+, x- >= 0 in base 256, x+- = sum_i a_i 256**i with 0 <= a_i <= 255
  (uint8); the digit planes are stacked as extra GEMM rows, next to their pixel (post-ReLU inputs have no x-);
- weights: w = sign(w) * sum_j u_j 64**j with 0 <= u_j <= 63, stored as d_j = sign(w) * u_j (int8); the
  digit planes are stacked as extra GEMM columns.

Then x . w = sum_{i,j} (+-)256**i 64**j * (a_i . d_j), and each partial product a_i . d_j is exact in int32:
every term is at most 255 * 63 = 16065 in magnitude, so a K-long sum stays below 2**31 while
K * 16065 < 2**31 (K < 133,676; checked when a weight is prepared). Kernels that add adjacent u8 x s8 pairs
into saturating int16 first (``vpmaddubsw``: ONNX Runtime's AVX2 and AVX-512BW paths without VNNI) never
saturate either, since 2 * 16065 < 2**15 - 1: that is why weight digits have 6 bits, not 7. The recombination
sum_{i,j} +-256**i 64**j * P_ij runs in float64 and is exact in any order: with sign-magnitude digits the
magnitudes of all its terms add up to at most sum_k |x_k| * |w_k| < 2**53, the same accumulator bound. Any
exact int8 GEMM (MatMulInteger on another runtime, ``torch._int_mm``, a GPU int8 kernel) gives the same answer.

Only the digits that the actual activations need are used (their largest magnitude decides the count), which
changes the work, never the result. Weights keep their digit planes from `prepare`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["EXACT_LIMIT", "MATMUL_INTEGER_ONNX", "ExactGemm", "Float64Gemm", "Int8LimbGemm", "default_engine", "reference_engine"]

EXACT_LIMIT = 1 << 53  # every integer of smaller magnitude is exact in float64
_ACT_BITS, _WEIGHT_BITS = 8, 6  # digit widths: (2**8 - 1) * (2**6 - 1) * 2 < 2**15 (no int16 saturation)
_ACT_MAX, _WEIGHT_MAX = (1 << _ACT_BITS) - 1, (1 << _WEIGHT_BITS) - 1
_INT32_LIMIT = 1 << 31
_ROW_BUDGET = 1 << 23  # im2col elements materialised per GEMM call: bounds memory for big batches


class ExactGemm(Protocol):
    """An exact integer GEMM for im2col rows; see the module docstring for the contract."""

    name: str

    def prepare(self, matrix: np.ndarray) -> object:
        """Weights (K, O) int64 -> the engine's form, built once per layer."""

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Channels-last activations (B, H, W, C) int64 -> (planes (B, H, W, S, C), coefficients (S,) float64)
        with x == sum_s coefficients[s] * planes[..., s, :]; zero maps to zero (padding stays padding)."""

    def product(self, cols: np.ndarray, prepared: object, coefficients: np.ndarray, bound: int) -> np.ndarray:
        """cols (B, rows..., S, K...) window view -> exact int64 (B * rows, O). `bound`: max |x| of the split
        activations (checked against the accumulator bound)."""


def _check_bound(max_abs_x: int, weight_abs_sum: int) -> None:
    if max_abs_x * weight_abs_sum >= EXACT_LIMIT:
        raise ValueError(f"max|x| * max sum|w| = {max_abs_x * weight_abs_sum} reaches 2**53: not exact")


def _chunks(cols: np.ndarray, inner: int) -> list[np.ndarray]:
    """The window view materialised as 2-D (rows, K) blocks of at most _ROW_BUDGET elements."""
    batch = cols.shape[0]
    per_item = max(int(np.prod(cols.shape[1:])), 1)
    step = max(1, _ROW_BUDGET // per_item)
    return [np.ascontiguousarray(cols[a : a + step]).reshape(-1, inner) for a in range(0, batch, step)]


@dataclass(frozen=True)
class _Float64Weights:
    matrix: np.ndarray  # (K, O) float64
    abs_sum: int  # max over outputs of sum_k |w_k|


class Float64Gemm:
    """Integer-valued float64 GEMM through numpy's BLAS: the reference engine."""

    name = "float64-numpy"

    def prepare(self, matrix: np.ndarray) -> _Float64Weights:
        matrix = np.asarray(matrix, dtype=np.int64)
        return _Float64Weights(np.ascontiguousarray(matrix, dtype=np.float64),
                               int(np.abs(matrix).sum(axis=0).max(initial=0)))

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x.astype(np.float64)[..., None, :], np.ones(1)

    def product(self, cols: np.ndarray, prepared: _Float64Weights, coefficients: np.ndarray, bound: int) -> np.ndarray:
        _check_bound(bound, prepared.abs_sum)
        k, o = prepared.matrix.shape
        parts = [block @ prepared.matrix for block in _chunks(cols, k)]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros((0, o))
        return out.astype(np.int64)


@dataclass(frozen=True)
class _DigitWeights:
    digits: np.ndarray  # (K, D * O) int8: the D weight digit planes side by side
    planes: int  # D
    out_channels: int  # O
    abs_sum: int


def _digit_count(max_abs: int, bits: int) -> int:
    return max(1, -(-int(max_abs).bit_length() // bits))


class Int8LimbGemm:
    """Exact integer GEMM from 7-bit digit planes and ONNX Runtime's MatMulInteger (u8 x s8 -> int32)."""

    name = "int8-digits-onnxruntime"

    def __init__(self, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.threads = threads
        self._session = ort.InferenceSession(MATMUL_INTEGER_ONNX, _session_options(ort, threads),
                                             providers=["CPUExecutionProvider"])

    def prepare(self, matrix: np.ndarray) -> _DigitWeights:
        matrix = np.asarray(matrix, dtype=np.int64)
        k, o = matrix.shape
        if k * _ACT_MAX * _WEIGHT_MAX >= _INT32_LIMIT:
            raise ValueError(f"K = {k} is too long for exact int32 digit products")
        magnitude, sign = np.abs(matrix), np.sign(matrix)
        planes = _digit_count(magnitude.max(initial=0), _WEIGHT_BITS)
        digits = np.empty((k, planes, o), dtype=np.int8)
        for j in range(planes):
            digits[:, j] = sign * ((magnitude >> (_WEIGHT_BITS * j)) & _WEIGHT_MAX)
        return _DigitWeights(digits.reshape(k, planes * o), planes, o, int(magnitude.sum(axis=0).max(initial=0)))

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [(x, 1.0)] if x.size == 0 or x.min() >= 0 else [(np.maximum(x, 0), 1.0), (np.maximum(-x, 0), -1.0)]
        count = _digit_count(max((int(p.max(initial=0)) for p, _ in parts), default=0), _ACT_BITS)
        planes = np.empty((*x.shape[:3], count * len(parts), x.shape[3]), dtype=np.uint8)
        coefficients = np.empty(count * len(parts))
        s = 0
        for values, sign in parts:
            for i in range(count):
                np.bitwise_and(values >> (_ACT_BITS * i), _ACT_MAX, out=planes[..., s, :], casting="unsafe")
                coefficients[s] = sign * float(1 << (_ACT_BITS * i))
                s += 1
        return planes, coefficients

    def product(self, cols: np.ndarray, prepared: _DigitWeights, coefficients: np.ndarray, bound: int) -> np.ndarray:
        _check_bound(bound, prepared.abs_sum)
        k = prepared.digits.shape[0]
        s, d, o = coefficients.size, prepared.planes, prepared.out_channels
        # coefficient of term (activation plane s, weight plane j): coefficients[s] * 64**j, exact in float64
        weights = (coefficients[:, None] * (2.0 ** (_WEIGHT_BITS * np.arange(d)))[None, :]).reshape(1, s * d)
        parts = []
        for block in _chunks(cols, k):  # rows ordered (pixel, activation plane)
            partial = self._session.run(None, {"a": block, "b": prepared.digits})[0]  # (rows * S, D * O) int32
            terms = partial.reshape(-1, s * d, o).astype(np.float64)
            parts.append(np.matmul(weights, terms)[:, 0])  # exact: |terms| * |weights| sum below 2**53
        out = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros((0, o))
        return out.astype(np.int64)


def _session_options(ort, threads: int | None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = int(threads)
    return options


# C = MatMulInteger(A uint8 (m, k), B int8 (k, n)) -> int32 (m, n), opset 10, IR 7, producer "vitcodec": the
# serialised ModelProto, kept as bytes so the edge install needs onnxruntime only, not the onnx package
# (tests/test_codec_exact_gemm.py rebuilds it with onnx.helper and checks these bytes).
MATMUL_INTEGER_ONNX = (
    b"\x08\x07\x12\x08vitcodec:p\n\x18\n\x01a\n\x01b\x12\x01c\"\rMatMulInteger\x12\x0fexact_int8_gemmZ\x15"
    b"\n\x01a\x12\x10\n\x0e\x08\x02\x12\n\n\x03\x12\x01m\n\x03\x12\x01kZ\x15\n\x01b\x12\x10\n\x0e\x08\x03\x12\n"
    b"\n\x03\x12\x01k\n\x03\x12\x01nb\x15\n\x01c\x12\x10\n\x0e\x08\x06\x12\n\n\x03\x12\x01m\n\x03\x12\x01nB"
    b"\x04\n\x00\x10\n"
)


_DEFAULT: ExactGemm | None = None
_DEFAULT_LOCK = threading.Lock()


def reference_engine() -> Float64Gemm:
    return Float64Gemm()


def default_engine() -> ExactGemm:
    """The int8 engine where ONNX Runtime can build it, else the float64 reference (same results)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            try:
                _DEFAULT = Int8LimbGemm()
            except Exception:  # no onnxruntime / no MatMulInteger kernel: the reference is always there
                _DEFAULT = Float64Gemm()
        return _DEFAULT
