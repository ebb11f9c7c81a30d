"""Dub a video with a new speech track:

    python -m scripts.inference --video_path IN.mp4 --audio_path SPEECH.wav --video_out_path OUT.mp4

Batch mode: `--batch_csv rows.csv` with columns video,audio,output (header optional); rows whose
output already exists are skipped, so an interrupted batch resumes where it stopped.
Missing files and bad options are reported before the models (and torch) are loaded.
"""

import argparse
import csv
import dataclasses
import logging
import sys
from pathlib import Path

from latentsync import loading
from latentsync.cli_args import add_arguments, from_args, run_cli
from latentsync.errors import EXIT_USER_ERROR, UserError
from latentsync.pipelines.options import ORIGINAL_FPS, add_option_arguments, given_options, options_from_args

# flags that choose files, hardware or the job list rather than how a video is dubbed
# (every other flag is a field of LipsyncOptions; tests/test_options.py checks this)
NON_OPTION_FLAGS = ("unet_config_path", "inference_ckpt_path", "whisper_ckpt_path", "vae_path", "video_path",
                    "audio_path", "video_out_path", "batch_csv", "device", "dtype", "face_backend", "checkpoints_dir",
                    "ray_address")


def build_parser() -> argparse.ArgumentParser:
    """File and hardware flags (ModelSettings), job flags, then one flag per LipsyncOptions field."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, loading.ModelSettings)
    p.add_argument("--video_path")
    p.add_argument("--audio_path")
    p.add_argument("--video_out_path")
    p.add_argument("--batch_csv", help="CSV of video,audio,output rows (skips rows whose output exists)")
    p.add_argument("--ray_address", default=None, help="run the rows as Ray tasks (one GPU each where there are "
                   "GPUs): 'local' (this machine), 'auto' (the cluster it belongs to) or a cluster address")
    add_option_arguments(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    args.given_options = given_options(p, argv)  # so --preset does not override flags typed explicitly
    if not args.batch_csv and not (args.video_path and args.audio_path and args.video_out_path):
        p.error("give --video_path, --audio_path and --video_out_path, or --batch_csv")
    return args


def read_batch(path: str) -> list[tuple[str, str, str]]:
    if not Path(path).is_file():
        raise UserError(f"{path}: batch CSV not found")
    rows = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith("#") or (n == 1 and row[0].lower() == "video"):
                continue
            if len(row) != 3:
                raise UserError(f"{path}: line {n}: expected 3 columns video,audio,output, got {len(row)}")
            rows.append((row[0], row[1], row[2]))
    return rows


def for_video(options, args, video_path: str):
    """The job's options for one video: output_fps 'original' becomes the input's frame rate."""
    if args.output_fps != ORIGINAL_FPS:
        return options
    from latentsync.video import probe_video

    return dataclasses.replace(options, output_fps=probe_video(video_path).fps)


def run(args) -> int:
    jobs = read_batch(args.batch_csv) if args.batch_csv else [(args.video_path, args.audio_path, args.video_out_path)]
    for job in jobs:  # fail fast, before the slow imports and the model loading
        loading.check_job_paths(*job)
    options = options_from_args(args)  # a bad value is reported here, before the models load
    files = from_args(loading.ModelSettings, args).model_files().check()
    if args.ray_address:  # one Ray task per row: latentsync/batch.py
        from latentsync.batch import run_from_args

        return run_from_args(jobs, args)
    from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline

    pipeline = LipsyncPipeline.from_files(files, device=args.device, dtype=args.dtype, face_backend=args.face_backend)
    failures = 0
    for video, audio, out in jobs:
        if args.batch_csv and Path(out).exists():
            print(f"skip {out}: already exists")
            continue
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        try:
            result = pipeline(video, audio, out, for_video(options, args, video))
        except UserError as exc:
            if not args.batch_csv:
                raise
            failures += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"wrote {result.output_path} ({result.num_frames} frames, {result.segments} segments generated)")
    return EXIT_USER_ERROR if failures else 0


def main(argv=None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the run's temporary files are removed
    return run_cli(lambda: run(parse_args(argv)), "%(levelname)s: %(message)s", logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
