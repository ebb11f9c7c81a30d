"""benchmarks/speed.py end to end in its smallest mode (--tiny: the tiny random test checkpoints,
4 frames): the report it writes has every preset with its timings and mouth distance, and
`--only decode` merges into it. The numbers themselves are not checked (timings are noise here)."""

import json
import math

import pytest

from benchmarks import speed
from latentsync.errors import EXIT_USER_ERROR
from latentsync.pipelines.options import PRESETS

FRAMES = speed.DECODE_FRAMES  # the smallest clip the benchmark takes


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("speed")
    assert speed.main(["--tiny", "--frames", str(FRAMES), "--out_dir", str(out_dir)]) == 0
    return out_dir, json.loads((out_dir / "speed.json").read_text())


def test_tiny_run_reports_every_preset_with_timings_and_mouth_distance(tiny_report):
    out_dir, report = tiny_report
    runs = report["runs"]
    assert set(runs) == {speed.REFERENCE_NAME, *PRESETS, *speed.VARIANTS}
    for name, run in runs.items():
        assert run["frames"] == FRAMES, name
        assert run["seconds_per_frame"] > 0 and run["speedup"] > 0, name
        assert math.isclose(run["seconds_per_frame"] * FRAMES, run["seconds"], rel_tol=1e-9), name
        assert set(run["stages"]) == {*speed.STAGES, "outside_model"}, name
        # every hook fired: each stage did some work in every run
        assert all(run["stages"][stage] > 0 for stage in ("face_pass", *speed.MODEL_STAGES)), (name, run["stages"])
        assert set(run["options"]) == set(speed.REFERENCE_SETTINGS), name
        assert math.isfinite(run["mouth_mae"]), name
    reference = runs[speed.REFERENCE_NAME]
    assert reference["speedup"] == 1.0
    assert reference["mouth_mae"] == 0.0 and reference["mouth_psnr_db"] is None
    # another sampler gives other faces: each run's own generated faces were recorded and compared
    assert runs["balanced"]["mouth_mae"] > 0 and runs["balanced"]["mouth_psnr_db"] is not None
    assert runs["fast"]["options"]["decode_region"] == PRESETS["fast"]["decode_region"]
    for name, (preset, values) in speed.VARIANTS.items():
        assert runs[name]["options"] == {**runs[preset]["options"], **values}
    assert report["kernels"] and report["decode_region"]["vaes"]
    md = (out_dir / "speed.md").read_text()
    assert "outside model" in md and all(f"| {name} |" in md for name in runs)


def test_only_decode_replaces_the_decode_table_and_keeps_the_runs(tiny_report):
    out_dir, before = tiny_report
    assert speed.main(["--tiny", "--only", "decode", "--out_dir", str(out_dir)]) == 0
    after = json.loads((out_dir / "speed.json").read_text())
    assert after["runs"] == before["runs"] and after["kernels"] == before["kernels"]
    assert "--only decode" in after["decode_region"]["command"]
    assert after["command"] == before["command"]
    assert [t["vae"] for t in after["decode_region"]["vaes"]] == [t["vae"] for t in before["decode_region"]["vaes"]]


def test_bad_arguments_exit_with_one_line(tmp_path, capsys):
    assert speed.main(["--tiny", "--only", "decode", "--out_dir", str(tmp_path)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "speed.json" in err and "run the whole benchmark first" in err
    with pytest.raises(SystemExit) as exit_info:
        speed.main(["--tiny", "--frames", str(FRAMES - 1), "--no_write"])
    assert exit_info.value.code == EXIT_USER_ERROR
    assert f"--frames {FRAMES - 1}" in capsys.readouterr().err
