"""The reference's command lines work here unchanged: the data pipeline's option names
(--total_num_workers, --per_gpu_num_workers, --temp_dir, no --output_dir), `python -m eval.*` and
`python -m preprocess.data_processing_pipeline` from the repository root, and the trainers'
config flags. Argument-level checks: nothing here processes a video or loads a network."""

import argparse
import os
import subprocess
import sys
import tempfile

import pytest

from conftest import REPO
from latentsync.data.preprocess.common import PipelineOptions
from latentsync.data.preprocess.runner import STAGE_BY_NUMBER, Executors, PoolExecutor, SerialExecutor, check_options
from latentsync.errors import UserError
from latentsync.paths import use_temp_dir
from scripts import data_processing_pipeline as dpp
from scripts.eval_syncnet_acc import fill_from_config

REFERENCE_DATA_ARGS = ["--total_num_workers", "96", "--per_gpu_num_workers", "12", "--resolution", "256",
                       "--sync_conf_threshold", "3", "--temp_dir", "temp"]


def run_module(module: str, *args: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def restore_temp_dir(monkeypatch):
    """use_temp_dir changes TMPDIR and tempfile.tempdir; put both back after the test."""
    monkeypatch.setenv("TMPDIR", os.environ.get("TMPDIR", tempfile.gettempdir()))
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)


# -- inference -------------------------------------------------------------------------------


REFERENCE_INFERENCE_ARGS = ["--unet_config_path", "configs/unet/stage2.yaml", "--inference_ckpt_path",
                            "checkpoints/latentsync_unet.pt", "--inference_steps", "20", "--guidance_scale", "1.5",
                            "--enable_deepcache", "--video_path", "assets/demo1_video.mp4", "--audio_path",
                            "assets/demo1_audio.wav", "--video_out_path", "video_out.mp4"]


def test_reference_inference_flags_choose_the_same_files_and_options():
    from pathlib import Path

    from latentsync.cli_args import from_args
    from latentsync.loading import ModelSettings
    from latentsync.pipelines.options import options_from_args
    from scripts import inference

    args = inference.parse_args(REFERENCE_INFERENCE_ARGS)
    files = from_args(ModelSettings, args).model_files()
    assert files.unet_config == Path("configs/unet/stage2.yaml")
    assert files.unet_ckpt == Path("checkpoints/latentsync_unet.pt")
    assert (files.vae, files.whisper, files.checkpoints_dir) == ("checkpoints/sd-vae-ft-mse", None, Path("checkpoints"))
    options = options_from_args(args)
    assert (options.inference_steps, options.guidance_scale, options.enable_deepcache) == (20, 1.5, True)


def test_first_run_without_weights_says_where_to_get_them_and_how_to_smoke_test(tmp_path, capsys):
    """The README's first example before any weights exist: one line naming the file, its source,
    and the exact command for a run without them."""
    from scripts.inference import main

    args = REFERENCE_INFERENCE_ARGS + ["--video_path", str(REPO / "assets/demo1_video.mp4"), "--audio_path",
                                       str(REPO / "assets/demo1_audio.wav"), "--video_out_path", str(tmp_path / "o.mp4"),
                                       "--checkpoints_dir", str(tmp_path / "none"),
                                       "--inference_ckpt_path", str(tmp_path / "none/latentsync_unet.pt")]
    assert main(args) == 2
    err = capsys.readouterr().err
    missing = tmp_path / "none/latentsync_unet.pt"
    assert err.count("\n") == 1 and err.startswith(f"error: {missing}: checkpoint file not found")
    assert "https://huggingface.co/ByteDance/LatentSync-1.6 file latentsync_unet.pt" in err
    assert "2 more file(s) missing" in err and "python -m scripts.download_checkpoints" in err
    assert "`python -m scripts.make_tiny_checkpoints --output_dir /tmp/latentsync-tiny`" in err


# -- data pipeline ---------------------------------------------------------------------------


def test_reference_data_flags_map_onto_our_options(tmp_path):
    raw = tmp_path / "root" / "raw"
    args = dpp.build_parser().parse_args(REFERENCE_DATA_ARGS + ["--input_dir", str(raw)])
    options = dpp.make_options(args)
    assert (options.num_workers, options.device_workers) == (96, 12)
    assert (options.resolution, options.sync_conf_threshold) == (256, 3.0)
    assert args.temp_dir == "temp"
    # without --output_dir the stage folders go next to the input folder, as in the reference
    assert options.output_dir == str((tmp_path / "root").resolve())


def test_our_data_option_names_still_work_and_win_over_defaults(tmp_path):
    args = dpp.build_parser().parse_args(["--input_dir", "in", "--output_dir", str(tmp_path / "out"),
                                          "--num_workers", "3", "--device_workers", "1"])
    options = dpp.make_options(args)
    assert (options.num_workers, options.device_workers, options.output_dir) == (3, 1, str(tmp_path / "out"))
    defaults = dpp.make_options(dpp.build_parser().parse_args(["--input_dir", "in"]))
    assert (defaults.num_workers, defaults.device_workers) == (1, None)


def test_data_help_documents_the_reference_names():
    text = dpp.build_parser().format_help()
    for line in ("--num_workers NUM_WORKERS, --total_num_workers NUM_WORKERS",
                 "--device_workers DEVICE_WORKERS, --per_gpu_num_workers DEVICE_WORKERS",
                 "--total_num_workers    = --num_workers", "--per_gpu_num_workers  = --device_workers"):
        assert line in text


def test_device_stages_get_their_own_worker_count():
    executors = Executors(PipelineOptions(num_workers=3, device_workers=1))
    try:
        assert [executors.workers_for(STAGE_BY_NUMBER[n]) for n in range(1, 9)] == [3] * 6 + [1, 1]
        shots, sync = executors.for_stage(STAGE_BY_NUMBER[3]), executors.for_stage(STAGE_BY_NUMBER[7])
        assert isinstance(shots, PoolExecutor) and isinstance(sync, SerialExecutor)
        assert executors.for_stage(STAGE_BY_NUMBER[8]) is sync and executors.for_stage(STAGE_BY_NUMBER[1]) is shots
    finally:
        executors.close()
    same = Executors(PipelineOptions(num_workers=2))
    assert {same.workers_for(stage) for stage in STAGE_BY_NUMBER.values()} == {2}
    with pytest.raises(UserError, match="--device_workers 0"):
        check_options(PipelineOptions(device_workers=0))


def test_temp_dir_is_created_and_used_for_scratch_files(tmp_path, restore_temp_dir):
    scratch = use_temp_dir(tmp_path / "scratch" / "deeper")
    assert scratch.is_dir() and os.environ["TMPDIR"] == str(scratch)
    with tempfile.NamedTemporaryFile() as f:
        assert os.path.dirname(f.name) == str(scratch)
    assert use_temp_dir(None) is None and os.environ["TMPDIR"] == str(scratch)


def test_unusable_temp_dir_is_one_line_and_exit_2(tmp_path, capsys, restore_temp_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = dpp.main(["--input_dir", str(tmp_path), "--temp_dir", str(blocker / "temp"), "--no_progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --temp_dir") and len(err.splitlines()) == 1


def test_preprocess_module_runs_our_pipeline_from_the_repo_root():
    result = run_module("preprocess.data_processing_pipeline", "--help")
    assert result.returncode == 0, result.stderr
    assert "--total_num_workers" in result.stdout and "--per_gpu_num_workers" in result.stdout


# -- evaluation ------------------------------------------------------------------------------


def test_eval_modules_answer_help_from_the_repo_root():
    for module, flag in (("eval.eval_sync_conf", "--temp_dir"), ("eval.eval_fvd", "--real_videos_dir"),
                         ("eval.eval_syncnet_acc", "--config_path")):
        result = run_module(module, "--help")
        assert result.returncode == 0, f"{module}: {result.stderr[-2000:]}"
        assert flag in result.stdout, module


def test_reference_sync_conf_command_takes_temp_dir(tmp_path):
    scratch = tmp_path / "temp"
    result = run_module("eval.eval_sync_conf", "--video_path", str(tmp_path / "missing.mp4"),
                        "--temp_dir", str(scratch))
    assert result.returncode == 2 and "missing.mp4: video file not found" in result.stderr
    assert scratch.is_dir()  # the option was taken, not rejected by argparse


def test_reference_syncnet_acc_command_reads_the_rest_from_the_config():
    # the reference's eval_syncnet_acc.sh line; the shipped configs name no validation list
    result = run_module("eval.eval_syncnet_acc", "--config_path", "configs/syncnet/syncnet_16_pixel.yaml")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("error: configs/syncnet/syncnet_16_pixel.yaml: data.val_fileslist and "
                                     "data.val_data_dir are empty; give --fileslist")


def test_syncnet_acc_defaults_come_from_the_config_and_flags_win():
    config = {"data": {"val_fileslist": "val.txt", "val_data_dir": "val/", "num_val_samples": 1200},
              "ckpt": {"inference_ckpt_path": "checkpoints/mine.pt"}}
    args = argparse.Namespace(config_path="c.yaml", ckpt_path=None, fileslist=None, num_samples=None)
    fill_from_config(args, config)
    assert (args.ckpt_path, args.fileslist, args.num_samples) == ("checkpoints/mine.pt", "val.txt", 1200)
    config["data"]["val_fileslist"] = ""
    args = argparse.Namespace(config_path="c.yaml", ckpt_path="x.pt", fileslist=None, num_samples=8)
    fill_from_config(args, config)
    assert (args.ckpt_path, args.fileslist, args.num_samples) == ("x.pt", "val/", 8)


# -- training --------------------------------------------------------------------------------


TRAINER_HELP = """
import contextlib, io, sys
from scripts import train_syncnet, train_unet
for module in (train_unet, train_syncnet):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        module.main(["--help"])
    print("=== " + module.__name__, out.getvalue())
"""


def test_trainers_take_the_reference_config_flags():
    # the reference launches `torchrun ... -m scripts.train_unet --unet_config_path ...` and
    # `-m scripts.train_syncnet --config_path ...` (one process: both import torch and diffusers)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", TRAINER_HELP], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    unet, syncnet = result.stdout.split("=== scripts.train_syncnet")
    assert "--unet_config_path CONFIG_PATH" in unet and "--config_path CONFIG_PATH" in syncnet


def test_deprecated_face_detector_flag_still_works_and_warns_once(caplog):
    from latentsync.cli_args import DeprecatedFlag
    from scripts import eval_sync_conf

    DeprecatedFlag.warned.discard("--face_detector")
    with caplog.at_level("WARNING"):
        first = eval_sync_conf.parse_args(["--video_path", "x.mp4", "--face_detector", "mediapipe"])
        again = eval_sync_conf.parse_args(["--video_path", "x.mp4", "--face_detector", "s3fd"])
    assert (first.face_backend, again.face_backend) == ("mediapipe", "s3fd")
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert warnings == ["--face_detector is deprecated: use --face_backend"]
