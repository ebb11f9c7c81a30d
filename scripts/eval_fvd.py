"""FVD between the face clips of a folder of real and a folder of generated videos (see docs/evaluation.md).

    python -m scripts.eval_fvd --real_videos_dir real/ --fake_videos_dir fake/
"""

import argparse
import sys

from latentsync.device import pick_device
from latentsync.face.detectors import DEFAULT_FACE_BACKEND
from latentsync.cli_args import DeprecatedFlag
from ._cli import command, require_dirs, video_dirs_parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = video_dirs_parser(__doc__, "--i3d_path", "i3d", "TorchScript I3D (StyleGAN-V release)")
    parser.add_argument("--device", default="cpu", help="device for I3D (the reference uses the CPU)")
    parser.add_argument("--face_backend", default=DEFAULT_FACE_BACKEND, help="face detector backend")
    parser.add_argument("--face_detector", dest="face_backend", action=DeprecatedFlag,
                        help="deprecated spelling of --face_backend")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> float:
    from latentsync.eval import fvd
    from latentsync.eval.syncnet_v2 import make_detector

    require_dirs(args.real_videos_dir, args.fake_videos_dir)
    device = pick_device(args.device)
    model = fvd.load_i3d(args.i3d_path, device)
    detector = make_detector(args.face_backend)
    value = fvd.compute_fvd(args.real_videos_dir, args.fake_videos_dir, model, detector, device)
    print(f"FVD: {value:.4f}")
    return value


main = command(parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
