"""Batch dubbing on Ray: one task per (video, audio, output) row, one GPU per task where the
cluster has GPUs, each output written under a temporary name and renamed when complete.

Rows whose output exists are skipped (checked before submitting and again inside the task), so
running the same batch again resumes it. Each Ray worker process loads the models once and keeps
them for the rows it runs after that. Entry point: `inference.sh --batch_csv rows.csv
--ray_address auto|local|ADDRESS` (README.md, "Batch dubbing on Ray").
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from latentsync.cli_args import from_args
from latentsync.errors import EXIT_USER_ERROR, UserError
from latentsync.jobs import PipelineSpec, job_options, load_pipeline, run_dub
from latentsync.loading import ModelSettings
from latentsync.pipelines.options import option_values_from_args
from latentsync.ray_utils import cluster_gpus, init_ray

logger = logging.getLogger(__name__)

WROTE, SKIPPED, FAILED = "wrote", "skipped", "failed"
_LOADED: dict = {}  # per worker process: PipelineSpec -> pipeline


def dub_row(spec: PipelineSpec, video: str, audio: str, out: str, options: dict) -> tuple[str, str, str]:
    """Run one row in this process: (out, status, message). UserErrors become FAILED rows."""
    if Path(out).exists():
        return out, SKIPPED, "already exists"
    try:
        if spec not in _LOADED:
            _LOADED[spec] = load_pipeline(spec)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        result = run_dub(_LOADED[spec], video, audio, out, options)
    except UserError as exc:
        return out, FAILED, str(exc)
    return out, WROTE, "; ".join(result.warnings)


def run_batch(rows: list[tuple[str, str, str]], options: dict, spec: PipelineSpec, ray_address: str = "local",
              num_cpus: int | None = None, on_row=None) -> list[tuple[str, str, str]]:
    """Dub every row on Ray; returns (output, status, message) per row, in the rows' order, and
    calls `on_row(output, status, message)` as each row finishes.

    Paths must be readable by every Ray node (absolute paths on a shared filesystem for a cluster).
    """
    for video, audio, _ in rows:  # fail fast on what the driver can see
        for path in (video, audio):
            if not Path(path).is_file():
                raise UserError(f"{path}: file not found")
    job_options(options)  # option values and model files checked before any task starts
    spec = spec.check()
    results: dict[int, tuple[str, str, str]] = {}

    def finished(i: int, status: str, message: str) -> None:
        results[i] = (rows[i][2], status, message)
        if on_row is not None:
            on_row(*results[i])

    todo = [i for i, row in enumerate(rows) if not Path(row[2]).exists()]
    for i in sorted(set(range(len(rows))) - set(todo)):
        finished(i, SKIPPED, "already exists")
    if todo:
        ray = init_ray(ray_address, num_cpus)
        gpus = cluster_gpus(ray)
        task = ray.remote(num_gpus=1 if gpus else 0)(dub_row)
        pending = {task.remote(_for_task(spec, gpus), *map(_absolute, rows[i]), options): i for i in todo}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ref)
            try:
                finished(i, *ray.get(ref)[1:])
            except ray.exceptions.RayError as exc:  # a crash in one row must not lose the others
                logger.error("row %d (%s) crashed:\n%s", i + 1, rows[i][2], exc)
                finished(i, FAILED, f"crashed: {str(exc).strip().splitlines()[-1]}")
    return [results[i] for i in range(len(rows))]


def _absolute(path: str) -> str:
    return os.path.abspath(path)


def _for_task(spec: PipelineSpec, gpus: float) -> PipelineSpec:
    """The spec as a task sees it: absolute local paths (hub ids unchanged), and `cuda` for the
    device when tasks get a GPU (inside a task Ray shows only that task's GPU)."""
    device = spec.device
    if gpus and (device or "auto").startswith(("cuda", "auto")):
        device = "cuda"

    def local(path):
        return _absolute(path) if path and Path(path).exists() else path

    files = spec.files
    files = replace(files, unet_config=local(files.unet_config), unet_ckpt=local(files.unet_ckpt),
                    whisper=local(files.whisper), vae=local(files.vae), checkpoints_dir=local(files.checkpoints_dir))
    return replace(spec, device=device, files=files)


def run_from_args(rows: list[tuple[str, str, str]], args: argparse.Namespace) -> int:
    """`inference.sh --batch_csv ... --ray_address ...`: the CLI's flags -> run_batch, one line per row."""
    options = option_values_from_args(args)  # the option flags, --preset expanded
    spec = PipelineSpec(from_args(ModelSettings, args).model_files(), args.device, args.dtype, args.face_backend)
    failures = 0

    def report(out: str, status: str, message: str) -> None:
        nonlocal failures
        if status == FAILED:
            failures += 1
            print(f"error: {out}: {message}", file=sys.stderr, flush=True)
        else:
            print(f"{'skip' if status == SKIPPED else 'wrote'} {out}" + (f": {message}" if message else ""), flush=True)

    run_batch(rows, options, spec, args.ray_address, on_row=report)
    return EXIT_USER_ERROR if failures else 0
