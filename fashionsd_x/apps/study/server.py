"""`fsdx study serve`: the rating page and its small JSON API, on FastAPI and uvicorn.

Routes (every error is a 4xx JSON {"error": "one line"}, never a traceback):
    GET  /                 the page (page.html: self-contained, loads nothing from elsewhere)
    GET  /api/study        the questions and how many comparisons each rater answers
    POST /api/session      {"code"}: start or resume; the rater is created on first visit with their queue
    POST /api/answers      {"code", "comparison", "criterion", "choice"}: store one answer, return the progress
    GET  /images/{id}      a PNG of the study, by id
Each request opens its own SQLite connection; every answer is its own commit (see db.py). A request body over
`max_body` bytes is refused with 413 before it is read (Content-Length) or as soon as it passes the limit
(a body streamed without a length); ids outside SQLite's int64 are a 422, not an overflow inside SQLite.
"""

from __future__ import annotations

import logging
import re
import socket
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import FastAPI, Request
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fashionsd_x.apps.study import db as store  # `db` is serve_study's parameter (the CLI's DB)

LOGGER = logging.getLogger(__name__)
CODE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_BODY = 1_000_000  # bytes; an answer is about 100
# An id in a request: beyond SQLite's int64 it cannot name a row, and binding it would overflow (a 500).
StudyId = Annotated[int, Field(ge=store.MIN_INTEGER, le=store.MAX_INTEGER)]
# The page is one file with inline script and style; images and API calls go to this server only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Session(BaseModel):
    code: str


class Answer(BaseModel):
    code: str
    comparison: StudyId
    criterion: str
    choice: str


@dataclass
class ServeResult:
    """What was served and what the study holds once the server stopped."""

    db: Path
    url: str
    raters: int
    answers: int


def create_app(study: Path, max_body: int = MAX_BODY) -> FastAPI:
    """The study's web app; fails at once (StudyError, FileNotFoundError) if STUDY is not a study file.

    Request bodies over `max_body` bytes get 413 (see `BodyLimit`)."""
    study = Path(study)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise store.StudyError(f"--max-body must be a positive number of bytes, got {max_body!r}")
    with closing(store.open_study(study)) as connection:
        questions, meta = store.criteria(connection), store.read_meta(connection)
    page = resources.files("fashionsd_x.apps.study").joinpath("page.html").read_text(encoding="utf-8")
    app = FastAPI(title="FashionSD-X user study", docs_url=None, redoc_url=None, openapi_url=None)
    _install_error_handlers(app)
    _add_routes(app, study, page, {"criteria": [{"name": name, "question": question}
                                                for name, question in questions.items()],
                                   "per_rater": meta["per_rater"]})
    app.add_middleware(BodyLimit, limit=max_body)
    return app


class BodyLimit:
    """ASGI middleware answering 413 to a request body over `limit` bytes, without holding more than that.

    A Content-Length over the limit is refused before any of the body is read. A body without one (chunked) is
    read here up to the limit and handed on from memory; one byte more and the request is refused. A pure ASGI
    middleware, not Starlette's BaseHTTPMiddleware: that one cannot stop the app from reading the stream.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.isdigit():
            await _refuse(scope, receive, send, 400, f"bad Content-Length header {length[:40].decode('latin-1')!r}")
            return
        digits = None if length is None else length.lstrip(b"0") or b"0"
        if digits is not None and (len(digits) > 18 or int(digits) > self.limit):  # no int() of 5,000 digits
            shown = int(digits) if len(digits) <= 18 else f"{len(digits)}-digit number of"
            await _refuse(scope, receive, send, 413, f"request body too large: {shown} bytes, the limit is "
                                                     f"{self.limit}")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: pass that on
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await _refuse(scope, receive, send, 413, f"request body too large: over the limit of {self.limit} "
                                                         "bytes")
                return
            chunks.append(message)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(chunks, receive), send)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, reason: str) -> None:
    """Answer {"error": reason} and close the connection (the rest of the body is never read)."""
    response = JSONResponse({"error": reason}, status_code=status, headers={"Connection": "close"})
    await response(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that hands out the messages already read, then goes back to the real one (for the disconnect)."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def _add_routes(app: FastAPI, study: Path, page: str, info: dict[str, Any]) -> None:
    def connection() -> closing[sqlite3.Connection]:
        return closing(store.connect(study))

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=SECURITY_HEADERS)

    @app.get("/api/study")
    def study_info() -> dict[str, Any]:
        return info

    @app.post("/api/session")
    def session(body: Session) -> dict[str, Any]:
        with connection() as conn:
            return _progress_json(store.progress(conn, store.rater_id(conn, check_code(body.code))))

    @app.post("/api/answers")
    def answer(body: Answer) -> dict[str, Any]:
        with connection() as conn:
            rater = store.rater_id(conn, check_code(body.code), create=False)
            if rater is None:
                raise HTTPException(404, f"no rater with code {body.code!r}; start a session first")
            recorded = _call(store.record_answer, conn, rater, body.comparison, body.criterion, body.choice)
            return {"recorded": recorded, "progress": _progress_json(store.progress(conn, rater))}

    @app.get("/images/{image_id}")
    def image(image_id: Annotated[int, PathParameter(ge=store.MIN_INTEGER, le=store.MAX_INTEGER)]) -> Response:
        with connection() as conn:
            png = store.image_png(conn, image_id)
        if png is None:
            raise HTTPException(404, f"no image {image_id} in this study")
        # no-store: image ids are per study; a cached /images/3 of another study on this port would be wrong.
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store",
                                                              "X-Content-Type-Options": "nosniff"})


def check_code(code: str) -> str:
    """A rater code: 1-32 letters, digits, _ or -; anything else is a 422 with that rule."""
    if not CODE_PATTERN.fullmatch(code):
        raise HTTPException(422, "a rater code is 1 to 32 letters, digits, _ or - (e.g. designer-07)")
    return code


def _call(function: Callable[..., Any], *args: Any) -> Any:
    """Run a db function, turning its expected errors into HTTP errors with their message."""
    try:
        return function(*args)
    except store.UnknownComparison as error:
        raise HTTPException(404, str(error)) from None
    except store.AnswerConflict as error:
        raise HTTPException(409, str(error)) from None
    except store.StudyError as error:
        raise HTTPException(422, str(error)) from None


def _progress_json(progress: store.Progress) -> dict[str, Any]:
    task = None
    if progress.task is not None:
        task = asdict(progress.task)
        for key in ("sketch", "left", "right"):
            task[key] = None if task[key] is None else f"/images/{task[key]}"
    return {"code": progress.code, "done": progress.done, "total": progress.total, "task": task}


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure answers {"error": one line}; unexpected ones are logged here, not shown to raters."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(error)}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> JSONResponse:
        LOGGER.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": "internal error (the server's log has the details)"}, status_code=500)


def _validation_message(error: RequestValidationError) -> str:
    """First problem of a rejected request as one line, e.g. 'body.comparison: Input should be a valid integer'."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))


def serve_study(db: Path, host: str = "127.0.0.1", port: int = 7861, max_body: int = MAX_BODY) -> ServeResult:
    """Serve a user study to raters until Ctrl-C.

    Raters open http://HOST:PORT/, enter a rater code (their first visit creates them and their queue) and answer
    one pair at a time; they can stop and come back with the same code. Every answer is committed to the study
    file as it is given, so stopping or restarting the server loses nothing.

    Args:
        db: study file written by `fsdx study create`.
        host: interface to listen on; 127.0.0.1 keeps the study on this machine (there is no login: on a
            shared network, put it behind a proxy with access control).
        port: TCP port to listen on.
        max_body: largest request body in bytes; a larger one is refused with 413 before it is read.
    """
    import uvicorn

    study = Path(db)
    app = create_app(study, max_body)
    listener = bind(host, port)
    url = f"http://{host}:{port}/"
    print(f"serving {study} at {url} (Ctrl-C stops; answers are saved as they are given)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[listener])
    return ServeResult(study, url, *_counts(study))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; a taken port or unknown host is a one-line error instead of uvicorn's exit."""
    if not 0 < port < 65536:
        raise store.StudyError(f"--port must be between 1 and 65535, got {port}")
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop or crash
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise store.StudyError(f"cannot listen on {host}:{port} ({error.strerror or error}); "
                            "choose another --port or --host") from None
    return listener


def _counts(study: Path) -> tuple[int, int]:
    with closing(store.open_study(study)) as connection:
        raters = connection.execute("SELECT COUNT(*) FROM raters").fetchone()[0]
        answers = connection.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    return raters, answers


def show(result: ServeResult) -> int:
    """Print what the study holds after serving."""
    print(f"stopped serving {result.url}: {result.db} holds {result.answers} answers from {result.raters} raters; "
          f"analyse with: fsdx study analyze {result.db}")
    return 0
