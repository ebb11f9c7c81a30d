"""The I/O core (latentsync/io.py), the checkpoint table, the scheduler config and clean stops:
atomic outputs, one-line ffmpeg failures, the torch.load policy, SIGTERM/SIGINT clean-up."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MEDIA, REPO, need
from latentsync import checkpoints, io
from latentsync.errors import ExternalToolError, UserError
from latentsync.models.checkpoint import read_state_dict
from latentsync.video import VideoWriter
from latentsync.cli_args import user_message

FRAMES = np.zeros((4, 64, 64, 3), np.uint8)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- atomic outputs ------------------------------------------------------------------------------

def test_atomic_output_renames_only_on_success(tmp_path):
    out = tmp_path / "result.bin"
    with io.atomic_output(out) as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".result.") and temp.name.endswith(".partial.bin")
        temp.write_bytes(b"new")
        assert not out.exists()
    assert out.read_bytes() == b"new" and leftovers(tmp_path) == ["result.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt, SystemExit])
def test_atomic_write_leaves_no_partial_file_on_exception(tmp_path, error):
    out = tmp_path / "scores.csv"
    out.write_text("previous")
    with pytest.raises(error):
        with io.atomic_open(out, "w") as f:
            f.write("half a file")
            raise error()
    assert out.read_text() == "previous" and leftovers(tmp_path) == ["scores.csv"]


def test_atomic_open_refuses_read_modes(tmp_path):
    with pytest.raises(ValueError, match="write mode"):
        with io.atomic_open(tmp_path / "x", "r"):
            pass


def test_output_folder_that_cannot_exist_is_one_line_user_error(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError) as info:
        io.atomic_write_text(tmp_path / "a_file" / "out.txt", "x")
    assert "a_file" in str(info.value) and "\n" not in str(info.value)


# -- ffmpeg --------------------------------------------------------------------------------------

def test_ffmpeg_failure_is_one_line_with_ffmpegs_reason(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(ExternalToolError) as info:
        io.run_ffmpeg(["-f", "lavfi", "-i", "color=s=32x32:d=0.2", "-c:v", "no_such_encoder", "-f", "mp4"],
                      out, "encode a test pattern")
    message = str(info.value)
    assert message.startswith("ffmpeg failed to encode a test pattern (exit code ")
    assert "no_such_encoder" in message and "\n" not in message and " @ 0x" not in message
    assert leftovers(tmp_path) == []


def test_encoder_killed_mid_run_gives_one_line_error_and_no_file(tmp_path):
    out = tmp_path / "dubbed.mp4"
    writer = VideoWriter(out, fps=25, width=64, height=64)
    writer.write(FRAMES)
    writer._process.kill()  # ffmpeg dies (out of memory killer, a crash, ...)
    writer._process.wait()
    with pytest.raises(ExternalToolError) as info:
        for _ in range(200):  # until the pipe reports the dead reader
            writer.write(FRAMES)
        writer.close()
    message = str(info.value)
    assert f"ffmpeg failed to encode {out} (killed by SIGKILL)" in message
    assert "\n" not in message and user_message(info.value) == message
    assert leftovers(tmp_path) == []


def test_encoder_error_names_ffmpegs_complaint(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(ExternalToolError) as info:
        with VideoWriter(out, fps=25, width=64, height=64, crf=-5) as writer:
            for _ in range(50):
                writer.write(FRAMES)
    assert "crf" in str(info.value) and "(exit code " in str(info.value) and "\n" not in str(info.value)
    assert leftovers(tmp_path) == []


def test_stderr_tail_keeps_first_and_last_lines():
    text = "\n".join(f"line {i}" for i in range(10)) + "\n\n"
    assert io.stderr_tail(text) == "line 0 | line 1 | ... | line 7 | line 8 | line 9"
    assert io.stderr_tail(b"[libx264 @ 0x55d0beef] bad\n") == "[libx264] bad"
    assert io.exit_status(-signal.SIGTERM) == "killed by SIGTERM" and io.exit_status(1) == "exit code 1"


# -- torch.load policy ---------------------------------------------------------------------------

class RunsCode:
    """Unpickling this calls os.system (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_torch_load_refuses_a_pickle_that_runs_code(tmp_path):
    marker, path = tmp_path / "code_ran", tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": RunsCode(marker)}, path)
    for load in (lambda: io.load_torch_file(path), lambda: read_state_dict(path)):
        with pytest.raises(UserError) as info:
            load()
        message = str(info.value)
        assert message.startswith(f"{path}: refused to load") and "system" in message and "\n" not in message
    assert not marker.exists()


def test_torch_load_missing_corrupt_and_good_files(tmp_path):
    with pytest.raises(UserError, match=r"missing\.pt: VGG16 weights not found"):
        io.load_torch_file(tmp_path / "missing.pt", "VGG16 weights")
    corrupt = tmp_path / "corrupt.pt"
    torch.save({"w": torch.arange(1000.0)}, corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # cut short, as by a failed download
    with pytest.raises(UserError, match=r"corrupt\.pt: not a readable checkpoint \("):
        io.load_torch_file(corrupt)
    good = tmp_path / "good.pt"
    io.atomic_save_torch({"w": torch.arange(3.0)}, good)
    for mmap in (False, True):
        assert torch.equal(io.load_torch_file(good, mmap=mmap)["w"], torch.arange(3.0))
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(3.0)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(io.load_torch_file(legacy, mmap=True)["w"], torch.arange(3.0))  # cannot map: read


# -- checkpoint table, scheduler config ----------------------------------------------------------

def test_every_checkpoint_of_the_table_is_in_the_readme():
    readme = (REPO / "checkpoints" / "README.md").read_text()
    names = [entry.name for entry in checkpoints.CHECKPOINT_FILES]
    assert len(names) == len(set(names))
    for entry in checkpoints.CHECKPOINT_FILES:
        assert f"`{entry.path}" in readme, entry.path
        assert entry.repo or entry.url, entry.name
        if entry.repo:
            assert entry.repo in readme, entry.repo


def test_default_paths_come_from_the_table(tmp_path):
    assert checkpoints.default_path("vgg16") == Path("checkpoints/auxiliary/vgg16-397923af.pth")
    assert checkpoints.default_path("vae", tmp_path) == tmp_path / "sd-vae-ft-mse"
    with pytest.raises(KeyError, match="known: unet"):
        checkpoints.default_path("no_such_model")
    with pytest.raises(UserError, match="sfd_face.pth.*huggingface.co/ByteDance/LatentSync-1.5"):
        checkpoints.require("s3fd", tmp_path / "sfd_face.pth")
    from latentsync.eval.s3fd import S3FD_PATH
    from latentsync.losses.videomae import VIDEOMAE_CHECKPOINT

    assert S3FD_PATH == str(checkpoints.default_path("s3fd"))
    assert VIDEOMAE_CHECKPOINT == str(checkpoints.default_path("videomae"))


def test_download_offline_lists_the_missing_table_entries(tmp_path):
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "scripts.download_checkpoints", "--checkpoints_dir",
                             str(tmp_path), "--all"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for entry in checkpoints.in_group("inference", "training"):
        assert entry.path in result.stdout
    assert "insightface" not in result.stdout  # optional files are fetched by hand


def test_scheduler_is_built_from_the_shipped_json(tmp_path):
    from latentsync.schedulers import load_scheduler_config, make_scheduler

    shipped = json.loads((REPO / "configs" / "scheduler_config.json").read_text())
    assert load_scheduler_config() == shipped
    scheduler = make_scheduler()
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample",
                "set_alpha_to_one", "steps_offset"):
        assert scheduler.config[key] == shipped[key], key
    changed = tmp_path / "scheduler.json"
    changed.write_text(json.dumps(dict(shipped, steps_offset=0)))
    assert make_scheduler(changed).config.steps_offset == 0
    changed.write_text("{not json")
    with pytest.raises(UserError, match="scheduler.json: not a readable JSON"):
        load_scheduler_config(changed)


# -- SIGTERM / SIGINT ----------------------------------------------------------------------------

def default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


LONG_JOB = """
import sys, tempfile, time
from latentsync.cli_args import run_cli

def job():
    with tempfile.TemporaryDirectory(dir=sys.argv[1], prefix="job-") as folder:
        with open(folder + "/records.bin", "wb") as f:
            f.write(bytes(1 << 20))
        print("ready", flush=True)
        time.sleep(120)

sys.exit(run_cli(job))
"""


@pytest.mark.parametrize("signum, code, line", [(signal.SIGTERM, 143, "error: terminated (SIGTERM)"),
                                                (signal.SIGINT, 130, "error: interrupted")])
def test_cli_stopped_by_signal_removes_its_temp_folder(tmp_path, signum, code, line):
    # default signal dispositions in the child: a CI job started in the background inherits an
    # ignored SIGINT, and Python then never raises KeyboardInterrupt (a terminal's Ctrl-C is not ignored)
    process = subprocess.Popen([sys.executable, "-c", LONG_JOB, str(tmp_path)], cwd=REPO, text=True,
                               preexec_fn=default_signals,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().strip() == "ready"
    assert len(leftovers(tmp_path)) == 1
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    assert stderr.strip() == line
    assert leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from scripts.make_tiny_checkpoints import make_tiny_checkpoints

    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


def test_sigterm_during_inference_leaves_no_temporary_files(tiny, tmp_path):
    """A real dubbing run stopped by `kill`: the aligned-face records and the partial output go."""
    clip, work, out = tmp_path / "clip.mp4", tmp_path / "work", tmp_path / "out" / "dubbed.mp4"
    work.mkdir()
    subprocess.run([io.ffmpeg_exe(), "-loglevel", "error", "-i", str(need(MEDIA / "demo1_video.mp4")), "-t", "2",
                    "-vf", "scale=270:480", "-c:v", "libx264", "-c:a", "aac", str(clip)], check=True)
    command = [sys.executable, "-m", "scripts.inference", "--unet_config_path", tiny / "unet.yaml",
               "--inference_ckpt_path", tiny / "latentsync_unet.pt", "--whisper_ckpt_path", tiny / "whisper/tiny.pt",
               "--vae_path", tiny / "vae", "--video_path", clip, "--audio_path", need(MEDIA / "demo2_audio.wav"),
               "--video_out_path", out, "--inference_steps", "2", "--device", "cpu", "--temp_dir", work]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([str(c) for c in command], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not any(p.is_file() and p.stat().st_size for p in work.rglob("*")):  # records being written
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the run never wrote its temporary records"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr
    assert leftovers(work) == []
    assert not out.parent.exists() or leftovers(out.parent) == []


def test_read_yaml_gives_a_plain_dict_or_one_line_naming_the_file(tmp_path):
    read_yaml = io.read_yaml
    path = tmp_path / "run.yaml"
    path.write_text("optimizer:\n  lr: 1e-4\nmodel:\n  layers: [1, 2]\n")
    assert read_yaml(path) == {"optimizer": {"lr": 1e-4}, "model": {"layers": [1, 2]}}  # 1e-4 a number
    for text, problem in (("a: [1\n", "not a readable YAML config"), ("- 1\n- 2\n", "not a YAML mapping")):
        path.write_text(text)
        with pytest.raises(UserError, match=f"run.yaml: {problem}") as caught:
            read_yaml(path)
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="missing.yaml: config file not found"):
        read_yaml(tmp_path / "missing.yaml")
