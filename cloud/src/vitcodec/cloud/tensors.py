"""Tensor byte layouts shared by the v2 binary-data extension (HTTP) and raw contents (gRPC).

BYTES tensors are a sequence of elements, each a 4-byte little-endian length followed by its bytes;
numeric tensors are their elements in row-major order, little-endian.
"""

from __future__ import annotations

import struct
from typing import cast

import numpy as np

from .errors import InvalidRequest

NUMERIC_DTYPES = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
DATATYPES = set(NUMERIC_DTYPES) | {"BYTES"}

_LEN = struct.Struct("<I")


def serialize_bytes(elements: list[bytes]) -> bytes:
    out = bytearray()
    for element in elements:
        out += _LEN.pack(len(element))
        out += element
    return bytes(out)


def deserialize_bytes(buffer: bytes | memoryview, name: str = "input") -> list[bytes]:
    """Split a length-prefixed BYTES buffer; raises InvalidRequest when the lengths do not add up."""
    view = memoryview(buffer)
    elements: list[bytes] = []
    pos, end = 0, len(view)
    while pos < end:
        if pos + 4 > end:
            raise InvalidRequest(f"{name}: BYTES data ends inside an element's 4-byte length prefix")
        (size,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + size > end:
            raise InvalidRequest(f"{name}: BYTES element of {size} bytes runs past the end of the data")
        elements.append(bytes(view[pos:pos + size]))
        pos += size
    return elements


def numeric_from_bytes(buffer: bytes, datatype: str, name: str = "input") -> np.ndarray:
    dtype = NUMERIC_DTYPES[datatype]
    if len(buffer) % dtype.itemsize:
        raise InvalidRequest(f"{name}: {len(buffer)} bytes is not a whole number of {datatype} elements")
    return np.frombuffer(buffer, dtype=dtype)


def numeric_to_bytes(array: np.ndarray, datatype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=NUMERIC_DTYPES[datatype]).tobytes()


def output_to_bytes(data: list[bytes] | np.ndarray, datatype: str) -> bytes:
    """One output's data (`InferOutput.data`) in its binary layout: a BYTES output holds a list of its elements,
    any other datatype an array."""
    if datatype == "BYTES":
        return serialize_bytes(cast("list[bytes]", data))
    return numeric_to_bytes(cast(np.ndarray, data), datatype)


def element_count(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidRequest(f"shape {shape} has a negative dimension")
        count *= dim
    return count
