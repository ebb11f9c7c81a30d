"""Write a complete tiny checkpoint set with random weights, in the official file formats.

    python -m scripts.make_tiny_checkpoints --output_dir DIR

DIR/unet.yaml + DIR/latentsync_unet.pt   UNet (stage-2 layout with motion modules, 256 px)
DIR/syncnet.yaml + DIR/stable_syncnet.pt StableSyncNet (pixel, attention blocks, lower half)
DIR/whisper/tiny.pt                      openai-whisper checkpoint format (tiny dimensions)
DIR/vae/                                 diffusers AutoencoderKL folder (downsamples by 8)

The pipeline and training run end to end on these on a CPU in seconds; tests use them. The
UNet config and the VAE folder are not at the official places (configs/unet/, sd-vae-ft-mse/) and
the tiny Whisper's width has no default, so a run names the files: `model_files(DIR)`, or the
flags `inference_flags(DIR)` that this script prints (the inference CLI, gradio_app.py and the
HTTP server take the same flags).
"""

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from latentsync.checkpoints import default_path
from latentsync.cli_args import run_cli
from latentsync.io import atomic_save_torch, atomic_write_text
from latentsync.loading import ModelFiles
from latentsync.paths import config_path

SEED = 0
UNET_CONFIG, VAE_DIR = "unet.yaml", "vae"  # the tiny set's names (the weights have the official names)
WHISPER_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=4,
                    n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
UNET_MODEL = dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1, norm_num_groups=8,
                  attention_head_dim=8, cross_attention_dim=WHISPER_DIMS["n_audio_state"], sample_size=32)
SYNCNET_MODEL = {
    "audio_encoder": dict(in_channels=1, block_out_channels=[32, 32, 32, 32, 32, 64],
                          downsample_factors=[[2, 1], 2, 2, 1, 2, [2, 3]], attn_blocks=[0, 0, 0, 1, 0, 0], dropout=0.0),
    "visual_encoder": dict(in_channels=48, block_out_channels=[32, 32, 32, 32, 32, 32, 64],
                           downsample_factors=[[1, 2], 2, 2, 2, 2, 2, 2], attn_blocks=[0, 0, 0, 0, 1, 0, 0],
                           dropout=0.0),
}
VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                  up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 16, 16],
                  layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=256,
                  scaling_factor=0.18215)


def randomize(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Re-draw every parameter so no layer is an identity or zero (as the reference fixtures do)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    return model


def write_unet(out: Path, generator: torch.Generator) -> None:
    from latentsync.models import UNet3DConditionModel

    config = OmegaConf.load(config_path("unet/stage2.yaml"))
    config.model.update(UNET_MODEL)
    config.data.syncnet_config_path = str(out / "syncnet.yaml")
    config.data.resolution = 256
    config.ckpt.resume_ckpt_path = str(default_path("unet", out))
    atomic_write_text(out / UNET_CONFIG, OmegaConf.to_yaml(config))
    unet = randomize(UNet3DConditionModel.from_config(OmegaConf.to_container(config.model)), generator)
    atomic_save_torch({"state_dict": unet.state_dict(), "global_step": 0}, default_path("unet", out))


def write_syncnet(out: Path, generator: torch.Generator) -> None:
    from latentsync.models import StableSyncNet

    config = OmegaConf.load(config_path("syncnet/syncnet_16_pixel_attn.yaml"))
    config.model = SYNCNET_MODEL
    config.ckpt.inference_ckpt_path = str(default_path("stable_syncnet", out))
    atomic_write_text(out / "syncnet.yaml", OmegaConf.to_yaml(config))
    syncnet = randomize(StableSyncNet.from_config(SYNCNET_MODEL), generator)
    atomic_save_torch({"state_dict": syncnet.state_dict()}, default_path("stable_syncnet", out))


def write_whisper(out: Path) -> None:
    from whisper.model import ModelDimensions, Whisper

    model = Whisper(ModelDimensions(**WHISPER_DIMS))
    atomic_save_torch({"dims": WHISPER_DIMS, "model_state_dict": model.state_dict()}, default_path("whisper", out))


def write_vae(out: Path) -> None:
    from diffusers import AutoencoderKL

    AutoencoderKL(**VAE_CONFIG).save_pretrained(out / VAE_DIR)


def make_tiny_checkpoints(output_dir: str | os.PathLike) -> Path:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    write_syncnet(out, generator)
    write_unet(out, generator)
    write_whisper(out)
    write_vae(out)
    return out


def model_files(output_dir: str | os.PathLike) -> ModelFiles:
    """The tiny set in `output_dir` as the files a pipeline is built from."""
    out = Path(output_dir)
    return ModelFiles(unet_config=out / UNET_CONFIG, unet_ckpt=default_path("unet", out),
                      whisper=default_path("whisper", out), vae=str(out / VAE_DIR), checkpoints_dir=out)


def inference_flags(output_dir: str | os.PathLike) -> list[str]:
    """The command-line flags that point a run (CLI, app, server) at the tiny set in `output_dir`."""
    files = model_files(output_dir)
    return ["--checkpoints_dir", str(files.checkpoints_dir), "--unet_config_path", str(files.unet_config),
            "--inference_ckpt_path", str(files.unet_ckpt), "--whisper_ckpt_path", str(files.whisper),
            "--vae_path", files.vae]


def run(args: argparse.Namespace) -> None:
    out = make_tiny_checkpoints(args.output_dir)
    print(f"Tiny random checkpoints written to {out}/. Use them with these flags "
          f"(./inference.sh, gradio_app.py, python -m latentsync.server):\n  {shlex.join(inference_flags(out))}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    return run_cli(lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
