"""Shipped models: trained checkpoints that come with the package, chosen by name.

`--checkpoint animals10` / `--checkpoint quickdraw` (and `Classifier.load()` with no path) resolve here, so a fresh install
predicts, serves and evaluates offline with a real model. A name is looked up only when no file or
folder of that name exists, so a user's own `animals10` file is never shadowed. Model cards:
docs/models.md. torch-free (the command layer resolves names before importing torch).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from doodle_rnn.errors import DoodleError

# name -> (file inside this package, one line for listings)
SHIPPED: dict[str, tuple[str, str]] = {
    "animals10": (
        "animals10.pt",
        "10 animals, bidirectional GRU with a conv front end, trained on 39,101 real drawings",
    ),
    "quickdraw": (
        "quickdraw.pt",
        "338 Quick, Draw! classes, bidirectional GRU with a conv front end, trained on 1,319,823 real drawings",
    ),
}
DEFAULT_MODEL = "animals10"


class ShippedModelError(DoodleError):
    pass


def shipped_path(name: str) -> Path:
    """The file of a shipped model (ShippedModelError when the name is unknown or the file is missing)."""
    if name not in SHIPPED:
        raise ShippedModelError(f"{name!r} is not a shipped model; shipped: {', '.join(SHIPPED)}")
    path = Path(str(resources.files(__name__).joinpath(SHIPPED[name][0])))
    if not path.is_file():
        raise ShippedModelError(f"shipped model {name!r} is missing from the installation ({path})")
    return path


def resolve_model(spec: str | Path | None) -> Path:
    """A path as given when it exists (or is not a shipped name), else the shipped model of that name.

    None means the default shipped model.
    """
    if spec is None:
        return shipped_path(DEFAULT_MODEL)
    path = Path(spec)
    if path.exists() or str(spec) not in SHIPPED:
        return path
    return shipped_path(str(spec))
