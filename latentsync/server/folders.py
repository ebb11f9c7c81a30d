"""Where a job's files live: `<jobs_dir>/<id>/` holds the uploads (`video<ext>`, `audio<ext>`, names
chosen by the server; the client's file names are only ever shown, never used as paths), the
pipeline's scratch folder `tmp/` and the finished `result.mp4`.

Uploads are first written to `<jobs_dir>/.incoming/<random>/` and moved into place in one rename
when the job is accepted. `sweep()` runs at start-up and removes whatever a killed process left:
unfinished uploads, scratch folders, temporary (`.partial`) outputs and folders without a job.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from latentsync.constants import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS
from latentsync.io import TEMP_MARK

INCOMING = ".incoming"
RESULT_NAME = "result.mp4"
SCRATCH = "tmp"
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
# extensions kept on stored uploads (some demuxers look at them); anything else is stored bare
SAFE_EXTS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS


def new_job_id() -> str:
    return uuid.uuid4().hex


def valid_id(job_id: str) -> bool:
    return bool(JOB_ID.match(job_id))


def stored_name(kind: str, client_name: str | None) -> str:
    """`video.mp4` / `audio.wav` / `video`: the kind plus a known extension, nothing else of the client's."""
    suffix = Path(client_name or "").suffix.lower()
    return kind + (suffix if suffix in SAFE_EXTS else "")


def display_name(client_name: str | None, default: str) -> str:
    """The upload's base name, printable and short, for messages and listings only."""
    name = (client_name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:120]
    return name if name not in ("", ".", "..") else default


class JobFolders:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / INCOMING).mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        assert valid_id(job_id), job_id
        return self.root / job_id

    def result(self, job_id: str) -> Path:
        return self.job_dir(job_id) / RESULT_NAME

    def scratch(self, job_id: str) -> Path:
        return self.job_dir(job_id) / SCRATCH

    def staging(self) -> Path:
        """A fresh folder for one submission's uploads."""
        path = self.root / INCOMING / uuid.uuid4().hex
        path.mkdir()
        return path

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def keep_only_result(self, job_id: str, keep_result: bool) -> None:
        """After a job ends: drop uploads and scratch (and the result unless it is wanted)."""
        folder = self.job_dir(job_id)
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            if keep_result and path.name == RESULT_NAME:
                continue
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    def sweep(self, known_ids: set[str]) -> None:
        """Remove what a killed server left behind (see the module docstring)."""
        shutil.rmtree(self.root / INCOMING, ignore_errors=True)
        (self.root / INCOMING).mkdir()
        for folder in self.root.iterdir():
            if not folder.is_dir() or not valid_id(folder.name):
                continue  # not ours: leave anything else in the folder alone
            if folder.name not in known_ids:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            shutil.rmtree(folder / SCRATCH, ignore_errors=True)
            for path in folder.iterdir():
                if TEMP_MARK in path.name:
                    path.unlink(missing_ok=True)
