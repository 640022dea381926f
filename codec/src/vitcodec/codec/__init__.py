"""vitcodec.codec: bitstream format, entropy coding, integer hyper-synthesis and CDF tables.

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
from .integer_hyper_synthesis import FixedLayer, HyperOutput, IntegerHyperSynthesis
from .latent_codec import EncodedLatents, LatentCodec
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
    "EncodedLatents",
    "LatentCodec",
    "CodecTables",
]
