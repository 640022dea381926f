"""vitcodec.codec: bitstream format, entropy coding, the exact integer hyper-synthesis (8-bit, and the older
wide fixed point) and CDF tables.

Pure numpy + constriction, shared verbatim by the edge (no torch) and the cloud, so both code the same bytes.
"""

from .bitstream import (
    FORMAT_VERSION,
    StreamHeader,
    StreamInfo,
    header_size,
    looks_like_stream,
    pack_stream,
    read_stream_info,
    unpack_stream,
)
from .entropy_coder import EntropyTable
from .errors import (
    BadMagicError,
    CodecError,
    CorruptPayloadError,
    IntegrityError,
    ModelMismatchError,
    TruncatedStreamError,
    UnsupportedVersionError,
)
from .hyper_synthesis import HyperSynthesis, hyper_from_arrays
from .int8_hyper_synthesis import Int8HyperSynthesis
from .integer_hyper_synthesis import FixedLayer, IntegerHyperSynthesis
from .latent_codec import EncodedLatents, LatentCodec
from .scale_index import HyperOutput
from .tables import CodecTables

__all__ = [
    "FORMAT_VERSION",
    "StreamHeader",
    "StreamInfo",
    "header_size",
    "looks_like_stream",
    "pack_stream",
    "read_stream_info",
    "unpack_stream",
    "EntropyTable",
    "BadMagicError",
    "CodecError",
    "CorruptPayloadError",
    "IntegrityError",
    "ModelMismatchError",
    "TruncatedStreamError",
    "UnsupportedVersionError",
    "FixedLayer",
    "HyperOutput",
    "IntegerHyperSynthesis",
    "Int8HyperSynthesis",
    "HyperSynthesis",
    "hyper_from_arrays",
    "EncodedLatents",
    "LatentCodec",
    "CodecTables",
]
