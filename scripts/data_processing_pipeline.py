"""Turn a folder of raw talking-head videos into training clips (see data_processing_pipeline.sh).

    python -m scripts.data_processing_pipeline --input_dir RAW --output_dir OUT [options]

Stages 1-8 write OUT/valid, resampled, shots, segments, single_face, aligned, av_synced and
high_visual_quality; OUT/fileslist.txt lists the final clips, OUT/reports/*.csv every drop.
Re-running the same command resumes where it stopped.
"""

import argparse
import os
import sys

EPILOG = """stages: 1 remove broken, 2 resample 25 fps / 16 kHz, 3 scene cuts, 4 5-10 s segments,
5 single face >= --min_face_size, 6 align faces, 7 SyncNet v2 sync, 8 hyperIQA quality.
Stages 7 and 8 need checkpoints/auxiliary/syncnet_v2.model and koniq_pretrained.pkl
(huggingface-cli download ByteDance/LatentSync-1.5 auxiliary/<file> --local-dir checkpoints)."""


def parse_stages(text: str) -> tuple:
    try:
        return tuple(sorted({int(part) for part in text.replace(" ", "").split(",") if part}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected stage numbers like 7,8, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", required=True, help="folder of raw videos (searched recursively)")
    parser.add_argument("--output_dir", required=True, help="folder for all stage outputs")
    parser.add_argument("--resolution", type=int, default=256, help="aligned face size (256 or 512)")
    parser.add_argument("--min_face_size", type=int, default=256,
                        help="stage 5: minimum face box width and height in pixels")
    parser.add_argument("--face_check_stride", type=int, default=1,
                        help="stage 5: check every Nth frame (and the last one)")
    parser.add_argument("--num_workers", type=int, default=1, help="worker processes")
    parser.add_argument("--shard_index", type=int, default=0, help="this machine's part (0-based)")
    parser.add_argument("--num_shards", type=int, default=1, help="number of machines")
    parser.add_argument("--ray_address", default=None,
                        help="run on a Ray cluster (address, e.g. auto) or 'local' for this machine")
    parser.add_argument("--skip_stages", type=parse_stages, default=(),
                        help="comma-separated stage numbers to pass through, e.g. 7,8")
    parser.add_argument("--sync_conf_threshold", type=float, default=3.0,
                        help="stage 7: minimum SyncNet v2 confidence")
    parser.add_argument("--max_sync_offset", type=int, default=6,
                        help="stage 7: maximum audio-video offset in frames")
    parser.add_argument("--quality_threshold", type=float, default=40.0,
                        help="stage 8: minimum hyperIQA score")
    parser.add_argument("--checkpoints_dir", default="checkpoints",
                        help="folder holding auxiliary/syncnet_v2.model and auxiliary/koniq_pretrained.pkl")
    parser.add_argument("--device", default="auto", help="torch device for stages 7-8 (auto, cpu, cuda)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe / TFLite chatter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from latentsync.data.preprocess import PipelineOptions, format_summary, run_pipeline
    from latentsync.errors import EXIT_USER_ERROR, UserError

    options = PipelineOptions(
        input_dir=args.input_dir, output_dir=args.output_dir, resolution=args.resolution,
        min_face_size=args.min_face_size, face_check_stride=args.face_check_stride,
        num_workers=args.num_workers, shard_index=args.shard_index, num_shards=args.num_shards,
        ray_address=args.ray_address, skip_stages=args.skip_stages,
        sync_conf_threshold=args.sync_conf_threshold, max_sync_offset=args.max_sync_offset,
        quality_threshold=args.quality_threshold, checkpoints_dir=args.checkpoints_dir,
        device=args.device, progress=not args.no_progress,
    )
    try:
        summaries = run_pipeline(options)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(format_summary(summaries))
    fileslist = os.path.join(args.output_dir, "fileslist.txt")
    with open(fileslist, encoding="utf-8") as f:
        print(f"{fileslist}: {sum(1 for _ in f)} clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
