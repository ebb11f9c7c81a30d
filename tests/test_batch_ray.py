"""Batch dubbing on a local Ray instance: every row is written (atomically), a second run skips them."""

import subprocess

import pytest

from conftest import MEDIA, need
from latentsync.batch import SKIPPED, WROTE, run_batch
from latentsync.jobs import PipelineSpec
from latentsync.io import ffmpeg_exe
from latentsync.video import probe_video

SPEECH_S = 0.6  # 15 frames: one UNet segment


def ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    yield
    ray.shutdown()


def test_three_rows_on_local_ray_then_a_rerun_skips_them(ray_local, tmp_path, capsys):
    from scripts.inference import main as inference_main
    from scripts.make_tiny_checkpoints import inference_flags, make_tiny_checkpoints, model_files

    tiny = make_tiny_checkpoints(tmp_path / "tiny")
    video, audio = tmp_path / "clip.mp4", tmp_path / "speech.wav"
    ffmpeg("-i", need(MEDIA / "demo1_video.mp4"), "-t", 1, "-vf", "scale=270:480", "-c:v", "libx264", "-crf", 12,
           "-an", video)
    ffmpeg("-i", need(MEDIA / "demo1_audio.wav"), "-t", SPEECH_S, audio)
    outs = [tmp_path / "out" / f"row{i}.mp4" for i in range(3)]
    rows = [(str(video), str(audio), str(out)) for out in outs]
    model = PipelineSpec(model_files(tiny), device="cpu")

    first = run_batch(rows, {"inference_steps": 1, "seed": 7}, model, ray_address="local", num_cpus=1)
    assert [status for _, status, _ in first] == [WROTE] * 3, first
    for out in outs:
        info = probe_video(out)
        assert info.num_frames == round(SPEECH_S * 25) and info.has_audio
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["row0.mp4", "row1.mp4", "row2.mp4"]
    stamps = [out.stat().st_mtime_ns for out in outs]

    # the same batch again, through the command line's hook: nothing is redone
    csv = tmp_path / "rows.csv"
    csv.write_text("video,audio,output\n" + "".join(f"{v},{a},{o}\n" for v, a, o in rows))
    code = inference_main(["--batch_csv", str(csv), "--ray_address", "local", *inference_flags(tiny),
                           "--inference_steps", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert all(f"skip {o}" in printed for o in outs), printed
    assert [out.stat().st_mtime_ns for out in outs] == stamps
    assert run_batch(rows, {}, model, ray_address="local") == [(str(o), SKIPPED, "already exists") for o in outs]
