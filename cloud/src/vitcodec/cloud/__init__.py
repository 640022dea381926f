"""vitcodec.cloud: the inference server.

Classifies learned-compression bitstreams straight from their decoded latents (no pixel decoder) and
reconstructs images on demand, over HTTP (KServe v2 / Open Inference Protocol + native ``/v1`` routes) and
gRPC (``inference.GRPCInferenceService`` + the native ``vitcodec.v1.VitCodec`` streaming service).

Layout, as KServe's Python server does it: ``settings`` -> ``repository`` (models, readiness) ->
``batching`` (dynamic batches per model) -> ``dataplane`` (transport-free operations) -> thin transports in
``rest/`` and ``grpc/``; ``errors`` maps every domain error to one HTTP and one gRPC status; ``server``
builds and runs both transports from a ``Settings`` object. Nothing here does work at import time.
"""
