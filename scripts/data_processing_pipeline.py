"""Turn a folder of raw talking-head videos into training clips (see data_processing_pipeline.sh).

    python -m scripts.data_processing_pipeline --input_dir RAW --output_dir OUT [options]

Stages 1-8 write OUT/valid, resampled, shots, segments, single_face, aligned, av_synced and
high_visual_quality; OUT/fileslist.txt lists the final clips, OUT/reports/*.csv every drop.
Re-running the same command resumes where it stopped.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from latentsync.cli_args import add_arguments, from_args, run_cli
from latentsync.data.preprocess.common import REENCODE_MODES, PipelineOptions

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


# the help (and the reference's spellings) of the PipelineOptions fields; defaults and types are the fields'
FLAGS = {
    "input_dir": dict(required=True, help="folder of raw videos (searched recursively)"),
    "output_dir": dict(default=None, help="folder for all stage outputs (default: the folder that holds --input_dir)"),
    "resolution": dict(help="aligned face size (256 or 512)"),
    "min_face_size": dict(help="stage 5: minimum face box width and height in pixels"),
    "face_check_stride": dict(help="stage 5: check every Nth frame (and the last one)"),
    "num_workers": dict(flags=("--total_num_workers",), help="worker processes (--total_num_workers: the reference's "
                                                              "name)"),
    "device_workers": dict(flags=("--per_gpu_num_workers",),
                           help="worker processes of stages 7-8, which run networks on --device "
                                "(default: --num_workers; --per_gpu_num_workers: the reference's name)"),
    "shard_index": dict(help="this machine's part (0-based)"),
    "num_shards": dict(help="number of machines"),
    "ray_address": dict(help="run on a Ray cluster (address, e.g. auto) or 'local' for this machine"),
    "segment_seconds": dict(parse=positive_seconds,
                            help="stage 4: cut each shot into pieces of this length up to twice it, and drop "
                                 "shorter shots (default 5: the reference's 5-10 s pieces)"),
    "skip_stages": dict(parse=parse_stages, help="comma-separated stage numbers to pass through, e.g. 7,8"),
    "reencode": dict(choices=REENCODE_MODES,
                     help="stages 2-4: auto copies video streams that are already 25 fps H.264/HEVC/MPEG-4 and cuts "
                          "on key frames by stream copy, re-encoding only the rest; always re-encodes every clip and "
                          "cut (slower; the earlier behaviour). See docs/data-pipeline.md"),
    "sync_conf_threshold": dict(help="stage 7: minimum SyncNet v2 confidence"),
    "max_sync_offset": dict(help="stage 7: maximum audio-video offset in frames"),
    "quality_threshold": dict(help="stage 8: minimum hyperIQA score"),
    "checkpoints_dir": dict(help="folder holding auxiliary/syncnet_v2.model and auxiliary/koniq_pretrained.pkl"),
    "device": dict(help="torch device for stages 7-8 (auto, cpu, cuda)"),
    "progress": dict(cli=False),  # --no_progress below
}


def build_parser() -> argparse.ArgumentParser:
    """One flag per PipelineOptions field (its default and type), plus --temp_dir and --no_progress."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, PipelineOptions, docs=FLAGS)
    parser.add_argument("--temp_dir", default=None,
                        help="folder for scratch files (default: the system's). Stage outputs never go "
                             "there: they are written next to their final name and renamed")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return parser


def default_output_dir(input_dir: str) -> str:
    """The reference writes its stage folders next to the input folder (ROOT/raw -> ROOT/<stage>)."""
    return str(Path(input_dir).resolve().parent)


def make_options(args: argparse.Namespace) -> PipelineOptions:
    """The PipelineOptions of parsed command-line arguments."""
    return from_args(PipelineOptions, args, output_dir=args.output_dir or default_output_dir(args.input_dir),
                     progress=not args.no_progress)


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe / TFLite chatter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from latentsync.data.preprocess import format_summary, run_pipeline
    from latentsync.paths import use_temp_dir

    options = make_options(args)
    use_temp_dir(args.temp_dir)
    summaries = run_pipeline(options)
    print(format_summary(summaries))
    fileslist = os.path.join(options.output_dir, "fileslist.txt")
    with open(fileslist, encoding="utf-8") as f:
        print(f"{fileslist}: {sum(1 for _ in f)} clips")


def main(argv=None) -> int:
    return run_cli(lambda: run(build_parser().parse_args(argv)), "%(levelname)s: %(message)s", logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
