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
changes the work, never the result. Weights keep their digit planes from `prepare`, each in its own ONNX
Runtime session as a constant (packed once: 1.6x faster than passing it per call), with thread-pool spinning
off (several sessions run back to back; spinning pools starved each other, 13x slower).

Why int8 digits (measured on the 2-core Sapphire Rapids dev VM, 2026-12-01; docs/benchmarks.md):
- float64 GEMMs cannot get within 1.5x of the float32 h_s: float64 has half the SIMD lanes of float32, and
  ONNX Runtime's float64 MatMul (3.0 ms at 2 threads, 6.1 ms at 1, for the 196x2592x384 GEMM of the paper's
  last conv) was no faster than numpy 1.26's OpenBLAS here (3.3 ms); numpy 2.x is out (compressai pins
  numpy<2) and would still be float64. A whole-h_s float64 ONNX graph would be the same MatMul plus copies:
  ONNX Runtime's CPU Conv and ConvTranspose have no double kernels (checked: NOT_IMPLEMENTED).
- exact float32 GEMMs need every partial sum below 2**24: with K = 2592 that leaves ~12 bits per product,
  i.e. 4 x 3 split GEMMs for 26-bit activations and 12-bit weights, slower than one float64 GEMM.
- u8 x s8 MatMulInteger did that GEMM in 0.23 ms (AMX), and in 1.35 ms with the 3 x 2 digit planes the
  realistic paper model needs (19-bit activations, 10-bit weights): 2.4x less than float64.
A GPU can plug in any exact int8 or true-float64 GEMM as another engine (same results, by the bounds above).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from .bitstream import leb128

if TYPE_CHECKING:  # onnxruntime is imported lazily, by Int8LimbGemm only
    import onnxruntime

__all__ = ["EXACT_LIMIT", "ExactGemm", "Float64Gemm", "Int8LimbGemm", "default_engine", "matmul_integer_model",
           "reference_engine"]

EXACT_LIMIT = 1 << 53  # every integer of smaller magnitude is exact in float64
_ACT_BITS, _WEIGHT_BITS = 8, 6  # digit widths: (2**8 - 1) * (2**6 - 1) * 2 < 2**15 (no int16 saturation)
_ACT_MAX, _WEIGHT_MAX = (1 << _ACT_BITS) - 1, (1 << _WEIGHT_BITS) - 1
_INT32_LIMIT = 1 << 31
_ROW_BUDGET = 1 << 23  # im2col elements materialised per GEMM call: bounds memory for big batches


class ExactGemm(Protocol):
    """An exact integer GEMM for im2col rows; see the module docstring for the contract."""

    name: str

    def prepare(self, matrix: np.ndarray) -> Any:  # the engine's own type, which only its `product` reads
        """Weights (K, O) int64 -> the engine's form, built once per layer."""
        ...

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Channels-last activations (B, H, W, C) int64 -> (planes (B, H, W, S, C), coefficients (S,) float64)
        with x == sum_s coefficients[s] * planes[..., s, :]; zero maps to zero (padding stays padding)."""
        ...

    def product(self, cols: np.ndarray, prepared: Any, coefficients: np.ndarray, bound: int) -> np.ndarray:
        """cols (B, rows..., S, K...) window view -> exact int64 (B * rows, O). `bound`: max |x| of the split
        activations (checked against the accumulator bound)."""
        ...


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
    session: onnxruntime.InferenceSession  # holds `digits` as a constant (packed once)


def _digit_count(max_abs: int, bits: int) -> int:
    return max(1, -(-int(max_abs).bit_length() // bits))


class Int8LimbGemm:
    """Exact integer GEMM from digit planes (8-bit activation, 6-bit weight digits) and ONNX Runtime's
    MatMulInteger (u8 x s8 -> int32); see the module docstring."""

    name = "int8-digits-onnxruntime"

    def __init__(self, threads: int | None = 1, spinning: bool = False) -> None:
        """`threads`: ONNX Runtime intra-op threads per GEMM (None: its default, all cores). One thread is the
        default because it measured fastest on 2 cores: without spinning, waking a pool costs more than the
        second core gains on GEMMs of a few milliseconds, and with spinning the per-layer pools starve each
        other (docs/benchmarks.md). Callers that decode in several threads use the cores that way."""
        import onnxruntime as ort
        from vitcodec.ort_session import session_options  # the one session setup, loaded with onnxruntime

        self._ort, self._options = ort, session_options
        self.threads = threads
        self.spinning = spinning
        # fail here, not at the first GEMM, where ONNX Runtime lacks the kernel: default_engine falls back
        self.prepare(np.ones((1, 1), np.int64)).session.run(None, {"a": np.ones((1, 1), np.uint8)})

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
        digits = digits.reshape(k, planes * o)
        options = self._options(self.threads, self.spinning)
        session = self._ort.InferenceSession(matmul_integer_model(digits), options, providers=["CPUExecutionProvider"])
        return _DigitWeights(digits, planes, o, int(magnitude.sum(axis=0).max(initial=0)), session)

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [(x, 1.0)] if x.size == 0 or x.min() >= 0 else [(np.maximum(x, 0), 1.0), (np.maximum(-x, 0), -1.0)]
        count = _digit_count(max((int(p.max(initial=0)) for p, _ in parts), default=0), _ACT_BITS)
        if count > 8:
            raise ValueError("activations beyond 64 bits")
        planes = np.empty((*x.shape[:3], count * len(parts), x.shape[3]), dtype=np.uint8)
        coefficients = np.empty(count * len(parts))
        for n, (values, sign) in enumerate(parts):
            # base-256 digits of a non-negative int64 are its bytes, least significant first on little-endian
            digits = np.ascontiguousarray(values, dtype="<i8").view(np.uint8).reshape(*x.shape, 8)
            planes[..., n * count : (n + 1) * count, :] = np.moveaxis(digits[..., :count], -1, -2)
            coefficients[n * count : (n + 1) * count] = sign * 2.0 ** (_ACT_BITS * np.arange(count))
        return planes, coefficients

    def product(self, cols: np.ndarray, prepared: _DigitWeights, coefficients: np.ndarray, bound: int) -> np.ndarray:
        _check_bound(bound, prepared.abs_sum)
        k = prepared.digits.shape[0]
        s, d, o = coefficients.size, prepared.planes, prepared.out_channels
        # coefficient of term (activation plane s, weight plane j): coefficients[s] * 64**j, exact in float64
        weights = (coefficients[:, None] * (2.0 ** (_WEIGHT_BITS * np.arange(d)))[None, :]).reshape(1, s * d)
        parts = []
        for block in _chunks(cols, k):  # rows ordered (pixel, activation plane)
            partial = cast(np.ndarray, prepared.session.run(None, {"a": block})[0])  # (rows * S, D * O) int32
            terms = partial.reshape(-1, s * d, o).astype(np.float64)
            parts.append(np.matmul(weights, terms)[:, 0])  # exact: |terms| * |weights| sum below 2**53
        out = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros((0, o))
        return out.astype(np.int64)


def _field(number: int, payload: bytes | int) -> bytes:
    """One protobuf field: varint (wire type 0) for ints, length-delimited (wire type 2) for bytes."""
    if isinstance(payload, int):
        return leb128(number << 3) + leb128(payload)
    return leb128(number << 3 | 2) + leb128(len(payload)) + payload


def _value_info(name: str, elem_type: int, dims: list[str]) -> bytes:
    shape = b"".join(_field(1, _field(2, d.encode())) for d in dims)  # TensorShapeProto.dim.dim_param
    tensor_type = _field(1, elem_type) + _field(2, shape)  # TypeProto.Tensor
    return _field(1, name.encode()) + _field(2, _field(1, tensor_type))  # ValueInfoProto


def matmul_integer_model(weights: np.ndarray) -> bytes:
    """ONNX ModelProto (IR 7, opset 10) for C = MatMulInteger(A uint8 (m, K), B) -> int32 (m, N), with B the
    given int8 (K, N) as a constant initializer, so ONNX Runtime packs it once per session, not per call.

    Serialised here field by field (ONNX's protobuf field numbers), so that the edge install needs
    onnxruntime only, not the onnx package; tests/test_codec_exact_gemm.py checks the bytes against
    onnx.helper's.
    """
    weights = np.ascontiguousarray(weights, dtype=np.int8)
    k, n = weights.shape
    node = _field(1, b"a") + _field(1, b"b") + _field(2, b"c") + _field(4, b"MatMulInteger")
    initializer = _field(1, k) + _field(1, n) + _field(2, 3) + _field(8, b"b") + _field(9, weights.tobytes())
    graph = (_field(1, node) + _field(2, b"exact_int8_gemm") + _field(5, initializer)
             + _field(11, _value_info("a", 2, ["m", "k"])) + _field(12, _value_info("c", 6, ["m", "n"])))
    opset = _field(1, b"") + _field(2, 10)
    return _field(1, 7) + _field(2, b"vitcodec") + _field(7, graph) + _field(8, opset)


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
