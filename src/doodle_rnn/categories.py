"""The 345 official Quick, Draw! categories, presets, and name checking."""

from __future__ import annotations

import difflib
from functools import cache
from importlib import resources

from doodle_rnn.errors import DoodleError

ANIMALS10 = (
    "butterfly", "cow", "elephant", "giraffe", "monkey",
    "octopus", "scorpion", "shark", "snake", "spider",
)  # fmt: skip


@cache
def all_categories() -> tuple[str, ...]:
    text = resources.files("doodle_rnn").joinpath("categories.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


class UnknownClassError(DoodleError):
    pass


def resolve_classes(spec: list[str] | tuple[str, ...] | str | None) -> list[str]:
    """Expand presets (`animals10`, `all`) and check names against the official list.

    Raises UnknownClassError with the nearest official names, so a typo never becomes a 404
    or a path outside the output folder.
    """
    if spec is None:
        return list(ANIMALS10)
    items = [spec] if isinstance(spec, str) else list(spec)
    known = all_categories()
    known_set = set(known)
    out: list[str] = []
    for item in items:
        if item == "animals10":
            out.extend(ANIMALS10)
        elif item == "all":
            out.extend(known)
        elif item in known_set:
            out.append(item)
        else:
            near = difflib.get_close_matches(item, known, n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(near)}?" if near else ""
            raise UnknownClassError(
                f"unknown class {item!r}: not one of the 345 Quick, Draw! categories.{hint} "
                "(presets: animals10, all; names with spaces need quoting, e.g. 'hot dog')"
            )
    return list(dict.fromkeys(out))
