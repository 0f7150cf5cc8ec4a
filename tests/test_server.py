"""The HTTP API on a real uvicorn server (loopback, free port): answers, errors, limits, fuzzing, `doodle serve`."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from test_inference import build_tiny_checkpoint, raw_drawings, with_card

from doodle_rnn.data.synthetic import SHAPES, generate
from doodle_rnn.inference import Classifier
from doodle_rnn.server.app import Limits, create_app

LIMITS = Limits(max_body_bytes=100_000, max_strokes=40, max_points=3_000, max_batch=16)


@contextmanager
def running_server(app) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 and a free port in a thread; yield its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("server") / "tiny.pt")


@pytest.fixture(scope="module")
def base_url(ckpt) -> Iterator[str]:
    with running_server(create_app(ckpt, LIMITS)) as url:
        yield url


@pytest.fixture(scope="module")
def http(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def clf(ckpt) -> Classifier:
    return Classifier.load(ckpt)


def test_info_endpoints_and_docs(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    # the page's probe for a static site's listing: a server says it is one (no 404 in the page's console)
    assert http.get("/models.json").json()["format"] == "doodle-rnn-server"
    assert http.get("/api/classes").json() == {"classes": list(SHAPES)}
    model = http.get("/api/model").json()
    assert model["classes"] == list(SHAPES) and model["encoding"] == "stroke3"
    assert model["metrics"] == {"val_acc": 0.5} and model["version"] and model["backend"] == "onnx"
    assert model["limits"]["max_strokes"] == LIMITS.max_strokes
    assert model["name"] == "tiny" and model["card"] == {}  # no card: the file's stem, nothing announced
    assert "source" not in model  # a server path is nobody's business
    docs = http.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert "https://" not in docs.text  # every asset from this server: the docs work offline
    redoc = http.get("/redoc")
    assert redoc.status_code == 200 and "https://" not in redoc.text
    spec = http.get("/openapi.json").json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "strokes" in body["properties"]
    page = http.get("/")
    assert page.status_code == 200 and 'id="canvas"' in page.text
    assert http.get("/static/app.js").status_code == 200


def test_model_card_is_served(ckpt, tmp_path):
    card = {"name": "animals-test", "announce_threshold": 0.8,
            "test": {"top1": 0.948, "top3": 0.99, "n_drawings": 4897, "data": "real drawings"}}  # fmt: skip
    with running_server(create_app(with_card(ckpt, tmp_path / "carded.pt", **card))) as url:
        model = httpx.get(url + "/api/model", timeout=30).json()
    assert model["card"] == card and model["name"] == "animals-test"


def test_the_docs_state_the_rules_the_server_checks(http):
    """One home for the rules: the OpenAPI bodies are the models that validate, with this server's limits."""
    spec = http.get("/openapi.json").json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    strokes, top_k = body["properties"]["strokes"], body["properties"]["top_k"]
    assert (strokes["minItems"], strokes["maxItems"]) == (1, LIMITS.max_strokes) and body["required"] == [
        "strokes"
    ]
    assert (top_k["minimum"], top_k["maximum"], top_k["default"]) == (1, LIMITS.max_top_k, 3)
    batch = spec["paths"]["/api/predict/batch"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert batch["properties"]["drawings"]["maxItems"] == LIMITS.max_batch
    # ... and the server enforces exactly those numbers
    stroke = [[1, 2], [3, 4]]
    ok = http.post("/api/predict", json={"strokes": [stroke] * LIMITS.max_strokes, "top_k": LIMITS.max_top_k})
    assert ok.status_code == 200 and len(ok.json()["top"]) == len(SHAPES)  # top_k above the class count
    r = http.post("/api/predict", json={"strokes": [stroke], "top_k": LIMITS.max_top_k + 1})
    assert r.status_code == 422 and r.json()["error"]["rule"] == f"must be between 1 and {LIMITS.max_top_k}"
    r = http.post("/api/predict/batch", json={"drawings": [[stroke]] * LIMITS.max_batch})
    assert r.status_code == 200 and len(r.json()["results"]) == LIMITS.max_batch


def test_predict_raw_drawing_matches_the_library(http, clf):
    for rec in raw_drawings(2, ("cat", "bicycle")):
        strokes = rec["drawing"]
        r = http.post("/api/predict", json={"strokes": strokes, "top_k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        want = clf.analyze(strokes, 5)
        assert [(g["class"], g["probability"]) for g in body["top"]] == [
            (c, pytest.approx(p, abs=1e-6)) for c, p in want.top
        ]
        assert body["steps"] == want.steps and body["short"] is False
        assert body["model_view"] == clf.model_view(strokes)
    xy_only = [[s[0], s[1]] for s in strokes]  # strokes without times are accepted too
    r = http.post("/api/predict", json={"strokes": xy_only})
    assert r.status_code == 200 and len(r.json()["top"]) == 3


def test_a_dataset_line_as_it_is_is_accepted(http):
    rec = next(iter(raw_drawings(1, ("cat",))))  # word, key_id, recognized, drawing, ...
    r = http.post("/api/predict", json=rec)
    assert r.status_code == 200, r.text
    assert r.json() == http.post("/api/predict", json={"strokes": rec["drawing"]}).json()
    r = http.post("/api/predict", json={**rec, "drawing": [[[1, 2], [3]]]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "drawing[0][1]"
    r = http.post("/api/predict", json={"word": "cat"})
    assert r.status_code == 422 and "`drawing`" in r.json()["error"]["rule"]


def test_short_drawing_is_answered_and_flagged(http):
    body = http.post("/api/predict", json={"strokes": [[[10, 90], [10, 40], [0, 30]]]}).json()
    assert body["short"] is True and body["steps"] >= 1 and len(body["top"]) == 3


def test_batch_matches_predict_many(http, clf):
    drawings = [d.strokes for d in generate(10, seed=31)] + [r["drawing"] for r in raw_drawings(2)]
    r = http.post("/api/predict/batch", json={"drawings": drawings, "top_k": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    for got, want in zip(results, clf.predict_many(drawings, 2), strict=True):
        assert [g["class"] for g in got["top"]] == [c for c, _ in want]
        assert "model_view" not in got


def test_concurrent_requests_each_get_their_own_answer(base_url, clf):
    drawings = [d.strokes for d in generate(48, seed=41)]
    want = clf.predict_many(drawings, 3)

    def one(i: int):
        with httpx.Client(base_url=base_url, timeout=30) as c:
            return c.post("/api/predict", json={"strokes": drawings[i]}).json()

    with ThreadPoolExecutor(12) as ex:
        got = list(ex.map(one, range(len(drawings))))
    for g, w in zip(got, want, strict=True):
        assert [x["class"] for x in g["top"]] == [c for c, _ in w]
        assert [x["probability"] for x in g["top"]] == pytest.approx([p for _, p in w], abs=1e-5)


BAD = [
    # (raw body, status, field, words in the rule)
    (b"{not json", 400, "body", "must be JSON"),
    (b'{"strokes": [[[1, NaN], [1, 2]]]}', 400, "body", "NaN"),
    (b'{"strokes": [[[1, 1e999], [1, 2]]]}', 400, "body", "infinite"),
    (b"[1, 2]", 422, "body", "JSON object"),
    (b"{}", 422, "strokes", "list of strokes"),
    (b'{"strokes": []}', 422, "strokes", "empty drawing"),
    (b'{"strokes": "abc"}', 422, "strokes", "got a string"),
    (b'{"strokes": [[[1, 2]]]}', 422, "strokes[0]", "[xs, ys]"),
    (b'{"strokes": [[[1, 2], [3]]]}', 422, "strokes[0][1]", "ys has 1 values but xs has 2"),
    (b'{"strokes": [[[1, 2], [3, 4], [5]]]}', 422, "strokes[0][2]", "ts has 1"),
    (b'{"strokes": [[[], []]]}', 422, "strokes[0][0]", "empty stroke"),
    (b'{"strokes": [[[1, "2"], [3, 4]]]}', 422, "strokes[0][0][1]", "number, got a string"),
    (b'{"strokes": [[[1, true], [3, 4]]]}', 422, "strokes[0][0][1]", "got a boolean"),
    (b'{"strokes": [[[1, 2], {"y": 1}]]}', 422, "strokes[0][1]", "list of numbers"),
    (b'{"strokes": [[[1, 1e12], [3, 4]]]}', 422, "strokes[0][0][1]", "within"),
    (b'{"strokes": [[[1, 2], [3, 4]]], "top_k": 0}', 422, "top_k", "between 1 and"),
    (b'{"strokes": [[[1, 2], [3, 4]]], "top_k": "3"}', 422, "top_k", "integer"),
    (orjson.dumps({"strokes": [[[1, 2], [3, 4]]] * 41}), 422, "strokes", "at most 40"),
    (
        orjson.dumps({"strokes": [[list(range(1000)), list(range(1000))]] * 4}),
        422,
        "strokes",
        "more than 3000 points",
    ),
]


@pytest.mark.parametrize(("raw", "status", "field", "rule"), BAD, ids=[f"{b[2]}-{b[3]}" for b in BAD])
def test_bad_input_gets_a_clear_4xx(http, raw, status, field, rule):
    r = http.post("/api/predict", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and rule in err["rule"], err
    assert http.get("/healthz").status_code == 200


def test_batch_input_errors_name_the_drawing(http):
    r = http.post("/api/predict/batch", json={"drawings": [[[[1, 2], [3, 4]]], [[[1, 2], [3]]]]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "drawings[1][0][1]"
    r = http.post("/api/predict/batch", json={"drawings": [[[[1, 2], [3, 4]]]] * 17})
    assert r.status_code == 422 and "at most 16" in r.json()["error"]["rule"]
    r = http.post("/api/predict/batch", json={"drawings": []})
    assert r.status_code == 422 and r.json()["error"]["field"] == "drawings"


def test_body_cap_is_enforced_while_reading(http):
    big = b'{"strokes": [[[' + b"1," * 60_000 + b"1], [1]]]}"
    r = http.post("/api/predict", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"

    def chunks():  # no Content-Length at all (chunked transfer): the cap must hold while streaming
        yield b'{"strokes": [[['
        for _ in range(200):
            yield b"1," * 500
        yield b"1], [1]]]}"

    r = http.post("/api/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert http.get("/healthz").json() == {"status": "ok"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=30,
)  # fmt: skip
numbers = (
    st.integers(-(10**9), 10**9)
    | st.floats(-1e9, 1e9, allow_nan=False)
    | st.sampled_from([0, 255, -0.0, 1e-300])
)
coords = st.lists(numbers, min_size=0, max_size=12)
strokes_like = st.lists(st.lists(coords, min_size=1, max_size=4), min_size=0, max_size=6)


in_range = (
    st.integers(-(10**6), 10**6)
    | st.floats(-1e6, 1e6, allow_nan=False)
    | st.sampled_from([0, 1e-300, 5e-324])
)


@st.composite
def drawings(draw) -> list:
    """Well-formed drawings of random numbers (any scale, with or without times): these must get a 200."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        n = draw(st.integers(1, 15))
        k = draw(st.sampled_from([2, 3]))
        out.append([draw(st.lists(in_range, min_size=n, max_size=n)) for _ in range(k)])
    return out


def dumps(v) -> bytes:
    return json.dumps(v).encode()  # the stdlib writes integers of any size (orjson stops at 64 bits)


bodies = st.one_of(
    json_values.map(dumps),
    st.fixed_dictionaries({"strokes": drawings()}, optional={"top_k": st.integers(-1, 60)}).map(dumps),
    st.fixed_dictionaries({"strokes": drawings()}).map(dumps),
    st.fixed_dictionaries(
        {"strokes": strokes_like}, optional={"top_k": json_values | st.integers(-3, 60)}
    ).map(dumps),
    st.fixed_dictionaries({"strokes": json_values}).map(dumps),
    st.binary(max_size=64),
    strokes_like.map(lambda s: orjson.dumps({"strokes": s}).replace(b"0", b"NaN", 1)),
)


def test_fuzz_never_5xx_reaches_model_and_validator_and_leaves_the_server_healthy(http):
    """Random bodies (JSON of any shape, near-valid drawings, bytes): never a 5xx, always a JSON error.

    The statuses are counted inside this test, so the coverage check does not depend on test order.
    """
    statuses: Counter = Counter()

    @settings(max_examples=150, deadline=None, database=None)
    @given(body=bodies, batch=st.booleans())
    def post(body, batch):
        path = "/api/predict"
        if batch:
            path, body = "/api/predict/batch", b'{"drawings": [' + body + b"]}"
        r = http.post(path, content=body, headers={"Content-Type": "application/json"})
        statuses[r.status_code] += 1
        assert r.status_code < 500, (body, r.text)
        assert r.status_code in (200, 400, 413, 422), r.text
        if r.status_code != 200:
            assert set(r.json()["error"]) == {"field", "rule", "message"}

    post()
    print(f"fuzz statuses: {dict(statuses)}")
    # the fuzzer reached both the model (a 200) and the validator (a 422), not just one of them
    assert statuses[200] > 0 and statuses[422] > 0, statuses
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.post("/api/predict", json={"strokes": next(iter(generate(1))).strokes}).status_code == 200


def test_doodle_serve_cli(ckpt, tmp_path):
    """`doodle serve --port 0` in a real subprocess: it starts, answers, and stops on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "doodle_rnn", "serve", "--checkpoint", str(ckpt), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url, seen = None, []
        deadline = time.monotonic() + 180  # a starved machine (nice 19 beside training) takes minutes
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            seen.append(line)
            m = re.search(r"running on (http://127\.0\.0\.1:\d+)", line, re.I)
            if m:
                assert any(f"model: {ckpt.resolve()} (8 classes" in x for x in seen), "".join(seen)
            url = m.group(1) if m else None
            assert line or proc.poll() is None, "".join(seen)
        assert url, "".join(seen)
        r = httpx.post(f"{url}/api/predict", json={"strokes": next(iter(generate(1))).strokes}, timeout=30)
        assert r.status_code == 200 and len(r.json()["top"]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    r = subprocess.run([sys.executable, "-m", "doodle_rnn", "serve", "--checkpoint", str(tmp_path / "x.pt")],
                       capture_output=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and b"x.pt" in r.stderr


def test_doodle_serve_on_a_taken_port_says_so(ckpt):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "doodle_rnn", "serve", "--checkpoint", str(ckpt), "--port", str(port)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in r.stderr, r.stderr
    assert "--port" in r.stderr and "Errno" not in r.stderr and "Traceback" not in r.stderr
