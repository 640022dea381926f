"""The HTTP answer to any exception, through the one error table (`vitcodec.cloud.errors.describe`).

Its own module because both the FastAPI app (`app.py`, its exception handlers and the body limit) and the hot
routes in front of it (`fastpath.py`) answer errors with it, and the app builds on the hot routes.
"""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from ..errors import describe, is_known

log = logging.getLogger("vitcodec.cloud.rest")


def error_response(exc: BaseException) -> JSONResponse:
    """``{"error": message, "code": gRPC code name}`` with the table's HTTP status; a bug (an exception the
    table does not know) is logged with its traceback and answered 500."""
    info = describe(exc)
    if not is_known(exc):
        log.error("unhandled error", exc_info=exc)
    headers = {"WWW-Authenticate": "Bearer"} if info.http_status == 401 else None
    return JSONResponse({"error": info.message, "code": info.code_name}, status_code=info.http_status,
                        headers=headers)
