"""SyncNet accuracy of a trained StableSyncNet on a file list (SPEC 10.2).

    python -m scripts.eval_syncnet_acc --config_path configs/syncnet/syncnet_16_pixel_attn.yaml \
        --ckpt_path checkpoints/stable_syncnet.pt --fileslist val.txt [--num_samples 2048] [--device cpu]

Samples in-sync and off-sync pairs as SyncNet training does (fixed seed, so the same file list
gives the same samples) and predicts "in sync" where the cosine similarity exceeds 0.5.
"""

import argparse
import sys

import torch

from scripts._cli import run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_path", default="configs/syncnet/syncnet_16_pixel_attn.yaml")
    parser.add_argument("--ckpt_path", default="checkpoints/stable_syncnet.pt")
    parser.add_argument("--fileslist", required=True, help="one video path per line (or a folder of .mp4)")
    parser.add_argument("--num_samples", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> float:
    from omegaconf import OmegaConf

    from latentsync.data.syncnet_dataset import SyncNetDataset
    from latentsync.device import pick_device
    from latentsync.errors import UserError
    from latentsync.models import load_syncnet
    from latentsync.models.stable_syncnet import sync_accuracy

    if args.num_samples < 1:
        raise UserError("--num_samples must be at least 1")
    device = pick_device(args.device)
    model = load_syncnet(args.config_path, args.ckpt_path, device=device).eval()
    data = OmegaConf.load(args.config_path).data
    if data.get("latent_space"):
        raise UserError(f"{args.config_path}: latent-space SyncNets are not supported by this command")
    dataset = SyncNetDataset(args.fileslist, num_frames=data.num_frames, resolution=data.resolution,
                             lower_half=data.lower_half, seed=args.seed, length=args.num_samples)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size)
    correct = seen = 0.0
    with torch.no_grad():
        for batch in loader:
            vision, audio = model(batch["frames"].to(device), batch["mel"].to(device))
            correct += sync_accuracy(vision, audio, batch["label"].to(device)).item() * len(batch["label"])
            seen += len(batch["label"])
    accuracy = correct / seen
    print(f"SyncNet accuracy: {accuracy:.4f} on {int(seen)} samples")
    return accuracy


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
