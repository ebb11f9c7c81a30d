"""The threads behind the API: one worker per device runs queued jobs in submission order, and a
janitor removes finished jobs once they are older than the retention period.

A worker is given a `DubFn` that owns its loaded pipeline (`latentsync.jobs.run_dub` bound to it),
so the models are loaded once per device, before the server starts answering.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

from latentsync.errors import UserError
from latentsync.jobs import ProgressFn
from latentsync.server.folders import JobFolders
from latentsync.server.store import FINISHED, Job, JobStore

logger = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # a worker with nothing to do looks at the queue this often (or when woken)
PROGRESS_STEP = 0.01  # progress is written to the database when it moved at least this much

# dub(video, audio, out, options, on_progress, work_dir)
DubFn = Callable[[str, str, str, dict, ProgressFn, str], object]  # returns a LipsyncResult


class Cancelled(Exception):
    """Raised from the progress callback to stop a job that was cancelled while running."""


class Worker(threading.Thread):
    def __init__(self, store: JobStore, folders: JobFolders, dub: DubFn, device: str, wake: threading.Event):
        super().__init__(name=f"latentsync-worker-{device}", daemon=True)
        self.store, self.folders, self.dub, self.device, self.wake = store, folders, dub, device, wake
        self.current: str | None = None  # id of the job being run
        self._cancel = threading.Event()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim(self.device)
            if job is None:
                self.wake.wait(IDLE_POLL_S)
                self.wake.clear()
                continue
            self.run_job(job)

    def stop(self) -> None:
        """Finish: take no more jobs and stop the current one at its next progress report."""
        self._stop.set()
        self._cancel.set()
        self.wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop the job if this worker is running it (at its next progress report)."""
        if self.current == job_id:
            self._cancel.set()

    def run_job(self, job: Job) -> None:
        self._cancel.clear()
        self.current = job.id
        folder = self.folders.job_dir(job.id)
        scratch = self.folders.scratch(job.id)
        scratch.mkdir(exist_ok=True)
        options = json.loads(job.options)
        state, error, warnings = "done", None, []
        try:
            result = self.dub(str(folder / job.video_file), str(folder / job.audio_file),
                              str(self.folders.result(job.id)), options, self._progress_reporter(job.id), str(scratch))
            warnings = [user_facing(w, folder, job) for w in getattr(result, "warnings", [])]
        except Cancelled:
            state = "cancelled"
        except UserError as exc:
            state, error = "failed", user_facing(str(exc), folder, job)
        except Exception as exc:  # a bug or an environment problem: keep the server up, log the traceback
            logger.exception("job %s failed", job.id)
            first_line = (str(exc).strip().splitlines() or [""])[0]
            state, error = "failed", user_facing(f"internal error: {type(exc).__name__}: {first_line}", folder, job)
        finally:
            self.current = None
        if state != "cancelled":
            self.store.finish(job.id, state, error, warnings)  # no-op if cancelled or requeued meanwhile
        state = self.store.get(job.id).state
        if state in FINISHED:  # (a job queued again by a shutdown keeps its uploads)
            self.folders.keep_only_result(job.id, keep_result=state == "done")
        logger.info("job %s: %s%s", job.id, state, f" ({error})" if error else "")

    def _progress_reporter(self, job_id: str) -> ProgressFn:
        last = {"progress": -1.0, "stage": None}

        def report(fraction: float, stage: str) -> None:
            if self._cancel.is_set():
                raise Cancelled(job_id)
            if fraction - last["progress"] >= PROGRESS_STEP or stage != last["stage"]:
                last.update(progress=fraction, stage=stage)
                self.store.set_progress(job_id, round(fraction, 4), stage)

        return report


class Janitor(threading.Thread):
    """Removes finished jobs (row and files) older than `retention_s`, checking every `every_s`."""

    def __init__(self, store: JobStore, folders: JobFolders, retention_s: float, every_s: float = 60.0):
        super().__init__(name="latentsync-janitor", daemon=True)
        self.store, self.folders, self.retention_s = store, folders, retention_s
        self.every_s = min(every_s, max(retention_s / 4, 1.0))
        self._stop = threading.Event()

    def run(self) -> None:
        while True:
            self.clean()
            if self._stop.wait(self.every_s):
                return

    def clean(self) -> list[str]:
        expired = self.store.expired(time.time() - self.retention_s)
        for job_id in expired:
            self.folders.remove(job_id)  # files first: after a crash in between, the next pass drops the row
            self.store.delete(job_id)
        if expired:
            logger.info("removed %d job(s) older than the retention period", len(expired))
        return expired

    def stop(self) -> None:
        self._stop.set()


def user_facing(message: str, folder, job: Job) -> str:
    """A pipeline error with the server's file paths replaced by the uploads' names."""
    message = message.replace(str(folder / job.video_file), job.video_name)
    message = message.replace(str(folder / job.audio_file), job.audio_name)
    return message.replace(str(folder) + "/", "")

