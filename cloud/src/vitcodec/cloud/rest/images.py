"""The archive over HTTP (``/v1/images``): list the classified streams the server kept, read one entry, get its
reconstruction (decoded on demand, cached), delete it. Needs ``--archive``; without it every route is a 404
that says so. The bearer token applies as on every other route; the GET routes also accept the review page's
session cookie (session.py), so that a browser logged in at ``/ui/login`` can load the thumbnails."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Response

from ..archive import DEFAULT_LIMIT, MAX_LIMIT
from ..dataplane import DataPlane
from .deps import get_plane
from .native import reconstruction_headers
from .schemas import DeletedResponse, ErrorBody, ImageInfo, ImageListResponse
from .session import require_auth_or_session

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 404, 503)}

router = APIRouter(prefix="/v1/images", tags=["archive"], dependencies=[Depends(require_auth_or_session)],
                   responses=_ERRORS)


@router.get("", response_model=ImageListResponse, summary="Archived images, newest first (paginated)")
async def list_images(
    label: str | None = Query(None, description="Only images whose top-1 label was this."),
    max_confidence: float | None = Query(None, ge=0.0, le=1.0,
                                         description="Only images whose top-1 probability was at most this."),
    since: str | None = Query(None, description="Only images first classified at or after this ISO 8601 time "
                                                "(UTC when it names no zone), e.g. 2026-01-31T12:00:00Z."),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Images per page."),
    cursor: str | None = Query(None, description="The next_cursor of the previous page (opaque)."),
    plane: DataPlane = Depends(get_plane),
) -> dict[str, Any]:
    page = await plane.list_images(label, max_confidence, since, limit, cursor)
    return {"images": [{**e.as_dict(), "reclassifications": []} for e in page.images],
            "next_cursor": page.next_cursor}


@router.get("/{image_id}", response_model=ImageInfo, summary="One archived image: its answer and re-classifications")
async def get_image(image_id: str, plane: DataPlane = Depends(get_plane)) -> dict[str, Any]:
    return (await plane.get_image(image_id)).as_dict()


@router.get("/{image_id}/reconstruction", summary="The archived stream decoded to an image (PNG, original size)",
            responses={200: {"content": {"image/png": {}}, "description": "The reconstructed image."}})
async def get_reconstruction(image_id: str, plane: DataPlane = Depends(get_plane)) -> Response:
    result, cached = await plane.reconstruct_image(image_id)
    headers = {**reconstruction_headers(result), "X-Vitcodec-Image-Id": image_id,
               "X-Vitcodec-Cache": "hit" if cached else "miss"}
    return Response(result.png, media_type="image/png", headers=headers)


@router.delete("/{image_id}", response_model=DeletedResponse, summary="Delete an archived image")
async def delete_image(image_id: str, plane: DataPlane = Depends(get_plane)) -> dict[str, Any]:
    await plane.delete_image(image_id)
    return {"deleted": image_id}
