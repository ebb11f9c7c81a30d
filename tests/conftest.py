"""Shared test helpers: where the test media (assets/) and reference fixtures (tests/fixtures/) live."""

import os
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


# -- no silent skips ---------------------------------------------------------------------------
# A skipped test is a test that did not run. Only tests that need a GPU (marked `gpu`) may skip;
# any other skip fails the run, so missing data or a missing tool can never pass unnoticed.
# Set LATENTSYNC_ALLOW_SKIPS=1 to turn this off on a machine that lacks, say, Chromium.
ALLOW_SKIPS_ENV = "LATENTSYNC_ALLOW_SKIPS"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; the only tests allowed to skip")


def _unexpected_skips(reporter) -> list:
    skipped = reporter.stats.get("skipped", []) if reporter else []
    return [r for r in skipped if "gpu" not in getattr(r, "keywords", {})]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bad = _unexpected_skips(terminalreporter)
    if bad and not os.environ.get(ALLOW_SKIPS_ENV):
        terminalreporter.write_line(f"FAILED: {len(bad)} test(s) skipped that are not GPU-only "
                                    f"(set {ALLOW_SKIPS_ENV}=1 to allow):", red=True)
        for report in bad:
            terminalreporter.write_line(f"  {report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr}")


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if exitstatus == 0 and _unexpected_skips(reporter) and not os.environ.get(ALLOW_SKIPS_ENV):
        session.exitstatus = 1
