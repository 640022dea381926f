"""gRPC transport: the KServe v2 servicer, the native streaming servicer, auth/metrics interceptor, health
checking and reflection, assembled by `build_grpc_server`."""

from .server import GrpcTransport, build_grpc_server

__all__ = ["GrpcTransport", "build_grpc_server"]
