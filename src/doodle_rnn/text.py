"""Small helpers for the words of user-facing messages (torch-free, import-light)."""

from __future__ import annotations

from pathlib import Path


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 class`, `2 classes`, `1,000 drawings`: the count with the right form of the noun."""
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def some(names: list[str], k: int = 5) -> str:
    """At most `k` names and how many more: `cat, cow, dog and 332 more`."""
    head = ", ".join(names[:k])
    return head + (f" and {len(names) - k} more" if len(names) > k else "")


def missing_model_message(path: str | Path, what: str = "checkpoint") -> str:
    """Why `path` is no model file, with the likely right path: a run folder points to its best.pt."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".pt", ".onnx") and p.is_file())
        best = [n for n in ("best.pt", "calibrated.pt", "model.onnx") if n in found] or found
        if best:
            also = f" (it also holds {', '.join(n for n in found if n != best[0])})" if len(found) > 1 else ""
            return f"{path} is a folder, not a {what} file; did you mean {path / best[0]}?{also}"
        return (
            f"{path} is a folder that holds no .pt or .onnx file; give a {what} file such as RUN_DIR/best.pt"
        )
    return f"{path}: {what} not found"
