"""GET /viewer: the explanation viewer page (predictor/static/viewer.html), served from package data."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

VIEWER_PATH = "/viewer"
# The page is self-contained: this policy blocks any external asset, so it works offline by construction.
# connect-src stays open because the page can call another deployment (its "server base URL" field).
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
        "connect-src *; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def viewer_page() -> str:
    """The viewer's HTML, read from the installed package."""
    return resources.files("predictor.static").joinpath("viewer.html").read_text(encoding="utf-8")


def register_viewer_routes(app: FastAPI) -> None:
    """Add GET /viewer; the page is read once, here, so a broken install fails at startup."""
    page = viewer_page()
    headers = {"Content-Security-Policy": _CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

    async def viewer() -> HTMLResponse:
        """The explanation viewer (issue #7): type text, see each word coloured by its importance."""
        return HTMLResponse(page, headers=headers)

    app.add_api_route(VIEWER_PATH, viewer, methods=["GET"], tags=["Viewer"], include_in_schema=False)
