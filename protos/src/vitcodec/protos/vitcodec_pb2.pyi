from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("stream", "model", "top_k", "id")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    stream: bytes
    model: str
    top_k: int
    id: str
    def __init__(self, stream: _Optional[bytes] = ..., model: _Optional[str] = ..., top_k: _Optional[int] = ..., id: _Optional[str] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("index", "label", "probability")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    probability: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "http_status", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    http_status: int
    message: str
    def __init__(self, code: _Optional[str] = ..., http_status: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("id", "index", "model", "version", "model_id", "top", "num_bytes", "header_bytes", "bpp", "height", "width", "timings_ms", "error", "novelty", "archive_id", "client")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    HEADER_BYTES_FIELD_NUMBER: _ClassVar[int]
    BPP_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NOVELTY_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    index: int
    model: str
    version: str
    model_id: str
    top: _containers.RepeatedCompositeFieldContainer[ClassScore]
    num_bytes: int
    header_bytes: int
    bpp: float
    height: int
    width: int
    timings_ms: _containers.ScalarMap[str, float]
    error: Error
    novelty: float
    archive_id: str
    client: str
    def __init__(self, id: _Optional[str] = ..., index: _Optional[int] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., model_id: _Optional[str] = ..., top: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., num_bytes: _Optional[int] = ..., header_bytes: _Optional[int] = ..., bpp: _Optional[float] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., novelty: _Optional[float] = ..., archive_id: _Optional[str] = ..., client: _Optional[str] = ...) -> None: ...

class ReconstructRequest(_message.Message):
    __slots__ = ("stream", "model", "id")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    stream: bytes
    model: str
    id: str
    def __init__(self, stream: _Optional[bytes] = ..., model: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("id", "model", "version", "png", "height", "width", "num_bytes", "timings_ms")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    version: str
    png: bytes
    height: int
    width: int
    num_bytes: int
    timings_ms: _containers.ScalarMap[str, float]
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., png: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., num_bytes: _Optional[int] = ..., timings_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "model_id", "ready", "quality", "labels", "height", "width", "channels", "state", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    model_id: str
    ready: bool
    quality: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    height: int
    width: int
    channels: int
    state: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., model_id: _Optional[str] = ..., ready: _Optional[bool] = ..., quality: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ("label", "max_confidence", "since", "limit", "cursor")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MAX_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    label: str
    max_confidence: float
    since: str
    limit: int
    cursor: str
    def __init__(self, label: _Optional[str] = ..., max_confidence: _Optional[float] = ..., since: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class Reclassification(_message.Message):
    __slots__ = ("model", "version", "model_id", "created", "top", "novelty")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    NOVELTY_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    model_id: str
    created: str
    top: _containers.RepeatedCompositeFieldContainer[ClassScore]
    novelty: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., model_id: _Optional[str] = ..., created: _Optional[str] = ..., top: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., novelty: _Optional[float] = ...) -> None: ...

class ImageInfo(_message.Message):
    __slots__ = ("id", "created", "last_seen", "seen", "model", "version", "model_id", "client", "top", "novelty", "num_bytes", "height", "width", "reclassifications")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    NOVELTY_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    RECLASSIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    created: str
    last_seen: str
    seen: int
    model: str
    version: str
    model_id: str
    client: str
    top: _containers.RepeatedCompositeFieldContainer[ClassScore]
    novelty: float
    num_bytes: int
    height: int
    width: int
    reclassifications: _containers.RepeatedCompositeFieldContainer[Reclassification]
    def __init__(self, id: _Optional[str] = ..., created: _Optional[str] = ..., last_seen: _Optional[str] = ..., seen: _Optional[int] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., model_id: _Optional[str] = ..., client: _Optional[str] = ..., top: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., novelty: _Optional[float] = ..., num_bytes: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., reclassifications: _Optional[_Iterable[_Union[Reclassification, _Mapping]]] = ...) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images", "next_cursor")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageInfo]
    next_cursor: str
    def __init__(self, images: _Optional[_Iterable[_Union[ImageInfo, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class GetImageRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetReconstructionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteImageRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteImageResponse(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
