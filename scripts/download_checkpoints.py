"""Download the checkpoints into `checkpoints/` (see checkpoints/README.md for the full list).

Offline it gives up within seconds, lists what is missing and where to get it, and exits 0 so
that `setup_env.sh` still completes. `--all` also fetches the training/evaluation files.
"""

import argparse
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 4


@dataclass(frozen=True)
class Remote:
    repo: str  # Hugging Face repo id
    filename: str  # path inside the repo
    local: str  # path under checkpoints/
    purpose: str


INFERENCE = [
    Remote("ByteDance/LatentSync-1.6", "latentsync_unet.pt", "latentsync_unet.pt", "UNet (1.6, 512 px)"),
    Remote("ByteDance/LatentSync-1.6", "whisper/tiny.pt", "whisper/tiny.pt", "Whisper tiny audio encoder"),
    Remote("stabilityai/sd-vae-ft-mse", "config.json", "sd-vae-ft-mse/config.json", "VAE config"),
    Remote("stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.safetensors",
           "sd-vae-ft-mse/diffusion_pytorch_model.safetensors", "VAE weights"),
]
TRAINING = [
    Remote("ByteDance/LatentSync-1.6", "stable_syncnet.pt", "stable_syncnet.pt", "SyncNet for the sync loss"),
    Remote("ByteDance/LatentSync-1.5", "auxiliary/syncnet_v2.model", "auxiliary/syncnet_v2.model", "LSE-C/LSE-D"),
    Remote("ByteDance/LatentSync-1.5", "auxiliary/sfd_face.pth", "auxiliary/sfd_face.pth", "S3FD face tracks"),
    Remote("ByteDance/LatentSync-1.5", "auxiliary/koniq_pretrained.pkl", "auxiliary/koniq_pretrained.pkl", "hyperIQA"),
    Remote("ByteDance/LatentSync-1.5", "auxiliary/i3d_torchscript.pt", "auxiliary/i3d_torchscript.pt", "FVD"),
    Remote("ByteDance/LatentSync-1.5", "auxiliary/vgg16-397923af.pth", "auxiliary/vgg16-397923af.pth", "LPIPS backbone"),
    Remote("ByteDance/LatentSync-1.5", "auxiliary/vit_g_hybrid_pt_1200e_ssv2_ft.pth",
           "auxiliary/vit_g_hybrid_pt_1200e_ssv2_ft.pth", "TREPA (VideoMAE-v2)"),
]


def hub_reachable() -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def describe(remote: Remote) -> str:
    return f"  {remote.local:<48} {remote.purpose}: https://huggingface.co/{remote.repo} file {remote.filename}"


def download(remotes: list[Remote], checkpoints_dir: Path) -> list[Remote]:
    """Fetch what is missing; return what is still missing afterwards."""
    missing = [r for r in remotes if not (checkpoints_dir / r.local).is_file()]
    if not missing:
        return []
    if not hub_reachable():
        print("Offline: the Hugging Face hub cannot be reached; skipping checkpoint download.")
        return missing
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    from huggingface_hub import hf_hub_download

    still_missing = []
    for remote in missing:
        target = checkpoints_dir / remote.local
        print(f"Downloading {remote.repo}/{remote.filename} -> {target}")
        try:
            path = hf_hub_download(remote.repo, remote.filename, local_dir=str(checkpoints_dir / "_download"))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        except Exception as exc:  # network errors of many kinds: report and go on
            print(f"  failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            still_missing.append(remote)
    return still_missing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoints_dir", default="checkpoints")
    parser.add_argument("--all", action="store_true", help="also the training and evaluation checkpoints")
    args = parser.parse_args(argv)
    remotes = INFERENCE + (TRAINING if args.all else [])
    missing = download(remotes, Path(args.checkpoints_dir))
    if missing:
        print(f"Missing checkpoints under {args.checkpoints_dir}/ (download them by hand, see checkpoints/README.md):")
        print("\n".join(describe(r) for r in missing))
    else:
        print(f"All {'' if args.all else 'inference '}checkpoints present in {args.checkpoints_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
