"""The HTTP face of `Classifier`: a FastAPI app serving predictions and the drawing page.

Design choices, and why:
- Bodies are read by hand with a byte cap (413 as soon as the cap is passed, whatever Content-Length
  claimed) and parsed with orjson, which rejects NaN and Infinity; then the request's Pydantic model,
  built for the server's limits, checks every field, so a bad request gets a 4xx naming the field by
  its JSON path (`strokes[2][1][5]`) and the rule it broke. The same models are the OpenAPI docs at /docs.
- Predictions go through one background thread that takes every request waiting at that moment as one
  batch (no timer, so a lone request is not delayed): under concurrent load one model run serves many
  requests, which is what keeps p99 low on a small CPU. The thread calls `Classifier.analyze_many`,
  i.e. the same normalise + encode + pad path as training; the browser sends raw strokes only.
- A request whose drawing cannot be handled is answered alone (the batch is re-run one request at a
  time), so one bad drawing never fails its neighbours, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import threading
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import AfterValidator, AliasChoices, BaseModel, Field, ValidationError
from pydantic_core import PydanticCustomError

from doodle_rnn.inference import Classifier, Prediction
from doodle_rnn.model_files import ModelFile
from doodle_rnn.server.models import Entry, ModelRegistry, UnknownModel

log = logging.getLogger("doodle_rnn.server")
STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Limits:
    """What one request may hold. Generous: a long real drawing has a few hundred raw points."""

    max_body_bytes: int = 2_000_000
    max_strokes: int = 500
    max_points: int = 50_000  # over all strokes of one drawing
    max_batch: int = 256  # drawings in one /api/predict/batch request
    max_top_k: int = 50
    max_abs_coordinate: float = 1e7  # screen pixels; larger is not a drawing
    batch_size: int = 64  # drawings per model run of the server's batcher


class ApiError(Exception):
    def __init__(self, status: int, field: str, rule: str):
        super().__init__(f"{field}: {rule}")
        self.status, self.field, self.rule = status, field, rule

    def response(self) -> Response:
        body = {"error": {"field": self.field, "rule": self.rule, "message": f"{self.field}: {self.rule}"}}
        return _json(body, self.status)


def _json(obj, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


# --------------------------------------------------------------------------------------- request bodies
# The rules a request body must follow are declared once, in the Pydantic models `request_models`
# builds for the server's Limits: Pydantic checks them (strictly: no "3" for 3, no true for 1), and the
# same models are the bodies' OpenAPI docs, limits included. A broken rule becomes one ApiError naming
# the JSON path and the rule in words (`_rule`); the rules between values that a type cannot say (a
# stroke's arity and equal lengths, the coordinate range, the points in all) are `_drawing_rules`.

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def _drawing_rules(limits: Limits):
    """An after-validator: the rules between a drawing's values, as `drawing_rule` errors with a sub-path."""
    bound = limits.max_abs_coordinate

    def broken(rule: str, at: str = ""):
        return PydanticCustomError("drawing_rule", "{rule}", {"rule": rule, "at": at})

    def check(strokes: list) -> list:
        total = 0
        for si, stroke in enumerate(strokes):
            if len(stroke) not in (2, 3):
                raise broken("must be [xs, ys] or [xs, ys, ts]", f"[{si}]")
            n = len(stroke[0])
            if n == 0:
                raise broken("a stroke needs at least one point (empty stroke)", f"[{si}][0]")
            for ci in range(1, len(stroke)):
                if len(stroke[ci]) != n:
                    name = "ys" if ci == 1 else "ts"
                    raise broken(f"{name} has {len(stroke[ci])} values but xs has {n}", f"[{si}][{ci}]")
            total += n
            if total > limits.max_points:
                raise broken(f"has more than {limits.max_points} points in all")
            for ci in (0, 1):  # x and y in screen pixels; times are not bounded
                values = stroke[ci]
                if max(values) > bound or min(values) < -bound:
                    i = next(i for i, v in enumerate(values) if abs(v) > bound)
                    raise broken(f"must be within +-{bound:g}", f"[{si}][{ci}][{i}]")
        return strokes

    return AfterValidator(check)


MODEL_FIELD = Field(
    None,
    strict=True,
    description="which model answers: a name from GET /api/models (404 for another); "
    "default: the model the server was started with",
    examples=["animals10"],
)


MODEL_QUERY = Query(
    None, description="a name from GET /api/models; default: the model the server was started with"
)


def _top_k(limits: Limits, description: str):
    return Field(3, strict=True, ge=1, le=limits.max_top_k, description=description)


@functools.cache
def request_models(limits: Limits) -> tuple[type[BaseModel], type[BaseModel]]:
    """(PredictRequest, BatchRequest) for these limits: they validate the bodies and document them."""
    drawing = Annotated[
        list[list[list[Number]]], Field(min_length=1, max_length=limits.max_strokes), _drawing_rules(limits)
    ]

    class PredictRequest(BaseModel):
        strokes: drawing = Field(
            validation_alias=AliasChoices("strokes", "drawing"),
            description="strokes of one drawing: [[xs], [ys]] or [[xs], [ys], [ts]] each; raw screen "
            "coordinates (any scale, ts in ms) or Google-simplified 0..255; a dataset line's `drawing` "
            f"field is accepted in its place. At most {limits.max_strokes} strokes and "
            f"{limits.max_points} points in all; x and y within +-{limits.max_abs_coordinate:g}",
            examples=[[[[10, 60, 110], [20, 80, 20], [0, 40, 90]]]],
        )
        top_k: int = _top_k(limits, "how many classes to return")
        model: str | None = MODEL_FIELD

    class BatchRequest(BaseModel):
        drawings: list[drawing] = Field(
            min_length=1, max_length=limits.max_batch,
            description="drawings, each a list of strokes as in /api/predict",
        )  # fmt: skip
        top_k: int = _top_k(limits, "how many classes to return per drawing")
        model: str | None = MODEL_FIELD

    return PredictRequest, BatchRequest


# What each broken rule is called, by the role of the value at fault and Pydantic's error type.
RULES = {
    ("drawing", "missing"): "missing: must be a list of strokes (a dataset line's `drawing` is accepted too)",
    ("drawing", "list_type"): "must be a list of strokes, got {kind}",
    ("drawing", "too_short"): "must hold at least one stroke (empty drawing)",
    ("drawing", "too_long"): "has {actual_length} strokes; at most {max_length} allowed",
    ("stroke", "list_type"): "must be [xs, ys] or [xs, ys, ts]",
    ("values", "list_type"): "must be a list of numbers, got {kind}",
    ("number", "float_type"): "must be a number, got {kind}",
    ("number", "finite_number"): "must be a finite number",
    ("drawings", "missing"): "must be a non-empty list of drawings",
    ("drawings", "list_type"): "must be a non-empty list of drawings",
    ("drawings", "too_short"): "must be a non-empty list of drawings",
    ("drawings", "too_long"): "has {actual_length} drawings; at most {max_length} allowed",
    ("top_k", "int_type"): "must be an integer, got {kind}",
    ("top_k", "greater_than_equal"): "must be between 1 and {top}",
    ("top_k", "less_than_equal"): "must be between 1 and {top}",
    ("body", "model_type"): "must be a JSON object, got {kind}",
    ("model", "string_type"): "must be a model name (GET /api/models), got {kind}",
}
DRAWING_ROLES = ("drawing", "stroke", "values", "number")


def _rule(exc: ValidationError, limits: Limits) -> ApiError:
    """The first broken rule of a body as an ApiError: JSON path (`strokes[2][1][5]`) and the rule."""
    err = exc.errors(include_url=False)[0]
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx") or {}
    field = "".join(f"[{p}]" if isinstance(p, int) else p for p in loc) or "body"
    if kind == "drawing_rule":
        return ApiError(422, field + ctx["at"], ctx["rule"])
    if not loc:
        role = "body"
    elif loc[0] in ("strokes", "drawing", "drawings"):
        depth = len(loc) - (2 if loc[0] == "drawings" else 1)
        role = "drawings" if depth < 0 else DRAWING_ROLES[min(depth, 3)]
    else:
        role = str(loc[0])
    rule = RULES.get((role, kind))
    if rule is None:  # a rule without words of its own: Pydantic's
        return ApiError(422, field, err["msg"])
    return ApiError(422, field, rule.format(kind=_kind(err["input"]), top=limits.max_top_k, **ctx))


def _kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), type(v).__name__
    )


def _validated(model: type[BaseModel], body: dict, limits: Limits):
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _rule(exc, limits) from None


async def _read_json(request: Request, limits: Limits) -> object:
    """The body as JSON, read with a hard cap (Content-Length is checked but not trusted)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise ApiError(413, "body", f"is {declared} bytes; at most {limits.max_body_bytes} allowed")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise ApiError(413, "body", f"is larger than {limits.max_body_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        rule = "must be JSON"
        if b"NaN" in raw or b"Infinity" in raw or "infinity" in str(exc):
            rule += " (NaN and infinite numbers are not allowed)"
        raise ApiError(400, "body", f"{rule}: {exc}") from None
    return body  # any JSON value: the request models say what a body must be


# --------------------------------------------------------------------------------------- batching
class Batcher:
    """One thread runs the model; each run takes every request queued at that moment."""

    def __init__(self, clf: Classifier, batch_size: int):
        self.clf = clf
        self.batch_size = batch_size
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="doodle-batcher", daemon=True)
        self._thread.start()

    async def submit(self, drawings: list, top_k: int) -> list[Prediction]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((drawings, top_k, fut, loop))
        return await fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            items, n = [item], len(item[0])
            while n < self.batch_size:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                items.append(nxt)
                n += len(nxt[0])
            self._run(items)

    def _run(self, items: list) -> None:
        try:
            k = max(it[1] for it in items)
            preds = self.clf.analyze_many([d for it in items for d in it[0]], k)
        except Exception:  # noqa: BLE001 - isolate the culprit below
            if len(items) > 1:
                for it in items:
                    self._run([it])
                return
            log.exception("prediction failed")
            _resolve(items[0], ApiError(422, "strokes", "the drawing could not be encoded for the model"))
            return
        pos = 0
        for it in items:
            mine = preds[pos : pos + len(it[0])]
            pos += len(it[0])
            for p in mine:
                p.top = p.top[: it[1]]
            _resolve(it, mine)


def _resolve(item, value) -> None:
    fut, loop = item[2], item[3]

    def settle():
        if fut.done():
            return
        if isinstance(value, BaseException):
            fut.set_exception(value)
        else:
            fut.set_result(value)

    loop.call_soon_threadsafe(settle)


# --------------------------------------------------------------------------------------- docs models
class Guess(BaseModel):
    class_: str = Field(alias="class")
    probability: float


class PredictResponse(BaseModel):
    top: list[Guess] = Field(
        description="best classes first; empty when the drawing has no step for the model"
    )
    steps: int = Field(description="steps the model read after normalising and encoding")
    short: bool = Field(description="fewer steps than the training minimum: a less reliable answer")
    model_view: list[list[list[int]]] | None = Field(None, description="the drawing as the model sees it")


class BatchResponse(BaseModel):
    results: list[PredictResponse]


class ModelSummary(BaseModel):
    name: str = Field(description="what requests call it (`model`)")
    default: bool = Field(description="the model the server was started with (used when none is named)")
    classes: int = Field(description="how many classes it knows")
    shipped: bool = Field(description="a model that comes with the package")
    description: str
    loaded: bool = Field(description="already in memory (else its first use loads it)")
    test: dict = Field(
        description="its card's test figures: top1, top3, n_drawings, data; announce_threshold"
    )


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelSummary]


class ErrorResponse(BaseModel):
    error: dict = Field(description="field (JSON path), rule, message")


def _body_doc(model: type[BaseModel]) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 422)}


def _result(p: Prediction, clf: Classifier, view: bool) -> dict:
    out = {
        "top": [{"class": c, "probability": prob} for c, prob in p.top],
        "steps": p.steps,
        "short": p.short,
    }
    if view:
        out["model_view"] = clf.view_of(p)
    return out


# --------------------------------------------------------------------------------------- app
def create_app(
    checkpoint_path: str | Path | ModelFile,
    limits: Limits | None = None,
    backend: str = "auto",
    shipped: bool = True,
) -> FastAPI:
    """The app for a model (`.pt` checkpoint, exported `.onnx`, a shipped model's name, or a `ModelFile`
    already read by `model_files.open_model`), its default.

    shipped: also offer every shipped model that is installed, by name (`"model"` in a request), each
    loaded on its first use (server/models.py).
    """
    limits = limits or Limits()
    models = ModelRegistry(checkpoint_path, backend, lambda clf: Batcher(clf, limits.batch_size), shipped)
    clf = models.entry(None).classifier
    PredictRequest, BatchRequest = request_models(limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            models.close()

    # FastAPIOffline: FastAPI whose /docs (Swagger UI 5) and /redoc load their JS and CSS from this
    # server instead of a CDN, so the docs also work on machines without internet.
    app = FastAPIOffline(
        title="doodle-rnn",
        summary="Recognise Quick, Draw! doodles from pen strokes",
        description="POST raw strokes (x, y, t per point) and get the model's best guesses. The server "
        "normalises and encodes exactly as training did; clients never preprocess. It serves the model it "
        "was started with and, by name, every shipped model (GET /api/models; `model` in a request).",
        version=clf.info["version"] or "0",
        lifespan=lifespan,
    )
    app.state.classifier = clf
    app.state.models = models
    app.state.limits = limits

    async def served(name: str | None) -> Entry:
        """The model a request names, loaded (a first use loads it off the event loop)."""
        try:
            return models.ready(name) or await asyncio.to_thread(models.entry, name)
        except UnknownModel as exc:
            raise ApiError(404, "model", str(exc)) from None
        except ValueError as exc:  # CheckpointError, InferenceError: a broken model file
            log.exception("model %r could not be loaded", name)
            raise ApiError(503, "model", f"{name!r} could not be loaded: {exc}") from None

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.post(
        "/api/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra=_body_doc(PredictRequest),
    )
    async def predict(request: Request) -> Response:
        """Classify one drawing; also returns the drawing as the model sees it."""
        req = _validated(PredictRequest, await _read_json(request, limits), limits)
        entry = await served(req.model)
        (pred,) = await entry.engine.submit([req.strokes], req.top_k)
        return _json(_result(pred, entry.classifier, view=True))

    @app.post("/api/predict/batch", response_model=BatchResponse, responses=ERRORS,
              openapi_extra=_body_doc(BatchRequest))  # fmt: skip
    async def predict_batch(request: Request) -> Response:
        """Classify many drawings in one request (no model views)."""
        req = _validated(BatchRequest, await _read_json(request, limits), limits)
        entry = await served(req.model)
        preds = await entry.engine.submit(req.drawings, req.top_k)
        return _json({"results": [_result(p, entry.classifier, view=False) for p in preds]})

    @app.get("/api/models", response_model=ModelsResponse)
    async def list_models() -> Response:
        """The models this server offers: the default (the one it was started with) first, then every
        installed shipped model; each with its class count and its card's test figures. Any of them can
        be named as `model` in a request; it is loaded on its first use."""
        rows = await asyncio.to_thread(lambda: [models.summary(n) for n in models.names])
        return _json({"default": models.default, "models": rows})

    @app.get("/api/classes", responses={404: {"model": ErrorResponse}})
    async def classes(model: str | None = MODEL_QUERY) -> dict:
        """The classes a model knows, in its output order."""
        try:
            meta = models.metadata(model) if model is None or models.ready(model) else (
                await asyncio.to_thread(models.metadata, model))  # fmt: skip
        except UnknownModel as exc:
            raise ApiError(404, "model", str(exc)) from None
        return {"classes": meta["classes"]}

    @app.get("/api/model", responses={404: {"model": ErrorResponse}})
    async def model_info(model: str | None = MODEL_QUERY) -> dict:
        """What a model is: name, classes, encoding, length rules, temperature, metrics, version, backend,
        and its card (test accuracy on real drawings, `announce_threshold` for "I know: it's a cow!")."""
        entry = await served(model)
        info = entry.classifier.info
        info.pop("source", None)  # a server path is nobody's business
        info["name"] = models.default if model is None else model  # the name requests use
        return {**info, "limits": asdict(limits)}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/models.json", include_in_schema=False)
    async def site_listing() -> dict:
        # The page looks for models.json to tell a static site (`doodle export --web`) from a server. Here
        # the answer says "a server": the page then asks the API, with no 404 in its console.
        return {"format": "doodle-rnn-server"}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` with several workers (each worker process loads the model)."""
    limits = Limits(**orjson.loads(os.environ.get("DOODLE_LIMITS", "{}")))
    return create_app(os.environ["DOODLE_CHECKPOINT"], limits, os.environ.get("DOODLE_BACKEND", "auto"))
