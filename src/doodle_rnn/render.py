"""Drawings as pictures: PNG bytes for the server, files for `doodle render`, panels for the eval report.

Two renderers, each where it is best:
- Pillow (`strokes_to_png`, `strokes_to_image`) for raster pictures: no figure machinery, a few
  milliseconds per drawing, antialiased by drawing at 4x and downsampling. The server and
  `doodle render --format png` use it.
- matplotlib (`draw_strokes`) when a drawing is one panel of a larger figure (the eval report's
  confused-pairs grid) or must be vector graphics (`--format svg`).

Both fit any coordinate range (raw screen captures and simplified 0..255 alike) into the picture,
keeping the aspect ratio, with y pointing down as in the data.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

Strokes = Sequence[Sequence[Sequence[float]]]
_SUPERSAMPLE = 4


def _points(strokes: Strokes) -> list[np.ndarray]:
    """Each stroke as a float array [n, 2] (a raw stroke's time list is ignored)."""
    return [np.column_stack([np.asarray(s[0], float), np.asarray(s[1], float)]) for s in strokes if len(s[0])]


def _fit(pts: list[np.ndarray], size: int, margin: float) -> list[np.ndarray]:
    """Scale and centre all strokes into a `size` x `size` square, keeping the aspect ratio."""
    if not pts:
        return pts
    allp = np.concatenate(pts)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    span = float((hi - lo).max())
    inner = size * (1 - 2 * margin)
    scale = inner / span if span > 0 else 1.0
    offset = (size - (hi - lo) * scale) / 2 - lo * scale
    return [p * scale + offset for p in pts]


def strokes_to_image(
    strokes: Strokes, size: int = 256, line_width: float = 3.0, margin: float = 0.06,
    color: str = "black", background: str = "white",
):  # fmt: skip
    """One drawing as a Pillow RGB image (`size` x `size`); `line_width` is in output pixels."""
    from PIL import Image, ImageDraw

    big = size * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(img)
    width = max(1, round(line_width * _SUPERSAMPLE))
    for p in _fit(_points(strokes), big, margin):
        xy = [tuple(q) for q in p.tolist()]
        if len(xy) == 1:  # a dot: a filled circle as wide as a line
            (x, y), r = xy[0], width / 2
            draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
        else:
            draw.line(xy, fill=color, width=width, joint="curve")
            for x, y in (xy[0], xy[-1]):  # round caps, which ImageDraw.line lacks
                r = width / 2
                draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def strokes_to_png(strokes: Strokes, size: int = 256, line_width: float = 3.0, margin: float = 0.06) -> bytes:
    """One drawing as PNG bytes (for an HTTP answer or an <img> data URL)."""
    buf = io.BytesIO()
    strokes_to_image(strokes, size=size, line_width=line_width, margin=margin).save(buf, format="PNG")
    return buf.getvalue()


def draw_strokes(ax, strokes: Strokes, color: str = "black", line_width: float = 1.5) -> None:
    """Draw one drawing into a matplotlib Axes: equal aspect, y down, no frame or ticks."""
    from matplotlib.collections import LineCollection

    pts = _points(strokes)
    lines = [p for p in pts if len(p) > 1]
    dots = [p[0] for p in pts if len(p) == 1]
    if lines:
        ax.add_collection(LineCollection(lines, colors=color, linewidths=line_width, capstyle="round",
                                         joinstyle="round"))  # fmt: skip
    if dots:
        d = np.array(dots)
        ax.plot(d[:, 0], d[:, 1], "o", color=color, markersize=line_width * 1.5)
    if pts:
        allp = np.concatenate(pts)
        lo, hi = allp.min(axis=0), allp.max(axis=0)
        half = max(float((hi - lo).max()), 1.0) / 2 * 1.08
        mid = (lo + hi) / 2
        ax.set_xlim(mid[0] - half, mid[0] + half)
        ax.set_ylim(mid[1] + half, mid[1] - half)  # y grows downwards in the data
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def strokes_to_svg(strokes: Strokes, size_inches: float = 3.0, title: str | None = None) -> bytes:
    """One drawing as an SVG document (matplotlib's SVG backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size_inches, size_inches))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.9 if title else 0.96))
    draw_strokes(ax, strokes)
    if title:
        ax.set_title(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of a class name or key_id (no separators, no leading dots)."""
    return _UNSAFE.sub("_", text).strip("._") or "drawing"


def render_file(
    path: str | Path, out_dir: str | Path, key_ids: Iterable[str] | None = None, limit: int | None = None,
    fmt: str = "png", size: int = 256,
) -> tuple[list[Path], list[str]]:  # fmt: skip
    """Render drawings of one data file (any supported format) into `out_dir`.

    With `key_ids`, only those drawings (in file order); otherwise the first `limit` (all when None).
    Returns the written paths and the requested key_ids that were not found.
    """
    from doodle_rnn.data.formats import SkipReport, iter_drawings

    if fmt not in ("png", "svg"):
        raise ValueError(f"unknown picture format {fmt!r}; choose png or svg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wanted = list(dict.fromkeys(key_ids)) if key_ids else None
    pending = set(wanted or ())
    written: list[Path] = []
    for d in iter_drawings(path, strict=False, report=SkipReport()):
        if limit is not None and len(written) >= limit:
            break
        if wanted is not None:
            if d.key_id not in pending:
                continue
            pending.discard(d.key_id)
        target = out / f"{safe_name(d.word)}_{safe_name(d.key_id)}.{fmt}"
        if fmt == "png":
            target.write_bytes(strokes_to_png(d.strokes, size=size))
        else:
            target.write_bytes(strokes_to_svg(d.strokes, title=f"{d.word} ({d.key_id})"))
        written.append(target)
        if wanted is not None and not pending:
            break
    missing = [k for k in (wanted or []) if k in pending]
    return written, missing
