"""HTTP transport: FastAPI routers (KServe v2, native /v1, metrics) over the data plane."""
from .app import create_app

__all__ = ["create_app"]
