"""One guess in the browser, and what a visitor downloads: the static site of `doodle export --web`; prints JSON.

- latency: `Recognizer.predict` (normalise + encode + ONNX Runtime Web wasm, one thread + softmax) of one
  real 50-point drawing sent as a raw capture, `animals10`, headless Chromium; the page idles `--gap-ms`
  between guesses, as between the page's throttled requests while someone draws. p50/p90 over `--guesses`
  after `--warmup`. In the same run, `Classifier.predict` in Python (ONNX Runtime, one thread) on the same
  drawing and the same float16-weight file gives a baseline for the ratio.
- size: the exported folder, and the first-load bytes: every file the page requested from opening to its
  first guess, raw and gzip-compressed (level 6, as static hosts commonly serve them).

    python benchmarks/bench_browser.py            # exports both shipped models to a temporary folder
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip


def fifty_point_drawing() -> list:
    """The first bundled cow with exactly 50 points, as a screen capture (scaled, shifted, timed)."""
    from doodle_rnn.data.formats import iter_drawings
    from doodle_rnn.quickstart import bundled_data_dir

    for d in iter_drawings(bundled_data_dir() / "cow.ndjson.gz"):
        if sum(len(s[0]) for s in d.strokes) == 50:
            t = 0
            out = []
            for s in d.strokes:
                out.append(
                    [[3 * x + 40 for x in s[0]], [3 * y + 40 for y in s[1]], list(range(t, t + len(s[0])))]
                )
                t += len(s[0]) * 16
            return out
    raise SystemExit("no bundled 50-point cow")


def percentiles(ms: list[float]) -> dict:
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
    }


def python_baseline(site: Path, drawing: list, n: int) -> dict:
    from doodle_rnn.inference import Classifier

    clf = Classifier.load(site / "models" / "animals10.onnx")
    for _ in range(10):
        clf.predict(drawing, 3)
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        clf.predict(drawing, 3)
        ms.append(1000 * (time.perf_counter() - t))
    return percentiles(ms)


def browser_run(site: Path, drawing: list, args) -> dict:
    from playwright.sync_api import sync_playwright
    from test_web import file_server

    with file_server(site) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page()
        files: list[str] = []
        page.on("requestfinished", lambda r: files.append(r.url))
        page.goto(url + "/")
        page.evaluate("window.doodle.modelLoaded")
        page.evaluate("d => window.doodle && window.doodle.idle()", drawing)
        first_load = sorted({u[len(url) + 1 :].split("?")[0] or "index.html" for u in files})
        ms = page.evaluate(
            """async ([d, warmup, n, gap]) => {
              const dj = await import('./static/doodle.js');
              const r = await dj.Recognizer.load('models/animals10.onnx');
              const sleep = (t) => new Promise((ok) => setTimeout(ok, t));
              for (let i = 0; i < warmup; i++) await r.predict(d, 3);
              const out = [];
              for (let i = 0; i < n; i++) {
                await sleep(gap);
                const t = performance.now();
                await r.predict(d, 3);
                out.push(performance.now() - t);
              }
              return out;
            }""",
            [drawing, args.warmup, args.guesses, args.gap_ms],
        )
        browser.close()
    raw = {f: (site / f).read_bytes() for f in first_load if (site / f).is_file()}
    return {
        **percentiles(ms),
        "first_load_files": sorted(raw),
        "first_load_bytes": sum(len(b) for b in raw.values()),
        "first_load_gzip_bytes": sum(len(gzip.compress(b, 6)) for b in raw.values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--site", help="an exported site (default: export both shipped models to a temporary folder)"
    )
    p.add_argument("--guesses", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--gap-ms", type=int, default=20, help="idle time between guesses")
    args = p.parse_args()
    from doodle_rnn.web import export_site

    with tempfile.TemporaryDirectory() as tmp:
        site = Path(args.site) if args.site else Path(tmp) / "site"
        if not args.site:
            export_site(site, ["animals10", "quickdraw"])
        drawing = fifty_point_drawing()
        result = {"drawing_points": sum(len(s[0]) for s in drawing), "model": "animals10"}
        result["browser"] = browser_run(site, drawing, args)
        result["python_onnxruntime"] = python_baseline(site, drawing, args.guesses)
        result["browser_over_python_p50"] = round(
            result["browser"]["p50_ms"] / result["python_onnxruntime"]["p50_ms"], 2
        )
        result["site_bytes"] = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
        result["models_bytes"] = {f.stem: f.stat().st_size for f in sorted((site / "models").glob("*.onnx"))}
        print(json.dumps(result))


if __name__ == "__main__":
    main()
