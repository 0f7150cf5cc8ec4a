"""The drawing page in a real headless Chromium against a real server.

A real raw Quick, Draw! capture is replayed as mouse pointer events on the canvas; the page must show
exactly what the API answers for the strokes the page itself captured (read back from
`window.doodle.strokes` and POSTed by the test), and undo, clear and the game must work.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_inference import build_tiny_checkpoint, raw_drawings
from test_server import running_server

from doodle_rnn.data.synthetic import generate
from doodle_rnn.server.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system Chromium at /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory) -> Iterator[str]:
    ckpt = build_tiny_checkpoint(tmp_path_factory.mktemp("page") / "tiny.pt")
    with running_server(create_app(ckpt)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, base_url):
    ctx = browser.new_context(viewport={"width": 1100, "height": 760})
    p = ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(base_url + "/")
    p.wait_for_selector("#canvas")
    yield p
    ctx.close()
    assert not errors, errors


def replay(page, strokes: list) -> None:
    """Draw `strokes` (any coordinate scale) as pointer events, fitted into the canvas with a margin."""
    box = page.locator("#canvas").bounding_box()
    xs = [x for s in strokes for x in s[0]]
    ys = [y for s in strokes for y in s[1]]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1)
    scale = (min(box["width"], box["height"]) - 60) / span
    for s in strokes:
        pts = [
            (box["x"] + 30 + (x - min(xs)) * scale, box["y"] + 30 + (y - min(ys)) * scale)
            for x, y in zip(s[0], s[1], strict=True)
        ]
        page.mouse.move(*pts[0])
        page.mouse.down()
        for p in pts[1:]:
            page.mouse.move(*p)
        page.mouse.up()


def shown(page) -> list[tuple[str, float]]:
    """The guesses on screen: class and the exact probability the page was given."""
    rows = page.locator("[data-testid^=guess-]")
    return [(rows.nth(i).get_attribute("data-class"), float(rows.nth(i).get_attribute("data-probability")))
            for i in range(rows.count())]  # fmt: skip


def settle(page) -> list:
    page.evaluate("window.doodle.idle()")
    return page.evaluate("window.doodle.strokes")


def api_top(base_url: str, strokes: list) -> list[tuple[str, float]]:
    r = httpx.post(base_url + "/api/predict", json={"strokes": strokes, "top_k": 3}, timeout=30)
    assert r.status_code == 200, r.text
    return [(g["class"], g["probability"]) for g in r.json()["top"]]


def test_replayed_real_drawing_shows_the_api_answer(page, base_url):
    drawing = raw_drawings(1, ("bicycle",))[0]["drawing"]
    replay(page, drawing)
    strokes = settle(page)
    assert len(strokes) == len(drawing)
    assert all(len(s) == 3 and len(s[0]) == len(s[1]) == len(s[2]) >= 1 for s in strokes)  # raw x, y, t
    ts = [t for s in strokes for t in s[2]]
    assert ts == sorted(ts) and ts[0] == 0  # milliseconds since the first point
    assert page.evaluate("window.doodle.resultStrokes") == strokes  # the guesses on screen are for these

    want = api_top(base_url, strokes)
    got = shown(page)
    assert [c for c, _ in got] == [c for c, _ in want]
    assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-9)
    first = page.locator("[data-testid=guess-0]")
    assert first.locator(".guess-prob").inner_text() == f"{want[0][1] * 100:.1f}%"
    assert page.locator("[data-testid=stroke-count]").inner_text() == f"{len(drawing)} strokes"
    # the model view was drawn from the API's model_view
    inked = page.evaluate(
        "(() => { const c = document.getElementById('model-view');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })()"
    )
    assert inked > 100
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)

    # undo: one stroke fewer, and the guesses follow the remaining strokes
    page.click("[data-testid=undo]")
    after = settle(page)
    assert after == strokes[:-1]
    assert [c for c, _ in shown(page)] == [c for c, _ in api_top(base_url, after)]

    # clear: nothing left, no guesses, empty model view
    page.click("[data-testid=clear]")
    assert settle(page) == []
    assert shown(page) == [] and page.locator("[data-testid=stroke-count]").inner_text() == "0 strokes"


def test_game_round_scores_when_the_model_guesses_the_target(page, base_url):
    shape = next(iter(generate(1, seed=2))).strokes
    replay(page, shape)
    target = api_top(base_url, settle(page))[0][0]  # whatever the model sees in this drawing
    page.click("[data-testid=clear]")
    settle(page)

    page.click("[data-testid=mode-game]")
    page.wait_for_function("window.doodle.game.active && window.doodle.game.attempts === 1")
    assert page.locator("[data-testid=game]").is_visible()
    assert 15 <= int(page.locator("[data-testid=game-timer]").inner_text()) <= 20
    page.click("[data-testid=game-skip]")
    page.wait_for_function("window.doodle.game.attempts === 2")

    page.evaluate("t => window.doodle.playRound(t)", target)
    assert page.locator("[data-testid=game-target]").inner_text() == target
    replay(page, shape)
    page.wait_for_function("window.doodle.game.score === 1", timeout=15_000)
    assert "Yes" in page.locator("[data-testid=game-message]").inner_text()
    assert page.locator("[data-testid=game-score]").inner_text() == "1"
    page.screenshot(path=str(ARTIFACTS / "page-game.png"), full_page=True)
    page.wait_for_function("window.doodle.game.attempts === 4", timeout=10_000)  # next round follows a hit
    page.click("[data-testid=mode-free]")
    assert not page.locator("[data-testid=game]").is_visible()


def test_api_docs_render_offline(browser, base_url):
    """This machine has no internet: Swagger UI renders only if its assets come from the server."""
    ctx = browser.new_context()
    p = ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    try:
        p.goto(base_url + "/docs")
        p.wait_for_selector("[data-path='/api/predict/batch']", timeout=15_000)
        assert p.locator(".opblock").count() >= 5  # predict, batch, classes, model, healthz
    finally:
        ctx.close()
    assert not errors, errors
