"""The UI's ASGI app: security, errors and static files around the endpoints of ``routes``.

Security: bound to loopback by default; with an API key every ``/api`` and ``/v1`` request
needs ``Authorization: Bearer KEY`` or the cookie the page gets from ``/?token=KEY``. Requests
that change anything need the ``X-Tunesmith-UI`` header (or the bearer key), which a page of
another site cannot send without a CORS preflight this app never grants; on loopback the
``Host`` must be a loopback name (no DNS rebinding). Every error is JSON
``{"error": {"message", "key"}}`` with a 4xx status for bad input.
"""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import ConfigError, TunesmithError, UserInputError
from tunesmith.ui.chat import ChatModels
from tunesmith.ui.jobs import Busy, Jobs
from tunesmith.ui.workspace import Workspace

STATIC = Path(__file__).parent / "static"
COOKIE = "tunesmith_ui_token"
CSRF_HEADER = "x-tunesmith-ui"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def error(status: int, message: str, key: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "key": key}}, status_code=status)


def create_app(
    workspace: str | Path = ".",
    *,
    api_key: str | None = None,
    loopback: bool = True,
    max_running: int = 2,
    chat_max_tokens: int = 128,
) -> FastAPI:
    """The UI app over ``workspace`` (its runs, data and the UI's own files).

    Args:
        workspace: the folder whose runs the UI lists and where it launches new ones.
        api_key: when set, required on ``/api`` and ``/v1`` (bearer header or cookie).
        loopback: the server is bound to a loopback address (then ``Host`` is checked).
        max_running: training processes this UI may run at once.
        chat_max_tokens: the answer limit of a chat request that sets none.
    """
    from tunesmith.ui.routes import add_routes

    ws = Workspace(workspace)
    jobs = Jobs(ws, max_running=max_running)
    chat = ChatModels(default_max_tokens=chat_max_tokens)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        # Training processes keep running (their run directories show them after a restart).
        chat.stop()

    app = FastAPI(title="tunesmith ui", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    app.state.workspace, app.state.jobs, app.state.chat = ws, jobs, chat

    @app.exception_handler(Busy)
    async def _busy(_r: Request, exc: Busy):
        return error(429, str(exc))

    @app.exception_handler(TunesmithError)
    async def _tunesmith(_r: Request, exc: TunesmithError):
        key = exc.key if isinstance(exc, ConfigError) else None
        return error(400 if isinstance(exc, UserInputError) else 422, str(exc), key)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(400, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _bug(_r: Request, exc: Exception):  # a bug: still JSON, with what went wrong
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if loopback and request.url.hostname not in LOOPBACK_NAMES:
            return error(403, "this server answers on its loopback address only")
        guarded = path.startswith(("/api", "/v1"))
        bearer = request.headers.get("authorization", "")
        has_bearer = bool(api_key) and hmac.compare_digest(
            bearer.encode(), f"Bearer {api_key}".encode()
        )
        if api_key and guarded and not has_bearer:
            cookie = request.cookies.get(COOKIE, "")
            if not hmac.compare_digest(cookie.encode(), api_key.encode()):
                return error(401, "missing or wrong API key (open the URL with ?token=KEY)")
        changes = request.method not in ("GET", "HEAD")
        if guarded and changes and not has_bearer and request.headers.get(CSRF_HEADER) != "1":
            return error(403, f"requests that change state need the {CSRF_HEADER} header")
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    async def index(token: str | None = None):
        response = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        if api_key and token and hmac.compare_digest(token.encode(), api_key.encode()):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/v1", chat, name="v1")
    add_routes(app)
    return app
