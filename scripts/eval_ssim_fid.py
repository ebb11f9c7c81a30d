"""SSIM and FID of generated videos against the real videos of the same file names.

    python -m scripts.eval_ssim_fid --real_videos_dir real/ --fake_videos_dir fake/ \
        --inception_path checkpoints/auxiliary/inception_v3_google-0cc3c7bd.pth
"""

import argparse
import sys

from latentsync.device import pick_device
from latentsync.errors import UserError
from ._cli import command, require_dirs, video_dirs_parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = video_dirs_parser(__doc__, "--inception_path", "inception",
                               "torchvision Inception v3 ImageNet weights for FID")
    parser.add_argument("--no_fid", action="store_true", help="compute SSIM only")
    parser.add_argument("--frame_stride", type=int, default=1, help="use every n-th frame")
    parser.add_argument("--max_frames", type=int, default=None, help="at most this many frames per video")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from latentsync.eval.image_metrics import InceptionFeatures, evaluate_folders

    require_dirs(args.real_videos_dir, args.fake_videos_dir)
    if args.frame_stride < 1:
        raise UserError(f"--frame_stride {args.frame_stride}: must be at least 1")
    extractor = None if args.no_fid else InceptionFeatures(args.inception_path, pick_device(args.device))
    result = evaluate_folders(args.real_videos_dir, args.fake_videos_dir, extractor,
                              args.frame_stride, args.max_frames)
    line = f"SSIM: {result['ssim']:.4f} over {result['num_videos']} videos"
    if result["fid"] is not None:
        line += f"; FID: {result['fid']:.4f}"
    print(line)
    return result


main = command(parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
