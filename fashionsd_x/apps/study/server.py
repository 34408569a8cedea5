"""`fsdx study serve`: the rating page and its small JSON API, on FastAPI and uvicorn.

Routes (every error is a 4xx JSON {"error": "one line"}, never a traceback):
    GET  /                 the page (page.html: self-contained, loads nothing from elsewhere)
    GET  /api/study        the questions and how many comparisons each rater answers
    POST /api/session      {"code"}: start or resume; the rater is created on first visit with their queue
    POST /api/answers      {"code", "comparison", "criterion", "choice"}: store one answer, return the progress
    GET  /images/{id}      a PNG of the study, by id
Each request opens its own SQLite connection; every answer is its own commit (see db.py). A request body over
`max_body` bytes is refused with 413 before it is read (Content-Length) or as soon as it passes the limit
(a body streamed without a length); ids outside SQLite's int64 are a 422, not an overflow inside SQLite. The JSON
is taken as typed: true, 1.0 or "1" is not a comparison id, null is not text (each a 422 naming the field).

A request naming a host this server does not answer to (its Host header) is refused before anything else, with
421 in plain text (a browser shows it as is): see `HostCheck`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, StrictStr
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fashionsd_x.apps.study import db as store  # `db` is serve_study's parameter (the CLI's DB)

LOGGER = logging.getLogger(__name__)
CODE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_BODY = 1_000_000  # bytes; an answer is about 100
# An id in a request: a JSON integer (strict: pydantic would take true, 1.0 or "1" as 1), within SQLite's int64
# (beyond it, it cannot name a row, and binding it would overflow: a 500).
StudyId = Annotated[int, Field(strict=True, ge=store.MIN_INTEGER, le=store.MAX_INTEGER)]
IMAGE_ID = re.compile(r"0|-?[1-9][0-9]{0,18}")  # an image id in a URL: an integer as the page writes it, no other form
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")  # what a browser on this machine calls a server bound to loopback
EVERY_INTERFACE = ("0.0.0.0", "::", "")  # bind addresses that listen on every interface
ANY_HOST = "*"  # --allow-host value that turns the Host check off
# A Host header: a name or IPv4 address, or an IPv6 address in brackets; then an optional port.
HOST_HEADER = re.compile(r"(\[[0-9A-Za-z:.%_~-]+\]|[A-Za-z0-9._~-]+)(?::([0-9]{1,5}))?")
# The page is one file with inline script and style; images and API calls go to this server only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Session(BaseModel):
    code: StrictStr


class Answer(BaseModel):
    code: StrictStr
    comparison: StudyId
    criterion: StrictStr
    choice: StrictStr


@dataclass
class ServeResult:
    """What was served and what the study holds once the server stopped."""

    db: Path
    url: str
    raters: int
    answers: int


def create_app(study: Path, max_body: int = MAX_BODY, host: str = "127.0.0.1",
               allow_host: Sequence[str] | None = None) -> FastAPI:
    """The study's web app; fails at once (StudyError, FileNotFoundError) if STUDY is not a study file.

    Request bodies over `max_body` bytes get 413 (see `BodyLimit`); requests naming a host other than those of
    `host`, the address it is served on, and `allow_host` get 421 (see `HostCheck`)."""
    study = Path(study)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise store.StudyError(f"--max-body must be a positive number of bytes, got {max_body!r}")
    hosts = AllowedHosts.served_on(host, allow_host or ())
    with closing(store.open_study(study)) as connection:
        questions, meta = store.criteria(connection), store.read_meta(connection)
    page = resources.files("fashionsd_x.apps.study").joinpath("page.html").read_text(encoding="utf-8")
    app = FastAPI(title="FashionSD-X user study", docs_url=None, redoc_url=None, openapi_url=None)
    _install_error_handlers(app)
    _add_routes(app, study, page, {"criteria": [{"name": name, "question": question}
                                                for name, question in questions.items()],
                                   "per_rater": meta["per_rater"]})
    app.add_middleware(BodyLimit, limit=max_body)
    app.add_middleware(HostCheck, hosts=hosts)  # added last: the outermost, before the body is read
    return app


@dataclass(frozen=True)
class AllowedHosts:
    """The host names a server answers to, as requests give them in their Host header (lower case, IP addresses
    in Python's canonical form, IPv6 without brackets)."""

    bound: str  # the address the server listens on, as given
    names: frozenset[str]  # accepted without a port or with the one the request came in on
    any_address: bool  # any IP address too (the server listens on every interface)
    proxied: frozenset[tuple[str, int | None]]  # --allow-host: (name, port or None for any port)

    @classmethod
    def served_on(cls, bound: str, allow_host: Sequence[str] = ()) -> AllowedHosts:
        """Loopback names for a loopback address; this machine's name, loopback names and any IP address for every
        interface; else the address itself. `allow_host` adds names a proxy in front passes on."""
        if isinstance(allow_host, str) or not all(isinstance(entry, str) for entry in allow_host):
            raise store.StudyError(f"--allow-host must be a list of host names, got {allow_host!r}")
        name = _canonical(bound.strip("[]"))
        every = name in EVERY_INTERFACE
        names = {name}
        if every or name == "localhost" or _is_loopback(name):
            names.update(_canonical(loopback) for loopback in LOOPBACK_NAMES)
        if every:
            names.add(socket.gethostname().lower())
        return cls(bound, frozenset(names), every, frozenset(_allowed_entry(entry) for entry in allow_host))

    def allows(self, header: str, port: int | None) -> bool:
        """Whether a request with this Host header, arriving on `port` (None: unknown), is for this server."""
        if (ANY_HOST, None) in self.proxied:
            return True
        parsed = split_host(header)
        if parsed is None:
            return False
        name, given = parsed
        if (name, None) in self.proxied or (name, given) in self.proxied:
            return True
        same_port = given is None or port is None or given == port
        return same_port and (name in self.names or (self.any_address and _is_address(name)))


def split_host(header: str) -> tuple[str, int | None] | None:
    """A Host header as (canonical name, port or None), or None when it is not one."""
    match = HOST_HEADER.fullmatch(header)
    if match is None:
        return None
    name, port = match.groups()
    if name.startswith("[") and not _is_address(name[1:-1]):
        return None  # brackets hold an IPv6 address and nothing else
    return _canonical(name.strip("[]")), None if port is None else int(port)


def _allowed_entry(entry: str) -> tuple[str, int | None]:
    """An --allow-host value as (canonical name, port or None); a bare IPv6 address needs no brackets."""
    text = entry.strip()
    if text == ANY_HOST:
        return ANY_HOST, None
    parsed = (_canonical(text), None) if _is_address(text) else split_host(text)
    if parsed is None:
        raise store.StudyError(f"--allow-host takes a host name as a browser sends it (e.g. study.example.org, "
                               f"study.example.org:8443 or *), got {entry!r}")
    return parsed


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(name: str) -> bool:
    return _is_address(name) and ipaddress.ip_address(name).is_loopback


class HostCheck:
    """ASGI middleware answering 421 to a request whose Host header names no host this server answers to (or that
    has none), before any of it is read or run.

    Why: a web page elsewhere can point its own name at 127.0.0.1 (DNS rebinding) and so have the browser of
    someone on this machine talk to a study served here as if it were that page's own site; the requests still
    name that page's host. The answer is plain text, since a browser shows it as is, saying how to allow a name.
    """

    def __init__(self, app: ASGIApp, hosts: AllowedHosts) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = [value.decode("latin-1") for key, value in scope["headers"] if key == b"host"]
        server = scope.get("server")
        if len(given) == 1 and self.hosts.allows(given[0], server[1] if server else None):
            await self.app(scope, receive, send)
            return
        response = PlainTextResponse(self.refusal(given) + "\n", status_code=421,
                                     headers={"Connection": "close", "X-Content-Type-Options": "nosniff"})
        await response(scope, receive, send)

    def refusal(self, given: list[str]) -> str:
        """One line: which host was refused, and how to allow it."""
        if not given:
            return ("refused: the request has no Host header (HTTP/1.1 requires one); this study server answers "
                    "only requests naming it")
        if len(given) > 1:
            return "refused: the request has more than one Host header"
        shown = given[0] if len(given[0]) <= 100 else given[0][:100] + "..."
        parsed = split_host(given[0])
        allow = f"--allow-host {parsed[0]}" if parsed else "--allow-host with its name"
        return (f"refused: host {shown!r} is not one this study server answers to (it listens on "
                f"{self.hosts.bound or 'every interface'}); if that name is yours (e.g. a proxy in front of it), "
                f"start `fsdx study serve` with {allow}")


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
    def image(image_id: str) -> Response:
        number = check_image_id(image_id)
        with connection() as conn:
            png = store.image_png(conn, number)
        if png is None:
            raise HTTPException(404, f"no image {number} in this study")
        # no-store: image ids are per study; a cached /images/3 of another study on this port would be wrong.
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store",
                                                              "X-Content-Type-Options": "nosniff"})


def check_code(code: str) -> str:
    """A rater code: 1-32 letters, digits, _ or -; anything else is a 422 with that rule."""
    if not CODE_PATTERN.fullmatch(code):
        raise HTTPException(422, "a rater code is 1 to 32 letters, digits, _ or - (e.g. designer-07)")
    return code


def check_image_id(text: str) -> int:
    """An image id from a URL: a whole number in decimal digits within SQLite's int64 (not 1.0, +1, 01 or 1_000,
    which a lax int parse would all read as an id); anything else is a 422."""
    if not IMAGE_ID.fullmatch(text) or not store.MIN_INTEGER <= int(text) <= store.MAX_INTEGER:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise HTTPException(422, f"path.image_id: an image id is a whole number from -2^63 to 2^63-1 in digits, "
                                 f"got {shown!r}")
    return int(text)


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


def serve_study(db: Path, host: str = "127.0.0.1", port: int = 7861, max_body: int = MAX_BODY,
                allow_host: list[str] | None = None) -> ServeResult:
    """Serve a user study to raters until Ctrl-C.

    Raters open http://HOST:PORT/, enter a rater code (their first visit creates them and their queue) and answer
    one pair at a time; they can stop and come back with the same code. Every answer is committed to the study
    file as it is given, so stopping or restarting the server loses nothing.

    Only requests addressed to this server are answered (their Host header): on a loopback --host, those naming
    127.0.0.1, localhost or [::1]; on 0.0.0.0 or ::, those naming an IP address or this machine's name; on any
    other address, that address. Others get 421, so a web page elsewhere cannot reach the study through a rater's
    browser (DNS rebinding).

    Args:
        db: study file written by `fsdx study create`.
        host: interface to listen on; 127.0.0.1 keeps the study on this machine (there is no login: on a
            shared network, put it behind a proxy with access control).
        port: TCP port to listen on.
        max_body: largest request body in bytes; a larger one is refused with 413 before it is read.
        allow_host: another host name requests may be addressed to, e.g. the name of a proxy in front of the
            server (an --allow-host per name; a name with a port allows that port only; * allows any name).
    """
    import uvicorn

    study = Path(db)
    app = create_app(study, max_body, host, allow_host)
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
