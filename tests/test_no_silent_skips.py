"""A skipped test fails the run unless it is marked `gpu` (tests/conftest.py), so missing data or a
missing tool can never make the suite pass while testing less."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

SUITE = '''
import pytest

def test_runs():
    pass

@pytest.mark.gpu
def test_needs_cuda():
    pytest.skip("no CUDA device")
'''


def run_suite(tmp_path: Path, extra: str = "", **env) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_suite.py").write_text(SUITE + extra)
    environ = {k: v for k, v in os.environ.items() if k != "LATENTSYNC_ALLOW_SKIPS"} | env
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=environ, capture_output=True, text=True)


def test_gpu_only_skips_pass(tmp_path):
    result = run_suite(tmp_path)
    assert result.returncode == 0, result.stdout


def test_any_other_skip_fails_the_run_and_names_the_test(tmp_path):
    extra = '''
def test_needs_data():
    pytest.skip("data folder not found")
'''
    result = run_suite(tmp_path, extra)
    assert result.returncode == 1
    assert "skipped that are not GPU-only" in result.stdout and "test_needs_data" in result.stdout
    assert run_suite(tmp_path, extra, LATENTSYNC_ALLOW_SKIPS="1").returncode == 0
