"""One server, several models: the one it was started with (the default) and the shipped ones, by name.

Against real servers (uvicorn in a thread, and `doodle serve` in a subprocess) with a tiny checkpoint
trained here and the shipped `animals10`; the page switches between them in a real Chromium.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import bundled_lines
from test_inference import build_tiny_checkpoint
from test_page import ARGS, CHROMIUM, open_page, replay, settle, shown
from test_server import running_server

from doodle_rnn.data.synthetic import SHAPES
from doodle_rnn.inference import Classifier
from doodle_rnn.models import SHIPPED
from doodle_rnn.server.app import create_app
from doodle_rnn.server.models import shipped_on_disk


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny.pt")


@pytest.fixture(scope="module")
def animals() -> Classifier:
    return Classifier.load("animals10")


@pytest.fixture(scope="module")
def url(tiny) -> Iterator[str]:
    with running_server(create_app(tiny)) as u:
        yield u


def cow() -> list:
    return orjson.loads(next(iter(bundled_lines("cow", 1))))["drawing"]


def test_models_are_listed_default_first_and_load_on_first_use(url, animals):
    installed = list(shipped_on_disk())  # every shipped model whose file is present, in SHIPPED's order
    listing = httpx.get(url + "/api/models", timeout=60).json()
    assert listing["default"] == "tiny"
    assert [m["name"] for m in listing["models"]] == ["tiny", *installed]
    tiny_row, animals_row = listing["models"][0], listing["models"][installed.index("animals10") + 1]
    assert tiny_row == {"name": "tiny", "default": True, "classes": len(SHAPES), "shipped": False,
                        "description": "", "loaded": True, "test": {}}  # fmt: skip
    card = animals.info["card"]
    assert animals_row["classes"] == 10 and animals_row["shipped"] and not animals_row["default"]
    assert animals_row["loaded"] is False  # listing reads the card, it does not load the model
    assert animals_row["test"] == {"top1": card["test"]["top1"], "top3": card["test"]["top3"],
                                   "n_drawings": card["test"]["n_drawings"], "data": card["test"]["data"],
                                   "announce_threshold": card["announce_threshold"]}  # fmt: skip
    assert animals_row["description"] == SHIPPED["animals10"][1]

    # classes of a model not loaded yet: from its file, still not loaded
    assert httpx.get(url + "/api/classes?model=animals10", timeout=60).json() == {"classes": animals.classes}
    assert httpx.get(url + "/api/classes", timeout=60).json() == {"classes": list(SHAPES)}

    strokes = cow()
    r = httpx.post(
        url + "/api/predict", json={"strokes": strokes, "model": "animals10", "top_k": 3}, timeout=120
    )
    assert r.status_code == 200, r.text
    want = animals.analyze(strokes, 3)
    assert [(g["class"], g["probability"]) for g in r.json()["top"]] == [
        (c, pytest.approx(p, abs=1e-6)) for c, p in want.top
    ]
    assert r.json()["model_view"] == animals.model_view(strokes)
    assert next(m for m in httpx.get(url + "/api/models", timeout=60).json()["models"]
                if m["name"] == "animals10")["loaded"] is True  # fmt: skip
    # no model named: the default, as before
    default = httpx.post(url + "/api/predict", json={"strokes": strokes}, timeout=60).json()
    assert {g["class"] for g in default["top"]} <= set(SHAPES)
    assert (
        default
        == httpx.post(url + "/api/predict", json={"strokes": strokes, "model": "tiny"}, timeout=60).json()
    )

    batch = httpx.post(url + "/api/predict/batch", json={"drawings": [strokes, strokes[:1]], "model": "animals10"},
                       timeout=60).json()  # fmt: skip
    assert [[g["class"] for g in x["top"]] for x in batch["results"]] == [
        [c for c, _ in top] for top in animals.predict_many([strokes, strokes[:1]], 3)
    ]
    info = httpx.get(url + "/api/model?model=animals10", timeout=60).json()
    assert info["name"] == "animals10" and info["classes"] == animals.classes and info["card"] == card
    assert "source" not in info
    assert httpx.get(url + "/api/model", timeout=60).json()["name"] == "tiny"


def test_an_unknown_model_is_a_404_that_names_the_known_ones(url):
    strokes = [[[1, 50], [1, 50]]]
    answers = [
        httpx.post(url + "/api/predict", json={"strokes": strokes, "model": "quickdraw9"}, timeout=60),
        httpx.post(
            url + "/api/predict/batch", json={"drawings": [strokes], "model": "quickdraw9"}, timeout=60
        ),
        httpx.get(url + "/api/model?model=quickdraw9", timeout=60),
        httpx.get(url + "/api/classes?model=quickdraw9", timeout=60),
    ]
    for r in answers:
        assert r.status_code == 404, r.text
        err = r.json()["error"]
        assert err["field"] == "model" and err["rule"].startswith(
            "unknown model 'quickdraw9'; this server has: tiny"
        )
        assert "animals10" in err["rule"]
    r = httpx.post(url + "/api/predict", json={"strokes": strokes, "model": 10}, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["field"] == "model"
    spec = httpx.get(url + "/openapi.json", timeout=60).json()
    assert "/api/models" in spec["paths"]
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "GET /api/models" in body["properties"]["model"]["description"]
    params = spec["paths"]["/api/classes"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["model"] and not params[0]["required"]


def test_a_shipped_model_started_by_name_is_offered_once(tiny):
    app = create_app("animals10")
    assert app.state.models.names[0] == "animals10" and app.state.models.names.count("animals10") == 1
    assert app.state.models.default == "animals10"
    alone = create_app(tiny, shipped=False)
    assert alone.state.models.names == ["tiny"]


# ------------------------------------------------------------------ `doodle serve` and the page
@contextmanager
def doodle_serve(ckpt: Path) -> Iterator[tuple[str, list[str]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "doodle_rnn", "serve", "--checkpoint", str(ckpt), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 300  # a starved machine (nice 19 beside training) takes minutes
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            assert line or proc.poll() is None, "".join(seen)
            seen.append(line)
            m = re.search(r"running on (http://127\.0\.0\.1:\d+)", line, re.I)
            if m:
                yield m.group(1), seen
                return
        raise AssertionError("doodle serve did not start: " + "".join(seen))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system Chromium at /usr/bin/chromium")
def test_the_page_switches_models_served_by_doodle_serve(tiny, animals):
    from playwright.sync_api import sync_playwright

    with doodle_serve(tiny) as (url, seen), sync_playwright() as pw:
        assert any("also offered by name, loaded on first use: animals10" in x for x in seen), seen
        listing = httpx.get(url + "/api/models", timeout=60).json()
        assert listing["default"] == "tiny" and "animals10" in [m["name"] for m in listing["models"]]
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            with open_page(browser, url) as page:
                _switch_in_the_page(page, url, animals)
        finally:
            browser.close()


def _top(url: str, strokes: list, model: str) -> list:
    r = httpx.post(url + "/api/predict", json={"strokes": strokes, "model": model}, timeout=120)
    assert r.status_code == 200, r.text
    return [(g["class"], pytest.approx(g["probability"], abs=1e-9)) for g in r.json()["top"]]


def _switch_in_the_page(page, url: str, animals: Classifier) -> None:
    select = page.locator("[data-testid=model-select]")
    assert select.is_visible() and select.input_value() == "tiny"
    options = select.locator("option").all_inner_texts()
    top1 = animals.info["card"]["test"]["top1"]
    assert options[:2] == ["tiny · 8 classes", f"animals10 · 10 classes · test top-1 {top1 * 100:.1f}%"]

    replay(page, cow())
    strokes = settle(page)
    assert shown(page) == _top(url, strokes, "tiny") and {c for c, _ in shown(page)} <= set(SHAPES)
    assert page.locator("[data-testid=model-info]").inner_text() == "Model: tiny"

    # its first use loads the model on the server (seconds; minutes on a starved test machine): done here
    # so that the page's wait is the switch itself
    assert httpx.get(url + "/api/model?model=animals10", timeout=600).status_code == 200
    select.select_option("animals10")  # the same drawing, asked of the other model
    page.wait_for_function("window.doodle.model.name === 'animals10'", timeout=120_000)
    assert settle(page) == strokes
    assert shown(page) == _top(url, strokes, "animals10") and {c for c, _ in shown(page)} <= set(
        animals.classes
    )
    assert page.evaluate("window.doodle.model.threshold") == animals.announce_threshold
    assert (
        page.locator("[data-testid=model-info]")
        .inner_text()
        .startswith(f"Model: animals10 · test top-1 {top1 * 100:.1f}%")
    )

    # the game draws its targets from the selected model's classes
    page.click("[data-testid=mode-game]")
    page.wait_for_function("window.doodle.game.active && window.doodle.game.attempts === 1", timeout=60_000)
    targets = {page.evaluate("window.doodle.game.target")}
    for n in range(2, 6):
        page.click("[data-testid=game-skip]")
        page.wait_for_function(f"window.doodle.game.attempts === {n}")
        targets.add(page.evaluate("window.doodle.game.target"))
    assert targets <= set(animals.classes) and len(targets) >= 2
    select.select_option("tiny")  # switching in a game: a new round with the new model's classes
    page.wait_for_function(
        "window.doodle.model.name === 'tiny' && window.doodle.game.attempts === 6", timeout=120_000
    )
    assert page.evaluate("window.doodle.game.target") in SHAPES and page.evaluate("window.doodle.game.active")
    assert page.evaluate("window.doodle.model.threshold") is None
