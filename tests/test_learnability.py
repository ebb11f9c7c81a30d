"""SLOW (several minutes, marked `slow`): the quick learnability benchmark (issue 10) trains the
VAE, the SyncNet and the UNet (stages 1 and 2) on a synthetic corpus with known mouth tracks and
must show that they learn lip sync: held-out SyncNet accuracy >= 0.75 and dubs whose measured
mouth opening follows the new speech at least 0.3 better (Pearson r) than the zeroed-audio control.
Deselect with `-m "not slow"`.
"""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

SUMMARY_KEYS = ("syncnet_heldout_accuracy", "dub_mouth_correlation", "zero_audio_mouth_correlation",
                "other_audio_mouth_correlation", "input_mouth_correlation", "dub_lse_c", "truth_lse_c",
                "dub_mouth_ssim", "minutes", "peak_rss_gb")


def run_benchmark(work_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.learnability", "--work_dir", str(work_dir), "--quick"],
                          cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("learnability")
    return work, run_benchmark(work)


def test_quick_run_learns_lip_sync(quick_run):
    work, result = quick_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((work / "report" / "summary.json").read_text())
    assert all(key in summary for key in SUMMARY_KEYS)
    assert summary["syncnet_heldout_accuracy"] >= 0.75
    assert summary["dub_mouth_correlation"] >= summary["zero_audio_mouth_correlation"] + 0.3
    # the truth rendering is measured with the same landmarks: it must follow its own track
    assert summary["truth_mouth_correlation"] > 0.7
    for name in ("learnability.md", "losses.png", "clips.png", "opening.png"):
        assert (work / "report" / name).stat().st_size > 0


def test_rerun_skips_finished_steps_and_redoes_removed_ones(quick_run):
    work, first = quick_run
    assert first.returncode == 0
    steps = json.loads((work / "steps.json").read_text())
    del steps["score"]
    (work / "steps.json").write_text(json.dumps(steps))
    scores = sorted((work / "dubs").glob("*/scores.json"))
    scores[0].unlink()
    again = run_benchmark(work)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("skipped") == len(steps)  # every recorded step, nothing retrained
    assert "[11/11] score ..." in again.stdout
    assert scores[0].exists()
