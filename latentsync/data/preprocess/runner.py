"""Running the 8 data stages over a folder of raw videos: discovery, sharding, workers, resume.

Layout of `OUT` (= `--output_dir`):

    OUT/valid/ resampled/ shots/ segments/ single_face/ aligned/ av_synced/ high_visual_quality/
    OUT/ledger/<stage folder>/<host>-<pid>.jsonl   one line per finished input (kept or dropped)
    OUT/reports/<stage folder>.csv                 every dropped input: stage, input, reason, detail
    OUT/fileslist.txt                              the clips of high_visual_quality, sorted

Resuming: an input is skipped when the ledger has a result for it that was made with the same
stage parameters from the same input file (size and modification time) and whose outputs all
still exist. Outputs are renamed into place before their ledger line is written, so a run
killed at any moment redoes at most the inputs that were in flight, and the restarted run
ends with the same files as an uninterrupted one. Dropped inputs are in the ledger too, so
they are not scored again. Unexpected failures (reason `error`) are reported but retried.

Parallelism: `num_workers` processes (each builds its face detector and networks once), or a
Ray cluster (`ray_address`; "local" starts Ray on this machine only). The stages that run
networks on `device` (7 and 8) use `device_workers` processes instead, when given, so a GPU is not
shared by more processes than fit in its memory. `shard_index` /
`num_shards` give each machine a contiguous part of the sorted input list; every shard then
follows its own inputs through all stages, so shards never wait for each other.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from latentsync.data.preprocess import (align_faces, check_faces, detect_shots, filter_quality,
                                        remove_broken, resample, segment, sync_av)
from latentsync.data.preprocess.common import (REENCODE_MODES, PipelineOptions, StageResult, link_or_copy,
                                               segment_frames)
from latentsync.constants import VIDEO_EXTENSIONS
from latentsync.errors import UserError
from latentsync.io import TEMP_MARK, atomic_write_text, discard

logger = logging.getLogger(__name__)

LEDGER_DIR = "ledger"
REPORTS_DIR = "reports"
FILESLIST = "fileslist.txt"
REPORT_FIELDS = ("stage", "input", "reason", "detail")
CHECKPOINT_SOURCE = "huggingface-cli download ByteDance/LatentSync-1.5 auxiliary/{name} " \
                    "--local-dir {dir}"


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: its number (as in --skip_stages), folder, function and parameters."""

    number: int
    folder: str
    run: Callable[[Path, Path, PipelineOptions], StageResult]
    params: Callable[[PipelineOptions], dict]  # the options its results depend on
    on_device: bool = False  # runs a network on options.device (worker count: device_workers)


def _encoding(options: PipelineOptions) -> dict:
    """The options that decide how stages 2 and 3 write video (stream copy, key frames)."""
    if options.reencode == "always":
        return {"reencode": "always"}
    return {"reencode": options.reencode, "keyframe_interval": segment_frames(options)}


STAGES = (
    Stage(1, remove_broken.FOLDER, remove_broken.remove_broken, lambda o: {}),
    Stage(2, resample.FOLDER, resample.resample, lambda o: _encoding(o)),
    Stage(3, detect_shots.FOLDER, detect_shots.detect_shots,
          lambda o: {"threshold": detect_shots.ADAPTIVE_THRESHOLD, **_encoding(o)}),
    Stage(4, segment.FOLDER, segment.segment,
          lambda o: {"seconds": o.segment_seconds, "reencode": o.reencode}),
    Stage(5, check_faces.FOLDER, check_faces.check_faces,
          lambda o: {"min_face_size": o.min_face_size, "stride": o.face_check_stride}),
    Stage(6, align_faces.FOLDER, align_faces.align_faces, lambda o: {"resolution": o.resolution}),
    Stage(7, sync_av.FOLDER, sync_av.sync_av,
          lambda o: {"threshold": o.sync_conf_threshold, "max_offset": o.max_sync_offset,
                     "checkpoint": str(o.syncnet_path)}, on_device=True),
    Stage(8, filter_quality.FOLDER, filter_quality.filter_quality,
          lambda o: {"threshold": o.quality_threshold, "checkpoint": str(o.hyper_iqa_path)},
          on_device=True),
)
STAGE_BY_NUMBER = {s.number: s for s in STAGES}
FINAL_FOLDER = STAGES[-1].folder


# --------------------------------------------------------------------------------------------
# inputs


def discover_inputs(input_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Video files under `input_dir` (recursive, hidden names skipped), sorted by relative path.

    `exclude` (the output folder, if it lies inside the input folder) is not searched.
    """
    if not input_dir.is_dir():
        raise UserError(f"{input_dir}: input folder not found")
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for root, dirs, files in os.walk(input_dir):
        root_path = Path(root)
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and (exclude is None or (root_path / d).resolve() != exclude)]
        found += [root_path / f for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_EXTENSIONS]
    return sorted(found, key=lambda p: p.relative_to(input_dir).as_posix())


def shard(items: list, index: int, count: int) -> list:
    """Contiguous part `index` of `count` near-equal parts (sizes differ by at most one)."""
    if count < 1 or not 0 <= index < count:
        raise UserError(f"--shard_index {index} --num_shards {count}: need 0 <= index < shards")
    size, extra = divmod(len(items), count)
    start = index * size + min(index, extra)
    return items[start:start + size + (index < extra)]


def check_checkpoints(options: PipelineOptions) -> None:
    """Stop before any work if a stage that is not skipped lacks its checkpoint."""
    needed = [(7, options.syncnet_path, "SyncNet v2 sync confidence"),
              (8, options.hyper_iqa_path, "hyperIQA visual quality")]
    for number, path, purpose in needed:
        if number in options.skip_stages or path.is_file():
            continue
        source = CHECKPOINT_SOURCE.format(name=path.name, dir=options.checkpoints_dir)
        raise UserError(f"{path}: checkpoint of stage {number} ({purpose}) not found; get it "
                        f"with `{source}` (Hugging Face ByteDance/LatentSync-1.5, folder "
                        f"auxiliary/), or run without the stage: --skip_stages {number}")


def check_options(options: PipelineOptions) -> None:
    """UserError for option values that cannot work."""
    bad = [n for n in options.skip_stages if n not in STAGE_BY_NUMBER]
    if bad:
        raise UserError(f"--skip_stages {bad[0]}: stages are numbered 1 to {len(STAGES)}")
    if options.resolution < 64 or options.resolution % 2:
        raise UserError(f"--resolution {options.resolution}: use 256 or 512")
    if options.num_workers < 1:
        raise UserError(f"--num_workers {options.num_workers}: need at least 1")
    if options.device_workers is not None and options.device_workers < 1:
        raise UserError(f"--device_workers {options.device_workers}: need at least 1")
    if options.reencode not in REENCODE_MODES:
        raise UserError(f"--reencode {options.reencode}: use one of {', '.join(REENCODE_MODES)}")
    if options.face_check_stride < 1:
        raise UserError(f"--face_check_stride {options.face_check_stride}: need at least 1")
    shard([], options.shard_index, options.num_shards)


# --------------------------------------------------------------------------------------------
# ledger


def _identity(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class Ledger:
    """The finished inputs of one stage, read from every ledger file of the stage folder; this
    process appends to its own file (one JSON line per input, flushed and synced)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.entries: dict[str, dict] = {}
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
            for line in path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                old = self.entries.get(entry.get("input"))
                if old is None or entry.get("time", 0) >= old.get("time", 0):
                    self.entries[entry["input"]] = entry
        self._file = None

    def done(self, key: str, input_path: Path, params: dict, output_root: Path) -> dict | None:
        """The entry of an input that needs no work, or None."""
        entry = self.entries.get(key)
        if entry is None or entry.get("status") not in ("kept", "dropped"):
            return None
        if entry.get("params") != params or not input_path.exists():
            return None
        if {k: entry.get(k) for k in ("size", "mtime_ns")} != _identity(input_path):
            return None
        if not all((output_root / o).is_file() for o in entry.get("outputs", [])):
            return None
        return entry

    def record(self, entry: dict) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"{socket.gethostname()}-{os.getpid()}.jsonl"
            self._file = open(self.folder / name, "a", encoding="utf-8")
        self._file.write(json.dumps(entry, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.entries[entry["input"]] = entry

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --------------------------------------------------------------------------------------------
# work items


def run_item(stage_number: int, input_path: str, output_dir: str, options: PipelineOptions,
             skipped: bool = False) -> tuple[StageResult, float]:
    """Run one stage on one input (in whatever process); unexpected failures become
    `error` results instead of stopping the whole run. Returns (result, seconds)."""
    start = time.perf_counter()
    try:
        stage_fn = pass_through if skipped else STAGE_BY_NUMBER[stage_number].run
        result = stage_fn(Path(input_path), Path(output_dir), options)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop ten thousand
        logger.debug("stage %d failed on %s:\n%s", stage_number, input_path,
                     traceback.format_exc())
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        result = StageResult(reason="error", detail=message, error=True)
    return result, time.perf_counter() - start


def pass_through(input_path: Path, output_dir: Path, options: PipelineOptions) -> StageResult:
    """What a skipped stage does: link its input into its folder unchanged."""
    return StageResult.keep(link_or_copy(input_path, output_dir / input_path.name))


def _init_worker(threads: int) -> None:
    """Process-pool worker start: quiet native loggers, share the cores fairly."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import torch

    torch.set_num_threads(threads)


class SerialExecutor:
    """Runs the items one after another in this process."""

    def imap_unordered(self, tasks: list[tuple]) -> Iterator[tuple[int, tuple]]:
        for index, task in enumerate(tasks):
            yield index, run_item(*task)

    def close(self) -> None:
        pass


class PoolExecutor:
    """`num_workers` spawned processes (fork is unsafe with torch / MediaPipe threads)."""

    def __init__(self, num_workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // num_workers)
        self.pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker, initargs=(threads,))

    def imap_unordered(self, tasks: list[tuple]) -> Iterator[tuple[int, tuple]]:
        from concurrent.futures import as_completed

        futures = {self.pool.submit(run_item, *task): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            yield futures[future], future.result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


class RayExecutor:
    """Ray tasks (one CPU each) on the cluster at `address`, or on this machine ("local")."""

    def __init__(self, address: str, num_workers: int):
        from latentsync.ray_utils import init_ray

        self.ray = ray = init_ray(address, num_cpus=num_workers)
        self.remote = ray.remote(num_cpus=1)(run_item)

    def imap_unordered(self, tasks: list[tuple]) -> Iterator[tuple[int, tuple]]:
        pending = {self.remote.remote(*task): i for i, task in enumerate(tasks)}
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in ready:
                yield pending.pop(ref), self.ray.get(ref)

    def close(self) -> None:
        pass


def make_executor(options: PipelineOptions, num_workers: int | None = None):
    """Ray tasks, `num_workers` (default options.num_workers) processes, or this process."""
    num_workers = num_workers or options.num_workers
    if options.ray_address:
        return RayExecutor(options.ray_address, options.num_workers)
    if num_workers > 1:
        return PoolExecutor(num_workers)
    return SerialExecutor()


class Executors:
    """The executor of each stage: one for all stages, plus one of `device_workers` processes for
    the stages that run networks on the device when that count differs (made when first needed)."""

    def __init__(self, options: PipelineOptions):
        self.options = options
        self.made: dict[int, object] = {}

    def workers_for(self, stage: Stage) -> int:
        device_workers = self.options.device_workers
        if stage.on_device and device_workers and not self.options.ray_address:
            return device_workers
        return self.options.num_workers

    def for_stage(self, stage: Stage):
        count = self.workers_for(stage)
        if count not in self.made:
            self.made[count] = make_executor(self.options, count)
        return self.made[count]

    def close(self) -> None:
        for executor in self.made.values():
            executor.close()


# --------------------------------------------------------------------------------------------
# one stage


@dataclass
class StageSummary:
    """What one stage did in this run."""

    number: int
    folder: str
    inputs: int = 0
    kept: int = 0
    outputs: int = 0
    resumed: int = 0  # finished by an earlier run
    dropped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    skipped: bool = False


def run_stage(stage: Stage, input_root: Path, inputs: list[str], options: PipelineOptions,
              executor) -> tuple[list[str], StageSummary]:
    """Run `stage` on `inputs` (paths relative to `input_root`); returns the kept outputs
    (relative to the stage folder, sorted) and the stage summary."""
    out_root = Path(options.output_dir) / stage.folder
    skipped = stage.number in options.skip_stages
    params = {"skipped": True} if skipped else stage.params(options)
    ledger = Ledger(Path(options.output_dir) / LEDGER_DIR / stage.folder)
    summary = StageSummary(stage.number, stage.folder, inputs=len(inputs), skipped=skipped)
    start = time.perf_counter()
    if options.num_shards == 1:
        _remove_partials(out_root)
    outputs: dict[str, list[str]] = {}
    todo = []
    for key in inputs:
        entry = ledger.done(key, input_root / key, params, out_root)
        if entry is not None:
            _count(summary, entry)
            outputs[key] = entry["outputs"]
            summary.resumed += 1
        else:
            _remove_stale(ledger.entries.get(key), out_root)
            todo.append(key)
    label = f"{stage.number} {stage.folder}" + (" (skipped)" if skipped else "")
    bar = tqdm(total=len(inputs), initial=len(inputs) - len(todo), desc=label, unit="clip",
               disable=not options.progress, file=sys.stderr, dynamic_ncols=True)
    tasks = [(stage.number, str(input_root / key), str(out_root / Path(key).parent), options,
              skipped) for key in todo]
    run = SerialExecutor() if skipped else executor  # linking is not worth a process
    try:
        for index, (result, seconds) in run.imap_unordered(tasks):
            key = todo[index]
            entry = _entry(key, input_root / key, params, result, out_root, seconds)
            ledger.record(entry)
            _count(summary, entry)
            outputs[key] = entry["outputs"]
            bar.update(1)
    finally:
        bar.close()
        ledger.close()
    write_report(stage, ledger, input_root)
    summary.seconds = time.perf_counter() - start
    kept = sorted(o for key in inputs for o in outputs.get(key, []))
    return kept, summary


def _entry(key: str, input_path: Path, params: dict, result: StageResult, out_root: Path,
           seconds: float) -> dict:
    status = "error" if result.error else ("kept" if result.kept else "dropped")
    outs = [Path(o).resolve().relative_to(out_root.resolve()).as_posix() for o in result.outputs]
    identity = _identity(input_path) if input_path.exists() else {"size": -1, "mtime_ns": -1}
    return {"input": key, **identity, "params": params, "status": status, "outputs": sorted(outs),
            "reason": result.reason, "detail": result.detail, "seconds": round(seconds, 3),
            "time": time.time()}


def _count(summary: StageSummary, entry: dict) -> None:
    if entry["status"] == "kept":
        summary.kept += 1
        summary.outputs += len(entry["outputs"])
    else:
        summary.dropped[entry["reason"]] += 1


def _remove_stale(entry: dict | None, out_root: Path) -> None:
    """Delete what an outdated result of this input wrote (it is about to be redone)."""
    for name in (entry or {}).get("outputs", []):
        discard(out_root / name)


def _remove_partials(folder: Path) -> None:
    """Delete temporary files left by a killed run (only safe when no other shard writes)."""
    if folder.is_dir():
        for path in folder.rglob(".*"):
            if path.is_file() and (TEMP_MARK in path.name or path.name.endswith(".faces.mp4")):
                discard(path)


def write_report(stage: Stage, ledger: Ledger, input_root: Path) -> Path:
    """`reports/<folder>.csv`: every dropped (or failed) input of the stage, sorted."""
    path = ledger.folder.parent.parent / REPORTS_DIR / f"{stage.folder}.csv"
    rows = sorted((e["input"], e["reason"], e["detail"]) for e in ledger.entries.values()
                  if e["status"] != "kept" and (input_root / e["input"]).exists())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_FIELDS)
    writer.writerows((stage.folder, *row) for row in rows)
    _write_text(path, buffer.getvalue())
    return path


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


# --------------------------------------------------------------------------------------------
# whole pipeline


def write_fileslist(output_dir: Path) -> Path:
    """`fileslist.txt`: absolute paths of the clips in high_visual_quality, one per line."""
    folder = output_dir / FINAL_FOLDER
    clips = sorted(str(p.resolve()) for p in folder.rglob("*.mp4")
                   if not any(part.startswith(".") for part in p.relative_to(folder).parts)) \
        if folder.is_dir() else []
    path = output_dir / FILESLIST
    _write_text(path, "".join(c + "\n" for c in clips))
    return path


def run_pipeline(options: PipelineOptions) -> list[StageSummary]:
    """Run all stages on this shard's inputs; returns one summary per stage."""
    check_options(options)
    check_checkpoints(options)
    input_dir, output_dir = Path(options.input_dir), Path(options.output_dir)
    raw = discover_inputs(input_dir, exclude=output_dir)
    if not raw:
        raise UserError(f"{input_dir}: no video files found ({', '.join(VIDEO_EXTENSIONS)})")
    output_dir.mkdir(parents=True, exist_ok=True)
    keys = [p.relative_to(input_dir).as_posix() for p in shard(raw, options.shard_index,
                                                               options.num_shards)]
    executors = Executors(options)
    summaries = []
    try:
        input_root = input_dir
        for stage in STAGES:
            keys, summary = run_stage(stage, input_root, keys, options, executors.for_stage(stage))
            summaries.append(summary)
            input_root = output_dir / stage.folder
    finally:
        executors.close()
    write_fileslist(output_dir)
    return summaries


def format_summary(summaries: Iterable[StageSummary]) -> str:
    """The end-of-run table: per stage inputs, kept, outputs, drops by reason, seconds."""
    header = ("stage", "inputs", "kept", "outputs", "resumed", "seconds", "dropped (by reason)")
    rows = [header]
    for s in summaries:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(s.dropped.items())) or "-"
        name = f"{s.number} {s.folder}" + (" (skipped)" if s.skipped else "")
        rows.append((name, str(s.inputs), str(s.kept), str(s.outputs), str(s.resumed),
                     f"{s.seconds:.1f}", reasons))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    return "\n".join(lines)
