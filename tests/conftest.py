"""Shared test helpers: where the shared reference data and media live."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"
MEDIA = SHARED / "media"


def need(path: Path) -> Path:
    """Skip the calling test with a clear reason when shared test data is absent."""
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (tests expect ../shared next to the repo)")
    return path
