"""What the command-line scripts share: logging set-up, the one-line `error: ...` exit for a
UserError (exit code 2), clean stops on Ctrl-C / SIGTERM and folder checks (the training
scripts' options are in latentsync/training/options.py)."""

import logging
import sys
from pathlib import Path
from typing import Callable

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


def require_dirs(*folders: str) -> None:
    """UserError for the first of `folders` that is not a directory."""
    for folder in folders:
        if not Path(folder).is_dir():
            raise UserError(f"{folder}: not a directory")
