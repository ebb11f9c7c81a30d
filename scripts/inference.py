"""Dub a video with a new speech track:

    python -m scripts.inference --video_path IN.mp4 --audio_path SPEECH.wav --video_out_path OUT.mp4

Batch mode: `--batch_csv rows.csv` with columns video,audio,output (header optional); rows whose
output already exists are skipped, so an interrupted batch resumes where it stopped.
"""

import argparse
import csv
import logging
import sys
from pathlib import Path

from latentsync.errors import EXIT_USER_ERROR, UserError

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = dict(unet_config_path=REPO / "configs/unet/stage2_512.yaml",
                inference_ckpt_path=REPO / "checkpoints/latentsync_unet.pt",
                whisper_ckpt_path=REPO / "checkpoints/whisper/tiny.pt", vae_path=REPO / "checkpoints/sd-vae-ft-mse")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unet_config_path", default=DEFAULTS["unet_config_path"])
    p.add_argument("--inference_ckpt_path", default=DEFAULTS["inference_ckpt_path"])
    p.add_argument("--whisper_ckpt_path", default=DEFAULTS["whisper_ckpt_path"])
    p.add_argument("--vae_path", default=DEFAULTS["vae_path"], help="diffusers VAE folder or hub id")
    p.add_argument("--video_path")
    p.add_argument("--audio_path")
    p.add_argument("--video_out_path")
    p.add_argument("--batch_csv", help="CSV of video,audio,output rows (skips rows whose output exists)")
    p.add_argument("--inference_steps", type=int, default=20)
    p.add_argument("--guidance_scale", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=1247, help="-1 for a random seed")
    p.add_argument("--enable_deepcache", action="store_true")
    p.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="default: fp16 on CUDA, else fp32")
    p.add_argument("--face_backend", default="mediapipe", choices=["mediapipe", "insightface", "face_alignment"])
    p.add_argument("--checkpoints_dir", default=str(REPO / "checkpoints"), help="where optional face backends find models")
    p.add_argument("--face_index", type=int, default=None, help="speaker: n-th face from the left (0-based)")
    p.add_argument("--face_box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"),
                   help="speaker: the face overlapping this box in the first frames")
    p.add_argument("--silence", default="mute", choices=["mute", "keep", "off"],
                   help="no speech: mute = generate with silent audio (mouth closed); keep = original frames; "
                        "off = as the reference (no voice detection)")
    p.add_argument("--segment_tail", default="overlap", choices=["overlap", "short"])
    p.add_argument("--output_fps", default="25", help="25 (model rate), 'original' (the input's rate) or a number")
    p.add_argument("--output_height", type=int, default=None, help="scale the output (default: input resolution)")
    p.add_argument("--temp_dir", default=None, help="folder for temporary files (default: system temp)")
    args = p.parse_args(argv)
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
    from latentsync.pipelines.lipsync_pipeline import LipsyncOptions
    from latentsync.video import probe_video

    if args.output_fps == "original":
        output_fps = probe_video(video_path).fps
    else:
        try:
            output_fps = float(args.output_fps)
        except ValueError:
            raise UserError(f"--output_fps {args.output_fps!r}: expected a number or 'original'") from None
    return LipsyncOptions(num_inference_steps=args.inference_steps, guidance_scale=args.guidance_scale,
                          seed=None if args.seed == -1 else args.seed, enable_deepcache=args.enable_deepcache,
                          silence=args.silence, segment_tail=args.segment_tail, face_index=args.face_index,
                          face_box=tuple(args.face_box) if args.face_box else None, output_fps=output_fps,
                          output_height=args.output_height, work_dir=args.temp_dir)


def run(args) -> int:
    from latentsync.pipelines.lipsync_pipeline import LipsyncPipeline

    jobs = read_batch(args.batch_csv) if args.batch_csv else [(args.video_path, args.audio_path, args.video_out_path)]
    for video, audio, _ in jobs:  # fail fast on missing inputs before loading models
        for path in (video, audio):
            if not Path(path).is_file():
                raise UserError(f"{path}: file not found")
    pipeline = LipsyncPipeline.from_checkpoints(args.unet_config_path, args.inference_ckpt_path,
                                                args.whisper_ckpt_path, args.vae_path, device=args.device,
                                                dtype=args.dtype, face_backend=args.face_backend,
                                                checkpoints_dir=args.checkpoints_dir)
    failures = 0
    for video, audio, out in jobs:
        if args.batch_csv and Path(out).exists():
            print(f"skip {out}: already exists")
            continue
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        try:
            pipeline(video, audio, out, make_options(args, video))
            print(f"wrote {out}")
        except UserError as exc:
            if not args.batch_csv:
                raise
            failures += 1
            print(f"error: {exc}", file=sys.stderr)
    return EXIT_USER_ERROR if failures else 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
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
