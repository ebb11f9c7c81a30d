"""Mouth metrics of a dubbed video: open ratio and texture ratio against a truth video, leak against the source (docs/evaluation.md).

    python -m scripts.eval_mouth --video_path dub.mp4 --truth_path truth.mp4 [--source_path source.mp4]

The truth is the same person saying the same speech for real (for a benchmark, the
reconstruction target); the source is the video before dubbing. Speech frames come from
--audio_path (default: the dubbed video's own sound track). Prints one line per metric.
"""

import argparse
import contextlib
import sys
from pathlib import Path

from latentsync.constants import MODEL_FPS
from latentsync.errors import UserError
from ._cli import command, new_parser

CHUNK = 16  # frames read at a time: memory does not grow with the video's length


def parse_args(argv=None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--video_path", required=True, help="the dubbed video")
    parser.add_argument("--truth_path", required=True, help="the truth video (same speech, real mouth)")
    parser.add_argument("--source_path", default=None, help="the video before dubbing (for the leak)")
    parser.add_argument("--audio_path", default=None,
                        help="the speech the dub follows (default: the dubbed video's sound)")
    return parser.parse_args(argv)


def track_of(path: str):
    """The MouthTrack of a video file, streamed at the model's frame rate."""
    from latentsync.eval.mouth import measure_mouth_track
    from latentsync.video import iter_frames

    with contextlib.closing(iter_frames(path, fps=MODEL_FPS, chunk_size=CHUNK)) as chunks:
        return measure_mouth_track(frame for chunk in chunks for frame in chunk)


def run(args: argparse.Namespace) -> dict:
    from latentsync.audio import load_audio
    from latentsync.eval.mouth import leak_correlation, open_ratio, texture_ratio
    from latentsync.vad import speech_frames

    for path in (args.video_path, args.truth_path, args.source_path, args.audio_path):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{path}: file not found")
    dub, truth = track_of(args.video_path), track_of(args.truth_path)
    speech = speech_frames(load_audio(args.audio_path or args.video_path), MODEL_FPS, len(dub.opening))
    scores = dict(open_ratio=open_ratio(dub.opening, truth.opening, speech),
                  texture_ratio=texture_ratio(dub.texture, truth.texture))
    if args.source_path:
        scores["leak_correlation"] = leak_correlation(dub.opening, track_of(args.source_path).opening)
    for name, value in scores.items():
        print(f"{args.video_path}: {name} {value:.4f}")
    return scores


main = command(parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
