"""The reviewer page: ``GET /review``, where a person approves or rejects pending tool calls.

    add_review_routes(app)     # create_app does it

Plain HTML, JS and CSS shipped in this package (``static/``), no third-party code or CDN.
The page holds no data of its own: it calls ``GET /v1/approvals`` and ``POST
/v1/turns/{id}/approvals`` with the API key the reviewer pastes (kept in the tab's
sessionStorage, sent as a bearer token, never in a URL).  It renders every value as text,
and a strict Content-Security-Policy lets nothing but these files run or load.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files

from fastapi import FastAPI, Response

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
ASSETS = {  # path: (file in static/, media type)
    "/review": ("review.html", "text/html; charset=utf-8"),
    "/review/review.js": ("review.js", "text/javascript; charset=utf-8"),
    "/review/review.css": ("review.css", "text/css; charset=utf-8"),
}


def add_review_routes(app: FastAPI) -> None:
    """Serve the page and its two files (read once, at startup; not in the OpenAPI)."""
    static = files("producer.gateway") / "static"
    for path, (name, media_type) in ASSETS.items():
        app.add_api_route(
            path,
            _asset((static / name).read_bytes(), media_type),
            methods=["GET"],
            include_in_schema=False,
        )


def _asset(body: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def asset() -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    return asset
