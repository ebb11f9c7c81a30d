"""What the command-line scripts share: logging set-up, the one-line `error: ...` exit for a
UserError (exit code 2), clean stops on Ctrl-C / SIGTERM, the parser and `main` of a script
made of `parse_args(argv)` and `run(args)`, and folder checks (the training scripts' options are
in latentsync/training/options.py)."""

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from latentsync.checkpoints import default_path
from latentsync.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, Terminated, UserError, exit_on_termination

PLAIN_LOG_FORMAT = "%(message)s"
TRAIN_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WRAPPED_PREFIX = "latentsync.errors.UserError: "


def user_message(error: UserError) -> str:
    """The one-line message (a UserError raised in a DataLoader worker arrives wrapped in a traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return "UserError"
    last = lines[-1]
    return last[len(WRAPPED_PREFIX):] if last.startswith(WRAPPED_PREFIX) else lines[0]


def run_cli(action: Callable[[], object], log_format: str = PLAIN_LOG_FORMAT) -> int:
    """Set up logging and call `action`; a UserError becomes `error: <message>` on stderr and exit code 2.

    Ctrl-C and SIGTERM unwind `action` (its `finally` blocks and context managers remove the
    run's temporary files) and end with one line and exit code 130 / 143, not a traceback.
    """
    logging.basicConfig(level=logging.INFO, format=log_format)
    exit_on_termination()
    try:
        action()
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as e:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return int(e.code)
    return 0


def command(parse_args: Callable[[list | None], argparse.Namespace], run: Callable[[argparse.Namespace], object],
            log_format: str = PLAIN_LOG_FORMAT) -> Callable[..., int]:
    """`main(argv=None) -> exit code` of a script: `run(parse_args(argv))` under `run_cli`."""

    def main(argv=None) -> int:
        return run_cli(lambda: run(parse_args(argv)), log_format)

    return main


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one `error: ...` line (exit code 2), no usage."""

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


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
