"""What the command-line scripts share: the parser and `main` of a script made of
`parse_args(argv)` and `run(args)` (under `latentsync.cli_args.run_cli`, the one error handler:
a UserError is one `error: ...` line and exit code 2, Ctrl-C / SIGTERM stop cleanly), and
folder checks (the training scripts' options are in latentsync/training/options.py)."""

import argparse
from pathlib import Path
from typing import Callable

from latentsync.checkpoints import default_path
from latentsync.cli_args import PLAIN_LOG_FORMAT, OneLineParser, run_cli
from latentsync.errors import UserError


def command(parse_args: Callable[[list | None], argparse.Namespace], run: Callable[[argparse.Namespace], object],
            log_format: str = PLAIN_LOG_FORMAT) -> Callable[..., int]:
    """`main(argv=None) -> exit code` of a script: `run(parse_args(argv))` under `run_cli` (what
    `run` returns is its result, not an exit code)."""

    def main(argv=None) -> int:
        def action() -> None:
            run(parse_args(argv))

        return run_cli(action, log_format)

    return main


def new_parser(doc: str, one_line_errors: bool = False) -> argparse.ArgumentParser:
    """The parser of a script, described by the first line of its docstring `doc`."""
    parser_class = OneLineParser if one_line_errors else argparse.ArgumentParser
    return parser_class(description=doc.splitlines()[0])


def video_dirs_parser(doc: str, weights_option: str, weights_name: str, weights_help: str) -> argparse.ArgumentParser:
    """The parser of a metric over a folder of real and a folder of generated videos:
    --real_videos_dir, --fake_videos_dir and the metric network's weights (default: the
    checkpoint table's file `weights_name`)."""
    parser = new_parser(doc)
    parser.add_argument("--real_videos_dir", required=True)
    parser.add_argument("--fake_videos_dir", required=True)
    parser.add_argument(weights_option, default=str(default_path(weights_name)), help=weights_help)
    return parser


def require_dirs(*folders: str) -> None:
    """UserError for the first of `folders` that is not a directory."""
    for folder in folders:
        if not Path(folder).is_dir():
            raise UserError(f"{folder}: not a directory")
