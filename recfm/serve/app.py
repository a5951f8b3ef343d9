"""The HTTP API of a trained run (FastAPI). ``recfm serve --run DIR`` starts it with uvicorn.

    POST /recommend  {"history": ["1193", "661"], "k": 10, "exclude_history": true}
                     {"titles": ["Toy Story"], "k": 5, "fuzzy": false}
    POST /embed      {"history": [...]} or {"titles": [...]}   (models with embeddings)
                     {"query": "a comedy from the 1990s", "task": "query2item"} or {"item": "..."}  (multitask runs)
    POST /answer     {"task": "attribute", "input": "Toy Story (1995)", "options": ["Animation", ...]}  (multitask runs)
    GET  /health     model, dataset, catalog size, limits (max_k, search_beam), batching counters
    GET  /docs, /redoc, /openapi.json   (the documentation pages' scripts are served from here: no CDN)

Request checks (content type, types, item ids, titles, sizes) run in the request handler, before
batching, so a bad request is answered 4xx on its own and never fails the batch it would have
joined. Every error is ``{"error": "..."}`` (:class:`ErrorResponse`), and the OpenAPI schema
lists each status an endpoint sends. A 5xx answer never carries exception text: the traceback
goes to the log.
"""

import asyncio
import importlib.util
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from recfm import __version__
from recfm.serve.batching import MAX_BATCH, MAX_QUEUE, MAX_WAIT_MS, MicroBatcher, Overloaded, WorkerStopped
from recfm.serve.service import RecommendationService, RequestError

log = logging.getLogger("recfm.serve")
MAX_BODY_BYTES = 1 << 20
ASSETS_URL = "/docs/assets"  # Swagger UI and ReDoc scripts, from the installed package fastapi-offline


def docs_assets() -> Path | None:
    """The folder of the Swagger UI / ReDoc files that ship in the ``fastapi-offline`` package
    (found without importing it); None if it is not installed."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _id_text(value):
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


ItemId = Annotated[str, BeforeValidator(_id_text)]  # MovieLens ids are numbers; clients send them either way


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    history: list[ItemId] | None = Field(
        None, description="the user's items, oldest first, as the dataset's item ids (numbers are read as ids)")
    titles: list[str] | None = Field(
        None, description="or the items as free-text titles, matched to the catalog; a title without an exact or "
        "high-confidence match is refused (422, with the closest catalog titles) unless `fuzzy` is true")
    fuzzy: bool = Field(False, description="take the closest catalog title (score 0.6 or more) for a title without a "
                        "confident match; the reply's `resolved` shows what each title became")


class EmbedRequest(HistoryRequest):
    task: str | None = Field(None, description="multitask runs: the embedding task whose experts and instruction "
                             "embed the input (default: the history -> next item retrieval task)")
    query: str | None = Field(None, description="multitask runs: a text embedded as the task's query (instead of a "
                              "history)")
    item: str | None = Field(None, description="multitask runs: a text embedded as an item (a catalog document)")


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(description="a generative task of the run (GET /health lists them)")
    input: str = Field(description="the record's input, as the task's records write it")
    instruction: str | None = Field(None, description="the instruction (default: the task's own)")
    options: list[str] | None = Field(None, description="2-26 options: the answer is one of them; without options "
                                      "the answer is generated text")


class AnswerResponse(BaseModel):
    model: str
    task: str
    answer: str = Field(description="the chosen option, or the generated text")
    option: int | None = Field(description="0-based index of the chosen option; null for free text")


class Candidate(BaseModel):
    item_id: str
    title: str = Field(description="the catalog's title")
    score: float = Field(description="similarity in [0, 1]; 1.0: the same title up to case, accents, punctuation, "
                         "a trailing (year) and the article")


class UnmatchedTitle(BaseModel):
    given: str = Field(description="the title as sent")
    ambiguous: bool = Field(description="several catalog items have this title")
    candidates: list[Candidate] = Field(description="the closest catalog titles, best first")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: str = Field(description="what is wrong and how to fix it (5xx: a generic message, details are logged)")
    unmatched: list[UnmatchedTitle] | None = Field(
        None, description="422 for titles without a confident match only: each one with its candidates")


class ResolvedTitle(BaseModel):
    given: str = Field(description="the title as sent")
    item_id: str
    title: str = Field(description="the catalog title it was matched to")
    score: float = Field(description="similarity in [0, 1] (1.0: the same title up to case, accents, punctuation, "
                         "year and article)")
    exact: bool = Field(description="the normalized text is the catalog title itself")


class RecommendedItem(BaseModel):
    rank: int
    item_id: str
    textual_id: str | None
    title: str
    score: float


class RecommendResponse(BaseModel):
    model: str
    history: list[str] = Field(description="the history as resolved item ids")
    resolved: list[ResolvedTitle] | None = Field(description="for `titles`: what each title was matched to; "
                                                 "null for item ids")
    items: list[RecommendedItem]


class EmbedResponse(BaseModel):
    model: str
    dim: int
    resolved: list[ResolvedTitle] | None = Field(None, description="for `titles`: what each title was matched to")
    embedding: list[float]


class HealthResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    run: str = Field(description="the run directory")
    model: str
    dataset: str
    n_items: int
    textual_ids: bool = Field(description="items have textual IDs (textid runs)")
    embeddings: bool = Field(description="POST /embed is available")
    answers: bool = Field(description="POST /answer is available (multitask runs)")
    tasks: dict[str, list[str]] = Field(description="multitask runs: the embedding and generative tasks")
    max_history: int
    max_k: int = Field(description="the largest k /recommend accepts (for a textid run: its search beam)")
    search_beam: int | None = Field(description="beam-search models: the fixed beam every k up to max_k is "
                                    "answered with; null for score-based models")
    batches: int
    batched_requests: int


ERRORS = {
    400: "the body is not valid JSON (or not UTF-8 text)",
    413: "the body is over 1 MiB, or the history is longer than the server's max_history",
    415: "the body is not sent as Content-Type: application/json",
    422: "a request the client can fix: wrong types (strict: no \"3\" for 3, no 1 for true), unknown fields, both or "
         "neither of history/titles, an empty history, unknown item ids, titles without a confident match "
         "(`unmatched` lists the candidates) or too long, k outside 1..max_k",
    500: "a bug: logged with its traceback on the server; the reply says only that it happened",
    501: "the model of this run has no embeddings (/embed) or answers no generative tasks (/answer)",
    503: "the server is overloaded (more requests waiting than --max-queue; Retry-After: 1) or its model worker "
         "stopped (restart the server)",
}


def _responses(*statuses: int) -> dict:
    return {s: {"model": ErrorResponse, "description": ERRORS[s]} for s in statuses}


def _error(status: int, message: str, headers: dict | None = None, **details) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, **details}, headers=headers)


def _is_json(content_type: str) -> bool:
    main = content_type.split(";", 1)[0].strip().lower()
    kind, _, sub = main.partition("/")
    return kind == "application" and (sub == "json" or sub.endswith("+json"))


async def json_body(request: Request) -> None:
    """415 for a body that is not declared as JSON (runs before the body is validated)."""
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        raise RequestError(f"send the body as JSON with 'Content-Type: application/json' "
                           f"(got {content_type or 'no Content-Type'!r})", status=415)


class BodyLimit:
    """413 for a body over ``max_bytes``, whether it declares its length or streams it in chunks
    (``Transfer-Encoding: chunked`` has no content-length to check): the body is counted as it
    is read, the read is cut short, and the app's answer to the cut body is replaced by the 413."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(send)
        received, over, replaced = 0, False, False

        async def counted():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request" and not over:
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded(message):
            nonlocal replaced
            if not over:
                return await send(message)
            if not replaced and message["type"] == "http.response.start":
                replaced = True
                await self._refuse(send)

        await self.app(scope, counted, guarded)

    async def _refuse(self, send) -> None:
        await _error(413, f"request body over {self.max_bytes} bytes")({"type": "http"}, None, send)


def create_app(service: RecommendationService, max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS,
               max_queue: int = MAX_QUEUE) -> FastAPI:
    def recommend_batch(requests: list[tuple[list[int], int, bool]]) -> list[list[dict]]:
        histories, ks, excludes = zip(*requests)
        return service.recommend(histories, ks, excludes)

    handlers = {"recommend": recommend_batch, "embed": service.embed_batch, "answer": service.answer}

    def run_batch(requests: list[tuple[str, object]]) -> list:
        """One batch of the three endpoints' requests: each kind answered by one call of its own."""
        out: list = [None] * len(requests)
        for kind, handler in handlers.items():
            rows = [i for i, (k, _) in enumerate(requests) if k == kind]
            if rows:
                for i, answer in zip(rows, handler([requests[i][1] for i in rows])):
                    out[i] = answer
        return out

    batcher = MicroBatcher(run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)

    class RecommendRequest(HistoryRequest):
        k: int = Field(service.default_k, ge=1, le=service.max_k,
                       description="number of items to return" + (
                           f"; at most the run's search beam ({service.search_beam}), which answers every k with the "
                           "same search" if service.search_beam is not None and service.max_k == service.search_beam
                           else ""))
        exclude_history: bool = Field(True, description="never recommend an item of the history. Default true here; "
                                      "`recfm recommend` keeps the history unless given --exclude-history, as the "
                                      "evaluation protocol does")

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title=f"recfm: {service.model_name} on {service.data.name}", version=__version__, lifespan=lifespan,
        docs_url=None, redoc_url=None,
        description="Top-K recommendations of a trained recfm run. Every error answer is `{\"error\": \"...\"}` "
                    "(ErrorResponse); besides the statuses listed per endpoint, an unknown path is 404 and a wrong "
                    "method 405, in the same form.")
    app.state.service = service
    app.state.batcher = batcher

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, e: RequestError):
        return _error(e.status, str(e), **e.details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException):
        # FastAPI's own refusals (a body that is not UTF-8, an unknown path, a wrong method) in
        # the same {"error": ...} form as every other error
        message = "the body is not valid JSON (it is not UTF-8 text)" if e.detail == "There was an error parsing the body" \
            else str(e.detail)
        return _error(e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, e: Overloaded):
        return _error(503, str(e), headers={"Retry-After": "1"})

    @app.exception_handler(WorkerStopped)
    async def worker_stopped(_: Request, e: WorkerStopped):
        log.error("request refused: %s", e)
        return _error(503, "the model worker has stopped; restart the server")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError):
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            return _error(400, "the body is not valid JSON: " + "; ".join(str(err.get("ctx", {}).get("error", ""))
                                                                          for err in errors))
        parts = []
        for err in errors:
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            if loc == ["k"] and err.get("type") in ("greater_than_equal", "less_than_equal"):
                parts.append(service.k_message(err.get("input")))
            else:
                parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
        return _error(422, "; ".join(parts))

    @app.exception_handler(Exception)
    async def server_error(_: Request, e: Exception):
        log.exception("request failed")  # the traceback stays in the log; the client learns nothing of the code
        return _error(500, "internal error: the server logged it")

    @app.get("/health", response_model=HealthResponse, responses=_responses(500))
    async def health() -> dict:
        return {"status": "ok", **service.info(), "batches": batcher.batches, "batched_requests": batcher.requests}

    async def resolve(body: HistoryRequest) -> tuple[list[int], list[dict] | None]:
        if body.titles is None or body.history is not None:  # item ids (or a request resolve refuses)
            return service.resolve_history(body.history, body.titles)
        # fuzzy title matching scans the catalog: off the event loop, so other requests go on
        return await run_in_threadpool(service.resolve_history, None, body.titles, body.fuzzy)

    @app.post("/recommend", response_model=RecommendResponse, dependencies=[Depends(json_body)],
              responses=_responses(400, 413, 415, 422, 500, 503))
    async def recommend(body: RecommendRequest) -> dict:
        history, resolved = await resolve(body)
        k = service.check_k(body.k)
        items = await batcher.submit(("recommend", (history, k, body.exclude_history)))
        return {"model": service.model_name, "history": [service.data.item_ids[i - 1] for i in history],
                "resolved": resolved, "items": items}

    @app.post("/embed", response_model=EmbedResponse, dependencies=[Depends(json_body)],
              responses=_responses(400, 413, 415, 422, 500, 501, 503))
    async def embed(body: EmbedRequest) -> dict:
        texts = [t for t in (body.query, body.item) if t is not None]
        given = len(texts) + (body.history is not None) + (body.titles is not None)
        service.check_embed(body.task, texts[0] if texts else None)
        if given != 1 and service.model.embeds_text:
            raise RequestError("give exactly one of 'history', 'titles', 'query' or 'item'")
        resolved = None
        if texts:
            request = ("query" if body.query is not None else "item", texts[0], body.task)
        else:
            history, resolved = await resolve(body)
            request = ("history", history, body.task)
        vector = await batcher.submit(("embed", request))
        return {"model": service.model_name, "dim": len(vector), "resolved": resolved, "embedding": vector.tolist()}

    @app.post("/answer", response_model=AnswerResponse, dependencies=[Depends(json_body)],
              responses=_responses(400, 413, 415, 422, 500, 501, 503))
    async def answer(body: AnswerRequest) -> dict:
        request = service.check_answer(body.task, body.input, body.instruction, body.options)
        result = await batcher.submit(("answer", request))
        return {"model": service.model_name, "task": body.task, **result}

    _add_docs(app)
    return app


def _add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts, styles and icon served by this server, so the
    pages work without a network; the assets come from the installed package fastapi-offline."""
    assets = docs_assets()
    if assets is not None:
        app.mount(ASSETS_URL, StaticFiles(directory=str(assets)), name="docs-assets")

    def page(request: Request, render) -> HTMLResponse:
        if assets is None:
            return _error(501, "the API pages need the package fastapi-offline (pip install fastapi-offline); "
                               "the schema itself is at /openapi.json")
        root = request.scope.get("root_path", "").rstrip("/")
        return render(root)

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        return page(request, lambda root: get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} - API", swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css", swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None}))  # no badge fetched from an online validator

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return page(request, lambda root: get_redoc_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} - API", redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False))
