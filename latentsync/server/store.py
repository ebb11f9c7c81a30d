"""The job table: one SQLite database (WAL mode) in the jobs folder, shared by the HTTP handlers
and the workers, each call on its own connection (sqlite3 connections are not shared across
threads).

A job moves queued -> running -> done | failed, or to cancelled from queued or running. Every
state change is one transaction, and a finishing worker only writes over `running`, so a job
cancelled while it runs stays cancelled. After a crash, `recover()` puts jobs that were running
back in the queue (at their old place), up to `MAX_ATTEMPTS` starts per job.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DB_NAME = "jobs.sqlite3"
STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
MAX_ATTEMPTS = 3  # a job that was running when the server died this many times is failed
BUSY_TIMEOUT_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: workers take the lowest first
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT,
    error TEXT,
    warnings TEXT NOT NULL DEFAULT '[]',   -- JSON list of lines (e.g. frames without a face)
    options TEXT NOT NULL,                 -- JSON of the LipsyncOptions values sent
    video_name TEXT NOT NULL,              -- the uploads' names, for display only
    audio_name TEXT NOT NULL,
    video_file TEXT NOT NULL,              -- file names inside the job's folder (chosen by the server)
    audio_file TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    device TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""


@dataclass
class Job:
    seq: int
    id: str
    state: str
    progress: float
    stage: str | None
    error: str | None
    warnings: str
    options: str
    video_name: str
    audio_name: str
    video_file: str
    audio_file: str
    attempts: int
    device: str | None
    created: float
    started: float | None
    finished: float | None

    def public(self) -> dict:
        """What GET /jobs/{id} shows (no server-side file names)."""
        record = asdict(self)
        for key in ("seq", "video_file", "audio_file"):
            record.pop(key)
        record["options"] = json.loads(self.options)
        record["warnings"] = json.loads(self.warnings)
        return record


class JobStore:
    def __init__(self, jobs_dir: str | Path):
        self.path = Path(jobs_dir) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE: the write lock is taken up front, so check-then-write is atomic."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def submit(self, job_id: str, options: dict, names: tuple[str, str], files: tuple[str, str],
               max_active: int, place_files=None) -> bool:
        """Queue a job unless `max_active` jobs are already queued or running (then False).

        `place_files()` runs inside the transaction, after the check: the job's folder is moved
        into place only when the job is accepted, and the row is only committed when it was.
        """
        with self._transaction() as db:
            active = db.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN {ACTIVE}").fetchone()[0]
            if active >= max_active:
                return False
            if place_files is not None:
                place_files()
            db.execute("INSERT INTO jobs (id, state, options, video_name, audio_name, video_file, audio_file, created)"
                       " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                       (job_id, json.dumps(options), *names, *files, time.time()))
        return True

    def claim(self, device: str) -> Job | None:
        """Mark the oldest queued job running on `device` and return it (None when the queue is empty)."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', progress = 0, stage = NULL, started = ?, device = ?,"
                       " attempts = attempts + 1 WHERE id = ?", (time.time(), device, row["id"]))
            return self._get(db, row["id"])

    def set_progress(self, job_id: str, progress: float, stage: str | None) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET progress = ?, stage = ? WHERE id = ? AND state = 'running'",
                       (progress, stage, job_id))

    def finish(self, job_id: str, state: str, error: str | None = None, warnings: list[str] = ()) -> bool:
        """running -> `state`; False if the job was no longer running (cancelled meanwhile)."""
        assert state in FINISHED
        progress = "1" if state == "done" else "progress"
        with self._connect() as db:
            cursor = db.execute(f"UPDATE jobs SET state = ?, error = ?, warnings = ?, progress = {progress},"
                                " finished = ? WHERE id = ? AND state = 'running'",
                                (state, error, json.dumps(list(warnings)), time.time(), job_id))
            return cursor.rowcount == 1

    def cancel(self, job_id: str) -> str | None:
        """queued/running -> cancelled; returns the state the job had (None if unknown)."""
        with self._transaction() as db:
            job = self._get(db, job_id)
            if job is None:
                return None
            if job.state in ACTIVE:
                db.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?", (time.time(), job_id))
            return job.state

    def requeue(self, job_id: str) -> None:
        """running -> queued at its old place, not counted as an attempt (the server is shutting down)."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET state = 'queued', progress = 0, stage = NULL, attempts = MAX(attempts - 1, 0)"
                       " WHERE id = ? AND state = 'running'", (job_id,))

    def recover(self) -> list[str]:
        """After a restart: jobs left `running` go back to the queue (or fail after MAX_ATTEMPTS)."""
        with self._transaction() as db:
            rows = db.execute("SELECT id, attempts FROM jobs WHERE state = 'running'").fetchall()
            for row in rows:
                if row["attempts"] >= MAX_ATTEMPTS:
                    db.execute("UPDATE jobs SET state = 'failed', finished = ?, error = ? WHERE id = ?",
                               (time.time(), f"the server stopped while running this job {row['attempts']} "
                                             f"times; giving up", row["id"]))
                else:
                    db.execute("UPDATE jobs SET state = 'queued', progress = 0, stage = NULL WHERE id = ?",
                               (row["id"],))
            return [row["id"] for row in rows]

    def get(self, job_id: str) -> Job | None:
        with self._connect() as db:
            return self._get(db, job_id)

    def list(self, state: str | None = None, limit: int = 100) -> list[Job]:
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
        return [Job(**dict(row)) for row in rows]

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in STATES} | {row["state"]: row["n"] for row in rows}

    def ids(self) -> set[str]:
        with self._connect() as db:
            return {row[0] for row in db.execute("SELECT id FROM jobs")}

    def expired(self, before: float) -> list[str]:
        """Finished jobs that finished before the time `before`."""
        with self._connect() as db:
            rows = db.execute(f"SELECT id FROM jobs WHERE state IN {FINISHED} AND finished < ?", (before,))
            return [row[0] for row in rows]

    def delete(self, job_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    @staticmethod
    def _get(db, job_id: str) -> Job | None:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job(**dict(row)) if row else None
