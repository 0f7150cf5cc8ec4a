"""The HTTP face of `Classifier`: a FastAPI app serving predictions and the drawing page.

Design choices, and why:
- Bodies are read by hand with a byte cap (413 as soon as the cap is passed, whatever Content-Length
  claimed) and parsed with orjson, which rejects NaN and Infinity; every field is then checked with its
  JSON path (`strokes[2][1][5]`), so a bad request gets a 4xx naming the field and the rule it broke.
  Pydantic models describe the same bodies for the OpenAPI docs at /docs.
- Predictions go through one background thread that takes every request waiting at that moment as one
  batch (no timer, so a lone request is not delayed): under concurrent load one model run serves many
  requests, which is what keeps p99 low on a small CPU. The thread calls `Classifier.analyze_many`,
  i.e. the same normalise + encode + pad path as training; the browser sends raw strokes only.
- A request whose drawing cannot be handled is answered alone (the batch is re-run one request at a
  time), so one bad drawing never fails its neighbours, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import threading
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from doodle_rnn.inference import Classifier, Prediction

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


# --------------------------------------------------------------------------------------- validation
def _check_numbers(values: list, field: str, limit: float | None) -> None:
    for i, v in enumerate(values):
        tv = type(v)
        if tv is not int and tv is not float:
            raise ApiError(422, f"{field}[{i}]", f"must be a number, got {_kind(v)}")
        if not math.isfinite(v):
            raise ApiError(422, f"{field}[{i}]", "must be a finite number")
        if limit is not None and abs(v) > limit:
            raise ApiError(422, f"{field}[{i}]", f"must be within +-{limit:g}")


def _kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), type(v).__name__
    )


def validate_drawing(strokes, field: str, limits: Limits) -> list:
    """A well-formed drawing within the limits, or ApiError naming the JSON path and the rule."""
    if not isinstance(strokes, list):
        raise ApiError(422, field, f"must be a list of strokes, got {_kind(strokes)}")
    if not strokes:
        raise ApiError(422, field, "must hold at least one stroke (empty drawing)")
    if len(strokes) > limits.max_strokes:
        raise ApiError(422, field, f"has {len(strokes)} strokes; at most {limits.max_strokes} allowed")
    total = 0
    for si, stroke in enumerate(strokes):
        sf = f"{field}[{si}]"
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            raise ApiError(422, sf, "must be [xs, ys] or [xs, ys, ts]")
        for ci, coords in enumerate(stroke):
            if not isinstance(coords, list):
                raise ApiError(422, f"{sf}[{ci}]", f"must be a list of numbers, got {_kind(coords)}")
        n = len(stroke[0])
        if n == 0:
            raise ApiError(422, f"{sf}[0]", "a stroke needs at least one point (empty stroke)")
        for ci in range(1, len(stroke)):
            if len(stroke[ci]) != n:
                name = "ys" if ci == 1 else "ts"
                raise ApiError(422, f"{sf}[{ci}]", f"{name} has {len(stroke[ci])} values but xs has {n}")
        total += n
        if total > limits.max_points:
            raise ApiError(422, field, f"has more than {limits.max_points} points in all")
        _check_numbers(stroke[0], f"{sf}[0]", limits.max_abs_coordinate)
        _check_numbers(stroke[1], f"{sf}[1]", limits.max_abs_coordinate)
        if len(stroke) == 3:
            _check_numbers(stroke[2], f"{sf}[2]", None)
    return strokes


def _top_k(body: dict, limits: Limits) -> int:
    k = body.get("top_k", 3)
    if type(k) is not int:
        raise ApiError(422, "top_k", f"must be an integer, got {_kind(k)}")
    if not 1 <= k <= limits.max_top_k:
        raise ApiError(422, "top_k", f"must be between 1 and {limits.max_top_k}")
    return k


async def _read_json(request: Request, limits: Limits) -> dict:
    """The body as a JSON object, read with a hard cap (Content-Length is checked but not trusted)."""
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
    if not isinstance(body, dict):
        raise ApiError(422, "body", f"must be a JSON object, got {_kind(body)}")
    return body


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
class PredictRequest(BaseModel):
    strokes: list[list[list[float]]] = Field(
        description="strokes of one drawing: [[xs], [ys]] or [[xs], [ys], [ts]] each; raw screen "
        "coordinates (any scale, ts in ms) or Google-simplified 0..255; a dataset line's `drawing` field is "
        "accepted in its place",
        examples=[[[[10, 60, 110], [20, 80, 20], [0, 40, 90]]]],
    )
    top_k: int = Field(3, ge=1, description="how many classes to return")


class BatchRequest(BaseModel):
    drawings: list[list[list[list[float]]]] = Field(
        description="drawings, each a list of strokes as in /api/predict"
    )
    top_k: int = Field(3, ge=1)


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


class ErrorResponse(BaseModel):
    error: dict = Field(description="field (JSON path), rule, message")


def _body_doc(model: type[BaseModel]) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


ERRORS = {400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}


def _result(p: Prediction, clf: Classifier, view: bool) -> dict:
    out = {
        "top": [{"class": c, "probability": prob} for c, prob in p.top],
        "steps": p.steps,
        "short": p.short,
    }
    if view:
        out["model_view"] = clf.view_of(p)
    return out


def _strokes_field(body: dict) -> tuple[object, str]:
    """(the drawing, its field name): `strokes`, or `drawing` as a Quick, Draw! dataset line names it."""
    if "strokes" in body:
        return body["strokes"], "strokes"
    if "drawing" in body:
        return body["drawing"], "drawing"
    raise ApiError(
        422, "strokes", "missing: must be a list of strokes (a dataset line's `drawing` is accepted too)"
    )


# --------------------------------------------------------------------------------------- app
def create_app(checkpoint_path: str | Path, limits: Limits | None = None, backend: str = "auto") -> FastAPI:
    """The app for one model (`.pt` checkpoint or exported `.onnx`)."""
    limits = limits or Limits()
    clf = Classifier.load(checkpoint_path, backend=backend)
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["batcher"] = Batcher(clf, limits.batch_size)
        try:
            yield
        finally:
            state.pop("batcher").close()

    # FastAPIOffline: FastAPI whose /docs (Swagger UI 5) and /redoc load their JS and CSS from this
    # server instead of a CDN, so the docs also work on machines without internet.
    app = FastAPIOffline(
        title="doodle-rnn",
        summary="Recognise Quick, Draw! doodles from pen strokes",
        description="POST raw strokes (x, y, t per point) and get the model's best guesses. The server "
        "normalises and encodes exactly as training did; clients never preprocess.",
        version=clf.info["version"] or "0",
        lifespan=lifespan,
    )
    app.state.classifier = clf
    app.state.limits = limits

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
        body = await _read_json(request, limits)
        strokes = validate_drawing(*_strokes_field(body), limits)
        k = _top_k(body, limits)
        (pred,) = await state["batcher"].submit([strokes], k)
        return _json(_result(pred, clf, view=True))

    @app.post("/api/predict/batch", response_model=BatchResponse, responses=ERRORS,
              openapi_extra=_body_doc(BatchRequest))  # fmt: skip
    async def predict_batch(request: Request) -> Response:
        """Classify many drawings in one request (no model views)."""
        body = await _read_json(request, limits)
        drawings = body.get("drawings")
        if not isinstance(drawings, list) or not drawings:
            raise ApiError(422, "drawings", "must be a non-empty list of drawings")
        if len(drawings) > limits.max_batch:
            raise ApiError(
                422, "drawings", f"has {len(drawings)} drawings; at most {limits.max_batch} allowed"
            )
        for i, d in enumerate(drawings):
            validate_drawing(d, f"drawings[{i}]", limits)
        k = _top_k(body, limits)
        preds = await state["batcher"].submit(drawings, k)
        return _json({"results": [_result(p, clf, view=False) for p in preds]})

    @app.get("/api/classes")
    async def classes() -> dict:
        """The classes the model knows, in its output order."""
        return {"classes": clf.classes}

    @app.get("/api/model")
    async def model() -> dict:
        """What the model is: name, classes, encoding, length rules, temperature, metrics, version, backend,
        and its card (test accuracy on real drawings, `announce_threshold` for "I know: it's a cow!")."""
        info = clf.info
        info.pop("source", None)  # a server path is nobody's business
        return {**info, "limits": asdict(limits)}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` with several workers (each worker process loads the model)."""
    limits = Limits(**orjson.loads(os.environ.get("DOODLE_LIMITS", "{}")))
    return create_app(os.environ["DOODLE_CHECKPOINT"], limits, os.environ.get("DOODLE_BACKEND", "auto"))
