"""What keeps `lorakit ui` from being a door into the machine.

- Folders: every path a request names is resolved (symlinks and `..` included) and must lie
  under one of the --root folders; anything else is a 403 naming the roots.
- Host: without a token only loopback Host headers are served (a DNS-rebinding page that
  points its own name at 127.0.0.1 sends its own Host and is refused).
- Token: binding anything but loopback needs one; it is accepted as `?token=` (then kept in
  an HttpOnly, SameSite=Strict cookie), as the cookie, or as `Authorization: Bearer`.
- State-changing requests (POST) must carry JSON and, when the browser sends an Origin,
  come from this very origin: another site's form or fetch cannot start a run.
"""
from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

from starlette.requests import Request

from ..errors import UserError
from starlette.responses import JSONResponse, RedirectResponse, Response

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
COOKIE = "lorakit_ui_token"


class Forbidden(Exception):
    """A request the UI refuses on principle (403), with the reason shown to the user."""


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def new_token() -> str:
    return secrets.token_urlsafe(24)


class Roots:
    """The folders the UI may list, read and write under."""

    def __init__(self, folders: Iterable[str | Path]):
        self.folders = [Path(f).expanduser().resolve() for f in folders]
        for f in self.folders:
            if not f.is_dir():
                raise UserError(f"--root {f} is not a folder", fix="give an existing folder")

    def check(self, path: str | Path | None, what: str = "path") -> Path:
        """`path` resolved; Forbidden unless it is inside a root. Relative paths start at the first root."""
        if path is None or str(path).strip() == "":
            raise Forbidden(f"no {what} given")
        text = str(path)
        if "\x00" in text:
            raise Forbidden(f"{what} contains a NUL character")
        p = Path(text).expanduser()
        if not p.is_absolute():
            p = self.folders[0] / p
        real = p.resolve()
        if not any(real == r or real.is_relative_to(r) for r in self.folders):
            raise Forbidden(f"{what} {text} is outside the folders this UI may use "
                            f"({', '.join(map(str, self.folders))}); start `lorakit ui --root DIR` to add one")
        return real


class Guard:
    """ASGI middleware: host, token and same-origin checks before any route runs."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        refusal = self.refuse(request)
        if refusal is not None:
            return await refusal(scope, receive, send)
        if self.token and request.query_params.get("token") and request.method == "GET" \
                and not request.url.path.startswith("/api/"):
            # the printed link: keep the token in a cookie and drop it from the address bar
            resp = RedirectResponse(request.url.path, status_code=303)
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)

    def refuse(self, request: Request) -> Response | None:
        host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
        if self.token:
            given = (request.query_params.get("token") or request.cookies.get(COOKIE)
                     or request.headers.get("authorization", "").removeprefix("Bearer ").strip())
            if not given or not hmac.compare_digest(given, self.token):
                return JSONResponse({"error": "this lorakit ui needs its token: open the link it printed "
                                              "(…/?token=...)"}, status_code=401)
        elif not is_loopback(host):
            return JSONResponse({"error": f"host '{host}' refused: without a token this UI serves "
                                          "127.0.0.1/localhost only"}, status_code=403)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
                return JSONResponse({"error": f"cross-origin request from {origin} refused"}, status_code=403)
            if request.headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
                return JSONResponse({"error": "cross-site request refused"}, status_code=403)
            if not request.headers.get("content-type", "").startswith("application/json"):
                return JSONResponse({"error": "state-changing requests must send application/json"},
                                    status_code=415)
        return None
