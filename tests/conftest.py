"""Shared test fixtures. The real Quick, Draw! sample lives beside the project in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so CI is reproducible: a random search once
# found a true counter-example only on CI (a backtracking stroke; now pinned in test_normalize).
# For a deeper random search run: HYPOTHESIS_PROFILE=explore python -m pytest tests -k <test>
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"


@pytest.fixture(scope="session")
def quickdraw_dir() -> Path:
    if not (SHARED / "simplified").is_dir():
        pytest.skip("the real Quick, Draw! sample (../shared/data/quickdraw) is absent")
    return SHARED
