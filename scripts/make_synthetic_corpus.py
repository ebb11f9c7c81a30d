"""Write a synthetic talking-face corpus whose mouths follow their speech, with the truth stored.

    python -m scripts.make_synthetic_corpus --output_dir DIR --num_clips N [--seed S]

Clips go to DIR/train/ and DIR/heldout/ (no sentence in both), each with its 16 kHz wav, truth
mouth track (NAME.mouth.csv: frame,open,width), head motion and phoneme timings; DIR/manifest.csv
lists them. Re-running the same command skips finished clips. See latentsync/synthetic/.
"""

import argparse
import os
import sys

from latentsync.constants import DEFAULT_SEED
from ._cli import command, new_parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = new_parser(__doc__, one_line_errors=True)
    parser.add_argument("--output_dir", required=True, help="folder for the corpus (created; resumable)")
    parser.add_argument("--num_clips", type=int, required=True, help="number of clips")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="fixes sentences, voices, faces and motion")
    parser.add_argument("--heldout_fraction", type=float, default=0.2, help="share of clips in heldout/")
    parser.add_argument("--size", type=int, default=256, help="frame width and height in pixels")
    parser.add_argument("--min_seconds", type=float, default=0.0,
                        help="join sentences (then pad silence) until a clip is this long, e.g. 5 for "
                             "the data pipeline's default segment length")
    parser.add_argument("--workers", type=int, default=1,
                        help="clips rendered at once in separate processes (the same clips as with 1)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe / TFLite chatter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from latentsync.synthetic.corpus import CorpusOptions, make_corpus

    options = CorpusOptions(output_dir=args.output_dir, num_clips=args.num_clips, seed=args.seed,
                            heldout_fraction=args.heldout_fraction, size=args.size,
                            min_seconds=args.min_seconds, progress=not args.no_progress,
                            workers=args.workers)
    rows = make_corpus(options)
    heldout = sum(row["split"] == "heldout" for row in rows)
    print(f"{len(rows)} clips ({len(rows) - heldout} train, {heldout} heldout) in {args.output_dir}; "
          f"manifest: {os.path.join(args.output_dir, 'manifest.csv')}")


main = command(parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
