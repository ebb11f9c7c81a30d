"""The one exception type for mistakes a user can fix (bad file, bad flag, missing checkpoint),
and how a run is stopped from outside.

Entry points catch `UserError`, print its message as one line and exit with `EXIT_USER_ERROR`;
anything else is a bug and keeps its traceback. `exit_on_termination()` makes SIGTERM (what
`kill`, job schedulers and containers send) unwind the program like Ctrl-C does, so `finally`
blocks and context managers remove temporary files and folders.
"""

import signal

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class UserError(Exception):
    """A problem with the user's input, named in one readable line."""


class ExternalToolError(UserError):
    """An external program (ffmpeg) failed; the message holds its exit status and its own last
    stderr lines, on one line."""


class Terminated(SystemExit):
    """Raised in the main thread when the process receives SIGTERM; exits with 128 + 15."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(128 + int(signum))
        self.signum = int(signum)


def _raise_terminated(signum, frame) -> None:
    # a second SIGTERM during the clean-up kills the process the default way
    signal.signal(signum, signal.SIG_DFL)
    raise Terminated(signum)


def exit_on_termination() -> None:
    """Make SIGTERM raise `Terminated` (a SystemExit) in the main thread, so a run stopped by
    `kill` cleans up like one stopped by an exception. SIGINT keeps raising KeyboardInterrupt.
    Call once from an entry point's main thread; elsewhere it does nothing."""
    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # e.g. started with nohup ... &
            return
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (signal handlers can only be set there)
        pass
