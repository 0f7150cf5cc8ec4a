"""Shared test fixtures. The real Quick, Draw! sample lives beside the project in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"


@pytest.fixture(scope="session")
def quickdraw_dir() -> Path:
    if not (SHARED / "simplified").is_dir():
        pytest.skip("the real Quick, Draw! sample (../shared/data/quickdraw) is absent")
    return SHARED
