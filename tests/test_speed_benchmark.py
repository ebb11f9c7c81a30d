"""benchmarks/speed.py end to end in its smallest mode (--tiny: the tiny random test checkpoints,
4 frames): the report it writes has every preset with its timings and mouth distance, and
`--only decode` merges into it; with `--learnability_dir`, a learnability work folder (here with
the tiny random models standing in for trained ones), every settings' dubs are scored and each
preset gets its verdict. The numbers themselves are not checked (timings are noise here)."""

import json
import math
import shutil

import pytest

from benchmarks import speed
from latentsync.errors import EXIT_USER_ERROR
from latentsync.pipelines.options import PRESETS, LipsyncOptions
from latentsync.pipelines.results import AUDIO, DECODE, DENOISE, ENCODE, FACE_PASS, MUX, WRITE

FRAMES = speed.DECODE_FRAMES  # the smallest clip the benchmark takes
REPORTED = (AUDIO, FACE_PASS, ENCODE, DENOISE, DECODE, WRITE, MUX)  # the phases a report times
QUALITY_FRAMES = 16  # frames of each quality dub (too few for LSE-C's +-8-frame search: it is NaN here)


@pytest.fixture(scope="module")
def learnability_dir(tmp_path_factory):
    """A work folder as a finished `benchmarks.learnability` run leaves it (steps.json, corpus,
    runs/), with a 4-clip synthetic corpus (3 held out) and the tiny random test models."""
    from omegaconf import OmegaConf

    from benchmarks.learnability_parts.plan import SYNCNET_CONFIG, Layout
    from latentsync.checkpoints import default_path
    from latentsync.io import atomic_save_torch
    from latentsync.models import StableSyncNet
    from scripts import make_synthetic_corpus
    from scripts.make_tiny_checkpoints import make_tiny_checkpoints

    layout = Layout(tmp_path_factory.mktemp("learnability"))
    assert make_synthetic_corpus.main(["--output_dir", str(layout.corpus), "--num_clips", "4", "--seed", "3",
                                       "--heldout_fraction", "0.75", "--no_progress"]) == 0
    tiny = make_tiny_checkpoints(layout.root / "tiny")
    unet, syncnet = layout.checkpoint("unet_stage2", 2), layout.checkpoint("syncnet", 2)
    unet.parent.mkdir(parents=True)
    shutil.copy(tiny / "unet.yaml", layout.run_dir("unet_stage2") / "config.yaml")
    shutil.copy(default_path("unet", tiny), unet)
    shutil.copytree(tiny / "vae", layout.vae)
    model = StableSyncNet.from_config(OmegaConf.to_container(OmegaConf.load(SYNCNET_CONFIG).model))
    atomic_save_torch({"state_dict": model.state_dict()}, syncnet)
    shutil.copy(SYNCNET_CONFIG, layout.syncnet_config)
    steps = dict(corpus={}, vae={}, whisper=dict(path=str(default_path("whisper", tiny))),
                 syncnet=dict(checkpoint=str(syncnet)), unet_stage2=dict(checkpoint=str(unet)))
    (layout.root / "steps.json").write_text(json.dumps({k: dict(seconds=1.0, result=v) for k, v in steps.items()}))
    return layout.root


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, learnability_dir):
    out_dir = tmp_path_factory.mktemp("speed")
    assert speed.main(["--tiny", "--frames", str(FRAMES), "--out_dir", str(out_dir),
                       "--learnability_dir", str(learnability_dir), "--quality_clips", "1",
                       "--quality_frames", str(QUALITY_FRAMES)]) == 0
    return out_dir, json.loads((out_dir / "speed.json").read_text())


def test_tiny_run_reports_every_preset_with_timings_and_mouth_distance(tiny_report):
    out_dir, report = tiny_report
    runs = report["runs"]
    assert set(runs) == {speed.REFERENCE_NAME, *PRESETS, *speed.VARIANTS}
    for name, run in runs.items():
        assert run["frames"] == FRAMES, name
        assert run["seconds_per_frame"] > 0 and run["speedup"] > 0, name
        assert math.isclose(run["seconds_per_frame"] * FRAMES, run["seconds"], rel_tol=1e-9), name
        assert set(run["phases"]) == {*REPORTED, "outside_model"}, name
        # every hook fired: each phase did some work in every run
        assert all(run["phases"][phase] > 0 for phase in REPORTED), (name, run["phases"])
        assert math.isfinite(run["mouth_mae"]), name
    # each run used its own settings: the reference the option defaults, a preset its PRESETS values
    defaults = LipsyncOptions()
    assert runs[speed.REFERENCE_NAME]["options"] == {k: getattr(defaults, k) for k in PRESETS["quality"]}
    for name, values in PRESETS.items():
        assert runs[name]["options"] == values, name
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


def test_learnability_models_dub_under_every_settings_and_presets_get_verdicts(tiny_report):
    out_dir, report = tiny_report
    quality, runs = report["quality"], report["runs"]
    assert quality["clips"] == 1 and set(quality["runs"]) == set(runs)
    assert quality["runs"]["quality"]["same_as"] == speed.REFERENCE_NAME  # same settings: not dubbed twice
    for name, run in runs.items():
        assert math.isfinite(run["dub_mouth_correlation"]) and math.isfinite(run["dub_mouth_ssim"]), name
        for key in speed.QUALITY_KEYS:  # under the learnability summary's key names, in each run's entry
            assert key in run and str(run[key]) == str(quality["runs"][name][key]), (name, key)  # NaN-safe
        assert quality["runs"][name]["seconds_per_frame"] > 0
    # the sampler changes the dubs, so their scores differ (the tiny UNet's faces are noise, but its own noise)
    assert runs["balanced"]["dub_mouth_ssim"] != runs[speed.REFERENCE_NAME]["dub_mouth_ssim"]
    assert set(report["verdicts"]) == set(speed.SPEEDUP_TARGETS)
    for name, verdict in report["verdicts"].items():
        assert verdict["speedup"] == runs[name]["speedup"] and set(verdict["quality_vs_reference"]) == {
            "dub_mouth_correlation", "dub_lse_c"}
    md = (out_dir / "speed.md").read_text()
    assert "mouth-opening corr." in md and "LSE-C vs reference" in md


def test_verdict_needs_the_speedup_and_both_metrics_within_five_percent():
    runs = {"balanced": dict(speedup=2.5), "fast": dict(speedup=5.0)}
    quality = {"runs": {speed.REFERENCE_NAME: dict(dub_mouth_correlation=0.5, dub_lse_c=0.2),
                        "balanced": dict(dub_mouth_correlation=0.48, dub_lse_c=0.25),  # 96 %, 125 %
                        "fast": dict(dub_mouth_correlation=0.6, dub_lse_c=0.18)}}  # 120 %, 90 %
    verdicts = speed.quality_verdicts(runs, quality)
    assert verdicts["balanced"]["met"] and not verdicts["fast"]["met"]
    assert verdicts["fast"]["quality_vs_reference"]["dub_lse_c"] == pytest.approx(0.9)
    runs["balanced"]["speedup"] = 1.9
    assert not speed.quality_verdicts(runs, quality)["balanced"]["met"]


def test_an_unfinished_learnability_run_is_refused_before_the_benchmark_runs(tmp_path, capsys):
    (tmp_path / "steps.json").write_text(json.dumps({"corpus": {"seconds": 1.0, "result": {}}}))
    assert speed.main(["--tiny", "--no_write", "--learnability_dir", str(tmp_path)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "steps.json" in err and "unet_stage2" in err
    assert speed.main(["--tiny", "--no_write", "--learnability_dir", str(tmp_path / "none")]) == EXIT_USER_ERROR
    assert "benchmarks.learnability" in capsys.readouterr().err


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
