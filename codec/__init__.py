"""vitcodec.codec: bitstream format, entropy coding, integer hyper-synthesis and CDF tables.

Pure numpy + constriction, shared verbatim by the edge (no torch) and the cloud, so both code the same bytes.
"""

from .bitstream import (
    FORMAT_VERSION,
    StreamHeader,
    StreamInfo,
    header_size,
    pack_stream,
    peek_model_id,
    read_stream_info,
    unpack_stream,
)
from .entropy_coder import EntropyTable, decode_with_indexes, encode_with_indexes
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
    "pack_stream",
    "peek_model_id",
    "read_stream_info",
    "unpack_stream",
    "EntropyTable",
    "decode_with_indexes",
    "encode_with_indexes",
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
