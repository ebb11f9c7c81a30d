"""Shared test helpers: where the test media (assets/) and reference fixtures (tests/fixtures/) live."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO / "assets"                  # demo clips, also used by the README and the Gradio examples
REFERENCE = REPO / "tests" / "fixtures"  # reference-implementation fixtures and checkpoint manifests


def need(*paths: Path) -> Path:
    """Return the (first) path; fail loudly when test data that ships with the repo is missing."""
    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"test data missing from the repository: {path}")
    return paths[0]
