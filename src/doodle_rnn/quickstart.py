"""`doodle quickstart`: data -> prepare -> train -> evaluate -> serve, in one command.

The data are the real drawings bundled with the package (`doodle_rnn/bundled/animals10`, 4,000 of each
of the 10 animals), so the main job runs offline right after install; `--download` fetches the
official files instead (or `--data-dir` reads local ones).

Each step records a stamp (`WORKDIR/.stamps/<step>.json`: the parameters it ran with) only after its
outputs are complete, so a re-run skips exactly the steps that already finished with the same
parameters and redoes anything half-written (an interrupted training resumes from its last.pt).
Every step calls the same library function as its own `doodle` command: nothing here is a second copy.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from doodle_rnn.config import TrainConfig
from doodle_rnn.errors import DoodleError

# The shipped model's recipe (docs/models.md) without prefix training, for 5 epochs with a one-cycle
# schedule, so the whole job fits in a quarter of an hour on a 2-core CPU (8 epochs took ~2.4 min each
# on this project's 2-core box: ~21 min in all; measured figures: README, "Set-up").
QUICKSTART_ENCODING = "stroke3"
QUICKSTART_EPOCHS = 5
QUICKSTART_CONV = (64, 96)
BUNDLED = "animals10"


class QuickstartError(DoodleError):
    pass


@dataclass
class QuickstartConfig:
    workdir: str = "runs/quickstart"
    classes: list[str] = field(default_factory=lambda: ["animals10"])
    max_per_class: int | None = 5000
    data_dir: str | None = None
    download: bool = False
    base_url: str | None = None
    encoding: str = QUICKSTART_ENCODING
    epochs: int = QUICKSTART_EPOCHS
    batch_size: int = TrainConfig.batch_size
    hidden_size: int = TrainConfig.hidden_size
    num_layers: int = TrainConfig.num_layers
    max_steps: int | None = None
    patience: int = TrainConfig.patience
    device: str = TrainConfig.device
    seed: int = TrainConfig.seed
    jobs: int = 2
    serve: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    progress: bool = True
    prefix_prob: float = 0.0


def bundled_data_dir() -> Path:
    """The real drawings that ship with the package (README beside them: source, licence)."""
    from importlib import resources

    return Path(str(resources.files("doodle_rnn").joinpath("bundled", BUNDLED, "simplified")))


def bundled_classes() -> list[str]:
    return sorted(p.name.split(".")[0] for p in bundled_data_dir().glob("*.ndjson.gz"))


def _say(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


class _Stamps:
    def __init__(self, workdir: Path):
        self.dir = workdir / ".stamps"
        self.dir.mkdir(parents=True, exist_ok=True)

    def done(self, step: str, params: dict, *outputs: Path) -> bool:
        p = self.dir / f"{step}.json"
        if not p.is_file() or not all(o.exists() for o in outputs):
            return False
        try:
            return json.loads(p.read_text()) == json.loads(json.dumps(params))
        except json.JSONDecodeError:
            return False

    def mark(self, step: str, params: dict) -> None:
        tmp = self.dir / f".{step}.json.tmp"
        tmp.write_text(json.dumps(params, indent=2))
        tmp.replace(self.dir / f"{step}.json")

    def clear(self, step: str) -> None:
        (self.dir / f"{step}.json").unlink(missing_ok=True)


def _file_identity(paths: list[Path]) -> list[list]:
    return [[str(p), p.stat().st_size, int(p.stat().st_mtime)] for p in paths]


def run_quickstart(cfg: QuickstartConfig) -> dict:
    """Run every step (skipping the complete ones); returns the paths of everything produced."""
    from doodle_rnn.categories import resolve_classes

    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    stamps = _Stamps(work)
    classes = resolve_classes(cfg.classes)
    out: dict = {"workdir": str(work)}

    # 1. data
    if cfg.data_dir:
        data_dir = Path(cfg.data_dir)
        if not data_dir.is_dir():
            raise QuickstartError(f"--data-dir {data_dir}: no such folder")
        _say(f"1/4 data: using local files in {data_dir}")
    elif not (cfg.download or cfg.base_url):
        data_dir = bundled_data_dir()
        missing = sorted(set(classes) - set(bundled_classes()))
        if missing:
            raise QuickstartError(
                f"the bundled drawings cover the 10 animals only, not {', '.join(missing)}: add --download "
                "(with --base-url for a mirror) or --data-dir for local files"
            )
        _say(f"1/4 data: the bundled real drawings ({len(classes)} classes, CC BY 4.0) in {data_dir}")
    else:
        from doodle_rnn.data.sources import DEFAULT_BASE_URL, download_classes

        data_dir = work / "data" / "simplified"
        base = cfg.base_url or DEFAULT_BASE_URL
        cap = f"first {cfg.max_per_class} drawings" if cfg.max_per_class else "all drawings"
        _say(f"1/4 data: downloading {len(classes)} classes ({cap} each) from {base} into {data_dir}")
        rep = download_classes(classes, data_dir, "simplified", base, cfg.max_per_class, jobs=4,
                               progress=cfg.progress)  # fmt: skip
        if not rep.ok:
            raise QuickstartError(
                "download failed for: " + ", ".join(r.word for r in rep.failed) + "\n" + rep.summary()
            )
    out["data"] = str(data_dir)

    # 2. prepare
    from doodle_rnn.data.cache import PrepareConfig, prepare_cache
    from doodle_rnn.data.formats import list_data_files

    cache = work / "cache"
    files = [f for f in list_data_files([data_dir]) if f.name.split(".")[0] in set(classes)]
    if not files:
        raise QuickstartError(f"{data_dir}: no files for the requested classes ({', '.join(classes)})")
    p_params = {"files": _file_identity(files), "classes": classes, "max_per_class": cfg.max_per_class,
                "encoding": cfg.encoding, "seed": cfg.seed}  # fmt: skip
    if stamps.done("prepare", p_params, cache / "manifest.json"):
        _say(f"2/4 prepare: {cache} is complete, skipped")
    else:
        stamps.clear("train")
        _say(f"2/4 prepare: {len(files)} files -> {cache}")
        m = prepare_cache(PrepareConfig(inputs=[str(f) for f in files], out=str(cache), classes=classes,
                                        max_per_class=cfg.max_per_class, encoding=cfg.encoding, seed=cfg.seed,
                                        jobs=cfg.jobs, progress=cfg.progress))  # fmt: skip
        sc = m["split_counts"]
        _say(f"    {m['n_drawings']} drawings (train {sc['train']}, val {sc['val']}, test {sc['test']})")
        stamps.mark("prepare", p_params)
    out["cache"] = str(cache)

    # 3. train
    from doodle_rnn.train import TrainConfig, train

    run_dir = work / "run"
    manifest = json.loads((cache / "manifest.json").read_text())
    t_params = {"cache": manifest["created"], "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers, "max_steps": cfg.max_steps,
                "patience": cfg.patience, "seed": cfg.seed, "prefix_prob": cfg.prefix_prob}  # fmt: skip
    best = run_dir / "best.pt"
    if stamps.done("train", t_params, best):
        _say(f"3/4 train: {best} is complete, skipped")
    else:
        stamps.clear("eval")
        old = run_dir / "config.json"
        resume = (run_dir / "last.pt").is_file() and old.is_file() and _same_training(old, t_params)
        if not resume and run_dir.exists():
            for f in ("best.pt", "last.pt", "metrics.jsonl", "config.json"):
                (run_dir / f).unlink(missing_ok=True)
        _say(
            f"3/4 train: {'resuming' if resume else 'training'} in {run_dir} (the shipped model's recipe, {cfg.epochs} epochs)"
        )
        train(TrainConfig(data=str(cache), out=str(run_dir), epochs=cfg.epochs, batch_size=cfg.batch_size,
                          hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, max_steps=cfg.max_steps,
                          patience=cfg.patience, device=cfg.device, seed=cfg.seed, resume=resume,
                          scheduler="onecycle", conv_channels=QUICKSTART_CONV,
                          prefix_prob=cfg.prefix_prob if cfg.encoding == "stroke3" else 0.0))  # fmt: skip
        stamps.mark("train", t_params)
    out["checkpoint"] = str(best)

    # 4. evaluate
    from doodle_rnn.evaluate import run_evaluation

    eval_dir = work / "eval"
    e_params = {"checkpoint": _file_identity([best]), "cache": manifest["created"]}
    if stamps.done("eval", e_params, eval_dir / "summary.json", eval_dir / "report.html"):
        _say(f"4/4 evaluate: {eval_dir} is complete, skipped")
        summary = json.loads((eval_dir / "summary.json").read_text())
    else:
        _say(f"4/4 evaluate: test split -> {eval_dir}")
        summary = run_evaluation(
            best, [cache], eval_dir, split="test", device=cfg.device, progress=cfg.progress
        )
        stamps.mark("eval", e_params)
    m = summary["metrics"]
    _say(f"    test top-1 {m['top1']:.4f}, top-3 {m['top3']:.4f} on {summary['n_drawings']} drawings")
    out.update(eval=str(eval_dir), report=str(eval_dir / "report.html"), top1=m["top1"], top3=m["top3"])
    _say("done. Outputs:")
    for k in ("data", "cache", "checkpoint", "report"):
        _say(f"    {k:<10} {out[k]}")
    return out


def _same_training(config_json: Path, t_params: dict) -> bool:
    try:
        old = json.loads(config_json.read_text())
    except json.JSONDecodeError:
        return False
    keys = ("epochs", "batch_size", "hidden_size", "num_layers", "seed")
    return all(old.get(k) == t_params[k] for k in keys)


def serve(checkpoint: str, host: str, port: int) -> None:
    import uvicorn

    from doodle_rnn.server.app import create_app

    app = create_app(checkpoint)
    _say(f"serving the drawing page at http://{host}:{port}/ (Ctrl-C to stop)")
    sys.stdout.flush()
    uvicorn.run(app, host=host, port=port, log_level="warning")
