"""Turn a folder of raw talking-head videos into training clips (see data_processing_pipeline.sh).

    python -m scripts.data_processing_pipeline --input_dir RAW --output_dir OUT [options]

Stages 1-8 write OUT/valid, resampled, shots, segments, single_face, aligned, av_synced and
high_visual_quality; OUT/fileslist.txt lists the final clips, OUT/reports/*.csv every drop.
Re-running the same command resumes where it stopped.
"""

import argparse
import os
import sys
from pathlib import Path

from latentsync.checkpoints import CHECKPOINTS_DIR

EPILOG = """stages: 1 remove broken, 2 resample 25 fps / 16 kHz, 3 scene cuts, 4 5-10 s segments,
5 single face >= --min_face_size, 6 align faces, 7 SyncNet v2 sync, 8 hyperIQA quality.
Stages 7 and 8 need checkpoints/auxiliary/syncnet_v2.model and koniq_pretrained.pkl
(huggingface-cli download ByteDance/LatentSync-1.5 auxiliary/<file> --local-dir checkpoints).

the reference's command line works unchanged from the repository root (python -m
preprocess.data_processing_pipeline --total_num_workers 96 --per_gpu_num_workers 12
--resolution 256 --sync_conf_threshold 3 --temp_dir temp --input_dir ROOT/raw), and so do its
options here; they map onto ours:
  --total_num_workers    = --num_workers (worker processes)
  --per_gpu_num_workers  = --device_workers (processes of stages 7-8, which run on --device; for
                           several GPUs run one shard per GPU: --shard_index/--num_shards/--device cuda:N)
  --resolution, --sync_conf_threshold, --input_dir, --temp_dir: same names
  no --output_dir        = the stage folders go next to the input folder (ROOT/), as in the reference"""


def parse_stages(text: str) -> tuple:
    try:
        return tuple(sorted({int(part) for part in text.replace(" ", "").split(",") if part}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected stage numbers like 7,8, got {text!r}")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", required=True, help="folder of raw videos (searched recursively)")
    parser.add_argument("--output_dir", default=None,
                        help="folder for all stage outputs (default: the folder that holds --input_dir)")
    parser.add_argument("--resolution", type=int, default=256, help="aligned face size (256 or 512)")
    parser.add_argument("--min_face_size", type=int, default=256,
                        help="stage 5: minimum face box width and height in pixels")
    parser.add_argument("--face_check_stride", type=int, default=1,
                        help="stage 5: check every Nth frame (and the last one)")
    parser.add_argument("--num_workers", "--total_num_workers", type=int, default=1,
                        help="worker processes (--total_num_workers: the reference's name)")
    parser.add_argument("--device_workers", "--per_gpu_num_workers", type=int, default=None,
                        help="worker processes of stages 7-8, which run networks on --device "
                             "(default: --num_workers; --per_gpu_num_workers: the reference's name)")
    parser.add_argument("--shard_index", type=int, default=0, help="this machine's part (0-based)")
    parser.add_argument("--num_shards", type=int, default=1, help="number of machines")
    parser.add_argument("--ray_address", default=None,
                        help="run on a Ray cluster (address, e.g. auto) or 'local' for this machine")
    parser.add_argument("--segment_seconds", type=positive_seconds, default=5.0,
                        help="stage 4: cut each shot into pieces of this length up to twice it, and drop "
                             "shorter shots (default 5: the reference's 5-10 s pieces)")
    parser.add_argument("--skip_stages", type=parse_stages, default=(),
                        help="comma-separated stage numbers to pass through, e.g. 7,8")
    parser.add_argument("--reencode", choices=("auto", "always"), default="auto",
                        help="stages 2-4: auto copies video streams that are already 25 fps "
                             "H.264/HEVC/MPEG-4 and cuts on key frames by stream copy, re-encoding "
                             "only the rest; always re-encodes every clip and cut (slower; the "
                             "earlier behaviour). See docs/data-pipeline.md")
    parser.add_argument("--sync_conf_threshold", type=float, default=3.0,
                        help="stage 7: minimum SyncNet v2 confidence")
    parser.add_argument("--max_sync_offset", type=int, default=6,
                        help="stage 7: maximum audio-video offset in frames")
    parser.add_argument("--quality_threshold", type=float, default=40.0,
                        help="stage 8: minimum hyperIQA score")
    parser.add_argument("--checkpoints_dir", default=CHECKPOINTS_DIR,
                        help="folder holding auxiliary/syncnet_v2.model and auxiliary/koniq_pretrained.pkl")
    parser.add_argument("--device", default="auto", help="torch device for stages 7-8 (auto, cpu, cuda)")
    parser.add_argument("--temp_dir", default=None,
                        help="folder for scratch files (default: the system's). Stage outputs never go "
                             "there: they are written next to their final name and renamed")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return parser


def default_output_dir(input_dir: str) -> str:
    """The reference writes its stage folders next to the input folder (ROOT/raw -> ROOT/<stage>)."""
    return str(Path(input_dir).resolve().parent)


def make_options(args: argparse.Namespace):
    """The PipelineOptions of parsed command-line arguments."""
    from latentsync.data.preprocess import PipelineOptions

    return PipelineOptions(
        input_dir=args.input_dir, output_dir=args.output_dir or default_output_dir(args.input_dir),
        resolution=args.resolution, min_face_size=args.min_face_size,
        face_check_stride=args.face_check_stride, segment_seconds=args.segment_seconds, num_workers=args.num_workers,
        device_workers=args.device_workers, shard_index=args.shard_index, num_shards=args.num_shards,
        ray_address=args.ray_address, skip_stages=args.skip_stages,
        sync_conf_threshold=args.sync_conf_threshold, max_sync_offset=args.max_sync_offset,
        quality_threshold=args.quality_threshold, checkpoints_dir=args.checkpoints_dir,
        device=args.device, progress=not args.no_progress, reencode=args.reencode,
    )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe / TFLite chatter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from latentsync.data.preprocess import format_summary, run_pipeline
    from latentsync.errors import EXIT_USER_ERROR, UserError
    from latentsync.paths import use_temp_dir

    options = make_options(args)
    try:
        use_temp_dir(args.temp_dir)
        summaries = run_pipeline(options)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(format_summary(summaries))
    fileslist = os.path.join(options.output_dir, "fileslist.txt")
    with open(fileslist, encoding="utf-8") as f:
        print(f"{fileslist}: {sum(1 for _ in f)} clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
