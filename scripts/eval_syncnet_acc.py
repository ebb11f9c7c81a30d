"""SyncNet accuracy of a trained StableSyncNet on a file list (see docs/evaluation.md).

    python -m scripts.eval_syncnet_acc --config_path configs/syncnet/syncnet_16_pixel_attn.yaml \
        --ckpt_path checkpoints/stable_syncnet.pt --fileslist val.txt [--num_samples 2048] [--device cpu]

Samples in-sync and off-sync pairs as SyncNet training does (fixed seed, so the same file list
gives the same samples) and predicts "in sync" where the cosine similarity exceeds 0.5.
As in the reference (`python -m eval.eval_syncnet_acc --config_path ...`), what is not given on
the command line comes from the config: the checkpoint from ckpt.inference_ckpt_path, the videos
from data.val_fileslist (else data.val_data_dir), the sample count from data.num_val_samples.
"""

import argparse
import sys

import torch

from latentsync.checkpoints import default_path
from ._cli import command, new_parser

DEFAULT_CKPT = str(default_path("stable_syncnet"))
DEFAULT_NUM_SAMPLES = 2048


def parse_args(argv=None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--config_path", default="configs/syncnet/syncnet_16_pixel_attn.yaml")
    parser.add_argument("--ckpt_path", default=None,
                        help=f"default: the config's ckpt.inference_ckpt_path, else {DEFAULT_CKPT}")
    parser.add_argument("--fileslist", default=None,
                        help="one video path per line, or a folder of .mp4 (default: the config's "
                             "data.val_fileslist, else data.val_data_dir)")
    parser.add_argument("--num_samples", type=int, default=None,
                        help=f"default: the config's data.num_val_samples, else {DEFAULT_NUM_SAMPLES}")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    return parser.parse_args(argv)


def fill_from_config(args: argparse.Namespace, config) -> None:
    """Options not given on the command line, from the config as the reference reads them."""
    from latentsync.errors import UserError

    data, ckpt = config.get("data") or {}, config.get("ckpt") or {}
    if args.ckpt_path is None:
        args.ckpt_path = ckpt.get("inference_ckpt_path") or DEFAULT_CKPT
    if args.fileslist is None:
        args.fileslist = data.get("val_fileslist") or data.get("val_data_dir")
        if not args.fileslist:
            raise UserError(f"{args.config_path}: data.val_fileslist and data.val_data_dir are empty; "
                            "give --fileslist")
    if args.num_samples is None:
        args.num_samples = data.get("num_val_samples") or DEFAULT_NUM_SAMPLES


def run(args: argparse.Namespace) -> float:
    from latentsync.data.syncnet_dataset import SyncNetDataset
    from latentsync.device import pick_device
    from latentsync.errors import UserError
    from latentsync.io import read_yaml
    from latentsync.models import load_syncnet
    from latentsync.models.stable_syncnet import sync_accuracy

    config = read_yaml(args.config_path)
    fill_from_config(args, config)
    if args.num_samples < 1:
        raise UserError("--num_samples must be at least 1")
    device = pick_device(args.device)
    model = load_syncnet(args.config_path, args.ckpt_path, device=device).eval()
    data = config.get("data") or {}
    if data.get("latent_space"):
        raise UserError(f"{args.config_path}: latent-space SyncNets are not supported by this command")
    missing = [f"data.{key}" for key in ("num_frames", "resolution", "lower_half") if key not in data]
    if missing:
        raise UserError(f"{args.config_path}: {', '.join(missing)} missing")
    dataset = SyncNetDataset(args.fileslist, num_frames=data["num_frames"], resolution=data["resolution"],
                             lower_half=data["lower_half"], seed=args.seed, length=args.num_samples)
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


main = command(parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
