"""`doodle export --web`: the static site, and doodle.js held to the Python path in a real headless Chromium.

The site is written once by the real CLI (a subprocess) with both shipped models and served by the
standard library's file server, as `python -m http.server` would. doodle.js is a second implementation
of `normalize` + `encode`, so it is held to the Python functions on real drawings: every raw capture of
../shared (7,692; the bundled drawings, made into captures, where ../shared is absent), both encodings,
in one page.evaluate; the probabilities to ONNX Runtime in Python on the same exported file; the shipped
models' top-1 on bundled held-out drawings; and the page itself, replaying a real drawing, to
`doodle serve`. Browser tests skip only without /usr/bin/chromium, or without ONNX Runtime Web (npm).
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from itertools import islice
from pathlib import Path

import numpy as np
import orjson
import pytest
from test_inference import SHARED
from test_page import ARTIFACTS, CHROMIUM, announcing, browser, replay, settle, shown  # noqa: F401 - fixtures
from test_server import running_server

from doodle_rnn.data.encode import ENCODINGS, LengthRules, encode_batch
from doodle_rnn.data.formats import iter_drawings
from doodle_rnn.inference import Classifier
from doodle_rnn.quickstart import bundled_data_dir
from doodle_rnn.server.app import create_app
from doodle_rnn.web import WebExportError, ort_dist

STATIC = Path(__file__).resolve().parents[1] / "src" / "doodle_rnn" / "server" / "static"
HELDOUT = Path(str(resources.files("doodle_rnn").joinpath("bundled/quickdraw/heldout.ndjson.gz")))


def _ort_missing() -> str:
    try:
        ort_dist()
    except WebExportError as exc:
        return str(exc)
    return ""


def in_browser(fn):
    """A test that opens the site in Chromium: skipped without Chromium or without onnxruntime-web."""
    for mark in (
        pytest.mark.browser,
        pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system Chromium at /usr/bin/chromium"),
        pytest.mark.skipif(bool(_ort_missing()), reason="onnxruntime-web is not installed (npm ci)"),
    ):
        fn = mark(fn)
    return fn


def doodle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "doodle_rnn", *args], capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, dict]:
    if _ort_missing():
        pytest.skip(_ort_missing())
    out = tmp_path_factory.mktemp("web") / "site"
    r = doodle("export", "--web", str(out))
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout.splitlines()[0])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the standard handler, without a line per request
        pass


@contextmanager
def file_server(folder: Path) -> Iterator[str]:
    """`python -m http.server -d folder`, in a thread: the standard library's plain file server."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def site_url(site) -> Iterator[str]:
    with file_server(site[0]) as url:
        yield url


@pytest.fixture(scope="module")
def lab(browser, site_url):  # noqa: F811 - the browser fixture of test_page
    """A page of the site with doodle.js imported as `window.dj`; every request it makes is recorded."""
    ctx = browser.new_context()
    ctx.set_default_timeout(300_000)
    page = ctx.new_page()
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(site_url + "/")
    page.evaluate("async () => { window.dj = await import('./static/doodle.js'); }")
    yield page
    ctx.close()


def in_page(page, script: str, data) -> object:
    """Run `script` (an async function of the data) in the page; data and answer cross as one JSON string."""
    return orjson.loads(page.evaluate(f"async (s) => JSON.stringify(await ({script})(JSON.parse(s)))",
                                      orjson.dumps(data).decode()))  # fmt: skip


@pytest.fixture(scope="module")
def captures() -> tuple[str, list]:
    """Every raw capture of ../shared; without it, 1,000 bundled drawings made into captures."""
    if (SHARED / "raw").is_dir():
        out = []
        for f in sorted((SHARED / "raw").glob("*.ndjson")):
            with open(f, "rb") as fh:
                out.extend(orjson.loads(line)["drawing"] for line in fh if line.strip())
        return "raw captures of ../shared", out
    out = []
    for f in sorted(bundled_data_dir().glob("*.ndjson.gz")):
        with gzip.open(f, "rb") as fh:
            for line in islice(fh, 100):  # scaled, shifted and timed, as a screen gives them
                d = orjson.loads(line)["drawing"]
                out.append([[[2.5 * x + 17 for x in s[0]], [2.5 * y + 9 for y in s[1]], list(range(len(s[0])))]
                            for s in d])  # fmt: skip
    return "bundled drawings as captures", out


def python_steps(drawings: list, encoding: str) -> list[list[int]]:
    steps, lengths, kept = encode_batch(drawings, encoding, LengthRules(1, 250))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    out: list[list[int]] = [[] for _ in drawings]
    for j, i in enumerate(kept.tolist()):
        out[i] = steps[offsets[j] : offsets[j + 1]].reshape(-1).tolist()
    return out


# ------------------------------------------------------------------------------ the site's files
def test_site_ships_the_served_page_the_runtime_and_small_models(site):
    folder, summary = site
    assert (folder / "index.html").read_bytes() == (STATIC / "index.html").read_bytes()
    for f in STATIC.iterdir():  # the very files `doodle serve` serves: one page, no second copy to drift
        if f.name != "index.html":
            assert (folder / "static" / f.name).read_bytes() == f.read_bytes(), f.name
    ort = sorted(p.name for p in (folder / "static" / "ort").iterdir())
    assert ort == ["LICENSE.txt", "ort-wasm-simd-threaded.wasm", "ort.wasm.min.js"]  # wasm only
    assert "MIT License" in (folder / "static" / "ort" / "LICENSE.txt").read_text()
    listing = json.loads((folder / "models.json").read_text())
    assert listing["default"] == "animals10" and [m["name"] for m in listing["models"]] == [
        "animals10",
        "quickdraw",
    ]
    models = sum(p.stat().st_size for p in (folder / "models").glob("*.onnx"))
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert models <= 5_000_000 and total <= 22_000_000 and total == summary["bytes"], (models, total)
    for m in summary["models"]:  # float16 storage moved no probability by more than this on its checks
        assert m["precision"] == "fp16" and m["max_abs_prob_diff_vs_fp32"] < 5e-3, m


def test_fp16_file_runs_in_python_with_the_same_answers(site):
    """The exported float16-weight graph is an ordinary `doodle export` file: Python loads it by itself."""
    folder = site[0]
    half = Classifier.load(folder / "models" / "animals10.onnx")
    full = Classifier.load("animals10")
    assert half.info["quantization"] == "fp16-weights" and half.classes == full.classes
    drawings = [d.strokes for d in islice(iter_drawings(bundled_data_dir() / "cow.ndjson.gz"), 200)]
    a, _ = half.probabilities(drawings)
    b, _ = full.probabilities(drawings)
    assert np.abs(a - b).max() < 5e-3 and (a.argmax(1) == b.argmax(1)).mean() >= 0.99


def test_export_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    r = doodle("export", "--web", str(tmp_path), "--checkpoint", "animals10")
    assert r.returncode == 2 and "not empty" in r.stderr and (tmp_path / "notes.txt").exists()
    r = doodle("export", "--web", str(tmp_path / "new"), "--checkpoint", "no-such-model.pt")
    assert r.returncode == 2 and "no-such-model.pt" in r.stderr and not (tmp_path / "new").exists()
    r = doodle("export", "--onnx", str(tmp_path / "m.onnx"), "--checkpoint", "animals10", "quickdraw")
    assert r.returncode == 2 and "exactly one --checkpoint" in r.stderr


# ------------------------------------------------------------------------------ doodle.js vs Python
@in_browser
def test_encoding_equals_python_on_real_captures(lab, captures):
    where, drawings = captures
    got = in_page(lab, "async (ds) => ({stroke3: ds.map((d) => Array.from(dj.encode(d, 'stroke3'))),"
                       " reference: ds.map((d) => Array.from(dj.encode(d, 'reference')))})", drawings)  # fmt: skip
    for encoding in ENCODINGS:
        want = python_steps(drawings, encoding)
        differ = [i for i, (a, b) in enumerate(zip(got[encoding], want, strict=True)) if a != b]
        share = 1 - len(differ) / len(drawings)
        assert share >= 0.999, (
            f"{encoding} on {where}: {len(differ)} of {len(drawings)} differ: {differ[:20]}"
        )


@in_browser
def test_probabilities_equal_onnx_runtime_in_python(lab, site, captures):
    """Both shipped models, on real captures of every length, as exported (the same file both sides)."""
    drawings = captures[1][::24]  # ~320 drawings from every class file
    for name in ("animals10", "quickdraw"):
        got = in_page(lab, f"async (ds) => (await dj.Recognizer.load('models/{name}.onnx')).probabilities(ds)",
                      drawings)  # fmt: skip
        want, read = Classifier.load(site[0] / "models" / f"{name}.onnx").probabilities(drawings)
        assert [g is not None for g in got] == read.tolist()
        diff = np.abs(np.array([g for g in got if g is not None]) - want[read]).max()
        assert diff <= 1e-4, (name, diff)


@in_browser
def test_shipped_models_top1_on_held_out_drawings_equals_python(lab, site):
    """quickdraw on its 1,690 bundled held-out drawings; animals10 on 60 bundled test-split drawings a class."""
    from doodle_rnn.data.cache import key_hash, split_of

    animals = []
    for f in sorted(bundled_data_dir().glob("*.ndjson.gz")):
        test = (d for d in iter_drawings(f) if split_of(key_hash([d.key_id], 42), 0.1, 0.1)[0] == 2)
        animals.extend(islice(test, 60))
    for name, drawings in (("quickdraw", list(iter_drawings(HELDOUT))), ("animals10", animals)):
        strokes = [d.strokes for d in drawings]
        got = in_page(
            lab,
            f"""async (ds) => {{ const r = await dj.Recognizer.load('models/{name}.onnx');
            return (await r.probabilities(ds)).map((p) => r.classes[p.indexOf(Math.max(...p))]); }}""",
            strokes,
        )
        clf = Classifier.load(site[0] / "models" / f"{name}.onnx")
        probs, _ = clf.probabilities(strokes)
        want = [clf.classes[i] for i in probs.argmax(1)]
        top2 = np.sort(probs, axis=1)[:, -2:]
        # a drawing may differ only where Python's own two best are tied to within the parity tolerance
        differ = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
        assert all(top2[i, 1] - top2[i, 0] < 1e-4 for i in differ), (name, differ)
        words = [d.word for d in drawings]
        top1 = np.mean([a == w for a, w in zip(got, words, strict=True)])
        assert abs(top1 - np.mean([a == w for a, w in zip(want, words, strict=True)])) <= len(differ) / len(
            words
        )
        assert top1 >= {"quickdraw": 0.6, "animals10": 0.9}[name], (name, top1)


# ------------------------------------------------------------------------------ the page, served by a file server
def _play(browser, url: str, drawing: list, screenshot: str = "") -> tuple[list, list, list]:  # noqa: F811
    """Replay `drawing` on the page at `url`: per stroke the guesses shown and the announcement; requests."""
    ctx = browser.new_context(viewport={"width": 1100, "height": 760})
    ctx.set_default_timeout(120_000)
    seen: list[str] = []

    def only_here(route):
        seen.append(route.request.url)
        return route.continue_() if route.request.url.startswith(url) else route.abort()

    ctx.route("**/*", only_here)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.evaluate("window.doodle.modelLoaded")
    guesses, announced = [], []

    def after_stroke(i: int) -> bool:
        settle(page)
        guesses.append(shown(page))
        el = page.locator("[data-testid=announce]")
        announced.append(el.inner_text() if el.is_visible() else None)
        return False

    replay(page, drawing, after_stroke)
    info = page.locator("[data-testid=model-info]").inner_text()
    if screenshot:  # README's picture of the static page (docs/images/web_page.png)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
    ctx.close()
    assert not errors, errors
    return guesses, announced, [seen, info]


@in_browser
def test_exported_page_replays_a_real_drawing_like_doodle_serve(browser, site_url, announcing):  # noqa: F811
    """A held-out cow that animals10 announces before its last stroke: the same guesses, stroke by stroke,
    and the same "I know: it's a cow!" on the static site as on `doodle serve`; nothing leaves the site."""
    drawing = announcing[1]
    with running_server(create_app("animals10")) as served:
        want, want_said, (_, served_info) = _play(browser, served, drawing)
    got, said, (requests, info) = _play(browser, site_url, drawing, "web_page.png")
    assert said == want_said and "I know: it's a cow!" in said and said[-1] is not None
    for g, w in zip(got, want, strict=True):
        assert [c for c, _ in g] == [c for c, _ in w]
        assert [p for _, p in g] == pytest.approx([p for _, p in w], abs=5e-3)  # float16 weights
    assert info == served_info + " · runs in this browser"
    assert requests and all(u.startswith(site_url + "/") for u in requests), requests
    assert not [u for u in requests if "/api/" in u]
    assert {site_url + "/models/animals10.onnx", site_url + "/static/ort/ort-wasm-simd-threaded.wasm"} <= set(
        requests
    )


@in_browser
def test_stream_and_model_view_match_the_python_classifier(lab, site, announcing):  # noqa: F811
    """The README's use of doodle.js: a stream fed point by point answers as `predict` on its strokes and as
    Python's `StreamSession` (confident, announced through undo); `modelView` is Python's `model_view`."""
    raw = announcing[1]  # a held-out cow that animals10 calls before its last stroke
    got = in_page(lab, """async (d) => { const r = await dj.Recognizer.load('models/animals10.onnx');
        const live = r.stream(); const answers = [];
        for (const s of d) { s[0].forEach((x, i) => live.addPoint(x, s[1][i], s[2][i])); live.endStroke();
                             answers.push(await live.predict(3)); }
        const whole = await r.predict(live.strokes, 3); live.undo(); const after = await live.predict(3);
        return {answers, whole, after, view: r.modelView(d)}; }""", raw)  # fmt: skip
    clf = Classifier.load(site[0] / "models" / "animals10.onnx")
    live = clf.stream()
    for s, answer in zip(raw, got["answers"], strict=True):
        for x, y, t in zip(*s, strict=True):
            live.add_point(x, y, t)
        live.end_stroke()
        want = live.predict(3)
        assert [c for c, _ in answer["top"]] == [c for c, _ in want]
        assert [p for _, p in answer["top"]] == pytest.approx([p for _, p in want], abs=1e-4)
        assert (answer["confident"], answer["announced"]) == (want.confident, want.announced)
    assert got["whole"] == got["answers"][-1]["top"]
    live.undo()
    assert got["after"]["announced"] == live.predict(3).announced == "cow"  # a call is never taken back
    assert got["view"] == clf.model_view(raw)


@in_browser
def test_exported_page_plays_the_game_and_switches_models_in_page(browser, site_url):  # noqa: F811
    """The game draws its targets from the model's classes and the select loads the other model, all in
    the page: the file server is never asked for an API path."""
    ctx = browser.new_context(viewport={"width": 1100, "height": 760})
    ctx.set_default_timeout(120_000)
    page = ctx.new_page()
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.goto(site_url + "/")
    page.evaluate("window.doodle.modelLoaded")
    assert (
        page.locator("[data-testid=model-select] option")
        .all_inner_texts()[1]
        .startswith("quickdraw · 338 classes")
    )
    page.click("[data-testid=mode-game]")
    page.wait_for_function("window.doodle.game.active && window.doodle.game.attempts === 1")
    animals = json.loads(page.evaluate("fetch('models/animals10.json').then((r) => r.text())"))["classes"]
    assert page.locator("[data-testid=game-target]").inner_text() in animals
    page.select_option("[data-testid=model-select]", "quickdraw")
    page.wait_for_function("window.doodle.model.name === 'quickdraw' && window.doodle.game.attempts === 2")
    card = json.loads(page.evaluate("fetch('models/quickdraw.json').then((r) => r.text())"))
    assert page.locator("[data-testid=game-target]").inner_text() in card["classes"]
    info = page.locator("[data-testid=model-info]").inner_text()
    assert info.startswith(f"Model: quickdraw · test top-1 {card['card']['test']['top1']:.1%}")
    ctx.close()
    assert site_url + "/models/quickdraw.onnx" in asked and not [u for u in asked if "/api/" in u]
