"""The review page (``/ui``): what the archive kept, for people. Recent or low-confidence images as a grid of
thumbnails (each the ``/v1/images/{id}/reconstruction`` PNG, decoded on demand), filtered by label, maximum
confidence and time, paged with the archive's cursor; and one image in detail (``/ui/images/{id}``): larger,
its top-k, novelty, model, time, client, and the stream's size against the PNG's.

Plain server-rendered HTML (Jinja2, every value escaped, a little inline CSS, no JavaScript; the
Content-Security-Policy allows none). With a bearer token configured, a browser logs in once at ``/ui/login``
(session.py). Errors are pages, with the status of the server's error table: no archive 404, a bad filter 400
(its message), an unknown id 404, an archive that cannot be read 503.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from vitcodec.results import OOD_THRESHOLD

from ..archive import ArchiveEntry, iso_time
from ..dataplane import DataPlane
from ..errors import InvalidRequest, describe, is_known
from .deps import get_plane
from .session import COOKIE_NAME, authorized, server_token, session_value, token_matches

log = logging.getLogger("vitcodec.cloud.rest.review")

PAGE_SIZE = 40  # thumbnails per page unless ?limit= says otherwise
MAX_PAGE_SIZE = 200
LOW_CONFIDENCE = 0.6  # the "low confidence" view: top-1 probability at most this
LARGE_PX = 320  # the detail view scales the image up to about this many pixels (whole multiples)
MAX_FORM_BYTES = 4096

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/ui", include_in_schema=False)


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("logout", bool(server_token(request)))  # a logout button wherever there is a login
    html = _templates().get_template(template).render(root=_root(request), **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


_TITLES = {400: "Bad request", 401: "Not logged in", 404: "Not found", 503: "Unavailable"}


def _error_page(request: Request, exc: BaseException) -> HTMLResponse:
    info = describe(exc)
    if not is_known(exc):
        log.error("unhandled error on the review page", exc_info=exc)
    return _page(request, "message.html", info.http_status, title=_TITLES.get(info.http_status, "Error"),
                 message=info.message)


def _archive_off(request: Request) -> HTMLResponse:
    return _page(request, "message.html", 404, title="Archive not enabled",
                 message="The archive is not enabled on this server, so there is nothing to review: start it with "
                         "--archive PATH (or VITCODEC_ARCHIVE) to keep the classified streams.")


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{_root(request)}/ui/login?{urlencode({'next': target})}", status_code=303,
                            headers=SECURITY_HEADERS)


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a review page of this server, never anywhere else."""
    target = (target or "").strip()
    path = target.split("?", 1)[0]
    if path in ("/ui", "/ui/") or (path.startswith("/ui/") and "//" not in path and "\\" not in target
                                   and not path.startswith("/ui/log")):
        return target
    return "/ui"


# -- formatting ---------------------------------------------------------------------------------------------

def _percent(p: float) -> str:
    return f"{100 * p:.1f} %"


def _short_time(us: int) -> str:
    return iso_time(us)[:16].replace("T", " ")


def _size(num_bytes: int) -> str:
    return f"{num_bytes:,} B" if num_bytes < 10_000 else f"{num_bytes / 1024:,.1f} KiB"


def _image_urls(root: str, image_id: str) -> tuple[str, str]:
    quoted = quote(image_id, safe="")
    return f"{root}/ui/images/{quoted}", f"{root}/v1/images/{quoted}/reconstruction"


def _card(root: str, entry: ArchiveEntry) -> dict[str, Any]:
    href, src = _image_urls(root, entry.id)
    novel = entry.novelty is not None and entry.novelty > OOD_THRESHOLD
    return {"id": entry.id, "href": href, "src": src, "label": entry.label, "confidence": _percent(entry.confidence),
            "low": entry.confidence <= LOW_CONFIDENCE, "novel": novel,
            "novelty": None if entry.novelty is None else f"{entry.novelty:.2f}",
            "time": _short_time(entry.created_us), "iso_time": iso_time(entry.created_us),
            "model": f"{entry.model} v{entry.version}", "bytes": _size(entry.num_bytes)}


# -- filters ------------------------------------------------------------------------------------------------

FILTER_NAMES = ("label", "max_confidence", "since", "limit")


def _filters(request: Request) -> dict[str, str]:
    """The filters as typed (empty fields dropped), to fill the form and build links."""
    params = request.query_params
    return {name: params[name].strip() for name in FILTER_NAMES if params.get(name, "").strip()}


def _parse_filters(filters: dict[str, str]) -> tuple[str | None, float | None, str | None, int]:
    max_confidence = None
    if "max_confidence" in filters:
        try:
            max_confidence = float(filters["max_confidence"])
        except ValueError:
            raise InvalidRequest("max_confidence must be a number between 0 and 1, got "
                                 f"{filters['max_confidence']!r}") from None
    limit = PAGE_SIZE
    if "limit" in filters:
        try:
            limit = int(filters["limit"])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidRequest(f"limit must be a whole number between 1 and {MAX_PAGE_SIZE}, got "
                                 f"{filters['limit']!r}")
    return filters.get("label"), max_confidence, filters.get("since"), limit


def _known_labels(plane: DataPlane) -> list[str]:
    seen: dict[str, None] = {}
    for model in plane.list_models():
        seen.update(dict.fromkeys(model.labels))
    return list(seen)


# -- routes -------------------------------------------------------------------------------------------------

@router.get("")
async def review_grid(request: Request, plane: DataPlane = Depends(get_plane)) -> Response:
    if not await authorized(request):
        return _to_login(request)
    if plane.archive_status() is None:
        return _archive_off(request)
    filters = _filters(request)
    cursor = request.query_params.get("cursor") or None
    try:
        label, max_confidence, since, limit = _parse_filters(filters)
        page = await plane.list_images(label, max_confidence, since, limit, cursor)
    except Exception as exc:  # noqa: BLE001 - every failure is a page with the error table's status
        return _error_page(request, exc)
    root = _root(request)
    base = f"{root}/ui"
    next_href = f"{base}?{urlencode({**filters, 'cursor': page.next_cursor})}" if page.next_cursor else None
    first_href = (f"{base}?{urlencode(filters)}" if filters else base) if cursor else None
    low = {"max_confidence": f"{LOW_CONFIDENCE:g}"}
    view = "low" if filters == low else "recent" if not filters else ""
    return _page(request, "grid.html", title="Review", filters=filters, cards=[_card(root, e) for e in page.images],
                 labels=_known_labels(plane), next_href=next_href, first_href=first_href, view=view,
                 recent_href=base, low_href=f"{base}?{urlencode(low)}", low_confidence=f"{LOW_CONFIDENCE:g}",
                 page_size=PAGE_SIZE, max_page_size=MAX_PAGE_SIZE)


@router.get("/images/{image_id}")
async def review_image(image_id: str, request: Request, plane: DataPlane = Depends(get_plane)) -> Response:
    if not await authorized(request):
        return _to_login(request)
    if plane.archive_status() is None:
        return _archive_off(request)
    try:
        entry = await plane.get_image(image_id)
    except Exception as exc:  # noqa: BLE001
        return _error_page(request, exc)
    png_bytes, reconstruction_error = None, None
    try:  # decoded (and cached) now, so the page can say how large the PNG is; the <img> then hits the cache
        result, _ = await plane.reconstruct_image(image_id)
        png_bytes = len(result.png)
    except Exception as exc:  # noqa: BLE001 - the page still shows the answer; only the pixels are missing
        if not is_known(exc):
            log.error("reconstruction failed on the review page", exc_info=exc)
        reconstruction_error = describe(exc).message
    root = _root(request)
    _, src = _image_urls(root, entry.id)
    height, width = entry.image_size
    scale = max(1, LARGE_PX // max(height, width, 1))
    quoted = quote(entry.id, safe="")
    top = [{"rank": i + 1, "label": s.label, "index": s.index, "percent": _percent(s.probability),
            "probability": f"{s.probability:.4f}"} for i, s in enumerate(entry.top)]
    reclassifications = [{"model": f"{r.model} v{r.version}", "label": r.top[0].label,
                          "confidence": _percent(r.top[0].probability), "time": iso_time(r.created_us),
                          "changed": r.top[0].label != entry.label,
                          "novelty": None if r.novelty is None else f"{r.novelty:.2f}"}
                         for r in entry.reclassifications]
    pixels = max(1, height * width)
    return _page(
        request, "detail.html", title=f"{entry.label} · {entry.id[:8]}", entry=entry, src=src,
        width=width * scale, height=height * scale, scale=scale, top=top, confidence=_percent(entry.confidence),
        novelty=None if entry.novelty is None else f"{entry.novelty:.2f}",
        out_of_distribution=entry.novelty is not None and entry.novelty > OOD_THRESHOLD,
        ood_threshold=f"{OOD_THRESHOLD:g}", created=iso_time(entry.created_us), last_seen=iso_time(entry.last_seen_us),
        stream_bytes=entry.num_bytes, stream_size=_size(entry.num_bytes), bpp=f"{entry.num_bytes * 8 / pixels:.3f}",
        png_bytes=png_bytes, png_size=None if png_bytes is None else _size(png_bytes),
        png_ratio=None if not png_bytes else f"{png_bytes / max(1, entry.num_bytes):.1f}",
        reconstruction_error=reconstruction_error, reclassifications=reclassifications,
        json_href=f"{root}/v1/images/{quoted}", back_href=f"{root}/ui")


def _no_shared_token(request: Request) -> HTMLResponse:
    return _page(request, "message.html", 401, title="Not logged in", logout=False,
                 message="This server accepts device tokens only (--credentials) and no shared token "
                         "(--auth-token), so a browser cannot log in to the review page: start it with "
                         "--auth-token as well.")


@router.get("/login")
async def login_form(request: Request) -> Response:
    target = _safe_next(request.query_params.get("next"))
    if not server_token(request):
        if await authorized(request):
            return RedirectResponse(_root(request) + target, status_code=303, headers=SECURITY_HEADERS)
        return _no_shared_token(request)
    return _page(request, "login.html", title="Log in", next=target, error=None, logout=False)


@router.post("/login")
async def login(request: Request) -> Response:
    """The form's POST (application/x-www-form-urlencoded: token, next): the session cookie and a redirect to
    `next`, or the form again with 401."""
    body = await request.body()
    try:
        fields = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:  # more fields than the form has
        fields = {}
    target = _safe_next((fields.get("next") or ["/ui"])[0])
    token = server_token(request)
    root = _root(request)
    if not token:
        if await authorized(request):
            return RedirectResponse(root + target, status_code=303, headers=SECURITY_HEADERS)
        return _no_shared_token(request)
    submitted = (fields.get("token") or [""])[0]
    if not submitted or not token_matches(submitted, token):
        return _page(request, "login.html", 401, title="Log in", next=target, logout=False,
                     error="invalid token" if submitted else "enter the server's bearer token")
    response = RedirectResponse(root + target, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(COOKIE_NAME, session_value(token), path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    response = RedirectResponse(f"{_root(request)}/ui/login", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response
