"""LSE-C / LSE-D lip-sync scores of one video or a folder of videos (SyncNet v2, see docs/evaluation.md).

    python -m scripts.eval_sync_conf --video_path out.mp4
    python -m scripts.eval_sync_conf --videos_dir results/ --csv_out results/sync_conf.csv
"""

import argparse
import sys
from pathlib import Path

from latentsync.device import pick_device
from latentsync.errors import UserError
from latentsync.eval.s3fd import DETECTOR_CHOICES, S3FD_PATH, choose_face_detector
from latentsync.checkpoints import default_path
from latentsync.cli_args import DeprecatedFlag
from ._cli import command, new_parser, require_dirs


def parse_args(argv=None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video_path", help="one video to score")
    source.add_argument("--videos_dir", help="score every video in this folder (failures are skipped)")
    parser.add_argument("--initial_model", default=str(default_path("syncnet_v2")),
                        help="SyncNet v2 weights (syncnet_python's syncnet_v2.model)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    parser.add_argument("--csv_out", default=None, help="write per-video scores to this CSV file")
    parser.add_argument("--temp_dir", default=None,
                        help="folder for scratch files (default: the system's; as the reference's "
                             "--temp_dir, but nothing in it is deleted)")
    parser.add_argument("--min_track", type=int, default=50,
                        help="a face track needs more than this many frames with a face")
    parser.add_argument("--face_backend", default="auto", choices=DETECTOR_CHOICES,
                        help="face detector for the face tracks; auto (default): s3fd, the reference's "
                             "detector, when its weights exist, else mediapipe (scores then not "
                             "comparable with published numbers)")
    parser.add_argument("--face_detector", dest="face_backend", choices=DETECTOR_CHOICES, action=DeprecatedFlag,
                        help="deprecated spelling of --face_backend")
    parser.add_argument("--s3fd_path", default=None,
                        help=f"S3FD weights (syncnet_python's sfd_face.pth; default {S3FD_PATH})")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    from latentsync.eval import syncnet_v2 as sv
    from latentsync.paths import use_temp_dir

    use_temp_dir(args.temp_dir)
    if args.video_path and not Path(args.video_path).is_file():
        raise UserError(f"{args.video_path}: video file not found")
    if args.videos_dir:
        require_dirs(args.videos_dir)
    detector_name = choose_face_detector(args.face_backend, args.s3fd_path)  # missing weights: fail early
    device = pick_device(args.device)
    model = sv.load_syncnet_v2(args.initial_model, device)
    # only S3FD takes the extra arguments (keeps make_detector(name) working for the other backends)
    extra = dict(s3fd_path=args.s3fd_path, device=device) if detector_name == "s3fd" else {}
    detector = sv.make_detector(detector_name, **extra)
    options = sv.TrackOptions(min_track=args.min_track)
    if args.video_path:
        score = sv.sync_confidence(args.video_path, model, detector, device, options)
        if args.csv_out:
            sv.write_csv([dict(video=Path(args.video_path).name, error="", **score)], args.csv_out)
        print(f"{args.video_path}: AV offset {score['offset']}, LSE-C {score['lse_c']:.4f}, "
              f"LSE-D {score['lse_d']:.4f} ({score['num_tracks']} face tracks)")
        return
    result = sv.evaluate_folder(args.videos_dir, model, detector, device, args.csv_out, options)
    for row in result["rows"]:
        if row["error"]:
            print(f"{row['video']}: skipped ({row['error']})")
        else:
            print(f"{row['video']}: AV offset {row['offset']}, LSE-C {row['lse_c']:.4f}, "
                  f"LSE-D {row['lse_d']:.4f}")
    print(f"mean over {result['num_videos']} videos: LSE-C {result['lse_c']:.4f}, "
          f"LSE-D {result['lse_d']:.4f}")


main = command(parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
