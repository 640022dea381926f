"""vitcodec.protos: the gRPC contracts and their generated modules.

- ``grpc_service.proto``: the Open Inference Protocol (KServe v2) ``inference.GRPCInferenceService``,
  wire-compatible with tritonclient.
- ``vitcodec.proto``: the native ``vitcodec.v1.VitCodec`` service (classify, batch-upload stream, reconstruct).

The ``*_pb2*.py`` modules are generated and committed; ``make protos`` regenerates them (protoc, then
``fix_imports.py``) and a test checks that the result is byte-identical. They register in vitcodec's own
descriptor pool (``_pool.py``), so they coexist with tritonclient's identically named messages.
"""
