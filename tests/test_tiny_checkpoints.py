"""`python -m scripts.make_tiny_checkpoints` writes a complete set that the official loaders accept."""

import shlex
import subprocess
import sys

import torch
import whisper
from diffusers import AutoencoderKL

from conftest import REPO
from latentsync.audio import AudioEncoder
from latentsync.models import load_syncnet, load_unet
from latentsync.models.checkpoint import read_state_dict
from scripts.make_tiny_checkpoints import inference_flags, model_files


def test_tiny_checkpoint_set_in_official_formats(tmp_path):
    out = tmp_path / "tiny"
    result = subprocess.run([sys.executable, "-m", "scripts.make_tiny_checkpoints", "--output_dir", str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("unet.yaml", "latentsync_unet.pt", "syncnet.yaml", "stable_syncnet.pt", "whisper/tiny.pt",
                 "vae/config.json", "vae/diffusion_pytorch_model.safetensors"):
        assert (out / name).is_file(), name
    assert model_files(out).check() == model_files(out)  # complete, and the files a run is pointed at
    assert shlex.join(inference_flags(out)) in result.stdout  # printed for the user to copy

    raw = torch.load(out / "latentsync_unet.pt", weights_only=True)
    assert set(raw) == {"state_dict", "global_step"}  # the layout of the released latentsync_unet.pt
    unet = load_unet(out / "unet.yaml", out / "latentsync_unet.pt")
    assert unet.config.use_motion_module and unet.config.in_channels == 13
    assert set(torch.load(out / "stable_syncnet.pt", weights_only=True)) == {"state_dict"}
    syncnet = load_syncnet(out / "syncnet.yaml", out / "stable_syncnet.pt")
    vision, audio = syncnet(torch.randn(1, 48, 128, 256), torch.randn(1, 1, 80, 52))
    assert vision.shape == audio.shape

    model = whisper.load_model(str(out / "whisper/tiny.pt"), device="cpu")  # openai-whisper's own loader
    assert model.dims.n_audio_state == unet.config.cross_attention_dim
    assert AudioEncoder(out / "whisper/tiny.pt", device="cpu").dim == unet.config.cross_attention_dim

    vae = AutoencoderKL.from_pretrained(out / "vae")
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 256, 256)).latent_dist.mean
    assert latents.shape == (1, 4, 32, 32)  # downsamples by 8 like sd-vae-ft-mse

    # random weights everywhere: no zero-initialised layer left that would hide a wiring mistake
    state = read_state_dict(out / "latentsync_unet.pt").state_dict
    assert all(v.abs().sum() > 0 for k, v in state.items() if k.endswith("weight"))
