"""The drawing page in a real headless Chromium against a real server.

A real Quick, Draw! drawing (bundled with the package) is replayed as mouse pointer events on the canvas; the page must show
exactly what the API answers for the strokes the page itself captured (read back from
`window.doodle.strokes` and POSTed by the test), and undo, clear and the game must work. With a model
that announces ("I know: it's a cow!"), the call must come from the API's own answer crossing the
model's threshold, before the drawing's last stroke, and win the game round.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import bundled_lines
from starlette.responses import HTMLResponse
from test_inference import build_tiny_checkpoint
from test_server import running_server

from doodle_rnn.data.synthetic import SHAPES, generate
from doodle_rnn.inference import Classifier
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
def tiny(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("page") / "tiny.pt")


@pytest.fixture(scope="module")
def base_url(tiny) -> Iterator[str]:
    with running_server(create_app(tiny)) as url:  # no model card: the page never announces
        yield url


def announced_early(clf: Classifier, drawings, word_ok: Callable[[str], bool]) -> tuple[list, str]:
    """The first real drawing that `clf` calls right before its last stroke and never calls wrong.

    Every point prefix, sent as a capture, is checked (the page asks at moments that depend on timing),
    and so is every stroke prefix. Only test-split drawings (`doodle prepare`'s defaults) with three or more
    strokes are tried. Returns the strokes scaled up with times, as a user's pointer would draw them.
    """
    from doodle_rnn.data.cache import key_hash, split_of
    from doodle_rnn.data.prefixes import as_capture, first_points, n_points

    for d in drawings:
        if not word_ok(d.word) or split_of(key_hash([d.key_id], 42), 0.1, 0.1)[0] != 2 or len(d.strokes) < 3:
            continue
        ends = [as_capture(d.strokes[:k]) for k in range(1, len(d.strokes))]
        every = [as_capture(first_points(d.strokes, k)) for k in range(1, n_points(d.strokes) + 1)]
        sure = [(c, p) for top in clf.predict_many(every, 1) for c, p in top if p >= clf.announce_threshold]
        early = [c for top in clf.predict_many(ends, 1) for c, p in top if p >= clf.announce_threshold]
        if early and early[0] == d.word and {c for c, _ in sure} == {d.word}:
            raw = [
                [[3 * x + 40 for x in s[0]], [3 * y + 40 for y in s[1]], list(range(len(s[0])))]
                for s in d.strokes
            ]
            return raw, d.word
    raise AssertionError(f"no bundled held-out drawing is announced before its last stroke by {clf.name}")


@pytest.fixture(scope="module")
def announcing() -> tuple[str, list, str]:
    """The shipped `animals10` with its own card threshold, and a real drawing it announces early: the first
    bundled test-split cow (never trained on) that it calls right before its last stroke and never wrong."""
    from doodle_rnn.data.formats import iter_drawings
    from doodle_rnn.quickstart import bundled_data_dir

    clf = Classifier.load("animals10")
    raw, word = announced_early(clf, iter_drawings(bundled_data_dir() / "cow.ndjson.gz"), "cow".__eq__)
    return "animals10", raw, word


@pytest.fixture(scope="module")
def announcing_quickdraw() -> tuple[str, list, str]:
    """The shipped `quickdraw` (338 classes) and the first drawing of its bundled held-out set (test split of
    wide1k and wide5k, never trained on) of a class other than the animals that it announces early."""
    from test_shipped_quickdraw import HELDOUT

    from doodle_rnn.data.formats import iter_drawings

    animals = set(Classifier.load("animals10").classes)
    heldout = iter_drawings(HELDOUT)
    raw, word = announced_early(Classifier.load("quickdraw"), heldout, lambda w: w not in animals)
    return "quickdraw", raw, word


@pytest.fixture(scope="module", params=["animals10", "quickdraw"])
def announcer(request) -> tuple[str, list, str]:
    """Each shipped model with the drawing it announces: so the page is checked on the real models, saying
    "I know: it's a cow!" once the API's top probability reaches the card's threshold, before the drawing
    ends, and winning a game round with it: `animals10` as the server's default, `quickdraw` selected."""
    return request.getfixturevalue("announcing" if request.param == "animals10" else "announcing_quickdraw")


@pytest.fixture(scope="module")
def announcing_url() -> Iterator[str]:
    """`animals10` by default; the shipped `quickdraw` offered by name, as `doodle serve` does."""
    from doodle_rnn.models import shipped_path

    with running_server(create_app(shipped_path("animals10"))) as url:
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


@contextmanager
def open_page(browser, url: str):
    ctx = browser.new_context(viewport={"width": 1100, "height": 760})
    ctx.set_default_timeout(120_000)  # waits end on their condition; a starved machine (nice 19) is slow
    p = ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(url + "/")
    p.wait_for_selector("#canvas")
    p.evaluate("window.doodle.modelLoaded")  # the model's name and threshold are known
    yield p
    ctx.close()
    assert not errors, errors


@pytest.fixture
def page(browser, base_url):
    with open_page(browser, base_url) as p:
        yield p


@pytest.fixture
def announcing_page(browser, announcing_url, announcer):
    """The page with the announcer's model selected (a user's choice in the model select when not the default)."""
    name = announcer[0]
    with open_page(browser, announcing_url) as p:
        if p.evaluate("window.doodle.model.name") != name:
            # its first use loads the model on the server; done here so the page's wait is the switch itself
            assert httpx.get(f"{announcing_url}/api/model?model={name}", timeout=600).status_code == 200
            p.locator("[data-testid=model-select]").select_option(name)
            p.wait_for_function(f"window.doodle.model.name === '{name}'", timeout=120_000)
        yield p


def replay(page, strokes: list, after_stroke: Callable[[int], bool] | None = None) -> None:
    """Draw `strokes` (any coordinate scale) as pointer events, fitted into the canvas with a margin.

    after_stroke(i) runs once stroke i is drawn (the pen lifted); returning True stops the drawing there.
    """
    box = page.locator("#canvas").bounding_box()
    xs = [x for s in strokes for x in s[0]]
    ys = [y for s in strokes for y in s[1]]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1)
    scale = (min(box["width"], box["height"]) - 60) / span
    for i, s in enumerate(strokes):
        pts = [
            (box["x"] + 30 + (x - min(xs)) * scale, box["y"] + 30 + (y - min(ys)) * scale)
            for x, y in zip(s[0], s[1], strict=True)
        ]
        page.mouse.move(*pts[0])
        page.mouse.down()
        for p in pts[1:]:
            page.mouse.move(*p)
        page.mouse.up()
        if after_stroke and after_stroke(i):
            return


def shown(page) -> list[tuple[str, float]]:
    """The guesses on screen: class and the exact probability the page was given."""
    rows = page.locator("[data-testid^=guess-]")
    return [(rows.nth(i).get_attribute("data-class"), float(rows.nth(i).get_attribute("data-probability")))
            for i in range(rows.count())]  # fmt: skip


def record_texts(page, *ids: str) -> None:
    """From now on keep every text the elements `ids` show in `window.shownTexts[id]`.

    A won round's message lasts a few seconds before the next round; on a loaded machine a replayed
    stroke can take longer than that, so the tests check what was shown, not what is still there.
    """
    page.evaluate(
        """ids => { window.shownTexts = {}; for (const id of ids) { const el = document.getElementById(id);
        window.shownTexts[id] = []; new MutationObserver(() => window.shownTexts[id].push(el.textContent))
        .observe(el, {childList: true, characterData: true, subtree: true}); } }""",
        list(ids),
    )


def shown_texts(page, id_: str) -> list[str]:
    return page.evaluate("id => window.shownTexts[id]", id_)


def settle(page) -> list:
    page.evaluate("window.doodle.idle()")
    return page.evaluate("window.doodle.strokes")


def api_top(base_url: str, strokes: list, model: str | None = None) -> list[tuple[str, float]]:
    body = {"strokes": strokes, "top_k": 3} | ({"model": model} if model else {})
    r = httpx.post(base_url + "/api/predict", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return [(g["class"], g["probability"]) for g in r.json()["top"]]


def test_replayed_real_drawing_shows_the_api_answer(page, base_url):
    # a bundled real drawing (the first spider with 4+ strokes); the page captures its own times
    drawing = next(
        s for s in (orjson.loads(x)["drawing"] for x in bundled_lines("spider", 50)) if len(s) >= 4
    )
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
    # no model card: the file name only, and never an announcement
    assert page.locator("[data-testid=model-info]").inner_text() == "Model: tiny"
    assert not page.locator("[data-testid=announce]").is_visible()
    assert page.evaluate("window.doodle.announced") is None
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
    record_texts(page, "game-message")
    # draw like a player: stop once the round is won (the page starts the next round a few seconds later)
    replay(page, shape, lambda i: page.evaluate("window.doodle.game.score") == 1)
    page.wait_for_function("window.doodle.game.score === 1", timeout=15_000)
    assert any(m.startswith(f"Yes, it's {target}!") for m in shown_texts(page, "game-message"))
    assert page.locator("[data-testid=game-score]").inner_text() == "1"
    page.screenshot(path=str(ARTIFACTS / "page-game.png"), full_page=True)
    page.wait_for_function("window.doodle.game.attempts === 4", timeout=10_000)  # next round follows a hit
    page.click("[data-testid=mode-free]")
    assert not page.locator("[data-testid=game]").is_visible()


def with_article(name: str) -> str:
    return name if name.lower().startswith("the ") else ("an " if name[0].lower() in "aeiou" else "a ") + name


def test_announces_before_the_last_stroke(announcing_page, announcing_url, announcer):
    page, (name, drawing, word) = announcing_page, announcer
    model = httpx.get(f"{announcing_url}/api/model?model={name}", timeout=30).json()
    card = model["card"]
    threshold = card["announce_threshold"]
    assert page.evaluate("window.doodle.model.threshold") == threshold
    info = page.locator("[data-testid=model-info]").inner_text()
    assert model["name"] == name and info.startswith(f"Model: {name}")
    if card.get("test"):
        n = card["test"]["n_drawings"]
        assert f"test top-1 {card['test']['top1'] * 100:.1f}% on {n:,} real drawings" in info

    announce = page.locator("[data-testid=announce]")
    visible_after: list[bool] = []  # per stroke, once the page has the answer for the drawing so far

    def after_stroke(i: int) -> bool:
        settle(page)
        visible_after.append(announce.is_visible())
        if visible_after[-1] and visible_after.count(True) == 1:  # the moment it was called
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"page-announce-{name}.png"), full_page=True)
        return False

    replay(page, drawing, after_stroke)
    assert True in visible_after, f"never announced (threshold {threshold})"
    first = visible_after.index(True)
    assert first < len(drawing) - 1, "announced only once the last stroke was drawn"
    assert all(visible_after[first:])  # once called, it stays for the rest of the drawing

    # the call is the API's own answer, for a prefix of what was drawn, at or above the threshold
    called = page.evaluate("window.doodle.announced")
    strokes = settle(page)
    assert called["strokes"] <= first + 1 and called["drawing"] == [
        s if i < called["strokes"] - 1 else [c[: len(called["drawing"][i][0])] for c in s]
        for i, s in enumerate(strokes[: called["strokes"]])
    ]
    cls, prob = api_top(announcing_url, called["drawing"], name)[0]
    assert (cls, prob) == (called["class"], pytest.approx(called["probability"], abs=1e-9))
    assert prob >= threshold and cls == word
    assert called["points"] == sum(len(s[0]) for s in called["drawing"])
    assert announce.inner_text() == f"I know: it's {with_article(cls)}!"
    if name == "animals10":
        assert announce.inner_text() == "I know: it's a cow!"

    page.click("[data-testid=undo]")  # what was said was said: undo keeps the call
    settle(page)
    assert announce.is_visible() and announce.get_attribute("data-class") == cls
    page.click("[data-testid=clear]")  # a new drawing: no call
    settle(page)
    assert not announce.is_visible() and page.evaluate("window.doodle.announced") is None


def test_game_round_is_won_the_moment_the_target_is_announced(announcing_page, announcing_url, announcer):
    page, (name, drawing, _) = announcing_page, announcer
    threshold = page.evaluate("window.doodle.model.threshold")
    # the class the model will call for this drawing, stroke by stroke as a player draws
    prefixes = [api_top(announcing_url, drawing[: k + 1], name)[0] for k in range(len(drawing))]
    target = next(c for c, p in prefixes if p >= threshold * 0.99)

    page.click("[data-testid=mode-game]")
    page.wait_for_function("window.doodle.game.active && window.doodle.game.attempts === 1")
    page.evaluate("t => window.doodle.playRound(t)", target)
    assert page.locator("[data-testid=game-target]").inner_text() == target
    record_texts(page, "game-message", "announce", "game-avg")

    def after_stroke(i: int) -> bool:
        settle(page)
        return page.evaluate("window.doodle.game.score") == 1  # won: the player stops drawing

    replay(page, drawing, after_stroke)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"page-game-announce-{name}.png"), full_page=True)
    (won,) = page.evaluate("window.doodle.game.rounds")
    assert won["target"] == target and won["strokes"] < len(drawing)  # before the last stroke
    assert won["points"] < sum(len(s[0]) for s in drawing) and 0 <= won["seconds"] < 20
    said = f"Yes, it's {target}! Got it after {won['seconds']:.1f} s, {won['points']} points"
    assert any(m.startswith(said) for m in shown_texts(page, "game-message"))
    assert f"I know: it's {with_article(target)}!" in shown_texts(page, "announce")
    assert f"{won['seconds']:.1f} s" in shown_texts(page, "game-avg")


def test_the_page_loads_under_doodle_serve_with_no_failed_request(browser, base_url):
    """Every request the page makes on load is answered (its probe for a static site's models.json too)."""
    ctx = browser.new_context()
    p = ctx.new_page()
    failed: list[str] = []
    p.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    p.on("requestfailed", lambda r: failed.append(f"failed {r.url}"))
    try:
        p.goto(base_url + "/")
        p.wait_for_function(
            "window.doodle && window.doodle.model && window.doodle.model.name", timeout=60_000
        )
        p.wait_for_load_state("networkidle")
    finally:
        ctx.close()
    assert not failed, failed


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


# ------------------------------------------------------------------ under a path prefix, and a server at fault
class Faults:
    """What the parent app does to the next request whose path ends with a key: `hang` (until released or
    60 s) or an HTTP status answered with an HTML error page (a proxy's 502, say). Each fault acts once."""

    def __init__(self):
        self.next: dict[str, str | int] = {}
        self.released = threading.Event()
        self.seen: list[str] = []

    def wrap(self, app):
        async def asgi(scope, receive, send):
            if scope["type"] == "http":
                self.seen.append(scope["path"])
                fault = next((self.next.pop(k) for k in list(self.next) if scope["path"].endswith(k)), None)
                if fault == "hang":
                    for _ in range(1200):  # an answer that never comes (until the test ends)
                        if self.released.is_set():
                            break
                        await asyncio.sleep(0.05)
                elif fault is not None:
                    page = HTMLResponse(f"<html><body><h1>{fault} Bad Gateway</h1></body></html>", fault)
                    return await page(scope, receive, send)
            await app(scope, receive, send)

        return asgi


@pytest.fixture(scope="module")
def prefixed(tiny) -> Iterator[tuple[str, Faults]]:
    """Our app mounted at /doodle inside a parent app (as behind a proxy's path prefix), with faults."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    ours, faults = create_app(tiny), Faults()
    parent = Starlette(routes=[Mount("/doodle", app=ours)], lifespan=ours.router.lifespan_context)
    with running_server(faults.wrap(parent)) as url:
        try:
            yield url, faults
        finally:
            faults.released.set()


@pytest.fixture
def prefixed_page(browser, prefixed):
    url, faults = prefixed
    faults.next.clear()
    with open_page(browser, url + "/doodle") as p:  # open_page adds the "/"
        yield p, url + "/doodle", faults


def test_the_page_works_under_a_path_prefix(browser, prefixed):
    url, faults = prefixed
    with open_page(browser, url + "/doodle") as page:  # at /doodle/
        assert page.url == url + "/doodle/"
        assert page.locator("[data-testid=model-info]").inner_text() == "Model: tiny"
        faults.seen.clear()
        shape = next(iter(generate(1, seed=5))).strokes
        replay(page, shape)
        strokes = settle(page)
        assert shown(page) == [(c, pytest.approx(p, abs=1e-9)) for c, p in api_top(url + "/doodle", strokes)]
        page.click("[data-testid=mode-game]")
        page.wait_for_function("window.doodle.game.active && window.doodle.game.attempts === 1")
        assert page.locator("[data-testid=game-target]").inner_text() in SHAPES
        asked = [p for p in faults.seen if "/api/" in p]
        assert asked and all(p.startswith("/doodle/api/") for p in asked), faults.seen
        page.goto(url + "/doodle")  # without the trailing slash: redirected to /doodle/, and it works
        page.evaluate("window.doodle.modelLoaded")
        assert page.url == url + "/doodle/"
        assert page.locator("[data-testid=model-info]").inner_text() == "Model: tiny"


def test_a_hung_request_does_not_freeze_the_guesses(prefixed_page):
    page, base, faults = prefixed_page
    record_texts(page, "status")
    shape = next(iter(generate(1, seed=7))).strokes
    faults.next["/api/predict"] = "hang"
    replay(page, shape[:1])  # its first request hangs; the page gives up on it and asks again
    page.wait_for_function("!window.doodle.strokes.length || window.doodle.result !== null", timeout=60_000)
    replay(page, shape)
    strokes = settle(page)
    assert "/api/predict" not in faults.next  # the hang did happen
    assert "The server did not answer within 10 s." in shown_texts(page, "status")
    assert page.evaluate("window.doodle.resultStrokes") == strokes
    assert shown(page) == [(c, pytest.approx(p, abs=1e-9)) for c, p in api_top(base, strokes)]


def test_an_error_page_that_is_not_json_is_reported_as_such(prefixed_page):
    page, base, faults = prefixed_page
    record_texts(page, "status")  # the next request's guesses replace the message: check what was shown
    faults.next["/api/predict"] = 502
    replay(page, next(iter(generate(1, seed=8))).strokes[:1])
    said = 'The server answered HTTP 502 with a body that is not JSON ("502 Bad Gateway").'
    page.wait_for_function("t => window.shownTexts.status.includes(t)", arg=said, timeout=60_000)
    assert not any("reach" in t for t in shown_texts(page, "status"))
    strokes = settle(page)  # and the page goes on: the next answer is shown
    assert shown(page) == [(c, pytest.approx(p, abs=1e-9)) for c, p in api_top(base, strokes)]


def test_a_failed_class_load_turns_game_mode_off(prefixed_page):
    page, _, faults = prefixed_page
    faults.next["/api/classes"] = 503
    page.click("[data-testid=mode-game]")
    page.wait_for_function("document.getElementById('status').classList.contains('error')", timeout=60_000)
    assert page.locator("[data-testid=status]").inner_text() == (
        'Could not start the game: The server answered HTTP 503 with a body that is not JSON ("503 Bad Gateway").'
    )
    assert page.evaluate("window.doodle.game") | {"rounds": None} == {
        "mode": "free", "active": False, "target": None, "score": 0, "attempts": 0, "rounds": None}  # fmt: skip
    assert not page.locator("[data-testid=game]").is_visible()
    assert page.locator("[data-testid=mode-free]").get_attribute("aria-selected") == "true"
    assert "active" not in page.locator("[data-testid=mode-game]").get_attribute("class")
    page.click("[data-testid=mode-game]")  # the server is fine again: the game starts
    page.wait_for_function("window.doodle.game.active && window.doodle.game.attempts === 1", timeout=60_000)
    assert page.locator("[data-testid=game]").is_visible()
