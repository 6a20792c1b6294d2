"""Routes of the web board.

``/board/static/…`` serves the assets; every other ``/board/…`` path answers the HTML
shell, whose script routes on the browser's side (so a mission's page can be bookmarked
and reloaded). ``/`` sends a browser to the board. None of them needs a token: the
pages hold no data, and every call they make is authenticated like any other client's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Response, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect
from litestar.types import ControllerRouterHandler

_STATIC = Path(__file__).parent / "static"
_OPEN: dict[str, Any] = {"exclude_from_auth": True}
# Scripts, styles, images, connections: this origin only. No inline script runs, so
# text a model wrote cannot become code even if it slipped past the escaping.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def static_directory() -> Path:
    """Where the board's assets live inside the installed package."""
    return _STATIC


def _shell() -> Response[bytes]:
    return Response(
        (_STATIC / "index.html").read_bytes(),
        media_type="text/html; charset=utf-8",
        headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


@get("/", include_in_schema=False, sync_to_thread=False, opt=_OPEN)
def root() -> Redirect:
    return Redirect("/board/")


@get("/board", include_in_schema=False, sync_to_thread=False, opt=_OPEN)
def board() -> Response[bytes]:
    return _shell()


@get("/board/{page:path}", include_in_schema=False, sync_to_thread=False, opt=_OPEN)
def board_page(page: FromPath[str]) -> Response[bytes]:
    return _shell()


_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}


@get("/board/static/{asset:path}", include_in_schema=False, sync_to_thread=False, opt=_OPEN)
def asset(asset: FromPath[str]) -> Response[bytes]:
    """One of the board's files; nothing outside its directory, nothing but its types."""
    path = (_STATIC / asset.lstrip("/")).resolve()
    kind = _TYPES.get(path.suffix)
    try:
        found = kind is not None and path.is_relative_to(_STATIC.resolve()) and path.is_file()
    except OSError:  # a name the file system refuses to look up (too long): no such file
        found = False
    if not found:
        raise NotFoundException(detail="no such file of the board")
    # Assets change with the package: revalidate rather than guess how long they last.
    return Response(path.read_bytes(), media_type=kind, headers={"Cache-Control": "no-cache"})


WEB_ROUTES: list[ControllerRouterHandler] = [root, board, board_page, asset]
