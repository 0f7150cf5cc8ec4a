"""`doodle export --web DIR`: the drawing page as a static site that recognises in the browser, no server.

What DIR holds (everything a visitor's browser asks for; no request leaves the site):

    index.html, static/        the page `doodle serve` serves, the same files (server/static/), plus
                               doodle.js, the in-page recogniser the page uses when it finds models.json
    static/ort/                ONNX Runtime Web's single-threaded wasm build (ort.wasm.min.js + .wasm)
                               and its licence; only what a wasm session needs, not WebGPU/WebGL
    models/NAME.onnx           each model's graph, weights stored as float16 (`export.half_weights`)
    models/NAME.json           its card for doodle.js: classes, encoding, length rules, temperature, card
    models.json                the models the page offers (as GET /api/models answers), default first

Why this shape: `doodle serve` and this site ship one page, so there is no second page to drift; the page
asks the server's API unless models.json is there, and then answers the same questions in the page.
ONNX Runtime Web comes from the npm registry (package.json pins it; scripts/install.sh runs `npm ci`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from doodle_rnn.errors import DoodleError
from doodle_rnn.model_files import ModelFile, open_model

SITE_FORMAT = "doodle-rnn-web"
PRECISIONS = ("fp16", "fp32")
# ONNX Runtime Web's files the page loads, and their names in the site: the bundle has the wasm loader
# built in; `.js` rather than `.mjs` so that any file server sends it as JavaScript.
ORT_FILES = {"ort.wasm.bundle.min.mjs": "ort.wasm.min.js", "ort-wasm-simd-threaded.wasm": None}
ORT_LICENSE = "onnxruntime-web.LICENSE.txt"  # onnxruntime's MIT licence (the npm package carries none)


class WebExportError(DoodleError):
    pass


def ort_dist(folder: str | Path | None = None) -> Path:
    """onnxruntime-web's `dist` folder: given, else the one scripts/install.sh put in the project."""
    if folder is None:
        folder = Path(__file__).resolve().parents[2] / "node_modules" / "onnxruntime-web" / "dist"
    folder = Path(folder)
    missing = [name for name in ORT_FILES if not (folder / name).is_file()]
    if missing:
        raise WebExportError(
            f"ONNX Runtime Web is not installed ({folder / missing[0]} is missing): run `bash "
            "scripts/install.sh` in the project folder (it runs `npm ci`; needs Node.js and npm), "
            "or pass --ort-dir with onnxruntime-web's dist folder"
        )
    return folder


def ort_version(dist: Path) -> str:
    meta = json.loads((dist.parent / "package.json").read_text())
    if meta.get("license") != "MIT":
        raise WebExportError(
            f"{dist.parent}: expected onnxruntime-web under the MIT licence, got {meta.get('license')}"
        )
    return str(meta["version"])


def export_site(
    out: str | Path, specs: Sequence[str | Path], precision: str = "fp16", ort_dir: str | Path | None = None
) -> dict:
    """Write the static site to `out` (see the module docstring); the first model is the default.

    `out` is replaced only if it is empty or an earlier export (it holds models.json); the site is built
    in a temporary folder beside it and moved into place, so a failure leaves nothing half-written.
    Returns what was written: files, bytes, and per model its size and the largest probability change
    that float16 weights made on the check drawings.
    """
    if precision not in PRECISIONS:
        raise WebExportError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    out = Path(out)
    _check_target(out)
    models = [open_model(s) for s in specs]  # resolved and read once; every error before any writing
    dist = ort_dist(ort_dir)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise WebExportError(f"two models share a name ({', '.join(names)}); a site offers each name once")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _copy_page(tmp)
        version = _copy_runtime(dist, tmp / "static" / "ort")
        rows = [_write_model(m, tmp / "models", precision) for m in models]
        listing = {"format": SITE_FORMAT, "default": names[0], "runtime": f"onnxruntime-web {version}",
                   "models": [r["listing"] for r in rows]}  # fmt: skip
        (tmp / "models.json").write_text(json.dumps(listing, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = [p for p in out.rglob("*") if p.is_file()]
    return {
        "dir": str(out),
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "runtime": f"onnxruntime-web {version}",
        "models": [r["report"] for r in rows],
    }


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise WebExportError(f"--web {out}: is a file; give a folder to write the site to")
    if out.is_dir() and any(out.iterdir()) and not (out / "models.json").is_file():
        raise WebExportError(
            f"--web {out}: the folder is not empty and is not an earlier `doodle export --web`; "
            "give an empty or new folder"
        )


def _copy_page(site: Path) -> None:
    static = Path(str(resources.files("doodle_rnn.server").joinpath("static")))
    shutil.copytree(static, site / "static", ignore=shutil.ignore_patterns("index.html"))
    shutil.copy2(static / "index.html", site / "index.html")


def _copy_runtime(dist: Path, to: Path) -> str:
    version = ort_version(dist)
    to.mkdir(parents=True)
    for name, renamed in ORT_FILES.items():
        shutil.copy2(dist / name, to / (renamed or name))
    licence = Path(str(resources.files("doodle_rnn").joinpath("licenses", ORT_LICENSE)))
    shutil.copy2(licence, to / "LICENSE.txt")
    return version


def _write_model(model: ModelFile, folder: Path, precision: str) -> dict:
    import onnx

    from doodle_rnn.export import half_weights

    folder.mkdir(exist_ok=True)
    graph = onnx.load_model_from_string(model.onnx_bytes())
    written = half_weights(graph) if precision == "fp16" else graph
    data = written.SerializeToString()
    file = folder / f"{model.name}.onnx"
    file.write_bytes(data)
    card = {**model.meta, "name": model.name, "file": file.name,
            "quantization": "fp16-weights" if precision == "fp16" else "none"}  # fmt: skip
    (folder / f"{model.name}.json").write_text(json.dumps(card))
    meta_card = model.meta.get("card") or {}
    test = meta_card.get("test") if isinstance(meta_card.get("test"), dict) else {}
    shipped = _shipped_descriptions().get(model.path.resolve())
    listing = {
        "name": model.name,
        "file": f"models/{file.name}",
        "classes": len(model.meta["classes"]),
        "shipped": shipped is not None,
        "description": shipped or "",
        "loaded": False,
        "test": {k: test[k] for k in ("top1", "top3", "n_drawings", "data") if k in test},
    }
    if "announce_threshold" in meta_card:
        listing["test"]["announce_threshold"] = meta_card["announce_threshold"]
    report = {"name": model.name, "bytes": len(data), "precision": precision,
              "max_abs_prob_diff_vs_fp32": _prob_change(graph, written, model.meta)}  # fmt: skip
    return {"listing": listing, "report": report}


def _shipped_descriptions() -> dict[Path, str]:
    """file -> one-line description of every installed shipped model (as GET /api/models lists them)."""
    from doodle_rnn.server.models import shipped_on_disk

    return {path.resolve(): description for path, description in shipped_on_disk().values()}


def _prob_change(reference, written, meta: dict, n: int = 64) -> float:
    """Largest |probability difference| between two graphs on synthetic drawings of mixed lengths."""
    if reference is written:
        return 0.0
    import onnxruntime as ort

    from doodle_rnn.data.encode import LengthRules, encode_batch, pad_steps
    from doodle_rnn.data.synthetic import generate
    from doodle_rnn.probs import softmax

    steps, lengths, _ = encode_batch(
        [d.strokes for d in generate(n, seed=3)], meta["encoding"], LengthRules(1)
    )
    x, lens = pad_steps(steps, lengths)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    probs = []
    for g in (reference, written):
        sess = ort.InferenceSession(g.SerializeToString(), so, providers=["CPUExecutionProvider"])
        probs.append(
            softmax(sess.run(["logits"], {"x": x, "lengths": lens})[0], meta.get("temperature", 1.0))
        )
    return float(np.abs(probs[0] - probs[1]).max())
