"""A deterministic generator of labelled stroke drawings, for tests and benchmarks at scale.

Eight shape classes drawn with hand-like noise (wobble, uneven scale and aspect, rotation), varied stroke
order, direction and counts. Coordinates come out in simplified form (integers 0..255, sparse vertices),
so the fast path of `doodle prepare` is measured. Anything measured on this data must say "synthetic".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson

from doodle_rnn.data.drawing import Drawing

SHAPES = ("circle", "square", "triangle", "star", "zigzag", "spiral", "cross", "house")


def _poly(rng: np.random.Generator, shape: str) -> list[np.ndarray]:
    """Strokes of one shape as float arrays [n, 2] in a unit-ish frame."""
    t = np.linspace(0, 2 * np.pi, rng.integers(14, 30))
    if shape == "circle":
        return [np.c_[np.cos(t), np.sin(t)]]
    if shape == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], float)
        if rng.random() < 0.4:  # drawn as two strokes
            return [pts[:3], pts[2:]]
        return [pts]
    if shape == "triangle":
        return [np.array([[0, -1], [1, 1], [-1, 1], [0, -1]], float)]
    if shape == "star":
        a = np.pi / 2 + np.arange(6) * 4 * np.pi / 5
        return [np.c_[np.cos(a), -np.sin(a)]]
    if shape == "zigzag":
        k = rng.integers(4, 8)
        xs = np.linspace(-1, 1, k)
        ys = np.where(np.arange(k) % 2 == 0, -0.5, 0.5)
        return [np.c_[xs, ys]]
    if shape == "spiral":
        s = np.linspace(0, 4 * np.pi, rng.integers(25, 45))
        r = s / (4 * np.pi)
        return [np.c_[r * np.cos(s), r * np.sin(s)]]
    if shape == "cross":
        strokes = [np.array([[-1, 0], [1, 0]], float), np.array([[0, -1], [0, 1]], float)]
        return strokes if rng.random() < 0.5 else strokes[::-1]
    if shape == "house":
        body = np.array([[-1, 0], [-1, 1], [1, 1], [1, 0], [-1, 0]], float)
        roof = np.array([[-1, 0], [0, -1], [1, 0]], float)
        return [body, roof] if rng.random() < 0.5 else [roof, body]
    raise ValueError(f"unknown shape {shape!r}")


def _densify(p: np.ndarray, step: float) -> np.ndarray:
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    cum = np.r_[0, np.cumsum(seg)]
    n = max(int(cum[-1] / step), 1) + 1
    s = np.linspace(0, cum[-1], n)
    return np.c_[np.interp(s, cum, p[:, 0]), np.interp(s, cum, p[:, 1])]


def make_drawing(rng: np.random.Generator, shape: str) -> list[list[list[int]]]:
    strokes = _poly(rng, shape)
    theta = rng.normal(0, 0.15)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    scale = np.array([rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)])
    out = []
    for s in strokes:
        if rng.random() < 0.3:
            s = s[::-1]
        p = _densify(s, rng.uniform(0.12, 0.25))
        p = p + rng.normal(0, 0.03, p.shape)  # hand wobble
        out.append((p * scale) @ rot.T)
    allp = np.concatenate(out)
    lo = allp.min(axis=0)
    span = max(float((allp.max(axis=0) - lo).max()), 1e-6)
    return [
        [
            np.rint((p[:, 0] - lo[0]) / span * 255).astype(int).tolist(),
            np.rint((p[:, 1] - lo[1]) / span * 255).astype(int).tolist(),
        ]
        for p in out
    ]


def generate(n: int, seed: int = 0, shapes: tuple[str, ...] = SHAPES) -> Iterator[Drawing]:
    """`n` drawings cycling through `shapes`; the same (n, seed) always gives the same drawings."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = shapes[i % len(shapes)]
        yield Drawing(
            word=shape, key_id=f"syn-{seed}-{i}", strokes=make_drawing(rng, shape), countrycode="ZZ"
        )


def write_ndjson_per_class(
    out_dir: Path, n: int, seed: int = 0, shapes: tuple[str, ...] = SHAPES
) -> list[Path]:
    """Write `<shape>.ndjson` files in the official simplified layout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[bytes]] = {s: [] for s in shapes}
    for d in generate(n, seed, shapes):
        lines[d.word].append(orjson.dumps(d.to_ndjson_dict()) + b"\n")
    for s in shapes:
        (out_dir / f"{s}.ndjson").write_bytes(b"".join(lines[s]))
    return [out_dir / f"{s}.ndjson" for s in shapes]
