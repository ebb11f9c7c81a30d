"""Dub a video with a new speech track:

    python -m scripts.inference --video_path IN.mp4 --audio_path SPEECH.wav --video_out_path OUT.mp4

Batch mode: `--batch_csv rows.csv` with columns video,audio,output (header optional); rows whose
output already exists are skipped, so an interrupted batch resumes where it stopped.
Missing files and bad options are reported before the models (and torch) are loaded.
"""

import argparse
import csv
import logging
import sys
from pathlib import Path

from latentsync import loading
from latentsync.errors import EXIT_USER_ERROR, UserError, exit_on_termination
from latentsync.face.detectors import DEFAULT_DETECTOR, DETECTOR_NAMES
from latentsync.pipelines.options import ORIGINAL_FPS, add_option_arguments, given_options, options_from_args

# flags that choose files, hardware or the job list rather than how a video is dubbed
# (every other flag is a field of LipsyncOptions; tests/test_options.py checks this)
NON_OPTION_FLAGS = ("unet_config_path", "inference_ckpt_path", "whisper_ckpt_path", "vae_path", "video_path",
                    "audio_path", "video_out_path", "batch_csv", "device", "dtype", "face_backend", "checkpoints_dir",
                    "ray_address")
WHISPER_HELP = ("default: picked by the UNet config's cross_attention_dim: "
                + ", ".join(f"{w} -> checkpoints/{p}" for w, p in loading.WHISPER_BY_WIDTH.items()))


def build_parser() -> argparse.ArgumentParser:
    """File, hardware and job flags, then one flag per LipsyncOptions field."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unet_config_path", default=str(loading.DEFAULT_UNET_CONFIG))
    p.add_argument("--inference_ckpt_path", default=str(loading.DEFAULT_UNET_CKPT))
    p.add_argument("--whisper_ckpt_path", default=None, help=WHISPER_HELP)
    p.add_argument("--vae_path", default=str(loading.DEFAULT_VAE), help="diffusers VAE folder or hub id")
    p.add_argument("--video_path")
    p.add_argument("--audio_path")
    p.add_argument("--video_out_path")
    p.add_argument("--batch_csv", help="CSV of video,audio,output rows (skips rows whose output exists)")
    p.add_argument("--ray_address", default=None, help="run the rows as Ray tasks (one GPU each where there are "
                   "GPUs): 'local' (this machine), 'auto' (the cluster it belongs to) or a cluster address")
    p.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="default: fp16 on CUDA, else fp32")
    p.add_argument("--face_backend", default=DEFAULT_DETECTOR, choices=DETECTOR_NAMES)
    p.add_argument("--checkpoints_dir", default=str(loading.CHECKPOINTS_DIR),
                   help="where the default Whisper file and the optional face backends' models are found")
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


def make_options(args, video_path: str):
    """LipsyncOptions for one job (output_fps 'original' becomes the input's frame rate)."""
    if args.output_fps == ORIGINAL_FPS:
        from latentsync.video import probe_video

        return options_from_args(args, output_fps=probe_video(video_path).fps)
    return options_from_args(args)


def run(args) -> int:
    jobs = read_batch(args.batch_csv) if args.batch_csv else [(args.video_path, args.audio_path, args.video_out_path)]
    for job in jobs:  # fail fast, before the slow imports and the model loading
        loading.check_job_paths(*job)
    options_from_args(args)  # option values checked here too
    files = loading.resolve_files(args.unet_config_path, args.inference_ckpt_path, args.whisper_ckpt_path,
                                  args.vae_path, args.checkpoints_dir)
    if args.ray_address:  # one Ray task per row: latentsync/batch.py
        from latentsync.batch import run_from_args

        return run_from_args(jobs, args)
    from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline

    pipeline = LipsyncPipeline(**loading.load_components(files, args.device, args.dtype, args.face_backend,
                                                          args.checkpoints_dir))
    failures = 0
    for video, audio, out in jobs:
        if args.batch_csv and Path(out).exists():
            print(f"skip {out}: already exists")
            continue
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        try:
            result = pipeline(video, audio, out, make_options(args, video))
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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    exit_on_termination()  # SIGTERM unwinds like Ctrl-C, so the run's temporary files are removed
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
