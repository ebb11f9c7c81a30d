"""The learnability benchmark's parts, and the quick benchmark run (docs/benchmarks/learnability.md;
about 7 minutes on the 2-core CI machine): it trains the VAE, the SyncNet and the UNet (stages 1 and 2) on a
synthetic corpus with known mouth tracks and must show that they learn lip sync: the held-out SyncNet
accuracy and the margin by which the dubs' measured mouth opening follows the new speech better
(Pearson r) than the zeroed-audio control reach the benchmark's own QUICK_TARGETS. The run is judged
by what it writes (report/summary.json, steps.json), not by what it prints.
"""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks.learnability_parts import scoring
from benchmarks.learnability_parts.dubbing import EXCERPT_LEAD_FRAMES, dub_pairs, speech_start
from benchmarks.learnability_parts.report import MOUTH_METRICS, QUICK_TARGETS, check_targets
from benchmarks.learnability_parts.steps import PARTIAL_KEY, STEPS_FILE, Steps, StepFailed, run_module
from conftest import REPO
from latentsync.eval.mouth import correlation

SUMMARY_KEYS = ("syncnet_heldout_accuracy", "dub_mouth_correlation", "zero_audio_mouth_correlation",
                "other_audio_mouth_correlation", "input_mouth_correlation", "dub_lse_c", "truth_lse_c",
                "dub_mouth_ssim", "minutes", "peak_rss_gb", "seed", "whisper",
                *(f"{v}_{m}" for v in ("dub", "zero_audio", "other_audio", "input") for m in MOUTH_METRICS))


def run_benchmark(work_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.learnability", "--work_dir", str(work_dir), "--quick"],
                          cwd=REPO, capture_output=True, text=True)


def test_steps_are_recorded_skipped_and_keep_interrupted_time(tmp_path):
    calls = []
    steps = Steps(tmp_path, total=2)
    assert steps.run("a", lambda: calls.append("a") or {"x": 1}) == {"x": 1}

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        steps.run("b", interrupted)
    again = Steps(tmp_path, total=2)
    assert again.run("a", lambda: calls.append("a again")) == {"x": 1}  # recorded: not run again
    assert "b" in again.partial and "b" not in again.done
    again.run("b", lambda: calls.append("b"))
    assert calls == ["a", "b"]
    assert again.done["b"]["seconds"] >= 0 and again.done["b"]["peak_rss_kb"] > 0
    assert "_interrupted" in json.loads((tmp_path / "steps.json").read_text())


def timeit_child(tmp_path, name: str, *statements: str):
    """A step action running `python -m timeit` once on `statements` as a child process."""
    return lambda: run_module("timeit", ["-n", "1", "-r", "1", "-s", "import time", *statements],
                              tmp_path / f"{name}.log", 1) or {}


def test_side_by_side_chains_count_once_and_measure_their_own_children(tmp_path):
    steps = Steps(tmp_path, total=3, jobs=2)
    busy = timeit_child(tmp_path, "a", "t = time.process_time()", "while time.process_time() - t < 0.5: pass")
    steps.parallel("g", lambda: steps.run("a", busy),
                   lambda: (steps.run("b", lambda: time.sleep(0.5) or {}),
                            steps.run("c", timeit_child(tmp_path, "c", "pass"))))
    assert {n: steps.done[n]["chain"] for n in "abc"} == {"a": "g/0", "b": "g/1", "c": "g/1"}
    assert steps.done["a"]["cpu_seconds"] >= 0.5  # its child's CPU ...
    assert steps.done["b"]["cpu_seconds"] < 0.3  # ... not counted for the step beside it
    chain_1 = steps.done["b"]["seconds"] + steps.done["c"]["seconds"]
    assert steps.total_seconds() == pytest.approx(max(steps.done["a"]["seconds"], chain_1), abs=0.11)
    assert steps.total_seconds() < sum(e["seconds"] for e in steps.done.values())


def test_a_failing_chain_stops_the_other_chains_child_and_is_raised(tmp_path):
    steps = Steps(tmp_path, total=2, jobs=2)
    started = time.time()

    def fail():
        time.sleep(1.0)
        raise StepFailed("chain 1 broke")

    with pytest.raises(StepFailed, match="chain 1 broke"):
        steps.parallel("g", lambda: steps.run("slow", timeit_child(tmp_path, "slow", "time.sleep(60)")),
                       lambda: steps.run("bad", fail))
    assert time.time() - started < 30  # the sleeping child was stopped, not waited for
    assert set(steps.partial) == {"slow", "bad"} and not steps.done


def test_one_job_runs_the_chains_one_after_the_other(tmp_path):
    order = []
    steps = Steps(tmp_path, total=2, jobs=1)
    steps.parallel("g", lambda: steps.run("a", lambda: order.append("a") or time.sleep(0.2)),
                   lambda: steps.run("b", lambda: order.append("b")))
    assert order == ["a", "b"] and "chain" not in steps.done["a"]
    assert steps.total_seconds() == pytest.approx(steps.done["a"]["seconds"] + steps.done["b"]["seconds"])


def test_correlation_ignores_missing_faces_and_constant_series():
    truth = np.sin(np.linspace(0, 6, 50))
    measured = truth * 2 + 1
    measured[[3, 7]] = np.nan
    assert correlation(measured, truth) == pytest.approx(1.0)
    assert correlation(-measured, truth) == pytest.approx(-1.0)
    assert correlation(np.ones(50), truth) == 0.0


def test_dub_pairs_use_three_different_heldout_sentences():
    rows = [dict(clip=f"heldout/c{i}.mp4", split="heldout") for i in range(4)]
    rows.append(dict(clip="train/t.mp4", split="train"))
    pairs = dub_pairs(rows, max_dubs=10)
    assert len(pairs) == 4
    assert all(len({a["clip"], b["clip"], c["clip"]}) == 3 and a["split"] == "heldout" for a, b, c in pairs)
    with pytest.raises(ValueError):
        dub_pairs(rows[:2], max_dubs=10)


def test_an_excerpt_skips_the_new_sentences_leading_silence_and_a_whole_clip_does_not():
    track = np.zeros(60)
    track[12:30] = 0.6  # closed for 12 frames (leading silence), then speech
    assert speech_start(track, 0) == 0  # whole-clip dub: the new speech from its start
    assert speech_start(track, 48) == 12 - EXCERPT_LEAD_FRAMES
    track[1:4] = 0.3  # opens almost at once: the excerpt starts at the sentence's first frame
    assert speech_start(track, 48) == 0
    assert speech_start(np.zeros(60), 48) == 0  # never opens (silence): from the start


def test_mouth_similarity_is_perfect_for_identical_frames_and_lower_otherwise():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    boxes = [(10, 10, 40, 40)] * 3
    same_ssim, same_psnr = scoring.mouth_similarity(frames, frames, boxes)
    other_ssim, other_psnr = scoring.mouth_similarity(255 - frames, frames, boxes)
    assert same_ssim == pytest.approx(1.0) and other_ssim < 0.5 and other_psnr < same_psnr


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("learnability")
    return work, run_benchmark(work)


def test_quick_run_learns_lip_sync(quick_run):
    work, result = quick_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((work / "report" / "summary.json").read_text())
    assert all(key in summary for key in SUMMARY_KEYS)
    assert summary["syncnet_heldout_accuracy"] >= QUICK_TARGETS["syncnet_heldout_accuracy"]
    margin = summary["dub_mouth_correlation"] - summary["zero_audio_mouth_correlation"]
    assert margin >= QUICK_TARGETS["correlation_margin"]
    # the truth rendering is measured with the same landmarks: it must follow its own track
    assert summary["truth_mouth_correlation"] > 0.7
    # ... and is its own reference for the open and texture ratios
    assert summary["truth_open_ratio"] == pytest.approx(1.0) and summary["truth_texture_ratio"] == pytest.approx(1.0)
    # the unchanged input is the source clip itself: its leak is its own measured track against the truth
    assert summary["input_leak_correlation"] > 0.7
    for name in ("learnability.md", "losses.png", "clips.png", "opening.png"):
        assert (work / "report" / name).stat().st_size > 0


def test_rerun_skips_finished_steps_and_redoes_removed_ones(quick_run):
    work, first = quick_run
    assert first.returncode in (0, 1), first.stderr[-3000:]  # 1: finished, trend not met
    steps = json.loads((work / STEPS_FILE).read_text())
    del steps["score"]
    steps.pop(PARTIAL_KEY, None)
    (work / STEPS_FILE).write_text(json.dumps(steps))
    scores = sorted((work / "dubs").glob("*/scores.json"))
    scores[0].unlink()
    again = run_benchmark(work)
    assert again.returncode == first.returncode, again.stdout[-3000:] + again.stderr[-3000:]
    after = json.loads((work / STEPS_FILE).read_text())
    # every recorded step kept its record (seconds, CPU, peak memory): skipped, nothing retrained
    assert {name: after[name] for name in steps} == steps
    assert "score" in after and scores[0].exists()  # the removed step was run again
    summary = json.loads((work / "report" / "summary.json").read_text())
    assert summary["steps"] == {name: entry["seconds"] for name, entry in after.items() if name != PARTIAL_KEY}


def test_quick_targets_are_checked_against_the_benchmarks_own_bounds():
    bound = QUICK_TARGETS["syncnet_heldout_accuracy"]
    summary = dict(mode="quick", syncnet_heldout_accuracy=bound, dub_mouth_correlation=0.5,
                   zero_audio_mouth_correlation=0.5 - QUICK_TARGETS["correlation_margin"] - 0.01,
                   minutes=QUICK_TARGETS["minutes"] + 1)
    targets = check_targets(summary)
    assert [t["bound"] for t in targets.values()] == [bound, QUICK_TARGETS["correlation_margin"],
                                                      QUICK_TARGETS["minutes"]]
    assert [t["met"] for t in targets.values()] == [True, True, False]
    assert f"syncnet_heldout_accuracy >= {bound:g}" in targets
