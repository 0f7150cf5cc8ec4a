"""The models one server offers, by name: the one it was started with (the default) and every shipped one.

A model is loaded on first use and stays loaded (a `Classifier` per name); until then only its metadata
(classes, card) is read, and only when a listing asks for it. The default model is loaded when the
server starts, so a bad `--checkpoint` fails at once, and a request for it never waits on a lock.

Names: a shipped model is called by its shipped name (`animals10`); the started model by its card's name,
else its file's stem (`tiny.pt` -> `tiny`). The started model keeps its name when a shipped model has the
same one (a user's own `animals10.pt` is the one they asked for); the same file is offered once.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from doodle_rnn.inference import Classifier, open_model_file
from doodle_rnn.model_files import ModelFile

log = logging.getLogger("doodle_rnn.server")


class UnknownModel(LookupError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"unknown model {name!r}; this server has: {', '.join(known)} (GET /api/models)")


@dataclass
class Entry:
    path: Path
    description: str = ""
    shipped: bool = False
    classifier: Classifier | None = None
    engine: object = None  # what `make_engine` built for the classifier (the server's batcher)
    meta: dict | None = None


def _checkpoints_loadable() -> bool:
    """Whether `.pt` files can be loaded here (torch installed and importable)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # ValueError: torch made unimportable (sys.modules["torch"] = None)
        return False


def shipped_on_disk() -> dict[str, tuple[Path, str]]:
    """name -> (file, description) of every shipped model whose file is present."""
    from doodle_rnn.models import SHIPPED, ShippedModelError, shipped_path

    out = {}
    for name, (_, description) in SHIPPED.items():
        try:
            out[name] = (shipped_path(name), description)
        except ShippedModelError:
            continue  # declared but not installed (a model still being trained, a slim install)
    return out


class ModelRegistry:
    """Name -> model, loaded lazily and cached; `make_engine(classifier)` builds what serves a loaded model
    (an object with `close()`: the server's batcher thread), also on first use."""

    def __init__(self, checkpoint: str | Path | ModelFile, backend: str, make_engine: Callable[[Classifier], object],
                 shipped: bool = True):  # fmt: skip
        self.backend = backend
        self._make_engine = make_engine
        model = checkpoint if isinstance(checkpoint, ModelFile) else open_model_file(checkpoint)
        clf = Classifier.from_model(model, backend)
        path = model.path
        self.default = clf.name or path.stem
        self._entries: dict[str, Entry] = {self.default: Entry(path, classifier=clf)}
        self._lock = threading.Lock()
        if not shipped:
            return
        for name, (file, description) in shipped_on_disk().items():
            if file.resolve() == path.resolve():
                self._entries[self.default] = Entry(path, description, True, clf)
            elif name in self._entries:
                log.warning("shipped model %r is not offered: the started model has that name", name)
            elif file.suffix == ".pt" and not _checkpoints_loadable():
                continue
            else:
                self._entries[name] = Entry(file, description, True)

    @property
    def names(self) -> list[str]:
        """The default first, then the shipped models in their declared order."""
        return list(self._entries)

    def _get(self, name: str | None) -> Entry:
        e = self._entries.get(self.default if name is None else name)
        if e is None:
            raise UnknownModel(str(name), self.names)
        return e

    def ready(self, name: str | None) -> Entry | None:
        """The model called `name` (None: the default) if it is loaded and serving, else None (no lock)."""
        e = self._get(name)
        return e if e.engine is not None else None

    def entry(self, name: str | None) -> Entry:
        """The model called `name` (None: the default), loaded (UnknownModel when there is none)."""
        e = self._get(name)
        if e.engine is None:
            with self._lock:  # one load per model, however many requests ask at once
                if e.classifier is None:
                    e.classifier = Classifier.from_model(open_model_file(e.path), self.backend)
                    log.info("loaded model %r from %s", name, e.path)
                if e.engine is None:
                    e.engine = self._make_engine(e.classifier)
        return e

    def metadata(self, name: str | None) -> dict:
        """Classes and card of a model, read from its file without loading it (cached)."""
        e = self._get(name)
        if e.classifier is not None:
            return {"classes": e.classifier.classes, "card": e.classifier.info["card"]}
        if e.meta is None:
            e.meta = _read_metadata(e.path)
        return e.meta

    def summary(self, name: str) -> dict:
        """One line of GET /api/models: name, class count, the card's test figures and threshold."""
        e, meta = self._entries[name], self.metadata(name)
        card = meta.get("card") or {}
        test = card.get("test") if isinstance(card.get("test"), dict) else {}
        summary = {k: test[k] for k in ("top1", "top3", "n_drawings", "data") if k in test}
        if "announce_threshold" in card:
            summary["announce_threshold"] = card["announce_threshold"]
        return {"name": name, "default": name == self.default, "classes": len(meta["classes"]),
                "shipped": e.shipped, "description": e.description, "loaded": e.classifier is not None,
                "test": summary}  # fmt: skip

    def close(self) -> None:
        """Stop every engine (`close()`); a later use starts a new one."""
        with self._lock:
            for e in self._entries.values():
                if e.engine is not None:
                    e.engine.close()
                    e.engine = None


def _read_metadata(path: Path) -> dict:
    meta = open_model_file(path).meta
    return {"classes": list(meta["classes"]), "card": dict(meta.get("card") or {})}
