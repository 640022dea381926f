"""Point an ONNX graph's weights at the tensor bytes inside a package's ``weights.pt``, so the graph file holds
no copy of them and still opens on its own in any ONNX tool (``onnx.load``, ONNX Runtime, netron).

Why this works: ``torch.save`` writes a zip whose entries ``<archive>/data/<n>`` are the raw tensor storages,
stored uncompressed (64-byte aligned) and in the byte order its ``byteorder`` entry names. For a little-endian
file each such entry is exactly what ONNX's external data wants: the raw little-endian bytes of a tensor at an
(offset, length) of a file beside the graph. An initializer whose stored form differs from what the graph
computes with (float16 storage, a transposed matrix) becomes a stored initializer followed by a Cast and/or a
Transpose, which ONNX Runtime folds into constants when the session starts.
"""

from __future__ import annotations

import hashlib
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, 22 bytes we skip, file-name length, extra-field length
LOCAL_SIGNATURE = b"PK\x03\x04"


def stored_tensor_extents(path: Path) -> dict[bytes, tuple[int, int]]:
    """SHA-256 of each raw tensor storage in a ``torch.save`` zip -> (offset, length) of its bytes in the file.

    Empty when the file was written big-endian (or by a torch without a ``byteorder`` entry): nothing in it
    can be referenced, and the caller keeps those tensors inside the graph."""
    extents: dict[bytes, tuple[int, int]] = {}
    with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
        names = archive.namelist()
        order = [n for n in names if n.endswith("/byteorder")]
        if len(order) != 1 or archive.read(order[0]) != b"little":
            return extents
        for info in archive.infolist():
            if "/data/" not in info.filename or info.compress_type != zipfile.ZIP_STORED:
                continue
            raw.seek(info.header_offset)
            signature, name_length, extra_length = LOCAL_HEADER.unpack(raw.read(LOCAL_HEADER.size))
            if signature != LOCAL_SIGNATURE:
                raise ValueError(f"{path}: {info.filename} has no local zip header at {info.header_offset}")
            offset = info.header_offset + LOCAL_HEADER.size + name_length + extra_length
            raw.seek(offset)
            data = raw.read(info.file_size)
            if zlib.crc32(data) != info.CRC:  # the offset arithmetic is checked, not trusted
                raise ValueError(f"{path}: {info.filename} is not stored at byte {offset}")
            extents.setdefault(hashlib.sha256(data).digest(), (offset, info.file_size))
    return extents


def bind_external_weights(graph: onnx.ModelProto, stored: Mapping[str, np.ndarray], weights: Path) -> int:
    """Replace each float initializer of ``graph`` equal to a stored tensor (or to its transpose) by a reference
    into ``weights`` (the file the tensors were loaded from, which will sit beside the graph). ``stored`` holds
    the tensors as the file stores them (dtype included), by state-dict key. Initializers that match nothing,
    or whose storage is not one whole entry of the file, stay inside the graph. Returns how many were bound."""
    from onnx import TensorProto, helper, numpy_helper

    extents = stored_tensor_extents(weights)
    graph_io = {v.name for v in (*graph.graph.input, *graph.graph.output)}
    computed = {key: value.astype(np.float32) for key, value in stored.items()
                if np.issubdtype(value.dtype, np.floating)}
    created: dict[str, str] = {}  # value name in the graph -> its producer's output, per stored form
    new_initializers: list[TensorProto] = []
    new_nodes: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}
    kept: list[TensorProto] = []

    def stored_value(key: str) -> str | None:
        """The name of an external initializer holding ``stored[key]`` as the file stores it."""
        name = f"{weights.name}:{key}"
        if name not in created:
            tensor = np.ascontiguousarray(stored[key])
            extent = extents.get(hashlib.sha256(tensor.tobytes()).digest())
            if extent is None:
                return None
            external = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(tensor.dtype),
                                   dims=list(tensor.shape), data_location=TensorProto.EXTERNAL)
            for field, text in (("location", weights.name), ("offset", str(extent[0])), ("length", str(extent[1]))):
                entry = external.external_data.add()
                entry.key, entry.value = field, text
            new_initializers.append(external)
            created[name] = name
        return created[name]

    def derived(source: str, op: str, suffix: str, **attributes: Any) -> str:  # attributes: as make_node takes
        output = f"{source}:{suffix}"
        if output not in created:
            new_nodes.append(helper.make_node(op, [source], [output], name=output, **attributes))
            created[output] = output
        return output

    for init in graph.graph.initializer:
        match = None
        if init.data_type == TensorProto.FLOAT and init.name not in graph_io:
            value = numpy_helper.to_array(init)
            match = _find(value, computed)
        source = stored_value(match[0]) if match else None
        if match is None or source is None:
            kept.append(init)
            continue
        key, transposed = match
        if stored[key].dtype != np.float32:
            source = derived(source, "Cast", "float32", to=TensorProto.FLOAT)
        if transposed:
            source = derived(source, "Transpose", "T")
        renamed[init.name] = source
    del graph.graph.initializer[:]
    graph.graph.initializer.extend([*kept, *new_initializers])
    for node in graph.graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    nodes = list(graph.graph.node)
    del graph.graph.node[:]
    graph.graph.node.extend([*new_nodes, *nodes])  # producers first: the graph stays topologically sorted
    return len(renamed)


def _find(value: np.ndarray, computed: Mapping[str, np.ndarray]) -> tuple[str, bool] | None:
    """(state-dict key, transposed) of the stored tensor equal to ``value``, as float32, or None."""
    for key, tensor in computed.items():
        if tensor.shape == value.shape and np.array_equal(tensor, value):
            return key, False
        if tensor.ndim == 2 and tensor.T.shape == value.shape and np.array_equal(tensor.T, value):
            return key, True
    return None
