"""Assemble the grpc.aio server: v2 + native services, health checking, reflection, limits, interceptor."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from vitcodec.protos import grpc_service_pb2, vitcodec_pb2

from ..auth import Authenticator
from ..dataplane import DataPlane
from ..settings import Settings
from . import native_servicer, v2_servicer
from .interceptors import ServerInterceptor

SERVICES = (v2_servicer.SERVICE_NAME, native_servicer.SERVICE_NAME)


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """A pool with every service this server offers (ours live in vitcodec's own pool, see protos/fix_imports.py)."""
    pool = descriptor_pool.DescriptorPool()
    for module in (grpc_service_pb2, vitcodec_pb2, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


@dataclass
class GrpcTransport:
    server: grpc.aio.Server
    # typeshed's grpc_health stubs lack `health.aio` (grpc_health.v1._async), which grpcio-health-checking has
    health: health.aio.HealthServicer  # pyright: ignore[reportAttributeAccessIssue]
    port: int

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICES):
            await self.health.set(name, status)


def build_grpc_server(plane: DataPlane, settings: Settings, host: str | None = None,
                      credentials: grpc.ServerCredentials | None = None,
                      auth: Authenticator | None = None) -> GrpcTransport:
    """Create (not start) the server and bind its port (over TLS with `credentials`); must be called inside
    the serving event loop. `auth`: who may call (default: from the settings)."""
    limit = settings.max_body_bytes
    server = grpc.aio.server(
        interceptors=[ServerInterceptor(plane.metrics,
                                        auth if auth is not None else Authenticator.from_settings(settings,
                                                                                                  plane.metrics),
                                        access_log=settings.access_log)],
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=None,
    )
    concurrency = max(settings.max_batch_size, 8)
    v2_servicer.add_to_server(v2_servicer.InferenceServicer(plane, concurrency), server)
    native_servicer.add_to_server(native_servicer.VitCodecServicer(plane, concurrency), server)
    health_servicer = health.aio.HealthServicer()  # pyright: ignore[reportAttributeAccessIssue] - see GrpcTransport
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server,
                                        pool=reflection_pool())
    address = f"{host or settings.host}:{settings.grpc_port}"
    if ":" in (host or settings.host):  # IPv6 literal
        address = f"[{host or settings.host}]:{settings.grpc_port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"gRPC cannot bind {address}")
    return GrpcTransport(server, health_servicer, port)
