"""The HTTP API of a trained run (FastAPI). ``recfm serve --run DIR`` starts it with uvicorn.

    POST /recommend  {"history": ["1193", "661"], "k": 10, "exclude_history": true}
                     {"titles": ["Toy Story (1995)"], "k": 5}
    POST /embed      {"history": [...]} or {"titles": [...]}   (models with embeddings)
    GET  /health     model, dataset, catalog size, batching counters
    GET  /docs, /openapi.json

Request checks (item ids, titles, sizes) run in the request handler, before batching, so a bad
request is answered 4xx on its own and never fails the batch it would have joined.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from recfm import __version__
from recfm.serve.batching import MAX_BATCH, MAX_QUEUE, MAX_WAIT_MS, MicroBatcher, Overloaded
from recfm.serve.service import RecommendationService, RequestError

log = logging.getLogger("recfm.serve")
MAX_BODY_BYTES = 1 << 20


def _id_text(value):
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


ItemId = Annotated[str, BeforeValidator(_id_text)]  # MovieLens ids are numbers; clients send them either way


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[ItemId] | None = Field(
        None, description="the user's items, oldest first, as the dataset's item ids (numbers are read as ids)")
    titles: list[str] | None = Field(None, description="or the items as free-text titles, matched to the catalog")


class RecommendRequest(HistoryRequest):
    k: int = Field(10, description="number of items to return")
    exclude_history: bool = Field(True, description="never recommend an item of the history")


class RecommendedItem(BaseModel):
    rank: int
    item_id: str
    textual_id: str | None
    title: str
    score: float


class RecommendResponse(BaseModel):
    model: str
    history: list[str] = Field(description="the history as resolved item ids")
    items: list[RecommendedItem]


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embedding: list[float]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


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
    def run_batch(requests: list[tuple[list[int], int, bool]]) -> list[list[dict]]:
        histories, ks, excludes = zip(*requests)
        return service.recommend(histories, ks, excludes)

    batcher = MicroBatcher(run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title=f"recfm: {service.model_name} on {service.data.name}", version=__version__, lifespan=lifespan,
                  description="Top-K recommendations of a trained recfm run.")
    app.state.service = service
    app.state.batcher = batcher

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, e: RequestError):
        return _error(e.status, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException):
        # FastAPI's own refusals (a body that is not UTF-8, an unknown path, a wrong method) in
        # the same {"error": ...} form as every other error
        message = "the body is not valid JSON (it is not UTF-8 text)" if e.detail == "There was an error parsing the body" \
            else str(e.detail)
        return JSONResponse(status_code=e.status_code, content={"error": message}, headers=getattr(e, "headers", None))

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, e: Overloaded):
        return JSONResponse(status_code=503, content={"error": str(e)}, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError):
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            return _error(400, "the body is not valid JSON: " + "; ".join(str(err.get("ctx", {}).get("error", ""))
                                                                          for err in errors))
        parts = [f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'body'}: {err.get('msg')}"
                 for err in errors]
        return _error(422, "; ".join(parts))

    @app.exception_handler(Exception)
    async def server_error(_: Request, e: Exception):
        log.exception("request failed")
        return _error(500, f"internal error: {type(e).__name__}: {e}")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **service.info(), "batches": batcher.batches, "batched_requests": batcher.requests}

    async def resolve(body: HistoryRequest) -> list[int]:
        if body.titles is None or body.history is not None:  # item ids (or a request resolve refuses)
            return service.resolve(body.history, body.titles)
        # fuzzy title matching scans the catalog: off the event loop, so other requests go on
        return await run_in_threadpool(service.resolve, None, body.titles)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest) -> dict:
        history = await resolve(body)
        k = service.check_k(body.k)
        items = await batcher.submit((history, k, body.exclude_history))
        return {"model": service.model_name, "history": [service.data.item_ids[i - 1] for i in history], "items": items}

    @app.post("/embed", response_model=EmbedResponse)
    async def embed(body: HistoryRequest) -> dict:
        if not service.can_embed:
            service.embed([])  # raises the 501 with its message
        history = await resolve(body)
        # on the model's own thread: the model is never called from two threads at once
        vectors = await asyncio.get_running_loop().run_in_executor(batcher.executor, service.embed, [history])
        vector = vectors[0]
        return {"model": service.model_name, "dim": len(vector), "embedding": vector.tolist()}

    return app
