"""GET /widget/{version}/c3-conversation.js: the widget's script for any page on any origin.

Not part of the REST API (no auth, not in the OpenAPI schema): a static, public, versioned
asset. The current release's path is cached for a year (``immutable``); ``/widget/latest/…``
redirects there with a short cache, for pages that always want the newest release."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from platform_core.errors import NotFound
from tenant_api.widget.asset import FILE_NAME, widget_asset

router = APIRouter(tags=["widget"], include_in_schema=False)

JAVASCRIPT = "text/javascript; charset=utf-8"
# A module script is fetched in CORS mode: every origin may load it (it holds no secret).
CROSS_ORIGIN = {
    "Access-Control-Allow-Origin": "*",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "X-Content-Type-Options": "nosniff",
}


def _accepts_gzip(request: Request) -> bool:
    offered = request.headers.get("accept-encoding", "")
    return any(part.split(";")[0].strip() in ("gzip", "*") for part in offered.split(","))


@router.api_route(f"/widget/latest/{FILE_NAME}", methods=["GET", "HEAD"], name="widget.latest")
async def latest_widget() -> Response:
    """A redirect to the current release's script (cached 5 minutes)."""
    asset = widget_asset()
    return RedirectResponse(
        f"/widget/{asset.version}/{FILE_NAME}",
        status_code=302,
        headers={**CROSS_ORIGIN, "Cache-Control": "public, max-age=300"},
    )


@router.api_route(f"/widget/{{version}}/{FILE_NAME}", methods=["GET", "HEAD"], name="widget.script")
async def widget_script(version: str, request: Request) -> Response:
    """The script of the running release, gzipped when the client takes it."""
    asset = widget_asset()
    if version != asset.version:
        raise NotFound(
            f"This platform serves widget release {asset.version}, not {version!r}: "
            f"load /widget/{asset.version}/{FILE_NAME}"
        )
    headers = {
        **CROSS_ORIGIN,
        "Cache-Control": "public, max-age=31536000, immutable",
        "ETag": asset.etag,
        "Vary": "Accept-Encoding",
    }
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if _accepts_gzip(request):
        headers["Content-Encoding"] = "gzip"
        return Response(asset.gzipped, media_type=JAVASCRIPT, headers=headers)
    return Response(asset.source, media_type=JAVASCRIPT, headers=headers)
