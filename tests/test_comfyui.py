"""The ComfyUI nodes, run without ComfyUI: frame count at the given fps, size, untouched background."""

import math
import subprocess
import sys

import numpy as np
import soundfile
import torch

from conftest import MEDIA, REPO, need
from latentsync.io import ffmpeg_exe
from latentsync.video import iter_frames

FPS = 50.0  # not the model's 25: the node must convert both ways and still return the right count
SPEECH_S = 0.61  # 31 frames at 50 fps (the pipeline writes 32; the node returns what the audio needs)


def test_package_imports_without_comfyui():
    # ComfyUI made absent in the child (a None entry in sys.modules makes `import comfy` fail),
    # whether or not it is installed here
    code = ("import sys; "
            "sys.modules.update(dict.fromkeys(['comfy', 'comfy.utils', 'comfy.model_management'])); "
            "import comfyui_latentsync as c; from comfyui_latentsync.nodes import _comfy_progress; "
            "assert _comfy_progress() is None; "
            "assert set(c.NODE_CLASS_MAPPINGS) == set(c.NODE_DISPLAY_NAME_MAPPINGS) == {'LatentSyncLoader', 'LatentSyncDub'}; "
            "t = c.NODE_CLASS_MAPPINGS['LatentSyncDub'].INPUT_TYPES()['required']; "
            "assert t['images'] == ('IMAGE',) and t['audio'] == ('AUDIO',) and 'inference_steps' in t")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_dub_node_returns_the_frames_the_audio_needs(tmp_path):
    from comfyui_latentsync import NODE_CLASS_MAPPINGS
    from scripts.make_tiny_checkpoints import make_tiny_checkpoints, model_files

    tiny = make_tiny_checkpoints(tmp_path / "tiny")
    clip = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(need(MEDIA / "demo1_video.mp4")), "-t", "1",
                    "-vf", "scale=270:480", "-c:v", "libx264", "-crf", "12", "-an", str(clip)], check=True)
    frames = np.concatenate(list(iter_frames(clip, fps=FPS)))  # each source frame twice
    images = torch.from_numpy(frames).float() / 255
    wav, rate = soundfile.read(need(MEDIA / "demo1_audio.wav"), dtype="float32", always_2d=True)
    wav = wav[: int(SPEECH_S * rate)]
    audio = {"waveform": torch.from_numpy(wav.T.copy())[None], "sample_rate": rate}

    files = model_files(tiny)
    (pipeline,) = NODE_CLASS_MAPPINGS["LatentSyncLoader"]().load(
        str(tiny), device="cpu", dtype="fp32", unet_config_path=str(files.unet_config),
        unet_ckpt_path=str(files.unet_ckpt), whisper_ckpt_path=str(files.whisper), vae_path=files.vae)
    dub = NODE_CLASS_MAPPINGS["LatentSyncDub"]()
    out, out_audio = dub.dub(pipeline, images, audio, FPS, inference_steps=1, guidance_scale=1.5, seed=7,
                             enable_deepcache=False, silence="mute", segment_tail="overlap", face_index=-1)

    count = math.ceil(len(wav) * FPS / rate)
    assert count == 31
    assert out.shape == (count, *images.shape[1:]) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert out_audio["sample_rate"] == rate and torch.equal(out_audio["waveform"], audio["waveform"])

    x1, y1, x2, y2 = pipeline.face_detector.detect(frames[0])[0].box
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    outside = np.ones(frames.shape[1:3], bool)
    outside[max(int(cy - h), 0):int(cy + h), max(int(cx - w), 0):int(cx + w)] = False  # face box doubled
    diff = (out - images[:count]).abs().numpy() * 255
    # away from the face only codec noise: two x264 passes (frames -> video, dubbed video), each
    # ~1.1 levels on average with this repository's writer and reader
    background = diff[:, outside].mean()
    mouth = diff[:, int(cy + 0.15 * h):int(y2), int(x1 + 0.25 * w):int(x2 - 0.25 * w)].mean()
    assert background < 3.0, (background, mouth)
    assert mouth > 10.0, (background, mouth)  # the mouth was regenerated (random tiny weights)
