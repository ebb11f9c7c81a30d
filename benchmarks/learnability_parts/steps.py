"""Resumable steps: each finished step is recorded in WORK/steps.json (with its seconds and the
peak memory so far); a re-run skips recorded steps, and an interrupted training step continues
from its trainer's own training state (the trainers resume exactly).

Time spent in an interrupted attempt is kept (under "_interrupted") and added to the step's time
when it finishes, so the run's total is the real cost of all its attempts.

Heavy work runs in child processes (`python -m scripts...`), whose output goes to
WORK/logs/<step>.log; lines that report progress (validation, checkpoints, errors) are echoed.
Independent chains of steps (e.g. the SyncNet beside the VAE and the UNet's first stage) can run
side by side (`Steps.parallel`), one core each; the run's time counts such a group once, as its
longest chain. A step's CPU seconds are its own thread's (side by side) or its process's (alone)
plus those of the child processes it started, measured per child, so chains do not mix.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from benchmarks.learnability_parts.plan import REPO
from latentsync.io import atomic_write_text

STEPS_FILE = "steps.json"
PARTIAL_KEY = "_interrupted"
ECHO_MARKERS = ("step ", "error", "Error", "clips", "finished", "Traceback")
QUIET_ENV = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
_CHILDREN = threading.local()  # CPU seconds and peak KiB of the child processes this thread started


class StepFailed(RuntimeError):
    """A step's child process failed; the message names its log."""


def peak_rss_kb() -> int:
    """Peak resident memory in KiB of this process (VmHWM) and of its finished children (their
    ru_maxrss; a child's value can include this process's size when it forked, which VmHWM
    already bounds, so the maximum is the peak of any one process of the run)."""
    with open("/proc/self/status") as f:
        own = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    """CPU time (user + system) of this process (or thread, RUSAGE_THREAD) and of the child
    processes this thread started: on a shared machine it says how much work a step is, where its
    wall time also says how busy the machine was."""
    own = resource.getrusage(who)
    return own.ru_utime + own.ru_stime + getattr(_CHILDREN, "cpu", 0.0)


def _child_peak_kb() -> int:
    return getattr(_CHILDREN, "peak_kb", 0)


class Steps:
    """The record of finished steps of one work folder."""

    def __init__(self, root: Path, total: int, jobs: int = 1):
        self.total, self.index, self.jobs = total, 0, jobs
        self.path = root / STEPS_FILE
        self.done = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.partial = self.done.pop(PARTIAL_KEY, {})  # time spent in interrupted attempts, by step
        self._lock = threading.Lock()
        self._chain = threading.local()  # "group/chain" of the steps this thread runs side by side
        self._stopping = threading.Event()  # a side-by-side chain failed: start no new step

    def run(self, name: str, action: Callable[[], dict | None]) -> dict:
        """Run `action` unless `name` is recorded; record its seconds, peak memory and result."""
        with self._lock:
            self.index += 1
            head = f"[{self.index}/{self.total}] {name}"
        if name in self.done:
            print(f"{head}: done earlier ({self.done[name]['seconds']:.0f} s), skipped", flush=True)
            return self.done[name].get("result") or {}
        if self._stopping.is_set():
            raise StepFailed(f"{name}: not started, another step failed")
        print(f"{head} ...", flush=True)
        chain = getattr(self._chain, "name", None)
        who = resource.RUSAGE_THREAD if chain else resource.RUSAGE_SELF
        start, cpu_start = time.time(), cpu_seconds(who)
        earlier = self.partial.pop(name, dict(seconds=0.0, cpu_seconds=0.0))
        try:
            result = action() or {}
        except BaseException:  # interrupted or failed: its time still counts for the run
            with self._lock:
                self.partial[name] = dict(seconds=earlier["seconds"] + time.time() - start,
                                          cpu_seconds=earlier["cpu_seconds"] + cpu_seconds(who) - cpu_start)
                self.save()
            raise
        seconds = time.time() - start + earlier["seconds"]
        cpu = cpu_seconds(who) - cpu_start + earlier["cpu_seconds"]
        entry = dict(seconds=round(seconds, 1), cpu_seconds=round(cpu, 1),
                     peak_rss_kb=max(peak_rss_kb(), _child_peak_kb()), result=result)
        with self._lock:
            self.done[name] = {**entry, **({"chain": chain} if chain else {})}
            self.save()
        print(f"{head}: finished in {seconds:.0f} s", flush=True)
        return result

    def parallel(self, group: str, *chains: Callable[[], None]) -> None:
        """Run the chains (each a function running steps in order) side by side, one thread each
        (one after the other when jobs is 1); the first failure (or Ctrl-C) is raised once all
        chains have stopped."""
        if self.jobs <= 1:
            for chain in chains:
                chain()
            return
        errors = []

        def run_chain(index: int, chain: Callable[[], None]) -> None:
            self._chain.name = f"{group}/{index}"
            try:
                chain()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(exc)
                self._stopping.set()
                stop_children()

        threads = [threading.Thread(target=run_chain, args=(i, c), daemon=True) for i, c in enumerate(chains)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        except BaseException:
            self._stopping.set()
            stop_children()
            for thread in threads:
                thread.join()
            raise
        if errors:
            raise errors[0]

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({**self.done, PARTIAL_KEY: self.partial}, indent=1))

    def total_seconds(self) -> float:
        """Wall seconds of the run: serial steps add up, a side-by-side group counts its longest chain."""
        chains: dict[str, float] = {}
        for entry in self.done.values():
            key = entry.get("chain")
            if key:
                chains[key] = chains.get(key, 0.0) + entry["seconds"]
        groups: dict[str, float] = {}
        for key, seconds in chains.items():
            group = key.rsplit("/", 1)[0]
            groups[group] = max(groups.get(group, 0.0), seconds)
        return sum(e["seconds"] for e in self.done.values() if not e.get("chain")) + sum(groups.values())

    def total_cpu_seconds(self) -> float:
        return sum(entry.get("cpu_seconds", 0.0) for entry in self.done.values())

    def peak_kb(self) -> int:
        return max([entry["peak_rss_kb"] for entry in self.done.values()] + [peak_rss_kb()])


_RUNNING: set[subprocess.Popen] = set()


def stop_children() -> None:
    """Terminate every child process still running (another chain failed or Ctrl-C)."""
    for process in list(_RUNNING):
        if process.poll() is None:
            process.terminate()


def _wait(process: subprocess.Popen) -> int:
    """Wait for `process`; add its CPU seconds and peak memory to this thread's children."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    _CHILDREN.cpu = getattr(_CHILDREN, "cpu", 0.0) + usage.ru_utime + usage.ru_stime
    _CHILDREN.peak_kb = max(_child_peak_kb(), usage.ru_maxrss)
    return process.returncode


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
        _RUNNING.add(process)
        try:
            for line in process.stdout:
                log.write(line)
                if any(marker in line for marker in ECHO_MARKERS) and "Warning" not in line:
                    print("    " + line.rstrip()[-160:], flush=True)
            code = _wait(process)
        except BaseException:
            process.terminate()
            _wait(process)
            raise
        finally:
            _RUNNING.discard(process)
    if code != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-8:]
        raise StepFailed(f"{module} failed (exit code {code}); see {log_path}:\n" + "\n".join(tail))
