"""Small helpers for the words of user-facing messages (torch-free, import-light)."""

from __future__ import annotations


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 class`, `2 classes`, `1,000 drawings`: the count with the right form of the noun."""
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def some(names: list[str], k: int = 5) -> str:
    """At most `k` names and how many more: `cat, cow, dog and 332 more`."""
    head = ", ".join(names[:k])
    return head + (f" and {len(names) - k} more" if len(names) > k else "")
