"""Drawings as pictures: PNG bytes (Pillow), SVG (matplotlib) and `doodle render` on the real sample."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from doodle_rnn.render import render_file, safe_name, strokes_to_png

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"


def doodle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "doodle_rnn", *args], capture_output=True, text=True, timeout=120
    )


def ink(png: bytes) -> np.ndarray:
    """Boolean mask of dark pixels."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("L")) < 128


def test_png_fits_the_drawing_and_keeps_its_aspect():
    # a wide, flat rectangle in raw screen coordinates (with times) far from the origin
    rect = [[[1000, 1400, 1400, 1000, 1000], [500, 500, 600, 600, 500], [0, 10, 20, 30, 40]]]
    png = strokes_to_png(rect, size=200, line_width=2, margin=0.05)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    m = ink(png)
    assert m.shape == (200, 200)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    # width fills the picture inside the 5% margins (10 px), height is a quarter of it, centred
    assert cols.min() == pytest.approx(10, abs=2) and cols.max() == pytest.approx(189, abs=2)
    assert rows.max() - rows.min() == pytest.approx(180 / 4, abs=3)
    assert (rows.min() + rows.max()) / 2 == pytest.approx(99.5, abs=2)
    assert not m[100, 100]  # the inside of the rectangle stays white


def test_y_points_down_and_dots_are_drawn():
    # a stroke at the top (y = 0) and a single-point stroke (a dot) at the bottom right
    png = strokes_to_png([[[0, 255], [0, 0]], [[255], [255]]], size=100, line_width=4, margin=0.1)
    m = ink(png)
    assert m[9:11, 20:80].all() and not m[15:85, 20:80].any()  # the line along the top
    assert m[88:92, 88:92].any()  # the dot, bottom right
    assert not m[85:95, 5:15].any()  # nothing bottom left


def test_render_file_svg_by_key_id(tmp_path):
    data = tmp_path / "cat.ndjson"
    rows = [{"word": "cat", "key_id": f"k{i}", "drawing": [[[0, 10 * i + 10], [0, 5]]]} for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    written, missing = render_file(data, tmp_path / "out", key_ids=["k2", "zzz"], fmt="svg")
    assert [p.name for p in written] == ["cat_k2.svg"] and missing == ["zzz"]
    svg = written[0].read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "cat (k2)" in svg
    assert safe_name("../../etc/passwd") == "etc_passwd" and safe_name("hot dog") == "hot_dog"


def test_render_cli_on_bundled_real_drawings(tmp_path, bundled_dir):
    """A bundled real simplified file (gzipped, as shipped): one drawing by key_id, the first few as SVG."""
    simp = bundled_dir / "spider.ndjson.gz"
    with gzip.open(simp, "rt") as fh:
        key = json.loads(fh.readline())["key_id"]
    r = doodle("render", str(simp), "--key-id", key, "--out", str(tmp_path / "png"))
    assert r.returncode == 0, r.stderr
    png = tmp_path / "png" / f"spider_{key}.png"
    assert Image.open(png).size == (256, 256) and 0.005 < ink(png.read_bytes()).mean() < 0.3
    r = doodle("render", str(simp), "--limit", "3", "--format", "svg", "--out", str(tmp_path / "simp"))
    assert r.returncode == 0 and len(list((tmp_path / "simp").glob("spider_*.svg"))) == 3
    r = doodle("render", str(simp), "--key-id", "no-such-id", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "no-such-id" in r.stderr and "Traceback" not in r.stderr


def test_render_cli_on_a_real_raw_capture(tmp_path):
    """Raw captures (screen pixels, with times) are only in the shared sample."""
    if not (SHARED / "raw").is_dir():
        pytest.skip("the real Quick, Draw! sample (../shared/data/quickdraw) is absent")
    raw = SHARED / "raw" / "cat.ndjson"
    key = json.loads(raw.open().readline())["key_id"]
    r = doodle("render", str(raw), "--key-id", key, "--out", str(tmp_path / "raw"))
    assert r.returncode == 0, r.stderr
    img = Image.open(tmp_path / "raw" / f"cat_{key}.png")
    assert (
        img.size == (256, 256)
        and 0.005 < ink((tmp_path / "raw" / f"cat_{key}.png").read_bytes()).mean() < 0.3
    )
    # its simplified twin renders too, as SVG, among the first few of the file
    r = doodle("render", str(SHARED / "simplified" / "cat.ndjson"), "--limit", "3", "--format", "svg",
               "--out", str(tmp_path / "simp"))  # fmt: skip
    assert r.returncode == 0 and len(list((tmp_path / "simp").glob("cat_*.svg"))) == 3
    r = doodle("render", str(raw), "--key-id", "no-such-id", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "no-such-id" in r.stderr and "Traceback" not in r.stderr
