"""What the command-line scripts share: logging set-up, the one-line `error: ...` exit for a
UserError (exit code 2) and KEY=VALUE override checks."""

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from latentsync.errors import EXIT_USER_ERROR, UserError

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
    """Set up logging and call `action`; a UserError becomes `error: <message>` on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format=log_format)
    try:
        action()
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def check_overrides(parser: argparse.ArgumentParser, overrides: list[str]) -> None:
    """argparse error (exit code 2) for a trailing argument that is not KEY=VALUE."""
    for item in overrides:
        if "=" not in item:
            parser.error(f"override {item!r} is not KEY=VALUE")


def require_dirs(*folders: str) -> None:
    """UserError for the first of `folders` that is not a directory."""
    for folder in folders:
        if not Path(folder).is_dir():
            raise UserError(f"{folder}: not a directory")


def add_run_arguments(parser: argparse.ArgumentParser, device_help: str) -> None:
    """The options both training scripts take after their config path (same order in --help)."""
    parser.add_argument("--train_output_dir", help="folder for run folders (overrides data.train_output_dir)")
    parser.add_argument("--max_train_steps", type=int, help="overrides run.max_train_steps")
    parser.add_argument("--device", help=device_help)
    parser.add_argument("--resume_from", help="run folder or checkpoints/training-state-<step>.pt to continue exactly")
    parser.add_argument("--run_name", help="run folder name (default train-YYYY_MM_DD-HH_MM_SS)")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"],
                        help="default: fp16 on CUDA if run.mixed_precision_training, else no")
