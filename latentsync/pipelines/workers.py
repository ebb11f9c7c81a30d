"""Workers: the threads of one pipeline run, which work at the same time and stop together.

A lip-sync run overlaps its face pass (decoding + face tracking), the model (main thread) and the
paste-back + video encoding, so none of them waits for the others (dub_run.py). This module holds
the threading plumbing so the run can read as the algorithm. ("Worker" is the name for these
threads; "stage" is kept for the training stages and for `Progress.stage`, docs/architecture.md.)

- `Workers` starts worker threads, keeps the first exception any of them raises and hands it to
  the main thread (`check`, `wait_until`), which re-raises it unchanged: a UserError from a worker
  still ends the run with its one-line message. Leaving the `with` block (normally, by an error,
  Ctrl-C or SIGTERM, which always arrive in the main thread) sets `stop` and joins every worker,
  so no thread outlives the run and temporary files can be removed right after.
- `Channel` is a bounded queue between two threads: a full queue makes the producer wait (memory
  stays flat however long the video), and neither side blocks forever when the run stops.

Workers poll `stop` every POLL_S seconds while they wait; a worker that sees it raises `Stopped`,
which ends it quietly (the error that stopped the run is reported by whoever raised it).
"""

import queue
import threading
from typing import Any, Callable

POLL_S = 0.05  # how often a waiting thread looks at the stop flag


class Stopped(Exception):
    """Raised inside a worker when the run was stopped elsewhere."""


class Workers:
    """The worker threads of one run (use as a context manager)."""

    def __init__(self):
        self.stop = threading.Event()
        self.changed = threading.Condition()  # notified when a worker publishes progress or fails
        self.error: BaseException | None = None
        self._threads: list[threading.Thread] = []

    def start(self, name: str, target: Callable[..., Any], *args) -> threading.Thread:
        """Run `target(*args)` in a new daemon thread of this run."""
        thread = threading.Thread(target=self._run, args=(target, args), name=f"latentsync-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def _run(self, target, args) -> None:
        try:
            target(*args)
        except Stopped:
            pass
        except BaseException as error:  # handed to the main thread, which raises it
            with self.changed:
                self.error = self.error or error
                self.changed.notify_all()
            self.stop.set()

    def notify(self) -> None:
        """Wake whoever waits in `wait_until` (call after publishing progress)."""
        with self.changed:
            self.changed.notify_all()

    def check(self) -> None:
        """Re-raise a worker's exception in the calling thread; `Stopped` if the run was stopped."""
        if self.error is not None:
            raise self.error
        if self.stop.is_set():
            raise Stopped()

    def wait_until(self, ready: Callable[[], bool], tick: Callable[[], None] | None = None,
                   refresh: Callable[[], None] | None = None) -> None:
        """Block until `ready()`. Under the lock workers publish with, `refresh()` first takes in what
        they published (e.g. plans the frames the face pass finished) and `ready()` then only reads;
        `tick()` runs after every wake-up, outside the lock (e.g. to report progress)."""
        while True:
            with self.changed:
                self.check()
                if refresh is not None:
                    refresh()
                if ready():
                    return
                self.changed.wait(POLL_S)
            if tick is not None:
                tick()

    def join(self, thread: threading.Thread, tick: Callable[[], None] | None = None) -> None:
        """Wait for one worker to finish, re-raising its error."""
        self.wait_until(lambda: not thread.is_alive(), tick)
        self.check()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.notify()
        for thread in self._threads:
            thread.join()


class Channel:
    """A bounded queue between two threads that gives up (instead of blocking) when the run stops."""

    def __init__(self, workers: Workers, maxsize: int):
        self.workers, self._queue = workers, queue.Queue(maxsize)

    def put(self, item) -> None:
        while True:
            self.workers.check()
            try:
                return self._queue.put(item, timeout=POLL_S)
            except queue.Full:
                continue

    def get(self):
        while True:
            if self.workers.stop.is_set():
                raise Stopped()
            try:
                return self._queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
