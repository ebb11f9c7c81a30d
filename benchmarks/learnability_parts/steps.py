"""Resumable steps: each finished step is recorded in WORK/steps.json (with its seconds and the
peak memory so far); a re-run skips recorded steps, and an interrupted training step continues
from its trainer's own training state (the trainers resume exactly).

Time spent in an interrupted attempt is kept (under "_interrupted") and added to the step's time
when it finishes, so the run's total is the real cost of all its attempts.

Heavy work runs in child processes (`python -m scripts...`), whose output goes to
WORK/logs/<step>.log; lines that report progress (validation, checkpoints, errors) are echoed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from benchmarks.learnability_parts.plan import REPO
from latentsync.io import atomic_write_text

STEPS_FILE = "steps.json"
PARTIAL_KEY = "_interrupted"
ECHO_MARKERS = ("step ", "error", "Error", "clips", "finished", "Traceback")
QUIET_ENV = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}


class StepFailed(RuntimeError):
    """A step's child process failed; the message names its log."""


def peak_rss_kb() -> int:
    """Peak resident memory in KiB of this process (VmHWM) and of its finished children (their
    ru_maxrss; a child's value can include this process's size when it forked, which VmHWM
    already bounds, so the maximum is the peak of any one process of the run)."""
    with open("/proc/self/status") as f:
        own = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children: on a shared machine
    it says how much work a step is, where its wall time also says how busy the machine was."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Steps:
    """The record of finished steps of one work folder."""

    def __init__(self, root: Path, total: int):
        self.total, self.index = total, 0
        self.path = root / STEPS_FILE
        self.done = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.partial = self.done.pop(PARTIAL_KEY, {})  # time spent in interrupted attempts, by step

    def run(self, name: str, action: Callable[[], dict | None]) -> dict:
        """Run `action` unless `name` is recorded; record its seconds, peak memory and result."""
        self.index += 1
        head = f"[{self.index}/{self.total}] {name}"
        if name in self.done:
            print(f"{head}: done earlier ({self.done[name]['seconds']:.0f} s), skipped", flush=True)
            return self.done[name].get("result") or {}
        print(f"{head} ...", flush=True)
        start, cpu_start = time.time(), cpu_seconds()
        earlier = self.partial.pop(name, dict(seconds=0.0, cpu_seconds=0.0))
        try:
            result = action() or {}
        except BaseException:  # interrupted or failed: its time still counts for the run
            self.partial[name] = dict(seconds=earlier["seconds"] + time.time() - start,
                                      cpu_seconds=earlier["cpu_seconds"] + cpu_seconds() - cpu_start)
            self.save()
            raise
        seconds = time.time() - start + earlier["seconds"]
        self.done[name] = dict(seconds=round(seconds, 1),
                               cpu_seconds=round(cpu_seconds() - cpu_start + earlier["cpu_seconds"], 1),
                               peak_rss_kb=peak_rss_kb(), result=result)
        self.save()
        print(f"{head}: finished in {seconds:.0f} s", flush=True)
        return result

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({**self.done, PARTIAL_KEY: self.partial}, indent=1))

    def total_seconds(self) -> float:
        return sum(entry["seconds"] for entry in self.done.values())

    def total_cpu_seconds(self) -> float:
        return sum(entry.get("cpu_seconds", 0.0) for entry in self.done.values())

    def peak_kb(self) -> int:
        return max([entry["peak_rss_kb"] for entry in self.done.values()] + [peak_rss_kb()])


def run_module(module: str, args: list[str], log_path: Path, threads: int) -> None:
    """`python -m module args` from the repository root with `threads` CPU threads; its output
    goes to `log_path` (progress lines echoed). StepFailed with the log's last lines on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **QUIET_ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", module, *[str(a) for a in args]]
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace")
        try:
            for line in process.stdout:
                log.write(line)
                if any(marker in line for marker in ECHO_MARKERS) and "Warning" not in line:
                    print("    " + line.rstrip()[-160:], flush=True)
            code = process.wait()
        except BaseException:
            process.terminate()
            process.wait()
            raise
    if code != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-8:]
        raise StepFailed(f"{module} failed (exit code {code}); see {log_path}:\n" + "\n".join(tail))
